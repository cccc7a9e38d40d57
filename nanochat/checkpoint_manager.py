"""
Saving, finding and loading checkpoints, and the per-step metrics log.

Pipeline position: every training stage saves here; every stage after it, the chat front ends and
the learning tools load from here. The file layout is upstream nanochat's, so checkpoints from it
load too:

    $NANOCHAT_BASE_DIR/<stage>_checkpoints/<model_tag>/
        model_<step:06d>.pt             the model's state dict
        meta_<step:06d>.json            config, CLI arguments, loop state, ...
        optim_<step:06d>_rank<r>.pt     optimizer (+ dataloader / RNG) state of rank r (optional)
        metrics.jsonl                   one JSON object per training step (this project)

Every write goes to a temporary name first and is renamed into place, so a crash mid-save never
leaves a file that looks whole but is not; a save that fails (disk full, no permission) removes its
temporary files and leaves the earlier checkpoints as they were.

Files someone else made are untrusted: every .pt file loads with torch.load(weights_only=True)
(tensors, numbers, strings and containers only; nothing a file names gets called), and each meta
records the sha256 of the files it describes, so a damaged file is named instead of half-loaded.
Each meta also records its run's `run_id`; a fresh run refuses a folder that holds another run's
checkpoints (check_fresh_run_dir), so "the last checkpoint" of a folder is always one run's.
"""

import os
import re
import json
import uuid
import hashlib

import torch

from nanochat.common import get_base_dir, use_base_dir, UserError, print0, load_torch_file, nonneg_int, \
    files_written_together, write_text_atomically

STAGE_DIRS = {
    "base": "base_checkpoints",
    "mid": "mid_checkpoints",
    "sft": "chatsft_checkpoints",
    "rl": "chatrl_checkpoints",
}

_MODEL_RE = re.compile(r"^model_(\d+)\.pt$")


# -----------------------------------------------------------------------------
# paths and discovery

def stage_dir(source, base_dir=None):
    """Folder of one stage ('base', 'mid', 'sft', 'rl')."""
    if source not in STAGE_DIRS:
        raise UserError(f"unknown source '{source}': use one of {', '.join(STAGE_DIRS)}")
    return os.path.join(base_dir or get_base_dir(), STAGE_DIRS[source])


def checkpoint_dir(source, model_tag, base_dir=None):
    """Folder of one run: <base dir>/<stage>_checkpoints/<model_tag>. A tag is a plain folder name,
    so no tag can point outside the base dir."""
    if not model_tag or model_tag in (".", "..") or "/" in model_tag or os.sep in model_tag or "\\" in model_tag:
        raise UserError(f"model tag {model_tag!r} must be a plain folder name (like d4 or my_run), "
                        f"without '/' or '..'")
    return os.path.join(stage_dir(source, base_dir), model_tag)


def list_steps(ckpt_dir):
    """Sorted steps that have a model file in this folder."""
    if not os.path.isdir(ckpt_dir):
        return []
    steps = []
    for name in os.listdir(ckpt_dir):
        m = _MODEL_RE.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def list_complete_steps(ckpt_dir):
    """Steps with both a model file and a meta file that parses (the optimizer is optional)."""
    good = []
    for step in list_steps(ckpt_dir):
        try:
            read_meta(ckpt_dir, step)
        except UserError:
            continue
        good.append(step)
    return good


def find_last_step(ckpt_dir):
    """The largest step with a complete checkpoint (model + readable meta)."""
    steps = list_complete_steps(ckpt_dir)
    if not steps:
        raise UserError(f"no complete checkpoint (model_*.pt + meta_*.json) in {ckpt_dir}")
    return steps[-1]


def list_model_tags(stage_path):
    if not os.path.isdir(stage_path):
        return []
    return sorted(d for d in os.listdir(stage_path)
                  if os.path.isdir(os.path.join(stage_path, d)) and list_steps(os.path.join(stage_path, d)))


def find_largest_model(stage_path):
    """The model tag to load by default: the deepest d<N> tag, else the most recently modified."""
    tags = list_model_tags(stage_path)
    if not tags:
        raise UserError(f"no checkpoints in {stage_path}; train this stage first")
    depth_tags = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(stage_path, t)))


def list_checkpoints(base_dir=None):
    """Every (source, model_tag, step, folder) found under the base dir, for browsers and tools."""
    found = []
    for source in STAGE_DIRS:
        sdir = stage_dir(source, base_dir)
        for tag in list_model_tags(sdir):
            cdir = os.path.join(sdir, tag)
            for step in list_steps(cdir):
                found.append((source, tag, step, cdir))
    return found


