"""LR finder: the range test's suggestion lands in a toy problem's known good range, it stops on
divergence, the real-model test runs on CPU in under 2 minutes, and schedules are classified."""

import os
import sys
import json
import math
import subprocess

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.training import lr_multiplier
from tools.lib.metrics import load_run
from tools.lib.lr_finder import range_test, classify_schedule, analyze_run, flags_for, spread_summary, LR_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "lr_finder.py")


def linear_regression(seed, d=20, batch=32):
    """SGD on noisy least squares with whitened inputs: curvature ~1, so SGD diverges near lr 2."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=g)
    w = torch.zeros(d, requires_grad=True)

    def step(lr):
        X = torch.randn(batch, d, generator=g)
        y = X @ w_true + 0.01 * torch.randn(batch, generator=g)
        loss = 0.5 * ((X @ w - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w.sub_(lr * w.grad)
            w.grad = None
        return loss.item()
    return step


def good_range():
    """LRs that, held constant for 30 steps, cut the loss to under a quarter without diverging."""
    grid = [10 ** (k / 8) for k in range(-24, 5)]  # 1e-3 .. ~3.2
    good = []
    for lr in grid:
        step = linear_regression(0)
        losses = [step(lr) for _ in range(30)]
        if math.isfinite(losses[-1]) and losses[-1] < 0.25 * losses[0]:
            good.append(lr)
    return min(good), max(good)


def test_range_test_suggestion_falls_in_the_known_good_range_of_a_toy_problem():
    lo, hi = good_range()
    assert 0.01 < lo < 0.1 and 0.5 < hi < 2.0  # the grid itself is sane
    curves = [range_test(linear_regression(seed), start=1e-4, end=10, num_steps=100, seed=seed) for seed in range(3)]
    for method in ("steepest", "valley"):
        g = spread_summary(curves, method)["geomean"]
        assert lo <= g <= hi, (method, g, lo, hi)
    for c in curves:
        assert c.stopped_early and c.stop_reason.startswith("diverged")
        assert len(c.losses) < 100 and c.smoothed[-1] > 4 * min(c.smoothed)


def test_range_test_stops_at_a_non_finite_loss():
    losses = iter([5.0] * 10 + [float("nan")] + [1.0] * 100)
    curve = range_test(lambda m: next(losses), start=0.1, end=10, num_steps=50)
    assert curve.stop_reason == "non-finite loss" and len(curve.losses) == 10


def test_flags_translate_the_multiplier():
    assert flags_for(0.5, {"matrix_lr": 0.02, "embedding_lr": 0.2}) == {"--matrix-lr": 0.01, "--embedding-lr": 0.1}


def write_run(folder, lrs):
    folder.mkdir(parents=True)
    for i, lr in enumerate(lrs):
        cm.append_metrics(str(folder), {"step": i + 1, "tokens": 512 * (i + 1), "train_loss": 6.0 - 0.01 * i, "lr": lr,
                                        "lrs": {"matrix": 0.02 * lr}})
    return folder


@pytest.mark.parametrize("kind,warmup,warmdown", [("constant", 0.0, 0.0), ("decay", 0.0, 0.4), ("warmup", 0.2, 0.0),
                                                  ("warmup_decay", 0.1, 0.3)])
def test_schedule_classified_from_metrics_file(tmp_path, kind, warmup, warmdown):
    lrs = [lr_multiplier(i, 50, warmup, warmdown, 0.0) for i in range(50)]
    run = write_run(tmp_path / kind, lrs)
    assert classify_schedule(lrs)["kind"] == kind
    assert analyze_run(load_run(str(run)))["schedule"] == kind


def test_cyclic_and_cosine_schedules(tmp_path):
    cyclic = [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]
    assert classify_schedule(cyclic)["kind"] == "custom"
    cosine = [0.5 * (1 + math.cos(math.pi * i / 40)) for i in range(40)]
    assert classify_schedule(cosine)["kind"] == "decay"
    r = subprocess.run([sys.executable, TOOL, str(write_run(tmp_path / "cyc", cyclic * 3)), "--json"], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schedule"] == "custom"


def test_analysis_of_the_tiny_run_and_its_plot(tiny_base_dir, tmp_path):
    out = tmp_path / "lr.png"
    r = subprocess.run([sys.executable, TOOL, "d2", "--plot", "--output", str(out)], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, NO_COLOR="1"))
    assert r.returncode == 0, r.stderr
    assert "decay" in r.stdout and "Recommendations" in r.stdout  # 12 steps with a 40% warmdown
    assert out.exists() and out.stat().st_size > 10_000


@pytest.mark.slow
def test_range_test_on_the_real_model_runs_on_cpu_in_under_two_minutes(tiny_base_dir, tmp_path):
    out = tmp_path / "rt.png"
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, TOOL, "--range-test", "--json", "--plot", "--output", str(out)], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["seconds"] < 120
    assert len(res["curves"]) == 3
    m = res["suggested_multiplier"]
    assert 0.01 < m < 100
    assert res["flags"]["--matrix-lr"] == pytest.approx(m * LR_FLAGS["matrix_lr"])
    assert res["flags"]["--embedding-lr"] == pytest.approx(m * LR_FLAGS["embedding_lr"])
    assert res["flags"]["--unembedding-lr"] == pytest.approx(m * LR_FLAGS["unembedding_lr"])
    # the loss came down before the suggestion: the suggestion is inside the descent, below the minimum
    for c in res["curves"]:
        assert c["smoothed"][-1] < c["smoothed"][0] or c["stop_reason"] != "reached the end"
        assert c["valley"] < c["best_multiplier"]
    assert out.exists()


@pytest.mark.slow
def test_range_test_on_the_real_model_stops_early_when_loss_blows_up(tiny_base_dir):
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, TOOL, "--range-test", "--json", "--seeds", "1", "--num-steps", "60",
                        "--diverge-factor", "1.1"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    curve = json.loads(r.stdout)["curves"][0]
    assert curve["stop_reason"].startswith("diverged") and len(curve["losses"]) < 60
    assert curve["smoothed"][-1] > 1.1 * min(curve["smoothed"])
