"""
Export a nanochat checkpoint as a Hugging Face model folder (scripts/export_hf.py is its command line).

The folder holds what `transformers` needs to load the model and its tokenizer without nanochat:

    config.json                 NanochatConfig (configuration_nanochat.py), with auto_map pointing at the code
    configuration_nanochat.py   copied from this folder
    modeling_nanochat.py        copied from this folder: the forward pass of nanochat/gpt.py
    model.safetensors           the checkpoint's state dict, under nanochat's own names
    generation_config.json      generation stops at <|assistant_end|> or <|bos|>, as nanochat's engine does
    tokenizer.json              the BPE for the `tokenizers` library (hf_tokenizer), the 9 special tokens
    tokenizer_config.json       special tokens and the chat template (chat_template.jinja)
    README.md                   the model card: the run's figures from the checkpoint meta and the report card

Loading it: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) and
AutoTokenizer.from_pretrained(folder), where trust_remote_code=True spares a question: transformers 5
reads config.json for a tokenizer too (and without the flag falls back to a plain config after asking).

Where the two tokenizers differ (both are said in the model card): text containing a special token's
string (say "<|user_end|>") becomes that special token in transformers unless apply_chat_template gets
sanitize_control_tokens=True (newer transformers) or encode gets split_special_tokens=True, while
nanochat always encodes it as text; and an assistant message of two text parts in a row is encoded as one
text by the template, as two by render_conversation (nanochat's own data never has that).
"""

import os
import re
import json
import shutil

import torch

from nanochat.common import UserError
from nanochat.gpt import GPTConfig, layer_window_sizes, padded_vocab_size

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILES = ("configuration_nanochat.py", "modeling_nanochat.py")
CHAT_TEMPLATE_FILE = os.path.join(HERE, "chat_template.jinja")

# the GPTConfig fields the model code in this folder implements; a checkpoint of a GPTConfig with a
# field not listed here (an architecture option added after this exporter) is refused, not exported wrong
EXPORTED_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern",
                   "smear", "backout", "ve_gate_channels", "ve_gate_range", "qk_scale", "rotary_base", "window_rule")


def check_exportable(config):
    """Refuse, in one line, a model with an architecture option the exported code does not implement."""
    unknown = [name for name in GPTConfig.__dataclass_fields__ if name not in EXPORTED_FIELDS]
    if unknown:
        raise UserError(f"this model has architecture options the Hugging Face export does not implement "
                        f"({', '.join(unknown)}); add them to scripts/hf/modeling_nanochat.py and EXPORTED_FIELDS first")


# -----------------------------------------------------------------------------
# the model: config.json, the code and model.safetensors

def hf_config(config, tokenizer):
    """The NanochatConfig of a GPTConfig: its fields, the padded vocab, each layer's window, the special ids."""
    from scripts.hf.configuration_nanochat import NanochatConfig
    check_exportable(config)
    sp = tokenizer.encode_special
    return NanochatConfig(**{name: getattr(config, name) for name in EXPORTED_FIELDS},
                          padded_vocab_size=padded_vocab_size(config.vocab_size),
                          window_sizes=layer_window_sizes(config),
                          bos_token_id=tokenizer.get_bos_token_id(),
                          # nanochat's engine ends a reply at either (a base model's document ends at <|bos|>)
                          eos_token_id=[sp("<|assistant_end|>"), tokenizer.get_bos_token_id()],
                          pad_token_id=sp("<|assistant_end|>"))


def write_model(model, tokenizer, out_dir):
    """config.json, generation_config.json, the two code files and model.safetensors (float32)."""
    from scripts.hf.modeling_nanochat import NanochatForCausalLM
    config = hf_config(model.config, tokenizer)
    # register_for_auto_class makes save_pretrained write auto_map and copy the code files next to the weights
    config.register_for_auto_class()
    NanochatForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    with torch.device("meta"):  # no memory for weights that are replaced right away
        hf_model = NanochatForCausalLM(config)
    state = {k.removeprefix("_orig_mod."): v.detach().to("cpu", torch.float32).contiguous()
             for k, v in model.state_dict().items()}
    hf_model.load_state_dict(state, strict=True, assign=True)
    from transformers.utils import logging as hf_logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for writing one file is noise (and one more stderr line)
    try:
        hf_model.save_pretrained(out_dir)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
    missing = [name for name in MODEL_FILES if not os.path.exists(os.path.join(out_dir, name))]
    for name in missing:  # older transformers versions copy only the file of the model class
        shutil.copy(os.path.join(HERE, name), out_dir)


