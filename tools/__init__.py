"""The learning layer: ten tools that make each stage of the pipeline visible.

Run one as `python -m tools.NAME` or `python tools/NAME.py` from the repo root. Each tool parses
its flags, calls the library (nanochat/) for what the pipeline already computes, and prints; the
pieces the tools share, and each tool's own backend, live in tools/lib/.
"""
