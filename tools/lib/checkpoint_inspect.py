"""
Browsing checkpoints: list everything under the base dir, inspect one checkpoint (meta,
parameters, files, integrity), compare two (configs, metrics, per-layer weight change, greedy
samples) and delete safely.

Pipeline position: beside nanochat/checkpoint_manager.py, which finds, reads and loads; this
module only adds the views the checkpoint browser (tools/checkpoint_browser.py) prints.

Names: a checkpoint is named by its model tag ('d4'), optionally with the stage ('sft/d4') and
a step ('d4:200', 'sft/d4:200'); without a step the last complete one is meant.
"""

import os
import re
import shutil
import time
from dataclasses import dataclass, field

from nanochat.common import UserError, get_base_dir
from nanochat import checkpoint_manager as cm
from nanochat.gpt import GPTConfig

SORT_KEYS = ("modified", "val_bpb", "size_mb", "num_params", "step")


@dataclass
class CheckpointInfo:
    source: str
    tag: str
    step: int
    dir: str
    meta: dict | None = None
    meta_error: str | None = None
    files: dict = field(default_factory=dict)   # file name -> size in bytes
    modified: float = 0.0

    @property
    def name(self):
        return f"{self.source}/{self.tag}:{self.step}"

    @property
    def config(self):
        return (self.meta or {}).get("model_config") or {}

    @property
    def val_bpb(self):
        v = (self.meta or {}).get("val_bpb")
        return v if isinstance(v, (int, float)) else None

    @property
    def size_bytes(self):
        return sum(self.files.values())

    @property
    def size_mb(self):
        return self.size_bytes / 1e6

    @property
    def has_optimizer(self):
        return any(n.startswith("optim_") for n in self.files)

    @property
    def num_params(self):
        """Parameter count of the weights (read memory-mapped: only their shapes), None without a meta.
        Counted from the file, so upstream nanochat's extra pieces count too."""
        if not self.config:
            return None
        import torch
        try:
            state = torch.load(cm.model_path(self.dir, self.step), map_location="cpu", weights_only=True, mmap=True)
            return sum(t.numel() for t in state.values())
        except Exception:  # a damaged file: the browser's --inspect says what is wrong with it
            return None


def step_files(ckpt_dir, step):
    """{file name: size} of every file that belongs to one step (model, meta, optimizer shards)."""
    tag = f"{step:06d}"
    out = {}
    for name in sorted(os.listdir(ckpt_dir)):
        if re.fullmatch(rf"(model_{tag}\.pt|meta_{tag}\.json|optim_{tag}_rank\d+\.pt)", name):
            out[name] = os.path.getsize(os.path.join(ckpt_dir, name))
    return out


def checkpoint_info(source, tag, step, ckpt_dir):
    info = CheckpointInfo(source, tag, step, ckpt_dir)
    info.files = step_files(ckpt_dir, step)
    info.modified = max((os.path.getmtime(os.path.join(ckpt_dir, n)) for n in info.files), default=0.0)
    try:
        info.meta = cm.read_meta(ckpt_dir, step)
        GPTConfig.from_dict(info.meta["model_config"])  # a damaged value (n_layer -1, ...) is named here
    except UserError as e:  # this checkpoint's problem only: the listing shows it and goes on
        info.meta_error = str(e)
    return info


def scan(base_dir=None):
    """CheckpointInfo of every checkpoint (every step of every tag of every stage)."""
    return [checkpoint_info(s, t, step, d) for s, t, step, d in cm.list_checkpoints(base_dir)]


def info_record(info):
    """One checkpoint of the listing as a plain dict (the browser's --list --json and the lab's list)."""
    return {"name": info.name, "source": info.source, "tag": info.tag, "step": info.step, "val_bpb": info.val_bpb,
            "n_layer": info.config.get("n_layer"), "n_embd": info.config.get("n_embd"),
            "num_params": info.num_params, "size_bytes": info.size_bytes, "optimizer": info.has_optimizer,
            "modified": info.modified, "meta_error": info.meta_error}


