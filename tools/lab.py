"""
The lab: look inside your own model in the browser, live. One page per learning view (tokens,
training, a forward pass, generation, checkpoints), each a thin client of a JSON endpoint here
that calls the same backend functions the terminal tools print (tools/lib/*), so every figure on
a page is computed once, by the code the tools and the tests already use.

    python -m tools.lab                     # then open http://127.0.0.1:8001/lab
    python tools/lab.py --base-dir /tmp/run --port 8010

Why a command of its own and not a flag of scripts.chat_web: the arrows of the house point
tools/ -> nanochat/. The lab's endpoints call the tools' backends (token_inspect, attention_maps,
generation_trace, checkpoint_inspect, metrics), so they live in tools/; nanochat/web.py, the chat
server, is a library module and never imports tools/. The lab imports the server's pieces instead:
its request checking (parse_json_body, number_field, parse_sampling, RequestError), its middleware
(RequestGuard: body size, errors), and the page headers with the chat page's CSP (PAGE_HEADERS).
The lab is not an eleventh tool: it is the ten tools' page.

Pages: tools/lab_pages/*.html, plain HTML/JS/CSS with no build step and nothing fetched from
elsewhere. The shared script and style (lab.js, plot.js: a small SVG plotter, lab.css) are put
inline into each page as it is served, so the pages run under the chat page's CSP (inline script,
connect to this server only).

Every endpoint reads its input like the chat API (a 4xx naming the field). The JSON endpoints read
nothing outside the base dir: checkpoints and runs are named by the tools' address
[STAGE/]TAG[:STEP], never a path. The one other file route, /lab/guide/NAME, serves the guides the
views link to: only a name from the listing of this checkout's docs/ (NN-name.md), never a path.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json
import math
import re
import threading
from collections import OrderedDict

from nanochat.common import run_main, UserError, get_base_dir, use_base_dir, add_device_arg, int_range
from nanochat import checkpoint_manager as cm
from tools.lib import termui as ui

EXAMPLES = [
    "python -m tools.lab                                   # http://127.0.0.1:8001/lab",
    "python tools/lab.py --base-dir /tmp/nanochat_demo --port 8010",
    "python -m tools.lab --device cpu --log-level warning",
]

PAGES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab_pages")
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
# the views, in the order of the navigation bar: (page, title)
VIEWS = (("tokens", "Tokens"), ("training", "Training"), ("forward", "Inside a forward pass"),
         ("generation", "Generation"), ("checkpoints", "Checkpoints"))

# request limits (small: every request is one forward pass or a few dozen, on CPU)
MAX_TEXT_CHARS = 4000           # /api/tokens
MAX_FORWARD_TOKENS = 128        # /api/forward: a T x T heatmap per head
MAX_GENERATE_TOKENS = 64        # /api/generate: the trace is recomputed on every step of the page
MAX_TOP_N = 20
MODELS_KEPT = 2                 # models held in memory (two for the compare view)

STAGES = "|".join(cm.STAGE_DIRS)
# the tools' checkpoint address; a tag is a plain folder name (checkpoint_manager refuses '..' too)
ADDRESS_RE = re.compile(rf"(?:({STAGES})/)?([A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})(?::(\d{{1,9}}))?")
RUN_RE = re.compile(rf"(?:({STAGES})/)?([A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})")


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("-p", "--port", type=int_range(0, 65535), default=8001, help="port to listen on (default 8001)")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--base-dir", type=str, default=None,
                   help="where runs, checkpoints and the tokenizer live (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    add_device_arg(p)
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn log level (warning: no access log)")
    return p.parse_args(argv)


# -----------------------------------------------------------------------------
# reading a request's fields (the chat API's checks, plus the lab's own kinds of field)

def plain(value):
    """A value JSON can carry: tuples as lists, NaN and infinities as null (a diverged run logs them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def text_field(body, name, max_chars, default=None, allow_empty=False):
    from nanochat.web import RequestError, clean_text
    value = body.get(name)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, not {json.dumps(value)[:40]}", param=name)
    if len(value) > max_chars:
        raise RequestError(f"{name} has {len(value):,} characters; the lab takes at most {max_chars:,}", param=name)
    if not allow_empty and not value.strip():
        raise RequestError(f"{name} is empty; type some text", param=name)
    return clean_text(value)


def inside(path, base_dir, name):
    """Refuse a folder that is not inside the base dir (a symlinked tag pointing elsewhere)."""
    from nanochat.web import RequestError
    base = os.path.realpath(base_dir)
    if os.path.commonpath([os.path.realpath(path), base]) != base:
        raise RequestError(f"{name} points outside the base dir; the lab reads only {base_dir}", param=name,
                           status=403)
    return path


def address_field(body, name, base_dir):
    """A checkpoint address [STAGE/]TAG[:STEP] -> (source, folder, tag, step); 400 when it is not one
    (a path, '..', an absolute path), 404 when it names nothing under the base dir."""
    from nanochat.web import RequestError
    value = body.get(name)
    if not isinstance(value, str) or not ADDRESS_RE.fullmatch(value) or ".." in value:
        raise RequestError(f"{name} must be a checkpoint address [STAGE/]TAG[:STEP] such as base/d4 or base/d4:200 "
                           f"(never a path), not {json.dumps(value)[:60]}", param=name)
    try:
        source, cdir, tag, step = cm.resolve_address(value, "base", base_dir=base_dir)
    except UserError as e:
        raise RequestError(f"{name}: {e}", param=name, status=404) from None
    return source, inside(cdir, base_dir, name), tag, step


def run_field(body, name, base_dir):
    """A run [STAGE/]TAG -> its folder under the base dir (it may hold only metrics.jsonl so far)."""
    from nanochat.web import RequestError
    value = body.get(name)
    m = RUN_RE.fullmatch(value) if isinstance(value, str) else None
    if not m or ".." in value:
        raise RequestError(f"{name} must be a run name [STAGE/]TAG such as base/d4 (never a path), "
                           f"not {json.dumps(value)[:60]}", param=name)
    folder = cm.checkpoint_dir(m.group(1) or "base", m.group(2), base_dir)
    if not os.path.isdir(folder):
        raise RequestError(f"{name}: there is no run {value} under {base_dir}", param=name, status=404)
    return inside(folder, base_dir, name)


def list_runs(base_dir):
    """[STAGE/TAG] of every run folder under the base dir that has metrics or checkpoints."""
    runs = []
    for source, folder in cm.STAGE_DIRS.items():
        sdir = os.path.join(base_dir, folder)
        if not os.path.isdir(sdir):
            continue
        for tag in sorted(os.listdir(sdir)):
            cdir = os.path.join(sdir, tag)
            if os.path.isdir(cdir) and (os.path.exists(os.path.join(cdir, cm.METRICS_FILE)) or cm.list_steps(cdir)):
                runs.append(f"{source}/{tag}")
    return runs


# -----------------------------------------------------------------------------
# models, loaded on first use and kept (the compare view needs two at a time)

class Models:
    """The last MODELS_KEPT checkpoints used, and one lock: the endpoints run in worker threads,
    and one forward pass at a time keeps a small machine responsive."""

    def __init__(self, device):
        self.device = device
        self.lock = threading.Lock()
        self.loaded = OrderedDict()

    def get(self, cdir, step):
        """(model, tokenizer, meta) of one checkpoint; call with self.lock held."""
        key = (cdir, step)
        if key not in self.loaded:
            while len(self.loaded) >= MODELS_KEPT:
                self.loaded.popitem(last=False)
            self.loaded[key] = cm.load_model_from_dir(cdir, step, self.device, "eval")
        self.loaded.move_to_end(key)
        return self.loaded[key]


def token_record(tokenizer, info):
    return {"index": info.index, "id": info.id, "text": info.text, "shown": info.shown, "bytes": info.nbytes,
            "type": info.type, "hex": info.hex}


# -----------------------------------------------------------------------------
# the computations behind each view: plain functions of checked inputs (the endpoints call them)

def tokens_view(tokenizer, text):
    from tools.lib import token_inspect as ti
    ids = tokenizer.encode(text)
    out = {"text": text, "ids": ids, "tokens": [token_record(tokenizer, i) for i in ti.token_infos(tokenizer, ids)],
           "stats": ti.text_stats(tokenizer, text, ids)}
    try:
        name, infos = ti.reference_split(text, "cl100k")
        out["reference"] = {"available": True, "name": name, "ids": [i.id for i in infos],
                            "tokens": [token_record(None, i) for i in infos]}
    except UserError as e:
        out["reference"] = {"available": False, "name": "cl100k_base",
                            "message": f"GPT-4's split is not available offline here: {e}"}
    return out


def conversation_view(tokenizer, conversation):
    from tools.lib import token_inspect as ti
    ids, mask, stats = ti.chat_supervision(tokenizer, conversation)
    tokens = [token_record(tokenizer, i) for i in ti.token_infos(tokenizer, ids)]
    for t, m in zip(tokens, mask):
        t["supervised"] = bool(m)
    return {"conversation": conversation, "ids": ids, "mask": list(mask), "tokens": tokens, "stats": stats}


def forward_view(model, tokenizer, text, layer, head, top_k):
    from tools.lib import attention_maps as am
    from nanochat.web import RequestError
    ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    limit = min(MAX_FORWARD_TOKENS, model.config.sequence_len)
    if len(ids) > limit:
        raise RequestError(f"text is {len(ids)} tokens with BOS; the lab shows at most {limit}", param="text")
    n_layer, n_head = model.config.n_layer, model.config.n_head
    if layer >= n_layer:
        raise RequestError(f"layer is {layer}; this model has layers 0..{n_layer - 1}", param="layer")
    if head is not None and head >= n_head:
        raise RequestError(f"head is {head}; this model has heads 0..{n_head - 1}", param="head")
    probs = am.attention_probs(model, ids)
    weights = am.select_head(probs[layer], head)
    labels = am.token_labels(tokenizer, ids, width=12)
    nexts = am.next_token_predictions(model, ids, top_k)
    return {"ids": ids, "labels": labels, "n_layer": n_layer, "n_head": n_head, "layer": layer, "head": head,
            "window": model.window_sizes[layer], "weights": weights.tolist(),
            "top_attended": [am.top_attended(weights[t], top_k) for t in range(len(ids))],
            "heads": [{"layer": s.layer, "head": s.head, "scores": s.scores, "pattern": s.pattern,
                       "label": am.PATTERN_LABELS[s.pattern] if s.pattern else None}
                      for s in am.summarize_heads(probs, ids)],
            "next_tokens": [[{"id": t, "text": tokenizer.decode([t]), "prob": p} for t, p in row] for row in nexts]}


def generation_view(model, tokenizer, chat, prompt, sampling, top_n, force):
    from nanochat.engine import Engine
    from tools.lib import generation_trace as gt
    prompt_ids = gt.prompt_ids_for(tokenizer, prompt, chat)
    filters = dict(temperature=sampling["temperature"], top_k=sampling["top_k"] or None,
                   top_p=sampling["top_p"] if sampling["top_p"] < 1 else None, min_p=sampling["min_p"] or None)
    steps = gt.trace_generation(model, prompt_ids, sampling["max_tokens"], seed=sampling["seed"], top_n=top_n,
                                force=force, stop_ids=gt.stop_ids_for(tokenizer, chat),
                                engine=Engine(model, tokenizer), **filters)
    from tools.lib.token_inspect import visible
    text = lambda t: tokenizer.decode([t])
    return {"prompt_ids": prompt_ids, "chat": chat, "filters": gt.describe_filters(**filters),
            "settings": {**filters, "seed": sampling["seed"], "max_tokens": sampling["max_tokens"]},
            "steps": [{"index": s.index, "id": s.token_id, "text": text(s.token_id), "shown": visible(text(s.token_id)),
                       "prob": s.prob,
                       "raw_prob": s.raw_prob, "entropy": s.entropy, "raw_entropy": s.raw_entropy, "kept": s.kept,
                       "forced": s.forced, "tool": s.tool,
                       "alternatives": [{"id": t, "text": text(t), "shown": visible(text(t)), "prob": p}
                                        for t, p in s.alternatives]}
                      for s in steps],
            "text": tokenizer.decode([s.token_id for s in steps]), "perplexity": gt.perplexity(steps)}


def run_view(folder):
    from tools.lib import metrics as mx
    history = mx.load_run(folder)
    series = {}
    for key in ("train_loss", "val_bpb", "lr", "tokens_per_sec", "mfu"):
        xs, ys = history.series(key)
        series[key] = [[x, y] for x, y in zip(xs, ys)]
    xs, ys = history.smoothed_loss()
    series["smooth_train_loss"] = [[x, y] for x, y in zip(xs, ys)]
    return {"summary": mx.summarize(history), "series": series,
            "diagnosis": [f.__dict__ for f in mx.diagnose(history)]}


# -----------------------------------------------------------------------------
# the app

def page_html(view):
    """A page with the shared script and style put inline where it says /* include NAME */."""
    with open(os.path.join(PAGES_DIR, f"{view}.html"), encoding="utf-8") as f:
        html = f.read()

    def include(m):
        with open(os.path.join(PAGES_DIR, m.group(1)), encoding="utf-8") as f:
            return f.read()
    return re.sub(r"/\* include ([a-z_]+\.(?:js|css)) \*/", include, html)


def create_lab_app(base_dir=None, device="cpu"):
    """The FastAPI app of the lab: the pages under /lab, the JSON endpoints under /lab/api."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from nanochat.web import (RequestError, RequestGuard, PAGE_HEADERS, SamplingDefaults, error_body,
                              number_field, parse_json_body, parse_sampling)
    from nanochat.tokenizer import RustBPETokenizer
    from tools.lib import checkpoint_inspect as ci
    from tools.lib import token_inspect as ti

    base_dir = os.path.abspath(base_dir or get_base_dir())
    use_base_dir(base_dir)  # the checkpoint loader finds the tokenizer through it
    models = Models(device)
    tokenizers = {}
    app = FastAPI(title="nanochat lab", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard)

    @app.exception_handler(RequestError)
    async def request_error(request, e):
        return JSONResponse(error_body(e.message, e.param, code=e.code), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        if e.status_code == 404:
            message = f"there is no {request.method} {request.url.path} here; the lab's pages start at /lab"
        else:
            message = f"{request.method} is not allowed on {request.url.path}" if e.status_code == 405 else str(e.detail)
        return JSONResponse(error_body(message), status_code=e.status_code, headers=e.headers)

    def tokenizer():
        if "base" not in tokenizers:
            try:
                tokenizers["base"] = RustBPETokenizer.from_directory(os.path.join(base_dir, "tokenizer"))
            except (UserError, OSError):
                raise RequestError(f"no tokenizer in {base_dir}/tokenizer yet: train one with "
                                   "python -m scripts.tok_train", status=409) from None
        return tokenizers["base"]

    async def body_of(request):
        return parse_json_body(await request.body())

    async def compute(fn, *args):
        """Run a computation in a worker thread, one at a time; a backend's UserError is a 400."""
        def locked():
            with models.lock:
                try:
                    return plain(fn(*args))
                except UserError as e:
                    raise RequestError(str(e)) from None
        return JSONResponse(await run_in_threadpool(locked))

    # --- pages

    @app.get("/")
    async def root():
        return RedirectResponse("/lab")

    @app.get("/lab")
    async def index():
        return HTMLResponse(page_html("index"), headers=PAGE_HEADERS)

    for view, _ in VIEWS:
        def serve_page(view=view):
            return HTMLResponse(page_html(view), headers=PAGE_HEADERS)
        app.add_api_route(f"/lab/{view}", serve_page, methods=["GET"])

    @app.get("/lab/guide/{name}")
    async def guide(name: str):
        """A guide as plain text; only the nine docs/*.md files, by name."""
        if name not in {f for f in os.listdir(DOCS_DIR) if re.fullmatch(r"\d\d-[a-z0-9-]+\.md", f)}:
            raise RequestError(f"there is no guide {name!r}; the guides are docs/01-...md to docs/09-...md",
                               param="name", status=404)
        with open(os.path.join(DOCS_DIR, name), encoding="utf-8") as f:
            return PlainTextResponse(f.read(), headers={"X-Content-Type-Options": "nosniff"})

    # --- the JSON endpoints

    @app.get("/lab/api/info")
    async def info():
        return {"base_dir": base_dir, "device": device, "views": [{"page": v, "title": t} for v, t in VIEWS],
                "limits": {"text_chars": MAX_TEXT_CHARS, "forward_tokens": MAX_FORWARD_TOKENS,
                           "generate_tokens": MAX_GENERATE_TOKENS}}

    @app.post("/lab/api/tokens")
    async def tokens(request: Request):
        body = await body_of(request)
        text = text_field(body, "text", MAX_TEXT_CHARS, allow_empty=True)
        return await compute(tokens_view, tokenizer(), text)

    @app.post("/lab/api/conversation")
    async def conversation(request: Request):
        body = await body_of(request)
        conv = body.get("conversation")
        if conv is None:
            conv = ti.DEMO_CONVERSATION
        if not isinstance(conv, dict):
            raise RequestError("conversation must be an object {\"messages\": [{\"role\", \"content\"}, ...]}",
                               param="conversation")
        tok = tokenizer()

        def view():
            try:
                return conversation_view(tok, conv)
            except UserError as e:
                raise RequestError(str(e), param="conversation") from None
        return await compute(view)

    @app.get("/lab/api/runs")
    async def runs():
        return {"base_dir": base_dir, "runs": list_runs(base_dir)}

    @app.post("/lab/api/run")
    async def run(request: Request):
        folder = run_field(await body_of(request), "run", base_dir)

        def view():
            try:
                return run_view(folder)
            except UserError as e:
                raise RequestError(f"run: {e}", param="run", status=404) from None
        return await compute(view)

    @app.get("/lab/api/checkpoints")
    async def checkpoints():
        def view():
            return {"base_dir": base_dir,
                    "checkpoints": [ci.info_record(i) for i in ci.sort_infos(ci.scan(base_dir), "step")]}
        return await compute(view)

    @app.post("/lab/api/forward")
    async def forward(request: Request):
        body = await body_of(request)
        _, cdir, _, step = address_field(body, "checkpoint", base_dir)
        text = text_field(body, "text", MAX_TEXT_CHARS)
        layer = number_field(body, "layer", 0, 1000, 0, integer=True)
        head = number_field(body, "head", 0, 1000, None, integer=True)  # null: the average over heads
        top_k = number_field(body, "top_k", 1, MAX_TOP_N, 3, integer=True)

        def view():
            model, tok, _ = models.get(cdir, step)
            return forward_view(model, tok, text, layer, head, top_k)
        return await compute(view)

    @app.post("/lab/api/generate")
    async def generate(request: Request):
        body = await body_of(request)
        source, cdir, _, step = address_field(body, "checkpoint", base_dir)
        prompt = text_field(body, "prompt", MAX_TEXT_CHARS)
        sampling = parse_sampling(body, SamplingDefaults(temperature=1.0, top_k=0, max_tokens=8))
        if sampling["max_tokens"] > MAX_GENERATE_TOKENS:
            raise RequestError(f"max_tokens is {sampling['max_tokens']}; the lab steps through at most "
                               f"{MAX_GENERATE_TOKENS}", param="max_tokens")
        top_n = number_field(body, "top_n", 1, MAX_TOP_N, 8, integer=True)
        force = parse_force(body.get("force"), sampling["max_tokens"])

        def view():
            model, tok, _ = models.get(cdir, step)
            bad = [t for t in force.values() if t >= tok.get_vocab_size()]
            if bad:
                raise RequestError(f"force: token {bad[0]} is outside the vocabulary (0..{tok.get_vocab_size() - 1})",
                                   param="force")
            return generation_view(model, tok, source != "base", prompt, sampling, top_n, force)
        return await compute(view)

    @app.post("/lab/api/compare")
    async def compare(request: Request):
        body = await body_of(request)
        a = address_field(body, "a", base_dir)
        b = address_field(body, "b", base_dir)
        prompt = text_field(body, "prompt", MAX_TEXT_CHARS, default="The")
        max_tokens = number_field(body, "max_tokens", 1, MAX_GENERATE_TOKENS, 16, integer=True)
        return await compute(ci.compare_checkpoints, a, b, True, prompt, max_tokens, device)

    return app


def parse_force(value, max_tokens):
    """The page's branches: [{"step": i, "token": id}] -> {step: token id}."""
    from nanochat.web import RequestError
    if value is None:
        return {}
    ok = isinstance(value, list) and len(value) <= MAX_GENERATE_TOKENS and all(
        isinstance(f, dict) and set(f) == {"step", "token"}
        and all(isinstance(f[k], int) and not isinstance(f[k], bool) and f[k] >= 0 for k in ("step", "token"))
        for f in value)
    if not ok:
        raise RequestError("force must be a list of {\"step\": STEP, \"token\": TOKEN_ID} with whole numbers >= 0",
                           param="force")
    force = {f["step"]: f["token"] for f in value}
    if any(s >= max_tokens for s in force):
        raise RequestError(f"force: a step is beyond max_tokens ({max_tokens})", param="force")
    return force


def main(argv=None):
    args = parse_args(argv)
    if args.base_dir:
        if not os.path.isdir(args.base_dir):
            raise UserError(f"--base-dir {args.base_dir} is not a folder; give the folder of your runs "
                            "(the one that holds tokenizer/ and base_checkpoints/)")
        use_base_dir(args.base_dir)
    from nanochat.common import resolve_device_type
    from nanochat.web import check_port_free
    device = resolve_device_type(args.device_type)
    check_port_free(args.host, args.port)
    app = create_lab_app(get_base_dir(), device)
    print(f"the lab reads {get_base_dir()} on {device}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}, beyond this machine: anyone who can reach it can read your runs "
              "and run your models (the lab has no API key)", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}/lab in a browser  (Ctrl+C stops)")
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    run_main(main)
