"""
Benchmark the chat server: time to first token and tokens/s per stream at 1, 8 and 32 concurrent
streaming clients, all measured in one run against one server (these machines are noisy).

It starts `python -m scripts.chat_web` on a free loopback port, by default on a tiny model trained
here in a temporary folder (the d2 model of the tests: a few seconds on a CPU), or on the
checkpoints under --base-dir. Each client sends --requests streaming requests one after the other
to /v1/chat/completions with max_tokens --max-tokens; the server has one worker on CPU (one per
GPU), so more clients mostly means more waiting: watch TTFT grow while per-stream speed holds.

Figures per concurrency level:
- TTFT: seconds from sending the request to the first text chunk (queueing included), p50 and p90.
- tok/s per stream: completion tokens / seconds from the first text chunk to the end of the stream.
- aggregate tok/s: all completion tokens / wall time of the level.

Examples:
    python -m bench.bench_chat_web
    python -m bench.bench_chat_web --clients 1,8,32 --requests 4 --max-tokens 128
    python -m bench.bench_chat_web --base-dir ~/.cache/nanochat -i sft
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from nanochat.common import UserError, run_main, repo_root

TINY_TOKENIZER_ARGS = ["--vocab-size", "512", "--max-chars", "300000"]
TINY_MODEL_ARGS = ["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
                   "--num-iterations", "12", "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1",
                   "--save-every", "-1", "--window-pattern", "L", "--head-dim", "64"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=str, default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=3, help="streaming requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (the tiny model never stops early)")
    p.add_argument("--base-dir", type=str, default="", help="serve checkpoints from here (default: train a tiny model)")
    p.add_argument("-i", "--source", type=str, default="base", help="checkpoint stage to serve (with --base-dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (OMP_NUM_THREADS)")
    p.add_argument("--device-type", type=str, default="cpu", help="the server's device: cpu|cuda|mps")
    return p.parse_args(argv)


def make_tiny_model(base_dir):
    """Tokenizer + 12-step d2 base model in base_dir, in a subprocess (quiet, ~10 s on a CPU)."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=base_dir, OMP_NUM_THREADS="1")
    for module, args in (("scripts.tok_train", TINY_TOKENIZER_ARGS), ("scripts.base_train", TINY_MODEL_ARGS)):
        r = subprocess.run([sys.executable, "-m", module, *args], cwd=repo_root(), env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"making the tiny model failed in {module}: {r.stderr.strip().splitlines()[-1:]}")


def start_server(base_dir, args, max_clients):
    import httpx
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, NANOCHAT_BASE_DIR=base_dir, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "scripts.chat_web", "-i", args.source, "-p", str(port), "--log-level", "warning",
           "--max-queue", str(max_clients), "--device-type", args.device_type]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise UserError(f"the server did not start: {log.read().strip()[-500:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise UserError("the server did not answer /health within 120 s")
        time.sleep(0.2)


async def one_stream(http, url, i, max_tokens):
    """(ttft, tokens, decode seconds) of one streaming request."""
    body = {"messages": [{"role": "user", "content": f"Tell me a story, number {i}."}], "max_tokens": max_tokens,
            "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise UserError(f"the server answered {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, tokens, end - first


async def run_level(url, clients, requests, max_tokens):
    import httpx
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    results = []

    async def client(c, http):
        for k in range(requests):
            results.append(await one_stream(http, url, c * 1000 + k, max_tokens))

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv=None):
    args = parse_args(argv)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise UserError(f"--clients {args.clients!r}: give positive integers like 1,8,32")
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = os.path.expanduser(args.base_dir) if args.base_dir else tmp
        if not args.base_dir:
            print("training a tiny d2 model for the benchmark ...", flush=True)
            make_tiny_model(base_dir)
        url, proc = start_server(base_dir, args, max(levels))
        try:
            import httpx
            info = httpx.get(url + "/stats").json()
            print(f"server: {info['model']} on {info['workers'][0]['device']}, {info['num_workers']} worker(s), "
                  f"torch threads {args.threads}; {args.requests} requests x max_tokens {args.max_tokens} per client")
            asyncio.run(run_level(url, 1, 1, 8))  # warm up
            print(f"{'clients':>7} | {'TTFT p50':>9} | {'TTFT p90':>9} | {'tok/s/stream p50':>16} | {'aggregate tok/s':>15}")
            for n in levels:
                results, wall = asyncio.run(run_level(url, n, args.requests, args.max_tokens))
                ttft = [r[0] for r in results]
                speed = [r[1] / r[2] for r in results if r[2] > 0]
                total = sum(r[1] for r in results)
                print(f"{n:>7} | {pct(ttft, 0.5) * 1000:>7.1f}ms | {pct(ttft, 0.9) * 1000:>7.1f}ms | "
                      f"{statistics.median(speed):>16,.0f} | {total / wall:>15,.0f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    run_main(main)
