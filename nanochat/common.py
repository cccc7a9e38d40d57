"""
Runtime helpers that every pipeline stage uses: where files live, which device to run on,
distributed (DDP) set-up from torchrun's environment, rank-0 printing, and the peak FLOP/s
figure that turns throughput into MFU (model FLOPs utilisation).

Nothing here knows about models or data; it sits underneath every script in scripts/.
"""

import gc
import contextlib
import os
import math
import re
import sys
import json
import time
import logging
import argparse
from dataclasses import dataclass

import torch
import torch.distributed as dist


class UserError(Exception):
    """A mistake in the user's input (a missing folder, a bad flag value, ...).

    Scripts and tools catch it at the top and print its message as one line with exit code 2,
    instead of a traceback. The message should say what is wrong and what to do."""


# exceptions that are the user's to fix (a bad flag, a missing or unreadable file, a corrupt JSON
# file): they end a script or tool with one line and exit code 2; anything else is a bug and keeps
# its traceback
USER_ERRORS = (UserError, OSError, UnicodeDecodeError, json.JSONDecodeError)


def error_message(exc):
    """The one line that explains one of USER_ERRORS to the user."""
    if isinstance(exc, UserError):
        message = str(exc)
    elif isinstance(exc, UnicodeDecodeError):
        message = ("a file is not UTF-8 text (byte 0x%02x at position %d); save it as UTF-8 or pick another file"
                   % (exc.object[exc.start], exc.start))
    elif isinstance(exc, json.JSONDecodeError):
        message = f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix or delete the file"
    elif isinstance(exc, IsADirectoryError):
        message = f"{exc.filename} is a folder, but a file was expected"
    elif isinstance(exc, NotADirectoryError):
        message = f"{exc.filename} is not a folder"
    elif isinstance(exc, FileNotFoundError):
        message = f"no such file or folder: {exc.filename}; check the path"
    elif isinstance(exc, PermissionError):
        message = f"permission denied: {exc.filename}"
    else:  # any other OSError
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    return "error: " + " ".join(message.split())


def run_entry(main, argv=None):
    """Run `main(argv)` and return its exit code instead of raising: the one error boundary of
    every script and tool.

    USER_ERRORS become 'error: ...' on one line of stderr and code 2; Ctrl-C is code 130; a closed
    pipe (`| head`) ends quietly. Anything else is a bug and keeps its traceback."""
    try:
        code = main(argv)
        return code if isinstance(code, int) else 0
    except SystemExit as e:  # argparse --help or a bad flag, or an explicit sys.exit in main
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): point stdout at devnull so the final flush is quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except USER_ERRORS as e:
        print(error_message(e), file=sys.stderr)
        return 2


def run_main(main):
    """The `if __name__ == "__main__":` line of every script and tool: run it and exit with its code."""
    sys.exit(run_entry(main, sys.argv[1:]))


# -----------------------------------------------------------------------------
# command-line flags: one parser for every script and tool, and value types that check ranges
#
#     p = ArgumentParser(description=__doc__)
#     p.add_argument("--depth", type=int_range(1, 1000), default=20)
#     p.add_argument("--eval-every", type=int_range(1, special=(-1,)), default=250)  # -1: never
#     p.add_argument("--matrix-lr", type=nonneg_float, default=0.02)
#
# A value outside its range stops the command at parse time with one line, e.g.
#     error: argument --depth: 0 is out of range: use a whole number from 1 to 1,000 (see python -m
#     scripts.base_train --help)
# before anything is loaded or written.

class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError: one line and exit code 2 through run_entry, with a
    hint to use --help (argparse itself would print its whole usage block first)."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _parse_number(text, whole):
    """A flag's text as an int (whole; '1e6' works too) or a float; NaN and infinity are refused."""
    text = str(text).strip()
    if whole:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole number' if whole else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    if whole:
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
        return int(value)
    return value


def _range_words(low, high, low_open, whole, special):
    kind = "a whole number" if whole else "a number"
    show = (lambda v: f"{v:,}") if whole else (lambda v: f"{v:g}")
    if low is not None and high is not None and low_open:
        words = f"{kind} greater than {show(low)} and at most {show(high)}"
    elif low is not None and high is not None:
        words = f"{kind} from {show(low)} to {show(high)}"
    elif low is not None:
        words = f"{kind} {'greater than' if low_open else 'of at least'} {show(low)}"
    elif high is not None:
        words = f"{kind} of at most {show(high)}"
    else:
        words = kind
    return f"use {words}" + "".join(f", or {show(v)}" for v in special)


