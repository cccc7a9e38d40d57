"""MFU stays honest on a busy machine: the CPU peak is the best of short windows, kept per machine
with its date and measured again on request, and no MFU above 100% is ever printed."""

import re
import json
import shutil

import pytest

from conftest import base_dir_env
from nanochat import common
from nanochat.common import mfu_percent, get_peak_flops, REMEASURE_PEAK_ENV, CPU_PEAK_FILE


@pytest.fixture
def fresh_note(monkeypatch):
    monkeypatch.setattr(common, "_peak_note_printed", False)


def test_mfu_is_never_above_100_and_says_the_peak_was_underestimated(fresh_note, capsys):
    assert mfu_percent(1e6, 1e3, 1e10) == pytest.approx(10.0)            # 1 GFLOP/s of 10
    assert mfu_percent(1e6, 1e3, 1e9, world_size=4) == pytest.approx(25.0)
    assert mfu_percent(1e6, 1e3, None) is None                           # unknown peak: no MFU
    assert capsys.readouterr().out == ""
    assert mfu_percent(1e6, 1e6, 1e10) == 100.0                          # 1000 GFLOP/s "of" 10
    assert mfu_percent(1e6, 2e6, 1e10) == 100.0
    out = capsys.readouterr().out
    assert out.count("the peak was underestimated") == 1 and REMEASURE_PEAK_ENV in out  # said once


def test_the_measured_peak_is_the_best_window_not_a_busy_one(monkeypatch):
    # a fake clock: window 1 was slowed down by another process (one matmul took 2 s), window 2 was
    # quiet (1 s), window 3 slow again (4 s); the peak is what the quiet window showed
    clock = iter([0.0, 2.0, 10.0, 11.0, 20.0, 24.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    n = 8
    assert common.measure_cpu_matmul_flops(n=n, seconds=1.0, windows=3) == pytest.approx(2 * n ** 3 / 1.0)


def test_cpu_peak_is_cached_with_its_date_and_measured_again_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.delenv(REMEASURE_PEAK_ENV, raising=False)
    readings = iter([50e9, 80e9, 60e9])
    monkeypatch.setattr(common, "measure_cpu_matmul_flops", lambda: next(readings))
    flops, desc = get_peak_flops("cpu")
    assert flops == 50e9 and "measured now" in desc
    flops, desc = get_peak_flops("cpu")  # the same machine and thread count: read from the file
    assert flops == 50e9 and re.search(r"cached from \d{4}-\d\d-\d\d", desc) and REMEASURE_PEAK_ENV in desc
    saved = json.loads((tmp_path / CPU_PEAK_FILE).read_text())
    assert [e["flops"] for e in saved.values()] == [50e9]
    monkeypatch.setenv(REMEASURE_PEAK_ENV, "1")
    flops, desc = get_peak_flops("cpu")
    assert flops == 80e9 and "measured now" in desc
    monkeypatch.delenv(REMEASURE_PEAK_ENV)
    assert get_peak_flops("cpu")[0] == 80e9  # the new measurement replaced the old one
    (tmp_path / CPU_PEAK_FILE).write_text("{not json")  # a damaged file is measured again, not an error
    assert get_peak_flops("cpu")[0] == 60e9


def test_bench_train_prints_mfu_at_most_100_under_a_noisy_peak(fresh_note, monkeypatch, capsys):
    from bench import bench_train
    monkeypatch.setattr(bench_train, "measure_cpu_matmul_flops", lambda: 1e6)  # 1 MFLOP/s: far too low
    bench_train.main(["--depth", "1", "--head-dim", "32", "--max-seq-len", "32", "--vocab-size", "256",
                      "--device-batch-size", "2", "--steps", "2"])
    out = capsys.readouterr().out
    assert re.search(r"MFU 100\.0%", out) and "the peak was underestimated" in out


def test_base_train_prints_mfu_at_most_100_under_a_noisy_peak(fresh_note, tmp_path, tiny_run, monkeypatch,
                                                             capsys):
    from scripts import base_train
    base = tmp_path / "base"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    monkeypatch.setattr(common, "measure_cpu_matmul_flops", lambda: 1e6)
    monkeypatch.setenv(REMEASURE_PEAK_ENV, "1")
    with base_dir_env(base):
        base_train.main(["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size",
                         "256", "--num-iterations", "3", "--eval-every", "-1", "--core-metric-every", "-1",
                         "--sample-every", "-1", "--save-every", "-1", "--window-pattern", "L"])
    out = capsys.readouterr().out
    mfus = [float(m) for m in re.findall(r"mfu\s+([\d.]+)%|MFU ([\d.]+)%", out, flags=re.I) for m in m if m]
    assert mfus and max(mfus) <= 100
    assert "the peak was underestimated" in out


def test_busy_machine_with_spinning_threads_gets_one_line_of_advice(monkeypatch):
    import torch
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (7.8, 7.0, 6.0))
    hint = common.spinning_threads_hint()
    assert "load 7.8 on 2 cores" in hint and "OMP_WAIT_POLICY=PASSIVE" in hint
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert common.spinning_threads_hint() is None  # a quiet machine: spinning threads cost nothing
    monkeypatch.setattr(common.os, "getloadavg", lambda: (7.8, 7.0, 6.0))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert common.spinning_threads_hint() is None  # already set
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert common.spinning_threads_hint() is None  # one thread waits for nobody
