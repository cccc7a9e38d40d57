"""
Experiment tracking: the figures a training stage writes to metrics.jsonl, also sent to the tracker
the user names with --logger: Weights & Biases (wandb), trackio or TensorBoard.

Pipeline position: scripts/base_train.py, scripts/chat_finetune.py (mid and SFT) and
scripts/chat_rl.py call make_logger once, then logger.log(record, step) right beside
cm.append_metrics, so a tracker shows the numbers metrics.jsonl holds under the same names
(train_loss, val_bpb, lr, lrs/matrix, reward_mean, ...; scalars() says the few exceptions). Two things go to the tracker only: the
evaluation before the first step (step 0; metrics.jsonl counts steps done, from 1) and, in
pretraining, the CORE score and the greedy samples (as text).

Each tracker is an optional dependency (`pip install -e ".[trackers]"`), imported only when chosen:
    tensorboard  writes <checkpoint folder>/tensorboard/; view with `tensorboard --logdir ~/.cache/nanochat`
    wandb        writes $WANDB_DIR or <base dir>/wandb/; WANDB_MODE=offline keeps the run on disk
                 (upload it later with `wandb sync`)
    trackio      writes $TRACKIO_DIR or ~/.cache/huggingface/trackio; view with `trackio show`
Upstream nanochat's habit works too: --run NAME (anything but "dummy") logs to wandb when wandb
is installed. A resumed run is a new run in wandb and trackio; in TensorBoard it continues the
same curves, and what the killed run logged after the resume step is hidden. Only rank 0 logs.
"""

import os
import html
import importlib.util

from nanochat.common import UserError, get_base_dir, get_dist_info, print0

LOGGERS = ("none", "wandb", "trackio", "tensorboard")
PROJECTS = {"base": "nanochat", "mid": "nanochat-mid", "sft": "nanochat-sft", "rl": "nanochat-rl"}  # as upstream


def add_logger_arg(parser):
    parser.add_argument("--logger", choices=LOGGERS, default=None,
                        help="also log the metrics to this experiment tracker (default: none; --run NAME alone "
                             "means wandb when it is installed, as in upstream nanochat)")


def _installed(package):
    return importlib.util.find_spec(package) is not None


def choose_logger(args):
    """The tracker of a run: --logger when given; else wandb for upstream's habit `--run NAME` when
    wandb is installed; else none (saying so in one line when a run name was given)."""
    if args.logger is not None:
        return args.logger
    run = getattr(args, "run", "dummy")
    if run == "dummy":
        return "none"
    if _installed("wandb"):
        return "wandb"
    print0(f"note: run {run!r} is only recorded in the checkpoint meta and the report; pip install wandb to log "
           f"it to Weights & Biases, or pick --logger trackio or tensorboard")
    return "none"


def scalars(record):
    """The numbers of a metrics record, flat ({'lrs': {'matrix': 0.02}} -> 'lrs/matrix'), without the
    step (the tracker's own axis) and the wall-clock time (trackers keep their own); 'time', the
    training time so far, is 'training_time' (trackio reserves the name 'time')."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "wall"):
            out["training_time" if key == "time" else key] = value
    return out


class Logger:
    """No tracker: every call does nothing. The base of the three below, and what --logger none
    and the ranks other than 0 get."""

    def log(self, record, step):
        """Log the numbers of a metrics record (nested dicts flattened) at this step."""

    def log_text(self, name, text, step):
        """Log a piece of text (generated samples) at this step."""

    def finish(self):
        """Write out what is buffered and close the run."""


class TensorBoardLogger(Logger):
    def __init__(self, log_dir, config):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        self.SummaryWriter, self.log_dir, self.config, self.writer = SummaryWriter, log_dir, config, None
        print0(f"logging to TensorBoard in {log_dir} (view: tensorboard --logdir {log_dir})")

    def _writer(self, step):
        # opened at the first step logged: TensorBoard hides this folder's older events from that
        # step on (purge_step), so a resumed or restarted run does not draw over the killed one
        if self.writer is None:
            self.writer = self.SummaryWriter(self.log_dir, purge_step=step)
            table = "\n".join(f"| {k} | {v} |" for k, v in self.config.items())
            self.writer.add_text("config", "| flag | value |\n|---|---|\n" + table, step)
        return self.writer

    def log(self, record, step):
        writer = self._writer(step)
        for key, value in scalars(record).items():
            writer.add_scalar(key, value, step)
        writer.flush()  # as durable as the metrics.jsonl line written beside it

    def log_text(self, name, text, step):
        writer = self._writer(step)
        writer.add_text(name, "\n".join("    " + line for line in text.splitlines()), step)  # as code
        writer.flush()

    def finish(self):
        if self.writer is not None:
            self.writer.close()


class WandbLogger(Logger):
    def __init__(self, project, name, config):
        import wandb
        self.wandb = wandb
        folder = os.environ.get("WANDB_DIR") or os.path.join(get_base_dir(), "wandb")
        os.makedirs(folder, exist_ok=True)
        try:
            self.run = wandb.init(project=project, name=name, config=config, dir=folder)
        except wandb.errors.Error as e:  # not logged in, no network, ...
            raise UserError(f"wandb could not start a run ({str(e).strip().splitlines()[0]}); run `wandb login`, "
                            f"or set WANDB_MODE=offline to keep the run on disk") from None

    def log(self, record, step):
        self.run.log(scalars(record), step=step)

    def log_text(self, name, text, step):
        self.run.log({name: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def finish(self):
        self.run.finish()


class TrackioLogger(Logger):
    def __init__(self, project, name, config):
        import trackio
        self.trackio = trackio
        self.run = trackio.init(project=project, name=name, config=config)

    def log(self, record, step):
        self.run.log(scalars(record), step=step)

    def log_text(self, name, text, step):
        self.run.log({name: self.trackio.Markdown(f"```\n{text}\n```")}, step=step)

    def finish(self):
        self.trackio.finish()


def make_logger(args, stage, config, ckpt_dir):
    """The tracker of a training stage ('base', 'mid', 'sft' or 'rl') from its flags (--logger,
    --run), with the run's flags as its config; a Logger that does nothing off rank 0 or with none.
    A tracker that is not installed is a UserError saying what to install."""
    name = choose_logger(args)
    if name == "none" or get_dist_info()[1] != 0:
        return Logger()
    if not _installed(name):
        raise UserError(f"--logger {name} needs the {name} package: pip install {name} "
                        f"(or pip install -e \".[trackers]\" for all three)")
    run = None if getattr(args, "run", "dummy") == "dummy" else args.run  # None: the tracker names it
    if name == "tensorboard":
        return TensorBoardLogger(os.path.join(ckpt_dir, "tensorboard"), config)
    if name == "wandb":
        return WandbLogger(PROJECTS[stage], run, config)
    return TrackioLogger(PROJECTS[stage], run, config)
