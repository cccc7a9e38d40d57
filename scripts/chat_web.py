"""
Chat with a trained model in the browser, or through any OpenAI client, over HTTP.

Pipeline position: the last stage; serves a checkpoint of any stage (base, mid, sft, rl).
The server logic lives in nanochat/web.py and the page in nanochat/ui.html; this script parses the
flags, loads one model copy per GPU (one on CPU) and runs uvicorn.

Endpoints:
    GET  /                      the chat page
    GET  /health                ready? how many workers, how many free
    GET  /stats                 per-worker device, busy flag, requests served, tokens generated; defaults;
                                example prompts of the tasks the model trained on (the page's empty state)
    POST /v1/chat/completions   the OpenAI Chat Completions API (stream or not, logprobs); top_k as an extra field
    POST /v1/completions        the OpenAI (legacy) Completions API: raw prompts, echo + logprobs for scoring
    GET  /v1/models[/ID]        the one model served
    POST /api/chat              the page's own stream: {"token": ..., "part": ...} events, then {"done": true}
    POST /tokenize, /detokenize, GET /tokenizer_info    the tokenizer, as vLLM serves it (for lm-eval)

Examples:
    python -m scripts.chat_web                          # the best sft model, http://127.0.0.1:8000
    python -m scripts.chat_web -i base -t 0.8 -k 50     # talk to the base model (it just continues text)
    python -m scripts.chat_web -i sft -g d20 -s 800 -m 1024
    python -m scripts.chat_web -n 8 --host 0.0.0.0 --api-key "$KEY"   # 8 GPUs, reachable from other machines
"""

import argparse
import ipaddress
import os
import sys

from nanochat.common import run_main, add_device_arg, ArgumentParser, int_range, float_range, nonneg_int
from nanochat.checkpoint_manager import add_checkpoint_args, checkpoint_from_args
from nanochat.web import (MAX_TOKENS_RANGE, TEMPERATURE_RANGE, TOP_K_RANGE, SamplingDefaults, WorkerPool, create_app,
                          load_workers, check_port_free)
from nanochat_tasks.examples import example_prompts


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.chat_web", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, "sft")
    p.add_argument("-n", "--num-gpus", type=int_range(1, 1024), default=None,
                   help="workers, one model copy per GPU (default: every visible GPU; one on CPU)")
    p.add_argument("-t", "--temperature", type=float_range(*TEMPERATURE_RANGE), default=0.6,
                   help="default temperature (0 = greedy)")
    p.add_argument("-k", "--top-k", type=int_range(*TOP_K_RANGE), default=50, help="default top-k (0 = off)")
    p.add_argument("-m", "--max-tokens", type=int_range(*MAX_TOKENS_RANGE), default=512,
                   help=f"default reply length in tokens ({MAX_TOKENS_RANGE[0]}-{MAX_TOKENS_RANGE[1]})")
    p.add_argument("-p", "--port", type=int_range(0, 65535), default=8000, help="port to listen on")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--api-key", type=str, default=os.environ.get("NANOCHAT_API_KEY") or None,
                   help="require this key (\"Authorization: Bearer KEY\") of every request but the page and /health "
                        "(default: $NANOCHAT_API_KEY, which keeps it out of the process list; none: no key)")
    p.add_argument("--cors-origin", type=str, action="append", default=[], metavar="ORIGIN",
                   help="let pages from this web origin call the API (e.g. http://localhost:3000; repeatable; "
                        "default: none)")
    p.add_argument("--max-queue", type=nonneg_int, default=None,
                   help="requests that may wait for a busy worker before new ones get 503 (default: 8 per worker)")
    add_device_arg(p)
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug", "trace"), default="info",
                   help="uvicorn log level (warning: no access log)")
    return p.parse_args(argv)


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def main(argv=None):
    args = parse_args(argv)
    defaults = SamplingDefaults(args.temperature, args.top_k, args.max_tokens)
    defaults.check()
    check_port_free(args.host, args.port)  # before the slow model loading, not after
    source, _, tag, step = checkpoint_from_args(args)
    workers, model_name, _ = load_workers(source, args.device_type, args.num_gpus, tag, step)
    max_queue = args.max_queue if args.max_queue is not None else 8 * len(workers)
    pool = WorkerPool(workers, max_queue)
    app = create_app(pool, model_name, defaults, api_key=args.api_key, cors_origins=args.cors_origin,
                     examples=example_prompts())
    devices = ", ".join(str(w.device) for w in workers)
    print(f"serving {model_name} on {devices} ({len(workers)} worker(s), queue {max_queue})")
    if not is_loopback(args.host) and not args.api_key:
        print(f"warning: listening on {args.host}, beyond this machine, without --api-key: anyone who can reach "
              "it can use the model", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}/ in a browser  (Ctrl+C stops)")

    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    run_main(main)
