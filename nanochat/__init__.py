"""
nanochat, the pipeline library: model, tokenizer, data, training helpers, checkpoints, engine,
evaluation, report and web server. The stages that use it are in scripts/, the learning tools in
tools/, the tasks in nanochat_tasks/; all of them run from a checkout of the repository.

Two checks when the package is first imported, each one line on stderr:
- PyTorch is not a hard dependency (pip's default torch on Linux is the multi-GB CUDA build, which
  a CPU-only machine should not download by accident): without it, say how to install it.
- `pip install .` copies only this package, without the stages, tools and embedded corpus that sit
  beside it in the repository: say that nanochat runs from a checkout.
"""

import os as _os
import sys as _sys
import importlib.util as _importlib_util

if _importlib_util.find_spec("torch") is None:
    _sys.exit("error: nanochat needs PyTorch, which it does not install for you: pip install torch --index-url "
              "https://download.pytorch.org/whl/cpu on a machine without an NVIDIA GPU, pip install torch on one "
              "with it (or on a Mac)")

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_ROOT, "data", "embedded")):
    print(f"note: {_os.path.dirname(_os.path.abspath(__file__))} is an installed copy of nanochat's library; the "
          f"pipeline runs from a checkout of its repository (git clone it, then pip install -e . inside it)",
          file=_sys.stderr)
