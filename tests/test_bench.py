"""The benchmarks in bench/ run, on tiny settings, and print the figures they promise."""

import re
import time

import pytest

from nanochat.common import UserError


def _numbers(line):
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.?\d*", line)]


def test_bench_engine_prints_every_section(capsys):
    from bench import bench_engine
    bench_engine.main(["--depth", "1", "--head-dim", "32", "--vocab-size", "256", "--sequence-len", "32",
                       "--contexts", "16,32", "--new-tokens", "3", "--samples", "1,2", "--prompts", "3",
                       "--repeats", "1", "--device-type", "cpu"])
    out = capsys.readouterr().out
    speedups = [line for line in out.splitlines()
                if line.rstrip().endswith("x") and "rows" not in line and "one at a time" not in line
                and "floor" not in line and " us " not in line]
    assert len(speedups) == 2 + 2  # two contexts (cache vs none) and two batch sizes
    sampling = [_numbers(line) for line in out.splitlines() if " us " in line]  # rows, multinomial, draw, ratio
    assert [row[0] for row in sampling] == [1, 2] and all(row[1] > 0 and row[2] > 0 for row in sampling)
    assert all(_numbers(line)[-1] > 0 for line in speedups)
    batch = [_numbers(line) for line in speedups if "|" in line]  # rows, tok/s, vs 1 row | floor tok/s, vs 1 row
    assert [b[0] for b in batch] == [1, 2] and batch[0][2] == batch[0][4] == 1.0
    assert abs(batch[1][4] - batch[1][3] / batch[0][3]) <= 0.06  # the floor's ratio is its own tokens/s ratio
    (floor,) = [line for line in out.splitlines() if "decode / floor" in line]
    decode_ms, _, floor_ms, _, ratio = _numbers(floor)
    assert decode_ms > 0 and floor_ms >= 0 and ratio > 0
    (together,) = [line for line in out.splitlines() if "one at a time" in line]
    alone_ms, batch_ms, ratio = _numbers(together)
    assert alone_ms > 0 and batch_ms > 0
    # the printed figures are rounded (0.1 ms, 0.1x): the ratio must agree within that rounding
    assert (alone_ms - 0.05) / (batch_ms + 0.05) - 0.05 <= ratio <= (alone_ms + 0.05) / max(batch_ms - 0.05, 1e-9) + 0.05
    lo, hi = map(int, re.search(r"3 different prompts \((\d+)-(\d+) tokens\)", out).groups())
    assert 8 <= lo <= hi <= 16  # half the first context up to all of it


def test_bench_engine_rejects_bad_lists():
    from bench import bench_engine
    with pytest.raises(UserError, match="comma-separated"):
        bench_engine.main(["--contexts", "a,b"])
    with pytest.raises(UserError, match="--prompts"):
        bench_engine.main(["--prompts", "0"])


def test_bench_train_reports_mfu_against_a_measured_peak(capsys):
    from bench import bench_train
    bench_train.main(["--depth", "1", "--head-dim", "32", "--max-seq-len", "32", "--vocab-size", "256",
                      "--device-batch-size", "2", "--steps", "3"])
    out = capsys.readouterr().out
    assert re.search(r"peak: CPU fp32 matmul peak measured now .* = [\d.,]+ GFLOP/s", out)
    assert 0 < _numbers(re.search(r"MFU [\d.]+%", out).group())[0] <= 100
    shares = [_numbers(line)[0] for line in out.splitlines() if "% of step time" in line]
    assert len(shares) == 3 and sum(shares) == pytest.approx(100, abs=0.5)  # forward, backward, optimizer


def test_bench_train_break_even_charges_the_compile_time(capsys, monkeypatch):
    # a stand-in "compiler": the model itself, with 1 s of compiling in its first call
    from bench import bench_train
    calls = []

    def fake_compile(model, flag, device_type):
        def compiled(x, y):
            calls.append(1)
            if len(calls) == 1:
                time.sleep(1.0)
            return model(x, y)
        return compiled
    monkeypatch.setattr(bench_train, "compile_for_training", fake_compile)
    bench_train.main(["--depth", "1", "--head-dim", "32", "--max-seq-len", "32", "--vocab-size", "256",
                      "--device-batch-size", "2", "--steps", "3", "--break-even", "--no-peak"])
    out = capsys.readouterr().out
    assert len(calls) == 5  # 2 warm-up + 3 timed compiled steps, after the eager ones
    cost = _numbers(re.search(r"compiling cost [\d.]+ s", out).group())[0]
    assert 0.8 <= cost <= 1.6  # the second, fast warm-up step is not charged as compiling
    assert "eager / compiled" in out and ("break-even after" in out or "never pays" in out)


@pytest.mark.slow
def test_bench_tokenizer_compares_with_cl100k(capsys):
    from bench import bench_tokenizer
    bench_tokenizer.main(["--vocab-size", "512", "--references", "cl100k", "--repeats", "1"])
    out = capsys.readouterr().out
    assert re.search(r"train: 512 tokens from [\d,]+ characters", out)
    assert "ours / cl100k_base" in out


def test_gpu_script_commands_parse_with_the_benches_own_flags():
    # bench/gpu.sh cannot run without a GPU; at least every bench command in it must parse
    import os
    import shlex
    from bench import bench_engine, bench_train
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu.sh")
    text = open(path).read().replace("\\\n", " ").replace('"$BATCH"', "32").replace('"$STEPS"', "10")
    commands = [shlex.split(line.split("python -m ", 1)[1]) for line in text.splitlines()
                if line.lstrip().startswith("python -m bench.")]
    parsers = {"bench.bench_train": bench_train.parse_args, "bench.bench_engine": bench_engine.parse_args}
    assert sorted(c[0] for c in commands) == sorted(parsers)
    for module, *args in commands:
        parsed = parsers[module](args)
        assert parsed.device_type == "cuda" and parsed.depth == 12


def test_bench_head_times_both_heads_and_puts_the_chunked_one_back(capsys):
    from bench import bench_head
    import nanochat.gpt as gpt
    bench_head.main(["--threads", "1", "--steps", "1", "--depth", "1", "--vocab-size", "256", "--max-seq-len", "32",
                     "--device-batch-size", "2"])
    out = capsys.readouterr().out
    assert "plain    step" in out and "chunked  step" in out and "plain / chunked" in out
    assert "apply" not in vars(gpt.SoftcapCrossEntropy)  # the model trains with the chunked head again
