"""Export to Hugging Face (scripts/export_hf.py, scripts/hf/): the folder loads with transformers alone and
computes what nanochat computes: logits within 1e-4, the same greedy tokens as the engine, the same token
ids for hard text and for the chat format; the model card names the run's figures; the upload works
against a stand-in Hub on 127.0.0.1."""

import os
import io
import re
import json
import base64
import shutil
import threading
import contextlib
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed: pip install -e '.[hf]'")

from conftest import base_dir_env
from nanochat import checkpoint_manager as cm
from nanochat.common import run_entry
from nanochat.engine import Engine
from nanochat.gpt import GPTConfig, UPSTREAM_ARCH, build_model
from nanochat.report import format_value
from nanochat.tokenizer import RustBPETokenizer
from scripts import export_hf
from scripts.hf import export

# hard text for a tokenizer: scripts, accents, emoji with joiners and modifiers, whitespace runs, digits
HARD_TEXT = ("naïve café — Zürich; 東京で寿司🍣を食べた。 안녕하세요 세계! Привет, мир! مرحبا بالعالم "
             "👩‍👩‍👧‍👦 🏳️‍🌈 👋🏽✨\n\n\n    indented\tcode(x) {  }\r\n  \u00a0\u2003 trailing   \n"
             "1234567890 3.14159 don't WE'LL it's\t\t\n \n")

CONVERSATION = {"messages": [
    {"role": "system", "content": "You are terse.  Answer in one line."},
    {"role": "user", "content": "Héllo 👋🏽, what's 12+30?\n\n  (with spaces)  "},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me compute: "},
                                      {"type": "python", "text": "12+30"},
                                      {"type": "python_output", "text": "42"},
                                      {"type": "text", "text": " so 42."}]},
    {"role": "user", "content": "안녕하세요! 日本語は？\t🎉"},
    {"role": "assistant", "content": "네, 42입니다 🚀"},
]}


def export_to(base, out, *flags):
    """Run `python -m scripts.export_hf` on the base dir `base`; returns its stdout."""
    stdout = io.StringIO()
    with base_dir_env(base), contextlib.redirect_stdout(stdout):
        code = run_entry(export_hf.main, ["--output", str(out), *flags])
    assert code == 0, stdout.getvalue()
    return stdout.getvalue()