def sort_infos(infos, key):
    if key not in SORT_KEYS:
        raise UserError(f"unknown sort key '{key}': use one of {', '.join(SORT_KEYS)}")
    if key == "modified":
        return sorted(infos, key=lambda i: i.modified, reverse=True)
    if key in ("val_bpb",):
        return sorted(infos, key=lambda i: (i.val_bpb is None, i.val_bpb or 0.0))
    if key == "size_mb":
        return sorted(infos, key=lambda i: i.size_bytes, reverse=True)
    if key == "num_params":
        return sorted(infos, key=lambda i: (i.num_params or 0), reverse=True)
    return sorted(infos, key=lambda i: (i.source, i.tag, i.step))


def folder_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for n in files:
            total += os.path.getsize(os.path.join(root, n))
    return total


# -----------------------------------------------------------------------------
# inspect

def param_groups_from_state(state):
    """Parameter count by group from a state dict (names as in nanochat/gpt.py)."""
    groups = {}
    for name, t in state.items():
        name = name.removeprefix("_orig_mod.")
        if name.startswith("transformer.wte"):
            g = "token_embedding"
        elif name.startswith("value_embeds"):
            g = "value_embeddings"
        elif ".attn.ve_gate" in name:
            g = "value_gates"
        elif ".attn." in name:
            g = "attention"
        elif ".mlp." in name:
            g = "mlp"
        elif name.startswith("lm_head"):
            g = "lm_head"
        elif name.split(".")[0] in ("resid_lambdas", "x0_lambdas", "smear_gate", "smear_lambda", "backout_lambda"):
            g = "scalars"
        else:
            g = "other"
        groups[g] = groups.get(g, 0) + t.numel()
    return groups


def inspect(ckpt_dir, step):
    """Everything about one checkpoint: meta, files, parameter groups and integrity checks.

    Integrity: the meta parses, the model file loads, its tensors have exactly the shapes the
    meta's config implies (with upstream nanochat's options read off the weights: report['config']),
    and the optimizer file (optional) loads."""
    import torch
    from nanochat.gpt import GPT
    report = {"dir": ckpt_dir, "step": step, "files": step_files(ckpt_dir, step), "checks": []}
    checks = report["checks"]

    def check(name, ok, detail=""):
        checks.append({"check": name, "ok": ok, "detail": detail})

    meta = cm.read_meta(ckpt_dir, step)  # a corrupt meta makes the checkpoint unusable: UserError
    report["meta"] = meta
    check("meta", True, f"{os.path.basename(cm.meta_path(ckpt_dir, step))} parses and has a model_config")
    try:
        state = torch.load(cm.model_path(ckpt_dir, step), map_location="cpu", weights_only=True)
        check("model loads", True, f"{len(state)} tensors")
    except FileNotFoundError:
        check("model loads", False, "no model file")
        state = None
    except Exception as e:
        check("model loads", False, f"{e.__class__.__name__}: truncated or corrupt file?")
        state = None
    if state is not None:
        state = cm.clean_state_dict(state)
        report["param_groups"] = param_groups_from_state(state)
        report["num_params"] = sum(t.numel() for t in state.values())
        got = {k: tuple(v.shape) for k, v in state.items()}
        try:
            config = cm.detect_model_config(meta["model_config"], got)
            report["config"] = config.to_dict()
            with torch.device("meta"):
                model = GPT(config)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
            ok = not (missing or extra or wrong)
            detail = "every tensor has the shape the config implies" if ok else \
                f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}"
            check("shapes match config", ok, detail)
        except (TypeError, ValueError, AssertionError, UserError) as e:
            check("shapes match config", False, f"the meta's config cannot build a model ({e})")
        report["finite"] = all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
        check("weights finite", report["finite"], "no NaN/inf" if report["finite"] else "NaN or inf in the weights")
    optims = [n for n in report["files"] if n.startswith("optim_")]
    if not optims:
        check("optimizer", None, "no optimizer file: fine for inference, but training cannot resume exactly")
    else:
        try:
            cm.load_torch_file(os.path.join(ckpt_dir, optims[0]))
            check("optimizer", True, f"{len(optims)} shard(s), {optims[0]} loads")
        except Exception as e:
            check("optimizer", False, f"{optims[0]} does not load ({e.__class__.__name__})")
    return report


