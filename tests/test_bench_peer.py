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
# targets -> loss, per token with loss_reduction="none") and Engine(model, tokenizer).generate yielding one token column per step
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

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        logits = self.lm_head(self.wte(idx))  # (B, T, vocab)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction=loss_reduction)
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


QUALITY = ["--quality", "3", "--val-rows", "2", "--depth", "1", "--dim", "32", "--head-dim", "16", "--vocab-size", "512",
           "--seq-len", "16", "--rows", "2", "--threads", "1"]


def test_bench_peer_quality_trains_both_on_the_same_text(tmp_path, capsys):
    peer = make_peer(tmp_path / "peer")
    code, out, err = bench_peer(capsys, "--peer", str(peer), *QUALITY)
    assert code == 0, err
    assert "3 steps x 2 x 16 tokens to train on, 2 x 16 held-out tokens" in out
    figures = {}
    for side in ("ours", "peer"):
        m = re.search(rf"^{side} +\| val bits per byte ([\d.]+) \| last training loss ([\d.]+) \| training ([\d.,]+) s "
                      r"\(first step ([\d.,]+) s, then ([\d.,]+) s\)$", out, re.MULTILINE)
        assert m, out
        bpb, loss, total, first, rest = (float(v.replace(",", "")) for v in m.groups())
        assert 0 < bpb < 20 and loss > 0 and abs(first + rest - total) <= 0.15
        figures[side] = bpb
    ratio = float(re.search(r"ours/peer: bits per byte ([\d.]+)x", out).group(1))
    assert abs(ratio - figures["ours"] / figures["peer"]) <= 0.002
    assert "eager step" not in out and "decode b1" not in out  # --quality replaces the timing rounds


def test_quality_data_packs_shifted_rows_and_counts_the_bytes(tmp_path):
    import torch
    from bench.bench_peer import quality_data
    settings = dict(rows=2, seq_len=16, vocab_size=512)
    what, val_bytes = quality_data(settings, 3, 4, tmp_path / "q.pt")
    data = torch.load(tmp_path / "q.pt")
    assert data["x"].shape == data["y"].shape == (3, 2, 16)
    assert torch.equal(data["x"][:, :, 1:], data["y"][:, :, :-1])  # targets are the inputs shifted by one
    assert data["val_x"].shape == (4, 16) and torch.equal(data["val_x"][:, 1:], data["val_y"][:, :-1])
    assert not torch.equal(data["x"][0, 0], data["x"][1, 0])  # each step gets rows of its own
    assert int(data["x"].max()) < 512
    assert 0 < int(data["val_counted"].sum()) <= data["val_y"].numel() <= val_bytes
    assert f"({val_bytes:,} bytes)" in what
    with pytest.raises(Exception, match="fewer than"):
        quality_data(settings, 10**6, 4, tmp_path / "big.pt")


def test_train_and_measure_follows_the_schedule_and_sums_the_counted_nats():
    import time
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from bench.bench_peer import train_and_measure

    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(8, 8)

        def forward(self, idx, targets, loss_reduction="mean"):
            logits = self.table(idx)
            return F.cross_entropy(logits.view(-1, 8), targets.reshape(-1), reduction=loss_reduction)

    torch.manual_seed(0)
    model = Bigram()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randint(0, 8, (2, 3, 5)), torch.randint(0, 8, (2, 3, 5))
    val_x, val_y = torch.randint(0, 8, (2, 5)), torch.randint(0, 8, (2, 5))
    counted = torch.rand(2, 5) > 0.3
    data = dict(x=x, y=y, val_x=val_x, val_y=val_y, val_counted=counted)
    before = model.table.weight.detach().clone()
    nats, times, _ = train_and_measure(model, optimizer, data, [0.0, 0.0], time.perf_counter)
    assert torch.equal(model.table.weight, before) and len(times) == 2  # a multiplier of 0: no update
    expected = F.cross_entropy(model.table(val_x).view(-1, 8), val_y.view(-1), reduction="none")[counted.view(-1)]
    assert abs(nats - expected.double().sum().item()) < 1e-6
    train_and_measure(model, optimizer, data, [1.0, 0.25], time.perf_counter)
    assert optimizer.param_groups[0]["lr"] == 0.5 * 0.25 and not torch.equal(model.table.weight, before)
