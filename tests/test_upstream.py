"""Reading any nanochat run: a checkpoint folder written by unmodified upstream nanochat
(karpathy/nanochat at commit 92d63d4: smear, backout, 12-channel value gates, ...) gives upstream's
own outputs here, every tool runs on it, our base_train resumes it, and our base_train trains
upstream's architecture with a bit-exact resume like our own model's."""

import os
import json
import shlex
import shutil
import importlib

import pytest
import torch

from conftest import base_dir_env
from nanochat import checkpoint_manager as cm
from nanochat.common import run_entry
from nanochat.gpt import GPT, GPTConfig, UPSTREAM_ARCH, build_model, config_from_depth

# a checkpoint folder written by unmodified upstream nanochat (see its README); outside the repo
from conftest import UPSTREAM_FIXTURE as UPSTREAM, SKIP_WITHOUT_UPSTREAM
pytestmark = pytest.mark.skipif(SKIP_WITHOUT_UPSTREAM, reason=f"upstream fixture not found at {UPSTREAM}")
RUN = os.path.join(UPSTREAM, "base_checkpoints", "d3")
STEPS = (40, 80)


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(UPSTREAM, "reference_outputs.json")) as f:
        return json.load(f)


@pytest.fixture
def upstream_env(monkeypatch):
    """NANOCHAT_BASE_DIR at the (read-only) fixture for one test; a failing tokenizer fails here."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", UPSTREAM)
    try:
        from nanochat.tokenizer import get_tokenizer
        get_tokenizer()
    except Exception as e:
        pytest.fail(f"upstream nanochat's tokenizer ({UPSTREAM}/tokenizer/tokenizer.pkl, a pickled tiktoken "
                    f"Encoding) does not load: {e.__class__.__name__}: {e}")
    return UPSTREAM


@pytest.fixture
def upstream_copy(tmp_path, monkeypatch, upstream_env):
    """A writable copy of the fixture as NANOCHAT_BASE_DIR (tools that write need one)."""
    base = tmp_path / "upstream"
    shutil.copytree(UPSTREAM, base)
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    return base


_models = {}


def upstream_model(step):
    """(model, tokenizer) of one upstream checkpoint, loaded by our loader (once per session)."""
    if step not in _models:
        model, tokenizer, _ = cm.load_model_from_dir(RUN, step, "cpu")
        _models[step] = model, tokenizer
    return _models[step]


# -----------------------------------------------------------------------------
# the loader reproduces upstream's own outputs

def test_upstream_options_are_read_off_the_weights(upstream_env):
    model, _ = upstream_model(80)
    assert {k: getattr(model.config, k) for k in UPSTREAM_ARCH} == UPSTREAM_ARCH
    assert sorted(model.value_embeds) == ["0", "2"]  # alternating, the last layer included
    assert model.transformer.h[0].attn.ve_gate.weight.shape == (3, 12)
    # the meta records only the seven shape fields: the options come from the weights
    meta = cm.read_meta(RUN, 80)
    assert set(meta["model_config"]) == {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                                         "window_pattern"}


def test_upstream_tokenizer_gives_upstreams_token_ids(upstream_env, reference):
    _, tokenizer = upstream_model(80)
    ref = reference["tokenizer"]
    assert tokenizer.encode(ref["text"], prepend=tokenizer.get_bos_token_id()) == ref["ids_with_bos"]
    assert tokenizer.get_bos_token_id() == ref["bos_token_id"]


@pytest.mark.parametrize("step", STEPS)
def test_forward_reproduces_upstreams_logits_and_loss(upstream_env, reference, step):
    model, _ = upstream_model(step)
    ref = reference["models"][f"step_{step}"]
    ids = torch.tensor([reference["tokenizer"]["ids_with_bos"]])
    with torch.no_grad():
        logits = model(ids)  # no KV cache, as upstream's reference
        loss = model(ids[:, :-1], ids[:, 1:]).item()
    assert list(logits.shape) == ref["logits_shape"]
    last = logits[0, -1]
    assert torch.allclose(last[:8], torch.tensor(ref["last_logits_first8"]), atol=1e-4, rtol=0)
    top = torch.topk(last, 5)
    assert top.indices.tolist() == ref["last_logits_top5_ids"]
    assert torch.allclose(top.values, torch.tensor(ref["last_logits_top5_vals"]), atol=1e-4, rtol=0)
    assert abs(loss - ref["next_token_loss_mean"]) < 1e-4


@pytest.mark.parametrize("step", STEPS)
def test_greedy_continuation_matches_upstream_with_and_without_kv_cache(upstream_env, reference, step):
    from nanochat.engine import Engine
    model, tokenizer = upstream_model(step)
    ref = reference["models"][f"step_{step}"]
    prompt = ref["greedy_prompt_ids"]
    rows, _ = Engine(model, tokenizer).generate_batch(prompt, 1, max_tokens=16, temperature=0.0)  # KV cache
    assert rows[0] == ref["greedy_16_ids"]
    assert tokenizer.decode(rows[0]) == ref["greedy_16_text"]
    no_cache = list(model.generate(prompt, 16, temperature=0.0))  # the whole sequence at every step
    assert prompt + no_cache == ref["greedy_16_ids"]


@pytest.mark.parametrize("option,ours", [("ve_gate_range", 2.0), ("qk_scale", 1.0), ("rotary_base", 10000),
                                         ("backout", False)])
def test_each_upstream_piece_changes_the_outputs(upstream_env, reference, option, ours):
    """None of the options is decoration: with any one of them as in our model, the logits move."""
    model, _ = upstream_model(80)
    config = GPTConfig.from_dict({**model.config.to_dict(), option: ours})
    with torch.device("meta"):
        other = GPT(config)
    other.to_empty(device="cpu")
    other.init_rotary()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in other.state_dict()})
    ids = torch.tensor([reference["tokenizer"]["ids_with_bos"]])
    with torch.no_grad():
        last = other(ids)[0, -1, :8]
    assert (last - torch.tensor(reference["models"]["step_80"]["last_logits_first8"])).abs().max() > 1e-3


def test_smear_with_kv_cache_padding_and_samples_matches_the_plain_forward(upstream_env):
    """Smear reads the previous token: the KV cache keeps its embedding, a left-padded row does not
    smear padding into its first token, and a prefill copied into several rows carries it along."""
    from nanochat.engine import Engine, KVCache
    torch.manual_seed(0)
    _, tokenizer = upstream_model(80)
    model = build_model(config_from_depth(2, tokenizer.get_vocab_size(), 32, head_dim=32, **UPSTREAM_ARCH), "cpu")
    with torch.no_grad():  # as if trained: the output projections start at zero, the smear at off
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(std=0.1)
            block.mlp.c_proj.weight.normal_(std=0.1)
        model.smear_lambda.fill_(2.0)
    prompts = [[11, 22, 33, 44, 55, 66, 77], [5, 6, 7]]
    alone = [prompt + list(model.generate(prompt, 6, temperature=0.0)) for prompt in prompts]
    engine = Engine(model, tokenizer)
    for prompt, expected in zip(prompts, alone):
        rows, _ = engine.generate_batch(prompt, 1, max_tokens=6, temperature=0.0)
        assert rows[0] == expected
    rows, _ = engine.generate_batch(prompts, 2, max_tokens=6, temperature=0.0)  # padded, 2 rows each
    assert rows == [alone[0], alone[0], alone[1], alone[1]]
    # closer than the argmax: a padded row's logits are those of its prompt alone
    kv = KVCache.for_model(model, 2, 7, pad=torch.tensor([0, 4]))
    with torch.no_grad():
        padded = model(torch.tensor([prompts[0], [0] * 4 + prompts[1]]), kv_cache=kv)[:, -1]
        for row, prompt in zip(padded, prompts):
            assert torch.allclose(row, model(torch.tensor([prompt]))[0, -1], atol=1e-5)


# -----------------------------------------------------------------------------
# every tool runs on the upstream folder

def tool_cases(tmp):
    conv = tmp / "conv.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "To be?"},
                                             {"role": "assistant", "content": "Or not to be."}]}) + "\n")
    return {
        "attention_visualizer": ["--base-dir", "{B}", "--text", "To be, or not to be", "--all-layers"],
        "checkpoint_browser": ["--base-dir", "{B}", "--inspect", "d3"],
        "conversation_template_builder": ["--simple", "What is 2+2?", "It's 4.", "--max-seq-len", "128"],
        "dataset_inspector": [str(conv), "--analyze-lengths", "--max-seq-len", "128"],
        "generation_explorer": ["--base-dir", "{B}", "--source", "base", "--model-tag", "d3", "--step", "40",
                                "--prompt", "To be, or not", "--temperature", "0", "--max-tokens", "8", "--show-probs"],
        "lr_finder": ["--base-dir", "{B}", "d3", "--recommend"],
        "model_calculator": ["--depth", "3", "--head-dim", "64", "--vocab-size", "1024", "--seq-len", "128",
                             "--window-pattern", "SL"],
        "tokenizer_playground": ["To be, or not to be", "--special"],
        "training_dashboard": ["--base-dir", "{B}", "d3"],
        "training_resume_helper": ["--base-dir", "{B}", "--model-tag", "d3", "--verify"],
    }


TOOLS = [
    "attention_visualizer", "checkpoint_browser", "conversation_template_builder", "dataset_inspector",
    "generation_explorer", "lr_finder", "model_calculator", "tokenizer_playground", "training_dashboard",
    "training_resume_helper"]


def test_the_tool_list_is_every_tool():
    # tools/lab.py is the tools' page in the browser, not an eleventh tool (tests/test_lab.py)
    tools_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
    found = sorted(n[:-3] for n in os.listdir(tools_dir) if n.endswith(".py") and n not in ("__init__.py", "lab.py"))
    assert found == TOOLS


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_runs_on_the_upstream_folder(tool, upstream_copy, tmp_path, capsys):
    argv = [a.replace("{B}", str(upstream_copy)) for a in tool_cases(tmp_path)[tool]]
    code = run_entry(importlib.import_module(f"tools.{tool}").main, argv)
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and out.strip()


def test_generation_explorer_shows_upstreams_greedy_continuation(upstream_copy, reference, capsys):
    ref = reference["models"]["step_40"]
    code = run_entry(importlib.import_module("tools.generation_explorer").main,
                     ["--base-dir", str(upstream_copy), "--step", "40", "--prompt", "To be, or not",
                      "--temperature", "0", "--max-tokens", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["prompt_ids"] == ref["greedy_prompt_ids"]
    assert out["prompt_ids"] + [s["token_id"] for s in out["steps"]] == ref["greedy_16_ids"]


def test_attention_visualizer_shows_the_attention_the_model_used(upstream_copy, reference, capsys):
    """The tool's probabilities P, times the layer's values, are exactly what the layer fed its
    output projection (with upstream's q/k scale and 12-channel value gate in play)."""
    text = "To be, or not to be, that is"
    code = run_entry(importlib.import_module("tools.attention_visualizer").main,
                     ["--base-dir", str(upstream_copy), "--text", text, "--all-layers", "--json"])
    out = json.loads(capsys.readouterr().out)
    model, tokenizer = upstream_model(80)
    ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    assert code == 0 and out["ids"] == ids
    seen = {}
    hooks = [b.attn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("in", i), args[:4]))
             for i, b in enumerate(model.transformer.h)]
    hooks += [b.attn.c_proj.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("y", i), args[0]))
              for i, b in enumerate(model.transformer.h)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    for layer, block in enumerate(model.transformer.h):
        probs = torch.tensor(out["layers"][str(layer)])  # (H, T, T)
        with torch.no_grad():
            _, _, v = block.attn.qkv(*seen[("in", layer)])  # (1, T, Hkv, D)
        v = v[0].repeat_interleave(block.attn.n_head // block.attn.n_kv_head, dim=1).transpose(0, 1)  # (H, T, D)
        used = (probs @ v).transpose(0, 1).reshape(len(ids), -1)  # (T, C)
        assert torch.allclose(used, seen[("y", layer)][0], atol=1e-5)


def test_browser_compares_an_upstream_run_with_ours(upstream_copy, capsys):
    from scripts import base_train
    base_train.main(["--depth", "3", "--head-dim", "64", "--max-seq-len", "128", "--window-pattern", "SL",
                     "--device-batch-size", "4", "--total-batch-size", "512", "--num-iterations", "2",
                     "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1", "--model-tag", "ours"])
    capsys.readouterr()
    code = run_entry(importlib.import_module("tools.checkpoint_browser").main,
                     ["--compare", "d3", "ours", "--weights", "--prompt", "To be", "--max-tokens", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {r["key"]: r for r in out["rows"]}
    assert rows["model.smear"]["a"] is True and rows["model.smear"]["b"] is False and rows["model.smear"]["differs"]
    assert rows["model.n_embd"]["differs"] is False
    differ = {d["tensor"]: (d["a"], d["b"]) for d in out["shape_differences"]}
    assert differ == {"smear_lambda": ([1], None), "smear_gate.weight": ([1, 24], None), "backout_lambda": ([1], None),
                      "transformer.h.0.attn.ve_gate.weight": ([3, 12], [3, 32]),
                      "transformer.h.2.attn.ve_gate.weight": ([3, 12], [3, 32])}
    assert {w["group"] for w in out["weights"]} >= {"token embedding", "layer  0", "layer  2", "lm head"}
    assert set(out["samples"]) == {"a", "b"}
    code = run_entry(importlib.import_module("tools.checkpoint_browser").main, ["--compare", "d3", "ours", "--weights"])
    text = capsys.readouterr().out
    assert code == 0 and "5 tensors differ in shape" in text and "smear_gate.weight" in text


# -----------------------------------------------------------------------------
# resuming an upstream run with our base_train

def test_resume_helper_continues_an_upstream_run_with_our_base_train(upstream_copy, capsys):
    from tools.lib import resume as rs
    from scripts import base_train
    point = rs.find_resume_point(str(upstream_copy / "base_checkpoints" / "d3"))
    assert point.step == 80 and rs.is_upstream_meta(point.meta)
    command, notes = rs.resume_command(point, target_steps=82)
    notes = "\n".join(notes)
    assert "dropped flags that scripts.base_train does not have: fp8, fp8_recipe" in notes
    assert "--warmup-steps 40 is --warmup-ratio" in notes and "not bit-exact" in notes
    argv = shlex.split(command)
    argv = argv[argv.index("scripts.base_train") + 1:]
    assert "--upstream-arch" in argv and "--fp8" not in argv and argv[argv.index("--resume-from-step") + 1] == "80"
    base_train.main(argv)
    out = capsys.readouterr().out
    assert "not bit-exactly" in out and "starting a fresh optimizer" in out
    run = str(upstream_copy / "base_checkpoints" / "d3")
    assert [r["step"] for r in cm.read_metrics(run)] == [81, 82]
    assert all(r["train_loss"] < 6.5 for r in cm.read_metrics(run))  # a trained model: a fresh one has ln 1024 = 6.9
    before, _, _ = cm.load_checkpoint(run, 80)
    after, _, meta = cm.load_checkpoint(run, 82)
    assert meta["user_config"]["upstream_arch"] is True and meta["model_config"]["smear"] is True
    assert not torch.equal(before["smear_lambda"], after["smear_lambda"])  # it trained
    code = run_entry(importlib.import_module("tools.training_resume_helper").main,
                     [run, "--verify", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert code == 0 and checks["weights match meta"]["ok"]


# -----------------------------------------------------------------------------
# our base_train with upstream's architecture: the resume is as exact as for our own model

ARGS = ["--depth", "2", "--max-seq-len", "64", "--head-dim", "64", "--device-batch-size", "2", "--total-batch-size",
        "256", "--num-iterations", "20", "--eval-every", "10", "--eval-tokens", "1024", "--core-metric-every", "-1",
        "--sample-every", "-1", "--save-every", "10", "--window-pattern", "SL", "--upstream-arch"]


def test_upstream_arch_resume_matches_uninterrupted_run(tmp_path, tiny_run):
    from scripts import base_train
    full = tmp_path / "full"
    shutil.copytree(tiny_run / "tokenizer", full / "tokenizer")
    with base_dir_env(full):
        base_train.main(ARGS)
    run = full / "base_checkpoints" / "d2"
    state = torch.load(run / "model_000020.pt", weights_only=True)
    assert {"smear_gate.weight", "smear_lambda", "backout_lambda"} <= set(state)
    assert state["transformer.h.1.attn.ve_gate.weight"].shape[1] == 12
    # interrupted after step 10: everything later is gone, then the run resumes
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    ckpt = resumed / "base_checkpoints" / "d2"
    for name in ("model_000020.pt", "meta_000020.json", "optim_000020_rank0.pt"):
        os.remove(ckpt / name)
    cm.truncate_metrics(str(ckpt), 10)
    with base_dir_env(resumed):
        base_train.main(ARGS + ["--resume-from-step", "10"])
    a, b = cm.read_metrics(str(run)), cm.read_metrics(str(ckpt))
    assert [r["step"] for r in b] == list(range(1, 21))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]  # bit-exact, step for step
    other = torch.load(ckpt / "model_000020.pt", weights_only=True)
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    with base_dir_env(resumed):
        model, _, _ = cm.load_model_from_dir(str(ckpt), 20, "cpu")
    assert {k: getattr(model.config, k) for k in UPSTREAM_ARCH} == UPSTREAM_ARCH


def test_smear_and_backout_flags_build_only_those_pieces():
    from scripts.base_train import parse_args
    args = parse_args(["--smear", "--backout"])
    assert args.smear and args.backout and not args.upstream_arch
    config = config_from_depth(2, 512, 64, head_dim=64, smear=True)
    assert config.smear and not config.backout and config.qk_scale == 1.0 and config.rotary_base == 10000
    with torch.device("meta"):
        model = GPT(config)
    assert "smear_gate.weight" in model.state_dict() and "backout_lambda" not in model.state_dict()
    assert [g["name"] for g in model.setup_optimizers().param_groups][-1] == "smear_backout"