# -----------------------------------------------------------------------------
# compare

COMPARE_META_KEYS = ("step", "val_bpb", "train_loss", "num_iterations", "tokens_seen", "device_batch_size",
                     "max_seq_len", "total_batch_size", "world_size", "stage")


def compare_metas(meta_a, meta_b, config_a=None, config_b=None):
    """[(key, a, b, differs)] over model config, headline metrics and CLI arguments.

    config_a/config_b: the checkpoints' whole GPTConfig dicts (cm.checkpoint_model_config), so that
    an upstream meta, which records only the shape fields, compares with ours option by option."""
    rows = []
    ca = config_a if config_a is not None else meta_a.get("model_config") or {}
    cb = config_b if config_b is not None else meta_b.get("model_config") or {}
    for k in sorted(set(ca) | set(cb)):
        rows.append((f"model.{k}", ca.get(k), cb.get(k), ca.get(k) != cb.get(k)))
    for k in COMPARE_META_KEYS:
        if k in meta_a or k in meta_b:
            rows.append((k, meta_a.get(k), meta_b.get(k), meta_a.get(k) != meta_b.get(k)))
    ua, ub = meta_a.get("user_config") or {}, meta_b.get("user_config") or {}
    for k in sorted(set(ua) | set(ub)):
        rows.append((f"arg.{k}", ua.get(k), ub.get(k), ua.get(k) != ub.get(k)))
    return rows


def shape_differences(sa, sb):
    """[(name, shape in A or None, shape in B or None)] of the tensors two state dicts do not share
    with the same shape (None: the tensor is not in that checkpoint)."""
    out = []
    for k in sorted(set(sa) | set(sb)):
        a, b = sa.get(k), sb.get(k)
        if a is None or b is None or a.shape != b.shape:
            out.append((k, None if a is None else tuple(a.shape), None if b is None else tuple(b.shape)))
    return out


def weight_changes(dir_a, step_a, dir_b, step_b):
    """Relative change ||B - A|| / ||A|| per layer (and for the embeddings / head / scalars) between
    two checkpoints, over the tensors they share with the same shape: [(name, relative change, numel)]."""
    return compare_weights(dir_a, step_a, dir_b, step_b)[0]


def compare_weights(dir_a, step_a, dir_b, step_b):
    """(weight_changes, shape_differences): the change of the tensors both checkpoints have with the
    same shape, and the tensors they do not (an upstream run and one of ours differ in a few)."""
    sa, _, _ = cm.load_checkpoint(dir_a, step_a, "cpu")
    sb, _, _ = cm.load_checkpoint(dir_b, step_b, "cpu")
    sa, sb = cm.clean_state_dict(sa), cm.clean_state_dict(sb)
    differ = shape_differences(sa, sb)
    skip = {name for name, _, _ in differ}
    groups = {}
    for k in (k for k in sa if k not in skip):
        m = re.match(r"transformer\.h\.(\d+)\.", k)
        if m:
            g = f"layer {int(m.group(1)):2d}"
        elif k.startswith("value_embeds."):
            g = f"value embed {k.split('.')[1]}"
        elif k.startswith("transformer.wte"):
            g = "token embedding"
        elif k.startswith("lm_head"):
            g = "lm head"
        else:
            g = "scalars"
        a, b = sa[k].float(), sb[k].float()
        acc = groups.setdefault(g, [0.0, 0.0, 0])
        acc[0] += float(((b - a) ** 2).sum())
        acc[1] += float((a ** 2).sum())
        acc[2] += a.numel()
    order = lambda g: (0 if g == "token embedding" else 1 if g.startswith("value") else 2 if g.startswith("layer")
                       else 3 if g == "scalars" else 4, g)
    return [(g, (d / n) ** 0.5 if n > 0 else float("inf") if d > 0 else 0.0, c)
            for g, (d, n, c) in sorted(groups.items(), key=lambda kv: order(kv[0]))], differ


