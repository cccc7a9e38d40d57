"""bench_peer: its one-line refusals, and a whole tiny run against a stand-in peer made here."""

import re
import sys
import textwrap
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# a stand-in for upstream nanochat with the interface bench_peer calls on the real one: GPTConfig,
# GPT (built on the meta device, then to_empty + init_weights, setup_optimizer, forward with
# targets -> loss) and Engine(model, tokenizer).generate yielding one token column per step
STAND_IN_GPT = '''
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

@dataclass
class GPTConfig:
    sequence_len: int = 64
    vocab_size: int = 128
    n_layer: int = 1
    n_head: int = 2
    n_kv_head: int = 2
    n_embd: int = 32
    window_pattern: str = "SSSL"

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def get_device(self):
        return self.wte.weight.device

    def setup_optimizer(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def forward(self, idx, targets=None, kv_cache=None):
        logits = self.lm_head(self.wte(idx))  # (B, T, vocab)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
'''

STAND_IN_ENGINE = '''
import torch

class Engine:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        stop = self.tokenizer.encode_special("<|assistant_end|>")
        ids = torch.tensor([tokens])
        for _ in range(max_tokens):
            next_id = self.model(ids)[:, -1].argmax(-1)  # (1,)
            assert next_id.item() != stop
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            yield [next_id.item()], [1]
'''

TINY = ["--rounds", "1", "--no-compile", "--depth", "1", "--dim", "32", "--head-dim", "16", "--vocab-size", "128",
        "--seq-len", "16", "--rows", "2", "--warmup", "1", "--steps", "2", "--prompt-len", "8", "--new-tokens", "4",
        "--decode-repeats", "1", "--threads", "1"]


def make_peer(root, gpt=STAND_IN_GPT, engine=STAND_IN_ENGINE):
    (root / "nanochat").mkdir(parents=True)
    (root / "nanochat" / "__init__.py").write_text("")
    (root / "nanochat" / "gpt.py").write_text(textwrap.dedent(gpt))
    (root / "nanochat" / "engine.py").write_text(textwrap.dedent(engine))
    return root


def bench_peer(capsys, *args):
    """Exit code, stdout and stderr of `python -m bench.bench_peer args`, run in this process (its
    workers are processes of their own either way)."""
    from bench import bench_peer
    from nanochat.common import run_entry
    code = run_entry(bench_peer.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_peer_compares_with_a_stand_in_peer(tmp_path, capsys):
    peer = make_peer(tmp_path / "peer")
    code, out, err = bench_peer(capsys, "--peer", str(peer), *TINY)
    assert code == 0, err
    assert "GPTConfig(sequence_len=16, vocab_size=128, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, " \
           "window_pattern='L')" in out  # the peer's options, as used
    assert f"peer: {peer}" in out and "model.setup_optimizer() with its default arguments" in out
    rows = re.findall(r"^round 1 \| (eager step|decode b1) +\| ours ([\d,.]+) tok/s.*\| peer ([\d,.]+) tok/s.*"
                      r"\| ours/peer ([\d.]+)x$", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["eager step", "decode b1"]
    for what, ours, peer_tps, ratio in rows:
        ours, peer_tps, ratio = (float(v.replace(",", "")) for v in (ours, peer_tps, ratio))
        assert ours > 0 and peer_tps > 0
        # tokens/s are printed to 0.1, the ratio to 0.001: they must agree within that rounding
        assert (ours - 0.05) / (peer_tps + 0.05) - 0.0005 <= ratio <= (ours + 0.05) / (peer_tps - 0.05) + 0.0005
        summary = re.search(rf"ours/peer, {what} +: median ([\d.]+)x over 1 round", out)
        assert summary and float(summary.group(1)) == ratio
    assert "compiled step" not in out  # --no-compile


def test_bench_peer_without_a_peer_says_so_in_one_line():
    r = subprocess.run([sys.executable, "-m", "bench.bench_peer"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: --peer is required") and len(r.stderr.strip().splitlines()) == 1
    assert "python -m bench.bench_peer --peer /tmp/peer" in r.stderr  # with an example


@pytest.mark.parametrize("args, says", [
    (["--peer", "/no/such/folder"], "no such folder"),
    (["--peer", "{tmp}"], "is not a nanochat checkout"),
    (["--peer", "{peer}", "--dim", "30"], "not a multiple of --head-dim"),
    (["--peer", "{broken}"], "needs the package 'no_such_package_for_bench_peer'"),
])
def test_bench_peer_refuses_bad_input_in_one_line(tmp_path, capsys, args, says):
    peer = make_peer(tmp_path / "peer")
    broken = make_peer(tmp_path / "broken", gpt="import no_such_package_for_bench_peer\n" + STAND_IN_GPT)
    args = [a.format(tmp=tmp_path, peer=peer, broken=broken) for a in args]
    code, out, err = bench_peer(capsys, *TINY, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    if "broken" in " ".join(args):
        assert "pip install no_such_package_for_bench_peer" in lines[0]


def test_bench_peer_help_shows_an_example(capsys):
    code, out, _ = bench_peer(capsys, "--help")
    assert code == 0 and "python -m bench.bench_peer --peer /tmp/peer" in out
