"""
Plots for the learning tools: matplotlib with the headless Agg backend, one house style, and one
way to save a PNG to the path given with --output.

Pipeline position: like termui.py, the last step of a tool. Works without a display (servers,
CI, SSH sessions) because the Agg backend is selected before pyplot is imported.

    from tools.lib import plotting
    fig, axes = plotting.new_figure(nrows=2, ncols=2, title="Run d4")
    ax = axes[0][0]
    ax.plot(steps, loss, color=plotting.color(0), label="train loss")
    plotting.style_axes(ax, title="Loss", xlabel="step", ylabel="loss", legend=True)
    path = plotting.save_figure(fig, args.output or plotting.default_output("dashboard"))

Figures have a fixed size in pixels (width_in * dpi by height_in * dpi): we lay out with
constrained layout instead of bbox_inches="tight", so the saved image has exactly the size asked.
"""

import os

import matplotlib

matplotlib.use("Agg")  # no display needed; must happen before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from nanochat.common import UserError  # noqa: E402

DPI = 100
# colour-blind-friendly palette (Okabe-Ito), in the order series are drawn
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

_STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

SAVE_FORMATS = (".png", ".svg", ".pdf")


def color(i):
    """The i-th series colour of the palette (wraps around)."""
    return PALETTE[i % len(PALETTE)]


def new_figure(nrows=1, ncols=1, width=10.0, height=6.0, dpi=DPI, title=None, squeeze=False, **kwargs):
    """A figure in the house style. Returns (fig, axes); axes is a 2-D array unless squeeze=True.

    The saved PNG is width*dpi x height*dpi pixels."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=dpi, squeeze=squeeze,
                                 layout="constrained", **kwargs)
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    for ax in (axes.flat if hasattr(axes, "flat") else [axes]):
        _apply_style(ax)
    return fig, axes


def _apply_style(ax):
    ax.grid(True, alpha=_STYLE["grid.alpha"])
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=_STYLE["xtick.labelsize"])


def style_axes(ax, title=None, xlabel=None, ylabel=None, legend=False, logy=False, logx=False):
    """Title, labels, optional legend and log scales for one subplot."""
    if title:
        ax.set_title(title, fontsize=_STYLE["axes.titlesize"], fontweight="bold")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=_STYLE["axes.labelsize"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=_STYLE["axes.labelsize"])
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=_STYLE["legend.fontsize"], frameon=False)


def empty_panel(ax, message):
    """Mark a subplot that has no data, saying why (e.g. 'no LR logged: upstream checkpoint')."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="#666666", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def heatmap(ax, matrix, xlabels=None, ylabels=None, title=None, cmap="viridis", colorbar=True,
            vmin=None, vmax=None):
    """A 2-D array as an image with optional tick labels (e.g. attention weights over tokens)."""
    im = ax.imshow(matrix, cmap=cmap, aspect="auto", interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.grid(False)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(xlabels, rotation=90, fontsize=7)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)))
        ax.set_yticklabels(ylabels, fontsize=7)
    if title:
        ax.set_title(title, fontsize=_STYLE["axes.titlesize"], fontweight="bold")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def default_output(name):
    """Where a plot goes when --plot is given without --output: NAME.png in the current folder."""
    return f"{name}.png"


def save_figure(fig, path):
    """Save the figure (PNG unless the path ends in .svg / .pdf), close it, return the path.

    A missing parent folder is created; an unwritable path is a UserError."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == "":
        path += ".png"
    elif ext not in SAVE_FORMATS:
        plt.close(fig)
        raise UserError(f"cannot write a plot to {path}: use a file name ending in {', '.join(SAVE_FORMATS)}")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi)
    except OSError as e:
        raise UserError(f"cannot write the plot to {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path


def image_size(path):
    """(width, height) in pixels of a saved PNG, read from its header (used by tests and tools)."""
    with open(path, "rb") as f:
        header = f.read(24)
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise UserError(f"{path} is not a PNG file")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