# -----------------------------------------------------------------------------
# the tokenizer: tokenizer.json and tokenizer_config.json

def hf_tokenizer(tokenizer):
    """nanochat's tokenizer as a `tokenizers.Tokenizer` that gives the same ids.

    nanochat keeps tiktoken's form: {token bytes: id}, and encoding repeatedly joins the adjacent pair
    whose joined bytes have the lowest id. Hugging Face's byte-level BPE wants a vocab of strings (each
    byte shown as a printable character, GPT-2's bytes_to_unicode) and a ranked list of merges. The
    merges here are every split of every token into two tokens, ranked by the joined token's id: the
    same pair wins in both. ignore_merges=True looks a whole piece up first, as tiktoken does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    byte_char = _bytes_to_unicode()

    def as_str(token):
        return "".join(byte_char[b] for b in token)

    ranks = tokenizer.mergeable_ranks
    vocab = {as_str(token): rank for token, rank in ranks.items()}
    for rank in set(range(max(ranks.values()) + 1)) - set(ranks.values()):
        vocab[f"<|unused_{rank}|>"] = rank  # an id no bytes map to (two merges spelling the same bytes): never produced
    vocab.update(tokenizer.special_tokens)  # so that add_special_tokens below keeps their ids, wherever they are
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(as_str(a), as_str(b)) for a, b in sorted(splits, key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),  # nanochat's split pattern
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),    # bytes -> printable characters
    ])
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    got = [hf.token_to_id(name) for name in specials]
    assert got == [tokenizer.special_tokens[name] for name in specials], "special tokens must keep their ids"
    return hf


def _bytes_to_unicode():
    """GPT-2's map of the 256 byte values to printable characters (what byte-level BPE vocabularies hold)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(tokenizer, out_dir, model_max_length):
    """tokenizer.json and tokenizer_config.json (special tokens and the chat template)."""
    hf_tokenizer(tokenizer).save(os.path.join(out_dir, "tokenizer.json"))
    with open(CHAT_TEMPLATE_FILE, encoding="utf-8") as f:
        chat_template = f.read()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|assistant_end|>",
        "pad_token": "<|assistant_end|>",
        "additional_special_tokens": [t for t in sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
                                      if t not in ("<|bos|>", "<|assistant_end|>")],
        "add_bos_token": False,  # like nanochat's encode; the chat template writes <|bos|> itself
        "clean_up_tokenization_spaces": False,  # decode gives back the text exactly
        "model_max_length": model_max_length,
        "chat_template": chat_template,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


# -----------------------------------------------------------------------------
# the model card