def model_path(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"model_{step:06d}.pt")


def meta_path(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"meta_{step:06d}.json")


def optim_path(ckpt_dir, step, rank=0):
    return os.path.join(ckpt_dir, f"optim_{step:06d}_rank{rank:d}.pt")


# -----------------------------------------------------------------------------
# saving

def sha256_of(path):
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def new_run_id():
    return uuid.uuid4().hex[:12]


def run_id_before(ckpt_dir, step):
    """The run_id of the last complete checkpoint before `step` in this folder, or a new one.

    A run keeps its id across resumes because a resumed run saves after the checkpoint it resumed
    from; a fresh run finds no earlier checkpoint (check_fresh_run_dir saw to that) and starts one."""
    earlier = [s for s in list_complete_steps(ckpt_dir) if s < step]
    return (read_meta(ckpt_dir, earlier[-1]).get("run_id") if earlier else None) or new_run_id()


class _WriteRecorder:
    """The file torch.save writes through, remembering the OSError of a failed write: torch itself
    reports one only as a RuntimeError ('unexpected pos ...') that no longer says why."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _torch_save(state, path):
    """torch.save to `path`, synced to disk; a failed write raises its OSError (ENOSPC, ...)."""
    with open(path, "wb") as f:
        out = _WriteRecorder(f)
        try:
            torch.save(state, out)
        except RuntimeError as e:
            if out.error is None:
                raise
            raise out.error from e
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir, step, model_state, optim_state, meta, rank=0):
    """Save one checkpoint. Rank 0 writes model + meta; every rank writes its optimizer shard.

    Every file is first written to a temporary name, then all are renamed into place, the meta
    last: a checkpoint only counts as complete (list_complete_steps) once its meta exists, so a
    crash leaves no fake checkpoint, and a save that fails part way (disk full, no permission)
    removes what it wrote and leaves every earlier file, an older save of this step included, as it
    was. Rank 0 adds to the meta its run's `run_id` and the sha256 of the files it wrote."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        with files_written_together() as new:
            written = {}  # final path: temporary path
            for state, path in ((optim_state, optim_path(ckpt_dir, step, rank)),
                                (model_state if rank == 0 else None, model_path(ckpt_dir, step))):
                if state is not None:
                    written[path] = new(path)
                    _torch_save(state, written[path])
            if rank == 0:
                meta = dict(meta, run_id=meta.get("run_id") or run_id_before(ckpt_dir, step),
                            sha256={os.path.basename(path): sha256_of(tmp) for path, tmp in written.items()})
                path = meta_path(ckpt_dir, step)
                with open(new(path), "w", encoding="utf-8") as f:
                    f.write(json.dumps(meta, indent=2, default=str))
                    f.flush()
                    os.fsync(f.fileno())
                if os.path.exists(path):
                    os.remove(path)  # an older save of this step stops counting until the new one is whole
    except OSError as e:
        raise UserError(f"cannot save step {step} in {ckpt_dir} ({e.strerror or e}); nothing of this save was kept and the "
                        f"earlier checkpoints are as they were: free some disk space or fix the folder's "
                        f"permissions, then resume from the last checkpoint") from e


def check_fresh_run_dir(ckpt_dir):
    """Refuse to start a fresh run (no --resume-from-step) in a folder that holds a complete
    checkpoint: its steps would mix with the new run's, and "the last checkpoint" would be
    whichever run saved last. Leftovers of a run that never completed a checkpoint are no
    checkpoint (list_complete_steps skips them), so they do not stop a fresh run."""
    steps = list_complete_steps(ckpt_dir)
    if steps:
        raise UserError(f"{ckpt_dir} already holds the checkpoints of another run (last step {steps[-1]}): "
                        f"continue it with --resume-from-step {steps[-1]}, or start the new run under another "
                        f"--model-tag, or move that folder away first")


# -----------------------------------------------------------------------------
# loading without running code

def verify_checksum(path, meta):
    """Check a file against the sha256 its meta recorded when it was saved (upstream metas record
    none: then there is nothing to check)."""
    recorded = meta.get("sha256")
    expected = recorded.get(os.path.basename(path)) if isinstance(recorded, dict) else None
    if expected is not None and sha256_of(path) != expected:
        raise UserError(f"{path} is damaged: its sha256 is not the one its meta recorded when it was saved; "
                        f"copy it again or pick another --step")


