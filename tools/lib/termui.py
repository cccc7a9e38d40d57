"""
Terminal output for the learning tools: colours, aligned tables, bars, progress, and an argument
parser whose bad flags become one-line errors (nanochat.common.run_main prints them, exit code 2).

Pipeline position: the last step of every tool in tools/. The tools compute with the library and
hand strings to these helpers; nothing here knows about models or data.

Colour is on only when the stream is a terminal and NO_COLOR is unset (https://no-color.org);
FORCE_COLOR=1 turns it on anyway (handy to look at colours through `less -R`). Everything else
(tables, bars) works the same in colour and in plain text, so piped output stays readable.

    from tools.lib import termui as ui
    print(ui.heading("Summary"))
    print(ui.table([["d2", 12, 1.234]], headers=["tag", "step", "val bpb"]))
    print(ui.style("best", "green", "bold"), ui.bar(0.4, width=20))
    for item in ui.progress(items, desc="reading"): ...

    parser = ui.make_parser(__doc__, examples=["python tools/x.py DIR"])
    if __name__ == "__main__":
        run_main(main)              # from nanochat.common; main(argv) parses its own arguments
"""

import os
import re
import sys
import time
import argparse
import unicodedata

from nanochat.common import ArgumentParser

# -----------------------------------------------------------------------------
# colour

_CODES = {
    "bold": "1", "dim": "2", "italic": "3", "underline": "4", "reverse": "7",
    "black": "30", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36",
    "white": "37", "gray": "90",
    "on_red": "41", "on_green": "42", "on_yellow": "43", "on_blue": "44", "on_magenta": "45",
    "on_cyan": "46", "on_gray": "100",
}
# background colours that alternate token by token (black text on top stays readable)
TOKEN_BACKGROUNDS = ("on_cyan", "on_yellow", "on_green", "on_magenta", "on_blue", "on_red")

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def use_color(stream=None):
    """True when output to `stream` (stdout by default) should be coloured."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def style(text, *styles, stream=None):
    """`text` wrapped in ANSI codes for the given styles ('red', 'bold', 'on_cyan', ...), or
    unchanged when colour is off for `stream`."""
    text = str(text)
    if not styles or not use_color(stream):
        return text
    unknown = [s for s in styles if s not in _CODES]
    assert not unknown, f"unknown styles {unknown}"
    return f"\x1b[{';'.join(_CODES[s] for s in styles)}m{text}\x1b[0m"


def strip_ansi(text):
    return _ANSI_RE.sub("", str(text))


def display_width(text):
    """Columns the text takes on a terminal: ANSI codes take none, wide (CJK) characters two."""
    width = 0
    for ch in strip_ansi(text):
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text, width, align="<"):
    """Pad to `width` display columns; align is '<' (left), '>' (right) or '^' (centre)."""
    gap = max(0, width - display_width(text))
    if align == ">":
        return " " * gap + str(text)
    if align == "^":
        return " " * (gap // 2) + str(text) + " " * (gap - gap // 2)
    return str(text) + " " * gap


def good(text, stream=None):
    return style(text, "green", stream=stream)


def warn(text, stream=None):
    return style(text, "yellow", stream=stream)


def bad(text, stream=None):
    return style(text, "red", "bold", stream=stream)


def muted(text, stream=None):
    return style(text, "gray", stream=stream)


def heading(text, stream=None):
    """A section title: bold in colour, underlined with '=' always (readable when piped)."""
    return style(text, "bold", "cyan", stream=stream) + "\n" + "=" * display_width(text)


# -----------------------------------------------------------------------------
# numbers

def fmt_num(x, digits=4):
    """A number for a table: ints with thousands separators, floats with `digits` decimals
    (scientific when very large or small), None as '-'."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if x in (float("inf"), float("-inf")):
            return str(x)
        if abs(x) >= 1e6 or (0 < abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_si(x, unit="", digits=3):
    """1234567 -> '1.23M' (k, M, G, T, P, E)."""
    if x is None:
        return "-"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.{digits}g}{prefix}{unit}"
    return f"{x:.{digits}g}{unit}"


