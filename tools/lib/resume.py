"""
Resuming an interrupted training run: which checkpoint to continue from, whether it is intact,
how far the run got, the exact command that continues it, and a replay that proves the
continuation is exact.

Pipeline position: after a training stage was killed (power cut, out of memory, SIGKILL, a
preempted cloud machine). tools/training_resume_helper.py prints what these functions find.

- find_resume_point: the last *complete* checkpoint. checkpoint_manager saves the model before
  the meta, each atomically, so a checkpoint counts only once its meta exists; a kill mid-save
  leaves at most a `*.tmp` file, reported here as debris.
- verify_checkpoint: every file present and loadable, the weights' names and shapes equal to the
  model the meta's config builds, the optimizer state covering every parameter, the meta
  consistent with itself and with metrics.jsonl.
- resume_command: the stage's own script with the run's original arguments (meta user_config) plus
  --resume-from-step; the run continues exactly where it stopped (data position, RNG, optimizer).
- replay_steps: re-runs N logged steps from an earlier checkpoint and compares the losses with the
  ones the run logged (and the weights with the next checkpoint when the replay reaches it).

Checkpoints written by upstream nanochat resume too: translate_user_config turns upstream's flag
names into ours (and names the ones dropped), architecture_flags adds --upstream-arch when the
weights have upstream's smear and backout. Such a run continues training but not bit-exactly:
upstream saves no RNG state or data position, and its optimizer state is used only when its
parameter groups match ours (training.optimizer_state_fits), else a fresh optimizer starts.
"""

import os
import glob
import shlex
import importlib
from dataclasses import dataclass, field

import torch

from nanochat.common import UserError
from nanochat import checkpoint_manager as cm
from nanochat import training as tr

STAGE_MODULES = {"base": "scripts.base_train", "mid": "scripts.mid_train", "sft": "scripts.chat_sft",
                 "rl": "scripts.chat_rl"}


# -----------------------------------------------------------------------------
# where to resume from

@dataclass
class ResumePoint:
    ckpt_dir: str
    step: int
    meta: dict
    has_optimizer: bool
    incomplete: list = field(default_factory=list)  # [(step, why)] of newer checkpoints that are not usable
    debris: list = field(default_factory=list)      # leftover temporary files of an interrupted save
    last_logged_step: int = None                    # the last step in metrics.jsonl (the run got this far)


def check_folder(ckpt_dir):
    """A UserError unless ckpt_dir is a folder with at least one checkpoint file."""
    if not os.path.exists(ckpt_dir):
        known = sorted({d for _, _, _, d in cm.list_checkpoints()})
        hint = f"; checkpoint folders here: {', '.join(known[:5])}" if known else ""
        raise UserError(f"no such folder: {ckpt_dir}{hint}")
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"{ckpt_dir} is a file; give a checkpoint folder such as base_checkpoints/d4")
    if not cm.list_steps(ckpt_dir) and not glob.glob(os.path.join(ckpt_dir, "meta_*.json")):
        raise UserError(f"{ckpt_dir} holds no checkpoints (model_*.pt + meta_*.json); was it the right folder?")


def find_resume_point(ckpt_dir, step=None):
    """The checkpoint to resume from: `step` if given, else the last complete one."""
    check_folder(ckpt_dir)
    model_steps = set(cm.list_steps(ckpt_dir))
    meta_steps = set()
    for p in glob.glob(os.path.join(ckpt_dir, "meta_*.json")):
        name = os.path.basename(p)[5:-5]
        if name.isdigit():
            meta_steps.add(int(name))
    complete = cm.list_complete_steps(ckpt_dir)
    if step is None:
        if not complete:
            raise UserError(f"no complete checkpoint in {ckpt_dir}: every model_*.pt lacks a readable meta_*.json")
        step = complete[-1]
    elif step not in complete:
        raise UserError(f"no complete checkpoint at step {step} in {ckpt_dir} (complete steps: "
                        f"{', '.join(map(str, complete)) or 'none'})")
    incomplete = []
    for s in sorted((model_steps | meta_steps) - set(complete)):
        if s > step:
            why = "meta file missing" if s not in meta_steps else ("model file missing" if s not in model_steps
                                                                   else "meta file unreadable")
            incomplete.append((s, why))
    debris = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ckpt_dir, "*.tmp*")))
    logged = [r.get("step") for r in cm.read_metrics(ckpt_dir) if isinstance(r.get("step"), int)]
    return ResumePoint(ckpt_dir, step, cm.read_meta(ckpt_dir, step),
                       os.path.exists(cm.optim_path(ckpt_dir, step, 0)), incomplete, debris,
                       max(logged) if logged else None)