# -----------------------------------------------------------------------------
# reading

def read_meta(ckpt_dir, step):
    """The meta dict of one step. Missing or corrupt files become a UserError naming the file."""
    path = meta_path(ckpt_dir, step)
    if not os.path.exists(path):
        raise UserError(f"missing meta file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt meta file {path} ({e.__class__.__name__}); delete it or pick another --step")
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise UserError(f"meta file {path} has no model_config; it is not a nanochat checkpoint meta")
    if not isinstance(meta["model_config"], dict):
        raise UserError(f"meta file {path} is damaged: its model_config is a {type(meta['model_config']).__name__}, "
                        f"not a JSON object")
    return meta


def load_checkpoint(ckpt_dir, step, device="cpu", load_optimizer=False, rank=0):
    """Returns (model_state, optim_state or None, meta)."""
    path = model_path(ckpt_dir, step)
    if not os.path.exists(path):
        steps = list_steps(ckpt_dir)
        hint = f"available steps: {', '.join(map(str, steps))}" if steps else "the folder has no checkpoints"
        raise UserError(f"no checkpoint at step {step} in {ckpt_dir} ({hint})")
    meta = read_meta(ckpt_dir, step)
    verify_checksum(path, meta)
    model_state = load_torch_file(path, device)
    optim_state = None
    if load_optimizer:
        opath = optim_path(ckpt_dir, step, rank)
        if not os.path.exists(opath):
            raise UserError(f"missing optimizer state {opath}: this checkpoint cannot be resumed exactly")
        verify_checksum(opath, meta)
        optim_state = load_torch_file(opath, device)
    return model_state, optim_state, meta


def clean_state_dict(state):
    """Strip the '_orig_mod.' prefix that torch.compile adds to parameter names."""
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


def detect_model_config(model_config, shapes):
    """The GPTConfig of a checkpoint from its meta's model_config and its weights' shapes
    ({name: shape}, names without '_orig_mod.').

    This project's metas record every GPTConfig option. Upstream nanochat's record only the seven
    shape fields, so the upstream pieces are read off the weights: smear_gate/smear_lambda mean
    smear, backout_lambda backout, and the value gates' width their channels. A checkpoint with
    smear is upstream's architecture since March 2026 (checked at commit 92d63d4), whose other
    changes leave no weights to see (gate range 3, q/k x1.2, rotary base 100000, its windows), so
    it gets gpt.UPSTREAM_ARCH. Shapes that no supported version has are a UserError naming them."""
    from nanochat.gpt import GPTConfig, UPSTREAM_ARCH, has_value_embedding
    if not isinstance(model_config, dict):
        raise UserError(f"model config must be a JSON object, not {type(model_config).__name__}")
    cfg = dict(model_config)
    seen = {"smear": "smear_lambda" in shapes or "smear_gate.weight" in shapes,
            "backout": "backout_lambda" in shapes}
    gates = {shape[-1] for name, shape in shapes.items() if name.endswith(".attn.ve_gate.weight")}
    if len(gates) == 1:
        seen["ve_gate_channels"] = gates.pop()
    if seen["smear"]:
        seen = {**UPSTREAM_ARCH, **seen}
    elif seen.get("ve_gate_channels", 32) != 32:
        raise UserError(f"the weights have value-embedding gates of {seen['ve_gate_channels']} channels but no smear: "
                        f"upstream nanochat between 2026-03-09 and 2026-03-14 made these, and that version is not "
                        f"supported (upstream checkpoints since commit a825e63, checked at 92d63d4, are)")
    for key, value in seen.items():
        cfg.setdefault(key, value)  # what the meta records wins; the weights' check is load_state_dict's
    config = GPTConfig.from_dict(cfg)
    ve_layers = sorted(int(name.split(".")[1]) for name in shapes if re.fullmatch(r"value_embeds\.\d+\.weight", name))
    rule = [i for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)]
    if ve_layers and ve_layers != rule:
        raise UserError(f"the weights have value embeddings on layers {ve_layers}, but this model puts them on "
                        f"layers {rule} (alternating, the last one included); this checkpoint's version is not supported")
    return config


