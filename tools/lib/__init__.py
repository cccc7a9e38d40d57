"""Backends of the learning tools and the pieces they share (terminal output, plots, run histories).

Nothing in nanochat/ imports from here: the library is the pipeline, these modules read what it writes.
"""
