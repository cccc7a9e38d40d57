"""The pipeline stages, each run as `python -m scripts.NAME` from the repository root."""

import nanochat  # noqa: F401  (before any stage imports torch: its one-line checks, PyTorch installed and a checkout)