def int_range(low=None, high=None, special=()):
    """An argparse type: a whole number from `low` to `high` (None: no limit on that side), or one of
    the `special` values (such as -1 for 'never')."""
    def parse(text):
        value = _parse_number(text, whole=True)
        if value not in special and ((low is not None and value < low) or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_range_words(low, high, False, True, special)}")
        return value
    return parse


def float_range(low=None, high=None, low_open=False, special=()):
    """An argparse type: a finite number from `low` to `high` (None: no limit on that side; `low_open`:
    strictly greater than low), or one of the `special` values."""
    def parse(text):
        value = _parse_number(text, whole=False)
        below = low is not None and (value <= low if low_open else value < low)
        if value not in special and (below or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: "
                                             f"{_range_words(low, high, low_open, False, special)}")
        return value
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)
random_seed = int_range(0, 2**32 - 1)  # numpy's seeds stop at 2**32
positive_float = float_range(0, low_open=True)
nonneg_float = float_range(0)
fraction = float_range(0, 1)
# a sampling temperature: 0 is greedy; far below 1e-4, logits / T overflows float32 (and T = 1e-4 is
# greedy in all but name)
sampling_temperature = float_range(1e-4, 100, special=(0.0,))


# -----------------------------------------------------------------------------
# where files live

def get_base_dir():
    """The folder for tokenizer, checkpoints, data and reports: $NANOCHAT_BASE_DIR or ~/.cache/nanochat."""
    base = os.environ.get("NANOCHAT_BASE_DIR")
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base


def use_base_dir(path):
    """Make `path` the base dir of this process (a --base-dir flag): tokenizer, checkpoints and
    report are all read from and written to it, exactly as with NANOCHAT_BASE_DIR=path."""
    if not os.path.isdir(path):
        raise UserError(f"--base-dir {path} is not a folder")
    os.environ["NANOCHAT_BASE_DIR"] = os.path.abspath(path)


def repo_root():
    """The repository root (the folder that holds nanochat/, data/, scripts/)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy_array_globals():
    """What a numpy array needs to unpickle: optimizer files of this project written before the RNG
    state was stored as lists hold numpy's RNG state as an array. Data only, like a tensor."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@contextlib.contextmanager
def files_written_together():
    """Write several files so that they appear together or not at all (checkpoints, the tokenizer,
    the report card). Inside the block, `tmp = new(path)` gives the temporary name to write instead
    of `path`; when the block ends, every file is renamed into place in the order given (put the one
    that marks a save complete last). If the block raises, every temporary file is removed and the
    old files stay as they were:

        with files_written_together() as new:
            with open(new(path), "w") as f:
                f.write(text)
    """
    written = []

    def new(path):
        written.append((path, f"{path}.tmp-{os.getpid()}"))
        return written[-1][1]

    try:
        yield new
        for path, tmp in written:
            os.replace(tmp, path)
    except BaseException:
        for _, tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


