"""The chat CLI in a terminal (a pseudo-terminal here): the line can be edited, and the up arrow
brings back messages typed in an earlier session, kept in chat_cli_history in the base dir."""

import os
import sys
import time
import select
import shutil
import subprocess

import pytest

pytest.importorskip("readline")
pty = pytest.importorskip("pty")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEFT, UP = b"\x1b[D", b"\x1b[A"


def chat_in_a_terminal(base, lines):
    """Type each of `lines` (raw keys, Enter included) at the CLI's prompt; returns what the terminal showed."""
    master, slave = pty.openpty()
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", TERM="xterm")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_cli", "-i", "base", "-m", "4", "-t", "0"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    shown = b""

    def read_until(marker, count, deadline):
        nonlocal shown
        while shown.count(marker) < count:
            assert time.time() < deadline, shown.decode(errors="replace")[-2000:]
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    shown += os.read(master, 4096)
                except OSError:  # the program ended
                    break

    deadline = time.time() + 300
    read_until(b"User: ", 1, deadline)
    for n, keys in enumerate(lines, 2):
        os.write(master, keys)
        read_until(b"User: ", n, deadline)
    os.write(master, b"quit\r")
    assert proc.wait(timeout=120) == 0, shown.decode(errors="replace")[-2000:]
    os.close(master)
    return shown.decode(errors="replace")


@pytest.mark.slow
def test_the_line_is_editable_and_earlier_sessions_come_back_with_the_up_arrow(tiny_run, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    history = base / "chat_cli_history"
    # "wrld", three steps left, "o": the model is asked "world"
    chat_in_a_terminal(base, [b"wrld" + LEFT * 3 + b"o\r"])
    assert history.read_text().split() == ["world", "quit"]
    # a new session: up twice passes "quit" and brings back "world", which is asked again
    shown = chat_in_a_terminal(base, [UP + UP + b"\r"])
    assert shown.count("Assistant: ") == 1
    assert history.read_text().split() == ["world", "quit", "world", "quit"]