def load_hf(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny trained run's last base checkpoint, exported: (folder, stdout of the export)."""
    out = tmp_path_factory.mktemp("hf") / "tiny"
    return out, export_to(tiny_run, out, "-i", "base")


@pytest.fixture(scope="module")
def ours(tiny_run):
    with base_dir_env(tiny_run):
        model, tokenizer, meta = cm.load_model("base", "cpu", verbose=False)
    return model, tokenizer, meta


# -----------------------------------------------------------------------------
# the folder

def test_export_writes_a_folder_with_weights_config_code_tokenizer_and_card(exported):
    out, stdout = exported
    assert sorted(os.listdir(out)) == sorted([
        "model.safetensors", "config.json", "configuration_nanochat.py", "modeling_nanochat.py",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"])
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_nanochat.NanochatConfig",
                                  "AutoModelForCausalLM": "modeling_nanochat.NanochatForCausalLM"}
    assert config["padded_vocab_size"] % 64 == 0 and config["window_sizes"] == [64, 64]
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    assert f"wrote {out}" in stdout and "trust_remote_code=True" in stdout


def test_weights_are_the_checkpoints_state_dict_under_its_own_names(exported, ours):
    from safetensors.torch import load_file
    weights = load_file(exported[0] / "model.safetensors")
    state = ours[0].state_dict()
    assert set(weights) == set(state)
    assert all(torch.equal(weights[k], state[k]) for k in state)


def test_model_card_names_the_runs_figures_and_report_card(exported, ours):
    card = (exported[0] / "README.md").read_text()
    meta = ours[2]
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "# nanochat d2 (base, step 12)" in card
    assert f"| validation bits per byte | {format_value(meta['val_bpb'])} |" in card
    assert f"| tokens seen in this stage | {meta['tokens_seen']:,} |" in card
    assert "| step | 12 |" in card and "| stage | base |" in card and f"| run id | {meta['run_id']} |" in card
    assert "| n_layer | 2 |" in card and "| window_pattern | L |" in card
    assert f"A {ours[0].num_params():,}-parameter GPT" in card
    # the run's report card, its headings one level down
    assert "## Report card" in card and "### Base model training" in card and "### Tokenizer training" in card


def test_model_card_takes_the_assembled_report_card_when_there_is_one(ours, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# nanochat report card\n\n## Summary\n\n| Metric | SFT |\n")
    card = export.model_card({"step": 3, "stage": "sft"}, ("sft", "d2", 3), ours[0],
                             export.read_report_card(str(tmp_path)))
    assert "\n## nanochat report card\n" in card and "\n### Summary\n" in card and "## Report card" not in card
    assert export.read_report_card(str(tmp_path / "elsewhere")) is None


def test_export_reads_the_one_checkpoint_address_and_overwrites_an_earlier_export(tiny_run, tmp_path):
    out = tmp_path / "out"
    export_to(tiny_run, out, "-i", "base", "-g", "d2", "-s", "8")
    assert "# nanochat d2 (base, step 8)" in (out / "README.md").read_text()
    export_to(tiny_run, out, "--source", "base", "--step", "4")  # the same folder again: replaced
    assert "# nanochat d2 (base, step 4)" in (out / "README.md").read_text()


def test_an_output_folder_of_other_files_is_refused_before_loading(tiny_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(export_hf, "load_model_from_args", lambda *a, **k: pytest.fail("loaded the model"))
    with base_dir_env(tiny_run):
        code = run_entry(export_hf.main, ["-i", "base", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "other files" in err
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_model_option_the_export_does_not_implement_is_refused_in_one_line(tiny_run, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.setattr(export, "EXPORTED_FIELDS", tuple(f for f in export.EXPORTED_FIELDS if f != "backout"))
    with base_dir_env(tiny_run):
        code = run_entry(export_hf.main, ["-i", "base", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "backout" in err and "does not implement" in err
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# the model: logits and generation

@pytest.mark.slow
def test_transformers_logits_match_ours_on_a_padded_batch_of_texts(exported, ours):
    model, tokenizer, _ = ours
    hf_model, hf_tok = load_hf(exported[0])
    texts = ["The capital of France is Paris, and", "Once upon a time", "1 + 1 = 2, 2 + 2 ="]
    batch = hf_tok(["<|bos|>" + t for t in texts], padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        logits = hf_model(**batch).logits  # (B, T, vocab)
    assert logits.shape[-1] == tokenizer.get_vocab_size()
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, prepend="<|bos|>")
        with torch.no_grad():
            expected = model(torch.tensor([ids]))[0]
        assert batch["input_ids"][i, -len(ids):].tolist() == ids
        assert torch.allclose(logits[i, -len(ids):], expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_generate_gives_the_engines_tokens(exported, ours):
    model, tokenizer, _ = ours
    hf_model, _ = load_hf(exported[0])
    prompt = tokenizer.encode("Once upon a time", prepend="<|bos|>")
    expected = [column[0] for column, _ in Engine(model, tokenizer).generate(prompt, max_tokens=32, temperature=0.0)]
    out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    assert out[0, len(prompt):].tolist() == expected


# every architecture option: GQA, sliding windows under both window rules, smear, backout, the value
# gate's channels and range, the q/k scale and the rotary base, on a model with random weights
ARCHITECTURES = {
    "gqa_windows": dict(sequence_len=64, n_layer=3, n_head=4, n_kv_head=2, n_embd=128, window_pattern="SL"),
    "upstream": dict(sequence_len=1024, n_layer=4, n_head=4, n_kv_head=1, n_embd=128, window_pattern="SSL",
                     **UPSTREAM_ARCH),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def random_arch_export(request, tiny_run, tmp_path_factory):
    """A checkpoint of each ARCHITECTURES entry (random weights, the tiny run's tokenizer) and its export."""
    base = tmp_path_factory.mktemp(f"arch_{request.param}")
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    config = GPTConfig(vocab_size=512, **ARCHITECTURES[request.param])
    torch.manual_seed(0)
    model = build_model(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():  # every block and gate away from its identity-like init
            p.add_(0.3 * torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0) + 0.02 * torch.randn_like(p))
    cm.save_checkpoint(str(base / "chatsft_checkpoints" / "x"), 1, model.state_dict(), None,
                       {"step": 1, "stage": "sft", "model_config": config.to_dict()})
    out = base / "hf"
    export_to(base, out, "-g", "x")
    with base_dir_env(base):
        ours_model, tokenizer, _ = cm.load_model("sft", "cpu", model_tag="x", verbose=False)
    return ours_model, tokenizer, out


@pytest.mark.slow
def test_every_architecture_option_gives_our_logits_and_greedy_tokens(random_arch_export):
    model, tokenizer, out = random_arch_export
    hf_model, _ = load_hf(out)
    config = model.config
    assert hf_model.config.window_sizes == model.window_sizes
    assert len(set(model.window_sizes)) == 2  # the windows differ between layers, so they are tested
    # rows longer than the short window, left-padded to one batch
    g = torch.Generator().manual_seed(1)
    short = min(model.window_sizes)
    lengths = [short + 40, short + 5, 7]
    rows = [[tokenizer.get_bos_token_id()] + torch.randint(0, 500, (n - 1,), generator=g).tolist() for n in lengths]
    width = max(lengths)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        logits = hf_model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            expected = model(torch.tensor([row]))[0]
            assert torch.allclose(logits[i, -len(row):], expected, atol=1e-4, rtol=0), (config, i)
    # greedy decoding with the KV cache past the short window, one prompt and a padded batch
    engine = Engine(model, tokenizer)
    stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}

    def until_stop(tokens):
        cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens) - 1)
        return tokens[:cut + 1]

    prompts = [rows[0], rows[2]]
    columns = [column for column, _ in engine.generate(prompts, max_tokens=32, temperature=0.0)]
    expected = [until_stop([c[i] for c in columns]) for i in range(len(prompts))]
    single = hf_model.generate(torch.tensor([prompts[0]]), max_new_tokens=32, do_sample=False)
    assert until_stop(single[0, len(prompts[0]):].tolist()) == expected[0]
    batch = hf_model.generate(input_ids=ids[[0, 2]], attention_mask=mask[[0, 2]], max_new_tokens=32, do_sample=False)
    for i in range(len(prompts)):
        assert until_stop(batch[i, width:].tolist()) == expected[i]


@pytest.mark.slow
def test_the_readme_and_model_card_examples_run(exported, capsys):
    """The Python of the README's export section and of the model card, run on the exported folder."""
    from nanochat.common import repo_root
    folder = str(exported[0])
    readme = open(os.path.join(repo_root(), "README.md"), encoding="utf-8").read()
    section = readme.split("## Export to Hugging Face")[1].split("\n## ")[0]
    card = (exported[0] / "README.md").read_text()
    for name, text, path in (("README.md", section, "out/d20"), ("model card", card, "path/to/this/folder")):
        code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
        assert path in code, name
        exec(compile(code.replace(path, folder), name, "exec"), {})
        assert capsys.readouterr().out.strip(), name  # it printed a reply


# -----------------------------------------------------------------------------
# the tokenizer and the chat template

def test_autotokenizer_encodes_hard_text_to_our_ids(exported, ours):
    tokenizer = ours[1]
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported[0])  # as a user would, without a flag
    ids = tokenizer.encode(HARD_TEXT)
    assert hf_tok(HARD_TEXT)["input_ids"] == ids  # no <|bos|> added, as nanochat's encode
    assert hf_tok.decode(ids) == tokenizer.decode(ids) == HARD_TEXT
    assert hf_tok.convert_tokens_to_ids(tokenizer.get_special_tokens()) == \
        [tokenizer.encode_special(t) for t in tokenizer.get_special_tokens()]
    assert hf_tok.bos_token_id == tokenizer.get_bos_token_id()
    # a special token's string in text: nanochat reads it as text; transformers as text when asked to
    text = "a <|assistant_end|> b"
    assert hf_tok(text, split_special_tokens=True)["input_ids"] == tokenizer.encode(text)


def test_converted_bpe_matches_a_larger_multilingual_vocabulary(tmp_path):
    """The tiny run's 512 tokens have few merges; one of 2,000 tokens learned on several scripts has
    many multi-byte ones (the merge ranking is where a conversion goes wrong)."""
    from scripts.tok_train import training_texts
    with base_dir_env(tmp_path):
        english = list(training_texts(None, 200_000, 10_000, {"docs": 0, "chars": 0}))
    multilingual = [HARD_TEXT * 3, "東京都の天気は晴れです。日本語のテキスト。" * 20, "한국어 문장입니다. 안녕하세요! " * 20,
                    "Съешь же ещё этих мягких французских булок. " * 20, "👩‍👩‍👧‍👦🎉🚀 " * 20]
    tokenizer = RustBPETokenizer.train_from_iterator(iter(english + multilingual * 5), 2000)
    hf = export.hf_tokenizer(tokenizer)
    texts = [HARD_TEXT, *multilingual, english[0][:3000], "   \n\n\t\t  x  \n", "", "🎉" * 7, "a" * 500]
    for text in texts:
        assert hf.encode(text).ids == tokenizer.encode(text), text[:40]
    assert hf.get_vocab_size() == tokenizer.get_vocab_size()


def test_chat_template_renders_our_ids_for_a_completion_and_a_whole_conversation(exported, ours):
    tokenizer = ours[1]
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported[0], trust_remote_code=True)
    messages = CONVERSATION["messages"]

    def render(msgs, **kwargs):
        return hf_tok.apply_chat_template(msgs, tokenize=True, return_dict=False, **kwargs)

    # a prompt for the assistant's next reply, after a user message (system message folded into it)
    assert render(messages[:4], add_generation_prompt=True) == tokenizer.render_for_completion({"messages": messages[:4]})
    assert render(messages[1:2], add_generation_prompt=True) == \
        tokenizer.render_for_completion({"messages": messages[1:2]})
    # a whole conversation, tool call and its output included
    assert render(messages) == tokenizer.render_conversation(CONVERSATION, max_tokens=None)[0]
    # as render_for_completion, a final assistant message (the reference answer) is dropped for the prompt
    assert render(messages, add_generation_prompt=True) == tokenizer.render_for_completion(CONVERSATION)
    # roles that do not alternate are refused, as render_conversation refuses them
    bad = [messages[1], messages[1]]
    with pytest.raises(ValueError):
        tokenizer.render_conversation({"messages": bad})
    with pytest.raises(Exception, match="roles must alternate"):
        render(bad)


def test_chat_template_can_keep_special_token_strings_in_user_text_as_text(exported, ours):
    import inspect
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported[0], trust_remote_code=True)
    if "sanitize_control_tokens" not in inspect.signature(hf_tok.apply_chat_template).parameters:
        pytest.skip(f"transformers {transformers.__version__} has no apply_chat_template(sanitize_control_tokens=)")
    messages = [{"role": "user", "content": "say <|assistant_end|><|bos|> now"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                                     sanitize_control_tokens=True)
    assert ids == ours[1].render_for_completion({"messages": messages})


# -----------------------------------------------------------------------------
# --push-to-hub, against a stand-in Hub on 127.0.0.1

class FakeHub(BaseHTTPRequestHandler):
    """The four endpoints huggingface_hub's create_repo + upload_folder call. Every file is declared a
    regular (non-LFS) one, so the commit carries it inline; the real Hub sends model.safetensors through
    LFS/Xet instead, which this stand-in does not cover."""

    def reply(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub, url = self.server.hub, f"http://127.0.0.1:{self.server.server_address[1]}"
        hub["requests"].append((self.path, self.headers.get("Authorization")))
        if hub.get("refuse"):
            return self.reply({"error": "Invalid credentials"}, code=401)
        if self.path == "/api/repos/create":
            request = json.loads(body)
            hub["created"] = request
            return self.reply({"url": f"{url}/{request['organization']}/{request['name']}"})
        if self.path == "/api/validate-yaml":
            return self.reply({"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/models/(.+)/preupload/main", self.path):
            return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in json.loads(body)["files"]]})
        if m := re.fullmatch(r"/api/models/(.+)/commit/main", self.path):
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    hub["message"] = item["value"]["summary"]
                elif item["key"] == "file":
                    hub["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self.reply({"commitUrl": f"{url}/{m.group(1)}/commit/0123abc", "commitOid": "0123abc" + "0" * 33})
        self.reply({"error": f"the stand-in hub has no {self.path}"}, code=404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    pytest.importorskip("huggingface_hub")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.hub = {"requests": [], "files": {}}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    # huggingface_hub reads $HF_ENDPOINT when imported (older versions parse the commit's URL with it)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in_token")
    yield server.hub
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_push_to_hub_uploads_the_whole_folder(tiny_run, tmp_path, fake_hub):
    out = tmp_path / "out"
    stdout = export_to(tiny_run, out, "-i", "base", "--push-to-hub", "someone/nanochat-tiny", "--private")
    assert fake_hub["created"]["name"] == "nanochat-tiny" and fake_hub["created"]["organization"] == "someone"
    assert fake_hub["created"].get("visibility") == "private" or fake_hub["created"].get("private") is True
    assert all(auth == "Bearer hf_stand_in_token" for _, auth in fake_hub["requests"])
    assert fake_hub["files"] == {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert "scripts/export_hf.py" in fake_hub["message"]
    assert "pushed to someone/nanochat-tiny: http://127.0.0.1:" in stdout


def test_a_refused_upload_is_one_line_and_keeps_the_folder(tiny_run, tmp_path, fake_hub, capsys):
    fake_hub["refuse"] = True
    with base_dir_env(tiny_run):
        code = run_entry(export_hf.main, ["-i", "base", "--output", str(tmp_path / "out"), "--push-to-hub", "a/b"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "upload to a/b failed" in err and "HF_TOKEN" in err
    assert (tmp_path / "out" / "model.safetensors").is_file()
