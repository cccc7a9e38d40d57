"""
Thread settings under load: the demo model's training step (bench_train) with nothing else
running, then beside a busy neighbour (one process spinning on a core, as another job on a shared
machine would), for each candidate setting of the OpenMP threads. Prints tokens/s and the
slowdown loaded / quiet, each setting measured in the same run.

    python -m bench.bench_threads                       # default, passive, 1 thread
    python -m bench.bench_threads --settings default,passive --steps 2

Why it matters: PyTorch's CPU kernels run on OpenMP threads (libgomp in the pip wheels), which
by default *spin* for a while at every barrier instead of sleeping. With as many threads as cores
and one core taken by someone else, each parallel region waits for a thread that is not running,
and the spinning thread steals time from the one that is.

Each run is a fresh process (OpenMP reads its environment once, when torch is imported).
"""

import os
import re
import sys
import time
import argparse
import subprocess

# name -> environment for the training process ({n}: the number of cores)
SETTINGS = {
    "default": {"OMP_NUM_THREADS": "{n}"},                                # what the demo did before
    "passive": {"OMP_NUM_THREADS": "{n}", "OMP_WAIT_POLICY": "PASSIVE"},  # waiting threads sleep
    "spin0": {"OMP_NUM_THREADS": "{n}", "GOMP_SPINCOUNT": "0"},          # libgomp: no spinning at all
    "n-1": {"OMP_NUM_THREADS": "{n1}"},                                   # leave a core to the others
    "1": {"OMP_NUM_THREADS": "1"},
}

NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def run_train_step(env_extra, steps, extra_args):
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-m", "bench.bench_train", "--steps", str(steps), "--no-peak", *extra_args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"training: ([\d,]+) tokens/s", out).group(1).replace(",", ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=str, default="default,passive,1", help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per run (after 2 warm-up steps)")
    p.add_argument("--train-args", type=str, default="", help="more bench_train flags, e.g. '--depth 2'")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}: choose from {', '.join(SETTINGS)}")
    n = os.cpu_count() or 1
    envs = {s: {k: v.format(n=n, n1=max(1, n - 1)) for k, v in SETTINGS[s].items()} for s in names}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n} cores, load average {load:.1f} before the runs | demo training step, {args.steps} timed steps per run")
    quiet, loaded = {}, {}
    for s in names:  # quiet and loaded back to back, so both see the same background
        quiet[s] = run_train_step(envs[s], args.steps, args.train_args.split())
        neighbour = subprocess.Popen(NEIGHBOUR)
        try:
            time.sleep(0.5)
            loaded[s] = run_train_step(envs[s], args.steps, args.train_args.split())
        finally:
            neighbour.kill()
            neighbour.wait()
    print(f"\n{'setting':<9} {'environment':<48} {'quiet tok/s':>11} {'loaded tok/s':>12} {'loaded/quiet':>12}")
    for s in names:
        env = " ".join(f"{k}={v}" for k, v in envs[s].items())
        print(f"{s:<9} {env:<48} {quiet[s]:11,.0f} {loaded[s]:12,.0f} {loaded[s] / quiet[s]:11.2f}x")


if __name__ == "__main__":
    main()