def checkpoint_model_config(ckpt_dir, step):
    """detect_model_config of a saved checkpoint, for tools that need its model but not its weights:
    the model file is memory-mapped, so only its names and shapes are read."""
    meta = read_meta(ckpt_dir, step)
    try:
        state = torch.load(model_path(ckpt_dir, step), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, damaged or not a zip file: say so the usual way
        state = load_torch_file(model_path(ckpt_dir, step))
    return detect_model_config(meta["model_config"], {k: tuple(v.shape) for k, v in clean_state_dict(state).items()})


def load_model_from_dir(ckpt_dir, step, device, phase="eval"):
    """Rebuild the model of one checkpoint and the tokenizer. Returns (model, tokenizer, meta).

    The model's options (upstream nanochat's smear, backout, ...) come from detect_model_config."""
    from nanochat.gpt import GPT
    from nanochat.tokenizer import get_tokenizer
    model_state, _, meta = load_checkpoint(ckpt_dir, step, device)
    model_state = clean_state_dict(model_state)
    config = detect_model_config(meta["model_config"], {k: tuple(v.shape) for k, v in model_state.items()})
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_rotary()  # the weights come from the checkpoint; only the rotary tables are computed
    if torch.device(device).type in ("cpu", "mps"):
        # upstream GPU checkpoints may hold bf16 weights; CPUs and MPS run in fp32
        model_state = {k: v.float() if v.is_floating_point() else v for k, v in model_state.items()}
    try:
        model.load_state_dict(model_state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"weights in {model_path(ckpt_dir, step)} do not match its meta config ({first})")
    model.train(phase == "train")
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model expects "
                        f"{config.vocab_size}; was the tokenizer retrained after this model?")
    return model, tokenizer, meta


# -----------------------------------------------------------------------------
# naming a checkpoint: one address and one rule for every script and tool
#
# A checkpoint is (stage, model tag, step) under a base dir. On a command line that is
#     --source/-i STAGE   --model-tag/-g TAG   --step/-s STEP   --base-dir DIR
# or, where a tool takes one word for it, [STAGE/]TAG[:STEP]: d4, sft/d4, d4:200, sft/d4:200.
# The rule: a stage not given is the command's default stage (its --help says which); a tag not
# given is the largest model of that stage; a step not given is its last complete checkpoint.

def add_checkpoint_args(parser, default_source, short=True):
    """The address flags, the same in every command that reads a checkpoint. `short` adds the
    pipeline's short forms -i/-g/-s (off where a tool uses -i for --interactive)."""
    def flags(letter, name):
        return (f"-{letter}", name) if short else (name,)
    parser.add_argument(*flags("i", "--source"), choices=list(STAGE_DIRS), default=default_source,
                        help=f"stage to read: base|mid|sft|rl (default {default_source})")
    parser.add_argument(*flags("g", "--model-tag"), type=str, default=None,
                        help="model tag, e.g. d4 (default: the largest model of the stage)")
    parser.add_argument(*flags("s", "--step"), "--model-step", dest="step", type=nonneg_int, default=None,
                        help="checkpoint step (default: the last complete one)")
    parser.add_argument("--base-dir", type=str, default=None,
                        help="where checkpoints and the tokenizer live (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")


def parse_address(name):
    """'sft/d4:200' -> ('sft', 'd4', 200); the stage and the step may be None."""
    m = re.fullmatch(r"(?:(\w+)/)?([^/:]+)(?::(\d+))?", str(name).strip())
    if not m:
        raise UserError(f"cannot read the checkpoint name '{name}': use TAG, STAGE/TAG or TAG:STEP (e.g. d4, sft/d4:200)")
    source, tag, step = m.group(1), m.group(2), m.group(3)
    if source is not None and source not in STAGE_DIRS:
        raise UserError(f"unknown stage '{source}' in '{name}': use one of {', '.join(STAGE_DIRS)}")
    return source, tag, (int(step) if step is not None else None)


def resolve_checkpoint(source, model_tag=None, step=None, base_dir=None):
    """(folder, model_tag, step) of one checkpoint, by the rule above. Unknown stages, tags and
    steps are a UserError that lists what exists."""
    sdir = stage_dir(source, base_dir)
    if model_tag is None:
        model_tag = find_largest_model(sdir)
    cdir = checkpoint_dir(source, model_tag, base_dir)
    if not list_steps(cdir):
        elsewhere = [s for s in STAGE_DIRS if s != source and list_steps(checkpoint_dir(s, model_tag, base_dir))]
        tags = list_model_tags(sdir)
        hint = (f"it exists in {', '.join(elsewhere)}: say e.g. --source {elsewhere[0]} or {elsewhere[0]}/{model_tag}"
                if elsewhere else f"{source} has: {', '.join(tags)}" if tags else f"stage {source} has no checkpoints yet")
        raise UserError(f"unknown model tag '{model_tag}' in stage {source} ({hint})")
    if step is None:
        step = find_last_step(cdir)
    elif step not in list_steps(cdir):
        raise UserError(f"no step {step} for {source}/{model_tag} (steps: {', '.join(map(str, list_steps(cdir)))})")
    return cdir, model_tag, step