def read_report_card(base_dir):
    """The run's report card (report/report.md, else the sections logged so far), or None."""
    from nanochat.report import REPORT_DIR_NAME, Report
    report_dir = os.path.join(base_dir, REPORT_DIR_NAME)
    path = os.path.join(report_dir, "report.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    sections = Report(report_dir).sections()
    return "\n".join(md for _, _, _, md in sections) if sections else None


def model_card(meta, address, model, report_md=None):
    """README.md: how to load the model, then the run's figures (checkpoint meta) and its report card."""
    from nanochat.report import format_value
    source, tag, step = address
    loop_state = meta.get("loop_state") if isinstance(meta.get("loop_state"), dict) else {}
    figures = {
        "stage": meta.get("stage", source), "model tag": tag, "step": meta.get("step", step),
        "steps planned": meta.get("num_iterations"), "validation bits per byte": meta.get("val_bpb"),
        "lowest validation bits per byte": loop_state.get("min_val_bpb"), "train loss": meta.get("train_loss"),
        "tokens seen in this stage": meta.get("tokens_seen", loop_state.get("tokens_seen")),
        "RL reward (mean)": meta.get("reward_mean"), "run id": meta.get("run_id"),
    }
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- nanochat", "---", "",
        f"# nanochat {tag} ({source}, step {step})", "",
        f"A {model.num_params():,}-parameter GPT trained with nanochat, exported with "
        f"`python -m scripts.export_hf -i {source} -g {tag} -s {step}`.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", trust_remote_code=True)',
        '# trust_remote_code here too: transformers 5 reads config.json for the tokenizer as well',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder", trust_remote_code=True)',
        'conversation = [{"role": "user", "content": "Why is the sky blue?"}]',
        "ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors=\"pt\",",
        "                                    return_dict=False)",
        "out = model.generate(ids, max_new_tokens=64, do_sample=False)",
        "print(tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True))",
        "```", "",
        "The model code (modeling_nanochat.py) is nanochat's own architecture, hence `trust_remote_code=True`. "
        "The tokenizer does not add `<|bos|>` by itself (as in nanochat); the chat template does, and a plain "
        "text prompt for a base model should start with it. Text containing a special token's string (such as "
        "`<|user_end|>`) is read as that special token unless `apply_chat_template(..., "
        "sanitize_control_tokens=True)` or `tokenizer(text, split_special_tokens=True)` is used; nanochat "
        "always reads it as text.", "",
        "## Figures of the run", "",
        "| figure | value |", "|---|---|",
    ]
    lines += [f"| {name} | {format_value(value)} |" for name, value in figures.items() if value is not None]
    lines += ["", "## Model config", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in model.config.to_dict().items()]
    lines += [f"| parameters: {group} | {count:,} |" for group, count in model.param_counts().items()]
    if report_md:
        demoted = re.sub(r"(?m)^(#+) ", r"#\1 ", report_md.strip())  # its headings go one level down
        # report.md opens with its own title ("# nanochat report card"); the sections logged so far do not
        lines += [""] + ([] if demoted.startswith("## ") else ["## Report card", ""]) + [demoted]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# the whole folder, and the upload

def is_export_folder(folder):
    """Whether folder holds an earlier export (its config.json is a NanochatConfig's)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "nanochat_export"
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out_dir):
    """Refuse, in one line, an output that is a file or a folder of other files (their files would be
    mixed with the model's, and uploaded with them by --push-to-hub). An earlier export is overwritten."""
    if os.path.isfile(out_dir):
        raise UserError(f"--output {out_dir} is a file; give a folder (it is created if needed)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_export_folder(out_dir):
        raise UserError(f"--output {out_dir} is a folder with other files in it; give a new or empty folder "
                        f"(an earlier export is overwritten)")


def export_model(model, tokenizer, meta, address, out_dir, base_dir=None):
    """Write the Hugging Face folder of a loaded checkpoint into out_dir; returns the files written."""
    check_exportable(model.config)
    check_output_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    write_model(model, tokenizer, out_dir)
    write_tokenizer(tokenizer, out_dir, model.config.sequence_len)
    report_md = read_report_card(base_dir) if base_dir else None
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(meta, address, model, report_md))
    return sorted(os.listdir(out_dir))


def push_to_hub(out_dir, repo_id, private=False):
    """Upload the folder to the Hub repo repo_id (created if needed); returns the commit's URL.

    huggingface_hub finds the token ($HF_TOKEN or `hf auth login`); $HF_ENDPOINT, read here, names
    another server than huggingface.co (a mirror, or the tests' stand-in on 127.0.0.1)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as e:
        raise UserError("--push-to-hub needs huggingface_hub: pip install -e '.[hf]'") from e
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)  # None: the Hub's default
        commit = api.upload_folder(repo_id=repo_id, folder_path=out_dir, repo_type="model",
                                   commit_message="Upload nanochat model (scripts/export_hf.py)")
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"the upload to {repo_id} failed ({first}); the folder {out_dir} is complete, "
                        f"check the token (HF_TOKEN or `hf auth login`) and the repo name and push again") from e
    return str(getattr(commit, "commit_url", commit))