def write_text_atomically(path, text):
    """Replace a text file in one step: a crash leaves the old file or the new one, never half."""
    with files_written_together() as new:
        with open(new(path), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def load_torch_file(path, device="cpu"):
    """torch.load for a file that may come from anyone: weights_only=True, so the file can only
    hold tensors, numbers, strings, containers (and numpy arrays); a file that names anything else
    to call (a crafted pickle) is refused before anything runs. Failures are one UserError line."""
    import warnings
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with warnings.catch_warnings():
            # torch warns about a raw pickle's protocol before refusing it: the refusal says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if allow is None:
                return torch.load(path, map_location=device, weights_only=True)
            with allow(_numpy_array_globals()):
                return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        unsafe = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        what = (f"it asks for {unsafe.group(1)}" if unsafe else
                "it holds more than tensors and plain data" if "weights only" in str(e).lower() else None)
        if what:
            raise UserError(f"{path} is refused: {what}, and loading that could run code; nanochat loads only "
                            f"tensors and plain data from a file") from e
        raise UserError(f"cannot load {path}: {e.__class__.__name__} (truncated or corrupt file?)") from e


# -----------------------------------------------------------------------------
# printing

_logger_ready = False


def get_logger(name="nanochat"):
    global _logger_ready
    if not _logger_ready:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        _logger_ready = True
    return logging.getLogger(name)


def print0(*args, **kwargs):
    """print() on rank 0 only, so a torchrun job prints each line once."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def format_duration(seconds):
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# -----------------------------------------------------------------------------
# device and distributed set-up

def autodetect_device_type():
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device_type(device_type=""):
    """Validate a --device-type value ('' means autodetect) and return one of cuda/mps/cpu."""
    if not device_type:
        return autodetect_device_type()
    if device_type not in ("cuda", "mps", "cpu"):
        raise UserError(f"unknown --device-type '{device_type}': use cuda, mps or cpu (or leave it empty to autodetect)")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device-type cuda was asked for but no CUDA GPU is visible; use --device-type cpu")
    if device_type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device-type mps was asked for but MPS is not available; use --device-type cpu")
    return device_type


def add_device_arg(parser):
    """The one device flag of every script and tool: --device-type (--device also works), autodetected."""
    parser.add_argument("--device-type", "--device", dest="device_type", type=str, default="",
                        help="cuda|cpu|mps (default: autodetect, cuda > mps > cpu)")


def is_ddp():
    return int(os.environ.get("RANK", -1)) != -1 and "WORLD_SIZE" in os.environ


def get_dist_info():
    """(is_ddp, rank, local_rank, world_size) read from torchrun's environment variables."""
    if is_ddp():
        return True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


@dataclass
class Runtime:
    device_type: str
    device: torch.device
    ddp: bool
    rank: int
    local_rank: int
    world_size: int

    @property
    def master(self):
        return self.rank == 0

    def autocast(self):
        """bf16 autocast on CUDA; fp32 elsewhere (bf16 matmuls are slow on most CPUs)."""
        import contextlib
        if self.device_type == "cuda":
            return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self):
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        elif self.device_type == "mps":
            torch.mps.synchronize()


def compute_init(device_type="", seed=42):
    """Set up device, seeds, precision and (under torchrun) the process group. Returns a Runtime."""
    device_type = resolve_device_type(device_type)
    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ddp, rank, local_rank, world_size = get_dist_info()
    if ddp:
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device = torch.device(device_type)
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        dist.barrier()
    else:
        device = torch.device(device_type)
    if device_type == "cpu" and world_size > 1:
        # N processes on one CPU: split the cores between them instead of oversubscribing
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if device_type == "cpu" and rank == 0:
        hint = spinning_threads_hint()
        if hint:
            print0(hint)
    return Runtime(device_type, device, ddp, rank, local_rank, world_size)


def spinning_threads_hint():
    """One line of advice when this process's OpenMP threads will fight other work, else None.

    PyTorch's CPU threads (libgomp) spin at every barrier unless OMP_WAIT_POLICY=PASSIVE says
    otherwise. On a machine that other work keeps busy, a thread waiting for one that is not
    running burns the core that one needs: beside one busy process, the demo's training step ran
    2.8-4.9x faster with PASSIVE than without (bench/README.md). The setting is read once, when
    torch is imported, so it can only be set before Python starts (runs/cpu_demo.sh does)."""
    cores = os.cpu_count() or 1
    if torch.get_num_threads() < 2 or not hasattr(os, "getloadavg") \
            or os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        return None
    load = os.getloadavg()[0]
    if load < cores:  # (this process has done little yet: the load is the others')
        return None
    return (f"note: this machine is busy (load {load:.1f} on {cores} cores) and {torch.get_num_threads()} "
            f"OpenMP threads spin while they wait; start with OMP_WAIT_POLICY=PASSIVE (or fewer threads, "
            f"OMP_NUM_THREADS=1) to keep them from slowing each other down (bench/README.md)")


def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        # Free the process group's objects now, while Python is healthy. Left to interpreter
        # shutdown, a gloo worker thread may still be releasing one and the process aborts
        # with "terminate called without an active exception".
        gc.collect()


# -----------------------------------------------------------------------------
# peak FLOP/s, for MFU

# dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,   # SXM; the PCIe card is ~756e12
    "A100": 312e12,
    "L40S": 362e12,
    "A6000": 155e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "A10": 125e12,
    "L4": 121e12,
    "T4": 65e12,
    "V100": 125e12,
}

_cpu_peak_cache = {}
CPU_PEAK_FILE = "cpu_peak.json"  # under the base dir: the measured CPU peak of each thread count, with its date
REMEASURE_PEAK_ENV = "NANOCHAT_REMEASURE_PEAK"