def resolve_address(name, default_source, step=None, base_dir=None):
    """(source, folder, model_tag, step) for one word [STAGE/]TAG[:STEP]; `step` is used when the word has none."""
    source, tag, name_step = parse_address(name)
    source = source or default_source
    cdir, tag, step = resolve_checkpoint(source, tag, name_step if name_step is not None else step, base_dir)
    return source, cdir, tag, step


def checkpoint_from_args(args):
    """(source, folder, model_tag, step) from the flags of add_checkpoint_args (applying --base-dir)."""
    if args.base_dir:
        use_base_dir(args.base_dir)
    cdir, tag, step = resolve_checkpoint(args.source, args.model_tag, args.step)
    return args.source, cdir, tag, step


def run_dir_from_args(args, name=None):
    """The run folder of a tool that reads a whole run: `name` (a folder, or [STAGE/]TAG) when
    given, else the address flags (a folder may hold only metrics.jsonl while its run starts)."""
    if args.base_dir:
        use_base_dir(args.base_dir)
    if name is not None and (os.path.exists(os.path.expanduser(name))
                             or "/" in name and not re.fullmatch(r"\w+/[^/:]+(:\d+)?", name)):
        return find_run_dir(name, args.source)  # a folder path
    source, tag, step = parse_address(name) if name is not None else (None, args.model_tag, None)
    source = source or args.source
    step = step if step is not None else args.step
    if tag is not None and step is None:
        cdir = checkpoint_dir(source, tag)
        if os.path.isdir(cdir) and not list_steps(cdir):
            return cdir  # a run that has logged steps but saved no checkpoint yet
    return resolve_checkpoint(source, tag, step)[0]


def find_run_dir(arg, default_source, base_dir=None):
    """A run folder for the tools that read a whole run: a path to a checkpoint folder, or a name
    [STAGE/]TAG by the rule above."""
    path = os.path.expanduser(str(arg))
    if os.path.isdir(path):
        return os.path.abspath(path)
    if os.path.exists(path):
        raise UserError(f"{path} is a file; give a checkpoint folder such as ~/.cache/nanochat/base_checkpoints/d4")
    if "/" in path and not re.fullmatch(r"\w+/[^/:]+", path):
        raise UserError(f"no such folder: {arg}")
    source, tag, _ = parse_address(path)
    source = source or default_source
    cdir = checkpoint_dir(source, tag, base_dir)
    if not os.path.isdir(cdir):
        resolve_checkpoint(source, tag, None, base_dir)  # raises with what exists
    return cdir


def load_model(source, device, phase="eval", model_tag=None, step=None, base_dir=None, verbose=True):
    """Load a model from a stage: returns (model, tokenizer, meta) and says what it loaded."""
    cdir, model_tag, step = resolve_checkpoint(source, model_tag, step, base_dir)
    model, tokenizer, meta = load_model_from_dir(cdir, step, device, phase)
    if verbose:
        print0(f"loaded {source} model {model_tag} step {step} from {cdir}")
    return model, tokenizer, meta


def load_model_from_args(args, device, phase="eval", verbose=True):
    """load_model for the flags of add_checkpoint_args: (model, tokenizer, meta, (source, tag, step))."""
    source, _, tag, step = checkpoint_from_args(args)
    model, tokenizer, meta = load_model(source, device, phase, tag, step, verbose=verbose)
    return model, tokenizer, meta, (source, tag, step)


# -----------------------------------------------------------------------------
# metrics.jsonl

METRICS_FILE = "metrics.jsonl"


def append_metrics(ckpt_dir, record):
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(os.path.join(ckpt_dir, METRICS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(ckpt_dir):
    """All records of metrics.jsonl (an unparseable last line, from a crash mid-write, is skipped)."""
    path = os.path.join(ckpt_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(ckpt_dir, last_step):
    """Drop records after `last_step` (on resume, so the log has each step exactly once)."""
    path = os.path.join(ckpt_dir, METRICS_FILE)
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(ckpt_dir) if r.get("step", 0) <= last_step]
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