# -----------------------------------------------------------------------------
# integrity

@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    severity: str = "error"  # what a failure means: "error" (cannot resume as is) or "warning"


def verify_checkpoint(ckpt_dir, step):
    """All integrity checks of one checkpoint, as a list of Check."""
    from nanochat.gpt import GPT
    checks = []
    meta = cm.read_meta(ckpt_dir, step)
    checks.append(Check("meta readable", True, os.path.basename(cm.meta_path(ckpt_dir, step))))
    if meta.get("step") is not None:
        checks.append(Check("meta step", meta["step"] == step,
                            f"meta says step {meta['step']}" + ("" if meta["step"] == step else
                                                               f" but the file is for step {step}")))
    # the weights
    mpath = cm.model_path(ckpt_dir, step)
    state = None
    if not os.path.exists(mpath):
        checks.append(Check("model file", False, f"{os.path.basename(mpath)} is missing"))
    else:
        try:
            state = cm.clean_state_dict(torch.load(mpath, map_location="cpu", weights_only=True))
            checks.append(Check("model file", True, f"{os.path.basename(mpath)} loads "
                                f"({len(state)} tensors, {os.path.getsize(mpath) / 2**20:.1f} MiB)"))
        except Exception as e:
            checks.append(Check("model file", False, f"{os.path.basename(mpath)} cannot be loaded "
                                f"({e.__class__.__name__}): truncated or corrupt"))
    # weights vs the config in the meta
    expected = model = None
    try:
        shapes = {k: tuple(v.shape) for k, v in state.items()} if state is not None else {}
        with torch.device("meta"):
            model = GPT(cm.detect_model_config(meta["model_config"], shapes))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception as e:
        checks.append(Check("config", False, f"the meta's model_config does not build a model ({e})"))
    if state is not None and expected is not None:
        got = {k: tuple(v.shape) for k, v in state.items()}
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = [k for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
        if missing or extra or wrong:
            parts = []
            if wrong:
                parts.append(f"{wrong[0]} is {got[wrong[0]]} in the file but {expected[wrong[0]]} by the meta config"
                             + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
            if missing:
                parts.append(f"{len(missing)} tensors the config expects are missing (e.g. {missing[0]})")
            if extra:
                parts.append(f"{len(extra)} tensors the config does not know (e.g. {extra[0]})")
            checks.append(Check("weights match meta", False, "the meta does not match the weights: " + "; ".join(parts)))
        else:
            checks.append(Check("weights match meta", True, f"every tensor has the shape the config gives "
                                f"({meta['model_config'].get('n_layer')} layers, dim {meta['model_config'].get('n_embd')})"))
        bad_values = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        checks.append(Check("weights finite", not bad_values, "no NaN/inf" if not bad_values else
                            f"NaN/inf in {bad_values[0]} (+{len(bad_values) - 1} more): resume from an earlier step"))
    # the optimizer (needed for an exact resume)
    world = int(meta.get("world_size", 1) or 1)
    for rank in range(world):
        opath = cm.optim_path(ckpt_dir, step, rank)
        name = os.path.basename(opath)
        if not os.path.exists(opath):
            checks.append(Check(f"optimizer rank {rank}", False, f"{name} is missing: the run cannot be resumed "
                                "exactly (optimizer moments and data position are lost)"))
            continue
        try:
            ostate = cm.load_torch_file(opath)
        except Exception as e:
            checks.append(Check(f"optimizer rank {rank}", False, f"{name} cannot be loaded ({e.__class__.__name__}): "
                                "truncated or corrupt or unsafe"))
            continue
        inner = ostate.get("optimizer", ostate) if isinstance(ostate, dict) else {}
        n_opt = sum(len(g.get("params", [])) for g in inner.get("param_groups", []))
        detail = f"{name} loads"
        ok = True
        if state is not None and n_opt != len(state):
            ok, detail = False, f"{name} covers {n_opt} parameters but the model has {len(state)}"
        elif "rng" not in ostate or "dataloader" not in ostate:
            detail += " (upstream format: no RNG/data position, the resume will not be bit-exact"
            if model is not None and not tr.optimizer_state_fits(tr.build_optimizer(model, uc_of(meta)), ostate):
                detail += "; its parameter groups are not ours, so a fresh optimizer will start"
            detail += ")"
        checks.append(Check(f"optimizer rank {rank}", ok, detail, "error" if not ok else "warning"))
    # the meta's own bookkeeping
    uc = meta.get("user_config")
    checks.append(Check("original arguments", isinstance(uc, dict), "user_config present" if isinstance(uc, dict)
                        else "the meta has no user_config: the resume command cannot repeat the original flags",
                        "warning"))
    if meta.get("tokens_seen") is not None and meta.get("total_batch_size"):
        want = step * meta["total_batch_size"]
        checks.append(Check("tokens seen", meta["tokens_seen"] == want, f"{meta['tokens_seen']:,} tokens "
                            + ("= step x batch" if meta["tokens_seen"] == want else f"but step x batch = {want:,}"),
                            "warning"))
    if meta.get("num_iterations") is not None:
        ok = meta["num_iterations"] >= step
        checks.append(Check("within run length", ok, f"step {step} of {meta['num_iterations']}", "warning"))
    records = {r.get("step"): r for r in cm.read_metrics(ckpt_dir)}
    if records and meta.get("train_loss") is not None:
        rec = records.get(step)
        ok = rec is not None and rec.get("train_loss") == meta["train_loss"]
        checks.append(Check("metrics.jsonl agrees", ok, "the logged loss of this step equals the meta's" if ok else
                            ("metrics.jsonl has no line for this step" if rec is None else
                             f"metrics.jsonl logs loss {rec.get('train_loss')} but the meta says {meta['train_loss']}"),
                            "warning"))
    return checks


def checks_passed(checks):
    return all(c.ok or c.severity == "warning" for c in checks)


# -----------------------------------------------------------------------------
# progress

def planned_steps(meta):
    """The run's length: the meta's num_iterations (upstream's metas keep it only as a flag)."""
    planned = meta.get("num_iterations") or uc_of(meta).get("num_iterations")
    return planned if isinstance(planned, int) and planned > 0 else None


def run_progress(meta, target_steps=None):
    """How far the run got: {step, target, fraction, remaining, warmdown_start (the first logged step
    whose LR is below the peak), in_warmdown (the next step runs below the peak), lr_multiplier (of
    the next step), seconds_per_step, eta_seconds, schedule_changed}."""
    step = int(meta.get("step") or 0)
    uc = meta.get("user_config") or {}
    planned = planned_steps(meta)
    target = target_steps if target_steps is not None else planned
    out = {"step": step, "target": target, "planned": planned, "tokens_seen": meta.get("tokens_seen")}
    if not target:
        return out
    warmup_ratio = uc.get("warmup_ratio", (uc.get("warmup_steps") or 0) / target)  # upstream counts steps
    warmdown_ratio = uc.get("warmdown_ratio", 0.4)  # base_train's default
    final_frac = uc.get("final_lr_frac", 0.0)
    # lr_multiplier(i) drops below 1 once i > target - warmdown; metrics count steps done (i + 1)
    warmdown_start = target - round(warmdown_ratio * target) + 2
    time_spent = (meta.get("loop_state") or {}).get("total_training_time")
    sps = time_spent / step if time_spent and step else None
    out.update(fraction=min(step / target, 1.0), remaining=max(target - step, 0), warmdown_start=warmdown_start,
               in_warmdown=warmdown_ratio > 0 and step + 1 >= warmdown_start,
               lr_multiplier=tr.lr_multiplier(min(step, target - 1), target, warmup_ratio, warmdown_ratio, final_frac),
               seconds_per_step=sps, eta_seconds=sps * max(target - step, 0) if sps else None,
               schedule_changed=planned is not None and target != planned)
    return out


# -----------------------------------------------------------------------------
# the command

def _stage_of(ckpt_dir, meta):
    stage = meta.get("stage")
    if stage in STAGE_MODULES:
        return stage
    folder = os.path.basename(os.path.dirname(os.path.abspath(ckpt_dir)))
    for source, name in cm.STAGE_DIRS.items():
        if folder == name:
            return source
    raise UserError(f"cannot tell which stage wrote {ckpt_dir}: its meta has no 'stage' and the folder is not "
                    f"inside one of {', '.join(cm.STAGE_DIRS.values())}")


def uc_of(meta):
    return meta.get("user_config") if isinstance(meta.get("user_config"), dict) else {}


def is_upstream_meta(meta):
    """A meta written by upstream nanochat: it names no stage (every stage here records its own)."""
    return "stage" not in meta


def translate_user_config(user_config, stage, num_iterations=None):
    """(flags the stage's script here accepts, notes) from a meta's user_config.

    Upstream nanochat's warmup_steps (absolute) becomes warmup_ratio of `num_iterations`; flags the
    script does not have (upstream's fp8, fp8_recipe, ...) are dropped and named in a note."""
    known = set(vars(importlib.import_module(STAGE_MODULES[stage]).parse_args([])))
    config, dropped, notes = {}, [], []
    for key, value in user_config.items():
        if key == "warmup_steps" and "warmup_ratio" in known and "warmup_ratio" not in user_config \
                and isinstance(value, (int, float)) and num_iterations:
            config["warmup_ratio"] = value / num_iterations
            notes.append(f"upstream's --warmup-steps {value} is --warmup-ratio {value / num_iterations:g} here")
        elif key in known:
            config[key] = value
        else:
            dropped.append(key)
    if dropped:
        notes.append(f"dropped flags that {STAGE_MODULES[stage]} does not have: {', '.join(dropped)}")
    return config, notes


def architecture_flags(config):
    """The base_train flags that build a GPTConfig's upstream options: {'upstream_arch': True}, some
    of smear/backout, {} for this project's own model, or None when no flags build it."""
    from nanochat.gpt import GPTConfig, UPSTREAM_ARCH
    options = {k: getattr(config, k) for k in UPSTREAM_ARCH}
    if options == UPSTREAM_ARCH:
        return {"upstream_arch": True}
    ours = GPTConfig()
    if all(v == getattr(ours, k) for k, v in options.items() if k not in ("smear", "backout")):
        return {k: True for k in ("smear", "backout") if options[k]}
    return None


def config_to_flags(user_config):
    """argparse's namespace dict back to command-line flags (None: left out; True: a bare flag)."""
    flags = []
    for key, value in user_config.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag] + [str(v) for v in value]
        else:
            flags += [flag, str(value)]
    return flags


def resume_command(point, target_steps=None, python="python"):
    """(command string, notes) that resumes the run of a ResumePoint with the stage's own script."""
    meta = point.meta
    uc = meta.get("user_config")
    if not isinstance(uc, dict):
        raise UserError(f"the meta of step {point.step} has no user_config (the original arguments), so the "
                        "command cannot be rebuilt; rerun the stage by hand with --resume-from-step "
                        f"{point.step}")
    stage = _stage_of(point.ckpt_dir, meta)
    ckpt_dir = os.path.abspath(point.ckpt_dir)
    stage_folder = os.path.dirname(ckpt_dir)
    if os.path.basename(stage_folder) != cm.STAGE_DIRS[stage]:
        raise UserError(f"{ckpt_dir} is not inside a {cm.STAGE_DIRS[stage]} folder, so the {stage} stage would "
                        "not find it; move it back under <base dir>/" + cm.STAGE_DIRS[stage])
    base_dir = os.path.dirname(stage_folder)
    config, notes = translate_user_config(uc, stage, target_steps or planned_steps(meta))
    config["resume_from_step"] = point.step
    config["model_tag"] = os.path.basename(ckpt_dir)
    if stage == "base" and "upstream_arch" not in uc:  # a meta from before these flags, or upstream's
        model_config = cm.checkpoint_model_config(ckpt_dir, point.step)
        arch = architecture_flags(model_config)
        if arch is None:
            raise UserError(f"the weights of step {point.step} need model options that base_train has no flags for "
                            f"({model_config}); resume it by hand")
        config.update(arch)
        if arch:
            notes.append(f"the weights have upstream nanochat's architecture: "
                         f"{' '.join('--' + k.replace('_', '-') for k in arch)}")
    if is_upstream_meta(meta):
        notes.append("an upstream nanochat checkpoint: no RNG state or data position, so the resumed run continues "
                     "training on your data but is not bit-exact; upstream's optimizer state is used only if its "
                     "parameter groups match ours, else a fresh optimizer starts")
    if target_steps is not None:
        if target_steps <= point.step:
            raise UserError(f"--target-steps {target_steps} is not beyond the checkpoint's step {point.step}")
        config["num_iterations"] = target_steps
        if target_steps != planned_steps(meta):
            notes.append(f"the run was planned for {planned_steps(meta)} steps; with {target_steps} the LR "
                         "schedule (warmdown) moves, so losses will differ from the original plan")
    elif config.get("num_iterations", -1) in (-1, None) and meta.get("num_iterations"):
        config["num_iterations"] = meta["num_iterations"]  # pin the length the run derived
    if target_steps is None and isinstance(config.get("num_iterations"), int) \
            and 0 < config["num_iterations"] <= point.step:
        notes.append(f"the run already reached its planned {config['num_iterations']} steps: add --target-steps N "
                     f"(N > {point.step}) to train on")
    world = int(meta.get("world_size", 1) or 1)
    launcher = ([python, "-m"] if world == 1 else
                ["torchrun", "--standalone", f"--nproc_per_node={world}", "-m"])
    argv = launcher + [STAGE_MODULES[stage]] + config_to_flags(config)
    default_base = os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    env = ""
    if os.path.realpath(base_dir) != os.path.realpath(default_base):
        env = f"NANOCHAT_BASE_DIR={shlex.quote(base_dir)} "
    if world > 1:
        notes.append(f"the run used {world} processes; resume with the same number for identical data order")
    return env + shlex.join(argv), notes


# -----------------------------------------------------------------------------
# replay

@dataclass
class ReplayResult:
    from_step: int
    rows: list                 # [(step, logged loss, replayed loss)]
    weights_step: int = None   # the checkpoint the replay reached, if any
    weights_equal: bool = None
    threads: int = 1

    @property
    def max_abs_diff(self):
        return max((abs(a - b) for _, a, b in self.rows), default=0.0)

    @property
    def exact(self):
        return all(a == b for _, a, b in self.rows) and self.weights_equal is not False


def pick_replay_start(ckpt_dir, n_steps):
    """The checkpoint to replay from: the newest one with an optimizer state whose next n logged
    steps exist, preferring one *before* the last checkpoint so the replay reaches saved weights."""
    logged = {r.get("step") for r in cm.read_metrics(ckpt_dir)}
    usable = [s for s in cm.list_complete_steps(ckpt_dir) if os.path.exists(cm.optim_path(ckpt_dir, s, 0))
              and all(s + i in logged for i in range(1, n_steps + 1))]
    if not usable:
        raise UserError(f"no checkpoint in {ckpt_dir} has an optimizer state and {n_steps} logged steps after it "
                        "in metrics.jsonl; try a smaller --replay")
    complete = cm.list_complete_steps(ckpt_dir)
    before_last = [s for s in usable if s < complete[-1]]
    return before_last[-1] if before_last else usable[-1]


def replay_steps(ckpt_dir, n_steps, from_step=None, device="cpu", on_step=None):
    """Re-run n_steps optimizer steps from a checkpoint and compare with metrics.jsonl.

    Works for the pretraining, midtraining and SFT stages. Each step is the step of their loops
    (scripts/base_train.py, scripts/chat_finetune.py): the same micro-batches from the same loader,
    restored to where the checkpoint left it, the same optimizer (training.build_optimizer) and
    schedule (training.lr_multiplier); tests compare the replayed losses against the logged ones."""
    from nanochat.common import compute_init
    from nanochat.gpt import build_model
    from nanochat.tokenizer import get_tokenizer
    if n_steps < 1:
        raise UserError("--replay needs a number of steps of at least 1")
    start = pick_replay_start(ckpt_dir, n_steps) if from_step is None else from_step
    meta = cm.read_meta(ckpt_dir, start)
    stage = _stage_of(ckpt_dir, meta)
    if stage not in ("base", "mid", "sft"):
        raise UserError(f"--replay re-runs training steps of the base, mid and sft stages, not of {stage}")
    uc = meta.get("user_config") or {}
    if int(meta.get("world_size", 1) or 1) != 1:
        raise UserError("--replay runs in one process, but this run used several; its steps cannot be reproduced here")
    logged = {r["step"]: r["train_loss"] for r in cm.read_metrics(ckpt_dir) if "train_loss" in r}
    rt = compute_init(device, seed=uc.get("seed", 42))
    tokenizer = get_tokenizer()
    model = build_model(cm.checkpoint_model_config(ckpt_dir, start), rt.device)
    optimizer = tr.build_optimizer(model, uc)
    meta, loader_state = tr.load_training_checkpoint(ckpt_dir, start, model, optimizer, rt)
    B, T = meta["device_batch_size"], meta["max_seq_len"]
    num_iterations = meta["num_iterations"]
    if stage == "base":
        from nanochat.dataloader import DataLoader
        loader = DataLoader(tokenizer, B, T, "train", rt.device, uc.get("data_dir"), state=loader_state)
    else:
        from nanochat.chat_data import make_chat_loader
        from nanochat_tasks.mixtures import build_mixture, is_offline_mixture
        mixture = meta.get("task_mixture") or []
        offline = uc.get("offline", False) or is_offline_mixture(mixture)
        task, names = build_mixture(stage, "train", offline, uc["synthetic_size"], uc.get("custom_json"),
                                    announce=False)
        if meta.get("task_mixture") and names != meta["task_mixture"]:
            raise UserError(f"the run trained on {', '.join(meta['task_mixture'])}, but here the mixture is "
                            f"{', '.join(names)} (is the hub unreachable?); its steps cannot be reproduced here")
        loader = make_chat_loader(stage, tokenizer, task, B, T, rt, state=loader_state)
    if stage == "sft":
        grad_accum = tr.example_grad_accum_steps(uc["target_examples_per_step"], B, 1)
    else:
        grad_accum = tr.grad_accum_steps(meta["total_batch_size"], B, T, 1)
    batches = iter(loader)
    rows = []
    model.train()
    for step in range(start, min(start + n_steps, num_iterations)):
        # the step of the training loops, without their bookkeeping
        loss_sum = torch.zeros((), device=rt.device)
        for _ in range(grad_accum):
            x, y = next(batches)
            with rt.autocast():
                loss = model(x, y)
            loss_sum += loss.detach()
            loss = loss / grad_accum
            loss.backward()
        # finetuning stages have no --warmup-ratio (0.0); all three have --warmdown-ratio and --final-lr-frac
        lr_mult = tr.lr_multiplier(step, num_iterations, uc.get("warmup_ratio", 0.0), uc.get("warmdown_ratio", 0.4),
                                   uc.get("final_lr_frac", 0.0))
        tr.apply_lr(optimizer, lr_mult, step)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        rows.append((step + 1, logged.get(step + 1), (loss_sum / grad_accum).item()))
        if on_step:
            on_step(step + 1)
    result = ReplayResult(start, rows, threads=torch.get_num_threads())
    end = start + len(rows)
    if end in cm.list_complete_steps(ckpt_dir):
        saved = cm.clean_state_dict(torch.load(cm.model_path(ckpt_dir, end), map_location="cpu", weights_only=True))
        mine = model.state_dict()
        result.weights_step = end
        result.weights_equal = saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k].cpu()) for k in saved)
    return result