def measure_cpu_matmul_flops(n=2048, dtype=torch.float32, seconds=0.2, windows=5):
    """This CPU's fp32 matmul throughput (FLOP/s) with the current thread count: the best of
    `windows` short windows of at least `seconds` each.

    A square matmul of size n is the best case for the hardware, so this is an honest 'peak' to
    divide by: MFU against it says how much of what the CPU can do we use. One long window
    averages in whatever else the machine is doing (on a shared 2-core machine one 0.5 s window
    read 47-152 GFLOP/s where the best of 5 read 112-158 in the same minute), and an
    underestimated peak overstates MFU; the best window is the closest to what the CPU can do."""
    key = (n, dtype, torch.get_num_threads(), seconds, windows)
    if key in _cpu_peak_cache:
        return _cpu_peak_cache[key]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = 0.0
    for _ in range(windows):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        best = max(best, 2 * n ** 3 * iters / dt)
    _cpu_peak_cache[key] = best
    return best


def cpu_name():
    """The processor's model name (for the report card and the cached CPU peak)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def cpu_peak_flops(remeasure=None):
    """(flops, description) of this CPU's fp32 matmul peak at the current thread count.

    Measured once per machine, thread count and torch version and kept with its date in
    <base dir>/cpu_peak.json, so that a run started while the machine is busy does not divide by
    a low peak. remeasure=True, or NANOCHAT_REMEASURE_PEAK=1 in the environment, measures it
    again (after a hardware change, or when a run says the peak was underestimated)."""
    threads = torch.get_num_threads()
    key = f"{cpu_name()} | {threads} threads | torch {torch.__version__}"
    threads = f"{threads} thread" + ("s" if threads > 1 else "")
    if remeasure is None:
        remeasure = os.environ.get(REMEASURE_PEAK_ENV, "") not in ("", "0")
    path = os.path.join(get_base_dir(), CPU_PEAK_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            known = json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: measure and rewrite it
        known = {}
    entry = known.get(key) if isinstance(known, dict) else None
    known = known if isinstance(known, dict) else {}
    if not remeasure and isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) \
            and entry["flops"] > 0:
        return float(entry["flops"]), (f"CPU fp32 matmul peak cached from {entry.get('date', '?')} ({threads}; "
                                       f"{REMEASURE_PEAK_ENV}=1 measures it again)")
    flops = measure_cpu_matmul_flops()
    known[key] = {"flops": flops, "date": time.strftime("%Y-%m-%d")}
    try:
        write_text_atomically(path, json.dumps(known, indent=1))  # several ranks may write: each replaces it whole
    except OSError:
        pass  # a read-only base dir: measure again next time
    return flops, f"CPU fp32 matmul peak measured now ({threads}, best of 5 windows)"


def get_peak_flops(device_type, measure_cpu=True):
    """Peak FLOP/s of one device: a table lookup for known GPUs, a measured matmul for CPUs
    (cached per machine, see cpu_peak_flops).

    Returns (flops, description); the description says which peak it is (a GPU's data-sheet
    value, a CPU peak measured now, or one cached from a date). flops is None when unknown (MFU
    is then not reported)."""
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                if key == "H100" and "PCIe" in name:
                    flops = 756e12
                return flops, f"{name} (bf16 data-sheet peak, from the table in nanochat/common.py)"
        return None, f"{name} (unknown peak)"
    if device_type == "cpu" and measure_cpu:
        return cpu_peak_flops()
    return None, f"{device_type} (unknown peak)"


_peak_note_printed = False


def mfu_percent(flops_per_token, tokens_per_sec, peak_flops, world_size=1):
    """Model FLOPs utilisation in percent: achieved FLOP/s over the peak of all devices together.

    None when the peak is unknown. Never above 100: a model that runs faster than the peak means
    the peak was underestimated (measured on a busy machine), so the peak is taken to be what was
    observed, and one note says so."""
    global _peak_note_printed
    if not peak_flops:
        return None
    achieved = flops_per_token * tokens_per_sec
    total_peak = peak_flops * world_size
    if achieved > total_peak:
        if not _peak_note_printed:
            _peak_note_printed = True
            print0(f"note: the model ran at {achieved / 1e9:,.1f} GFLOP/s, above the peak of {total_peak / 1e9:,.1f}: "
                   f"the peak was underestimated (measured while the machine was busy?), so MFU shows 100%; "
                   f"{REMEASURE_PEAK_ENV}=1 measures it again")
        return 100.0
    return 100 * achieved / total_peak