def compare_checkpoints(a, b, weights=False, prompt=None, max_tokens=32, device="cpu"):
    """Two checkpoints side by side, as a plain dict: a and b are (source, folder, tag, step) of
    cm.resolve_address. Rows of compare_metas; with weights the per-part relative change and the
    tensors that differ in shape; with a prompt each one's greedy continuation."""
    meta_a, meta_b = cm.read_meta(a[1], a[3]), cm.read_meta(b[1], b[3])
    configs = []
    for x in (a, b):  # whole configs, so an upstream meta (shape fields only) compares option by option
        try:
            configs.append(cm.checkpoint_model_config(x[1], x[3]).to_dict())
        except (UserError, OSError):
            configs.append(None)  # a damaged model file: compare what the meta says
    rows = compare_metas(meta_a, meta_b, *configs)
    out = {"a": f"{a[0]}/{a[2]}:{a[3]}", "b": f"{b[0]}/{b[2]}:{b[3]}",
           "rows": [{"key": k, "a": va, "b": vb, "differs": d} for k, va, vb, d in rows]}
    if weights:
        changes, differ = compare_weights(a[1], a[3], b[1], b[3])
        out["weights"] = [{"group": g, "relative_change": rc, "numel": n} for g, rc, n in changes]
        out["shape_differences"] = [{"tensor": k, "a": sa, "b": sb} for k, sa, sb in differ]
    if prompt is not None:
        out["samples"] = {side: greedy_decode(x[1], x[3], prompt, max_tokens, device) for side, x in (("a", a), ("b", b))}
    return out


def greedy_decode(ckpt_dir, step, prompt, max_tokens=32, device="cpu"):
    """The greedy (temperature 0) continuation of `prompt` by one checkpoint, as text."""
    import torch
    model, tokenizer, _ = cm.load_model_from_dir(ckpt_dir, step, device, "eval")
    ids = tokenizer.encode(prompt, prepend="<|bos|>")
    with torch.no_grad():
        out = list(model.generate(ids, max_tokens, temperature=0.0))
    return tokenizer.decode(out)


# -----------------------------------------------------------------------------
# delete

def deletion_plan(name, base_dir=None, default_source="base"):
    """The paths that `--delete NAME` removes (a whole tag folder, or the files of NAME:STEP) and
    their total size. Refuses anything that is not a checkpoint inside the base dir."""
    base_dir = os.path.realpath(base_dir or get_base_dir())
    source, tag, step = cm.parse_address(name)
    source = source or default_source
    if step is None:
        cdir = cm.find_run_dir(f"{source}/{tag}", source, base_dir)
    else:
        source, cdir, tag, step = cm.resolve_address(name, default_source, base_dir=base_dir)
    real = os.path.realpath(cdir)
    stage_root = os.path.realpath(cm.stage_dir(source, base_dir))
    # a symlinked tag folder could point anywhere: require the real path to stay inside the base dir
    if os.path.commonpath([real, base_dir]) != base_dir or os.path.dirname(real) != stage_root:
        raise UserError(f"refusing to delete {cdir}: it resolves to {real}, outside {stage_root}")
    if step is None:
        return [real], folder_size(real)
    files = step_files(real, step)
    return [os.path.join(real, n) for n in files], sum(files.values())


def delete_paths(paths, base_dir=None):
    """Delete what deletion_plan returned (checked again: nothing outside the base dir)."""
    base_dir = os.path.realpath(base_dir or get_base_dir())
    for p in paths:
        real = os.path.realpath(p)
        if os.path.commonpath([real, base_dir]) != base_dir or real == base_dir:
            raise UserError(f"refusing to delete {p}: outside the base dir {base_dir}")
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)


def format_time(ts):
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"