def fmt_bytes(n):
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    for factor, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


# -----------------------------------------------------------------------------
# tables and bars

def table(rows, headers=None, align=None, indent=0):
    """An aligned text table. Cells may be any value (formatted with fmt_num) and may carry colour.

    align: a string with one character per column, '<' left or '>' right; by default numbers are
    right-aligned and text left-aligned, judged on the first row."""
    rows = [[c if isinstance(c, str) else fmt_num(c) for c in row] for row in rows]
    ncols = max([len(r) for r in rows] + [len(headers) if headers else 0])
    rows = [r + [""] * (ncols - len(r)) for r in rows]
    if align is None:
        first = rows[0] if rows else [""] * ncols
        align = "".join(">" if re.fullmatch(r"[-+]?[\d,.]+(e[-+]?\d+)?[%kMGTBx]?|-|nan", strip_ansi(c).strip()) else "<"
                        for c in first)
    align = (align + "<" * ncols)[:ncols]
    widths = [0] * ncols
    for r in ([headers] if headers else []) + rows:
        for j, c in enumerate(r):
            widths[j] = max(widths[j], display_width(c))
    lead = " " * indent
    lines = []
    if headers:
        lines.append(lead + "  ".join(pad(style(h, "bold"), widths[j], align[j]) for j, h in enumerate(headers)).rstrip())
        lines.append(lead + "  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(lead + "  ".join(pad(c, widths[j], align[j]) for j, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def key_values(pairs, indent=2):
    """'key: value' lines with the values aligned."""
    pairs = [(str(k), v if isinstance(v, str) else fmt_num(v)) for k, v in pairs]
    w = max((display_width(k) for k, _ in pairs), default=0)
    return "\n".join(" " * indent + pad(k + ":", w + 1) + " " + v for k, v in pairs)


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction, width=30, color=None):
    """A horizontal bar of `width` columns filled to `fraction` (0..1), with 1/8-column precision."""
    fraction = 0.0 if fraction != fraction else min(1.0, max(0.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, rest = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[rest] if rest else "")
    text = text + " " * (width - display_width(text))
    return style(text, color) if color else text


def histogram(values, bins=10, width=40, label_fmt="{:.4g}"):
    """Text histogram lines: one row per bin with its range, a bar and the count."""
    values = list(values)
    if not values:
        return "  (no values)"
    lo, hi = min(values), max(values)
    if hi == lo:
        hi = lo + 1
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    rows = []
    for i, c in enumerate(counts):
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        rows.append([f"{label_fmt.format(a)}–{label_fmt.format(b)}", bar(c / top, width), f"{c:,}"])
    return table(rows, align="<<>", indent=2)


# -----------------------------------------------------------------------------
# progress

class progress:
    """Wrap an iterable and show 'desc  42% |███   | 42/100 3.1s' on stderr while it runs.

    On a terminal the line redraws in place; when stderr is not a terminal nothing is printed
    until the end, and then one summary line (so logs stay clean)."""

    def __init__(self, iterable=None, total=None, desc="", stream=None, min_interval=0.1):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.n = 0
        self.t0 = time.time()
        self._last = 0.0

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.time()
        if self.tty and now - self._last >= self.min_interval:
            self._last = now
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()

    def _line(self):
        elapsed = time.time() - self.t0
        if self.total:
            frac = self.n / self.total
            return f"{self.desc} {100 * frac:3.0f}% |{bar(frac, 20)}| {self.n}/{self.total} {elapsed:.1f}s"
        return f"{self.desc} {self.n} {elapsed:.1f}s"

    def close(self):
        if self.n < 0:
            return
        if self.tty:
            self.stream.write("\r" + self._line() + "\x1b[K\n")
            self.stream.flush()
        self.n = -1  # closed; a second close() does nothing


# -----------------------------------------------------------------------------
# argument parsing and the error boundary

def make_parser(description, examples=(), prog=None):
    """An argument parser (nanochat.common.ArgumentParser: a bad flag is one line, exit code 2) whose
    --help ends with the given example command lines."""
    epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples)) if examples else None
    return ArgumentParser(prog=prog, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
