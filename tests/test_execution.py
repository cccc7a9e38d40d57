"""The sandbox for model-written code: it runs normal code, and contains loops, memory hogs and
destructive calls. Every destructive test aims at a throwaway canary in pytest's tmp_path, so even
a broken guard could only harm that canary; the fork bomb and the 2 GB allocation only run after a
harmless probe has shown that the guard / memory limit is in place."""

import os
import socket
import time

import psutil
import pytest

from nanochat.execution import MAX_OUTPUT_BYTES, TRUNCATION_NOTE, ExecutionResult, execute_code


def assert_no_process_left(scratch_dir):
    """No process whose command line names this run's scratch dir (the child, or anything it
    forked) may outlive execute_code."""
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(scratch_dir in part for part in proc.info["cmdline"] or []):
            leftovers.append(proc.pid)
    assert leftovers == []


def first_line(result):
    return result.stdout.splitlines()[0]


# -----------------------------------------------------------------------------
# normal code

def test_print_runs_fast_and_stdout_is_captured():
    started = time.perf_counter()
    result = execute_code("print(1)\nprint('héllo')")
    elapsed = time.perf_counter() - started
    assert isinstance(result, ExecutionResult)
    assert result.success and result.stdout == "1\nhéllo\n" and result.stderr == ""
    assert result.error is None and not result.timeout and not result.memory_exceeded
    assert elapsed < 1.0
    assert "success=True" in repr(result) and len(repr(result)) < 300


def test_code_runs_as_main_and_stderr_is_captured():
    code = "import sys\nif __name__ == '__main__':\n    print('main')\nprint('oops', file=sys.stderr)"
    result = execute_code(code)
    assert result.success and result.stdout == "main\n" and result.stderr == "oops\n"


def test_exception_is_reported_with_traceback():
    result = execute_code("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert not result.success and not result.timeout and not result.memory_exceeded
    assert result.error == "ZeroDivisionError: division by zero"
    assert result.stdout == "before\n"
    assert "Traceback" in result.stderr and "return 1 / 0" in result.stderr


def test_syntax_error_is_reported():
    result = execute_code("def f(:\n    pass")
    assert not result.success and result.error.startswith("SyntaxError")


@pytest.mark.parametrize("code", ["exit()", "quit()", "import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exiting_early_is_not_success(code):
    # otherwise a HumanEval completion could "pass" by exiting before the asserts run
    result = execute_code(code + "\nassert False")
    assert not result.success


def test_input_sees_end_of_file_instead_of_hanging():
    result = execute_code("input()", timeout=3.0)
    assert not result.timeout and result.error.startswith("EOFError")


def test_long_output_is_truncated():
    result = execute_code("print('x' * 200_000)")
    assert result.success
    assert result.stdout.endswith(TRUNCATION_NOTE)
    assert len(result.stdout) == MAX_OUTPUT_BYTES + len(TRUNCATION_NOTE)


def test_files_can_be_written_in_the_scratch_dir_which_is_removed_afterwards():
    code = ("import os, tempfile\n"
            "print(os.getcwd())\n"
            "open('notes.txt', 'w').write('hi')\n"
            "os.rename('notes.txt', 'renamed.txt')\n"
            "print(open('renamed.txt').read())\n"
            "with tempfile.NamedTemporaryFile() as f:\n"
            "    f.write(b'x')\n")
    result = execute_code(code)
    assert result.success, result
    scratch_dir = first_line(result)
    assert result.stdout.splitlines()[1] == "hi"
    assert "nanochat-exec-" in scratch_dir and not os.path.exists(scratch_dir)


def test_environment_is_clean():
    os.environ["NANOCHAT_TEST_SECRET"] = "hunter2"
    try:
        result = execute_code("import os; print(sorted(os.environ))")
    finally:
        del os.environ["NANOCHAT_TEST_SECRET"]
    assert result.success and "NANOCHAT_TEST_SECRET" not in result.stdout


# -----------------------------------------------------------------------------
# time and memory

def test_infinite_loop_times_out_and_the_process_group_is_killed():
    started = time.perf_counter()
    result = execute_code("import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass",
                          timeout=1.0)
    elapsed = time.perf_counter() - started
    assert result.timeout and not result.success and not result.memory_exceeded
    assert result.error == "timed out after 1 s"
    assert 0.9 < elapsed < 3.0
    scratch_dir = first_line(result)  # output printed before the kill is kept
    assert not os.path.exists(scratch_dir)
    assert_no_process_left(scratch_dir)


def test_sleeping_code_times_out_on_the_wall_clock():
    # sleeping uses no CPU, so only the parent's wall clock can stop it
    result = execute_code("import time\ntime.sleep(60)", timeout=0.5)
    assert result.timeout and not result.success


def test_allocating_2gb_is_a_memory_error_and_leaves_the_test_process_alone():
    limit = 256 * 1024**2
    probe = execute_code("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])",
                         maximum_memory_bytes=limit)
    assert probe.stdout.strip() == str(limit)  # only then is the 2 GB allocation safe to try
    rss_before = psutil.Process().memory_info().rss
    result = execute_code("x = bytearray(2 * 1024**3)\nprint('allocated')",
                          maximum_memory_bytes=limit)
    assert result.memory_exceeded and not result.success and not result.timeout
    assert "allocated" not in result.stdout and result.error.startswith("MemoryError")
    assert psutil.Process().memory_info().rss - rss_before < 50 * 1024**2


def test_no_memory_limit_when_none():
    result = execute_code("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])",
                          maximum_memory_bytes=None)
    assert result.success and int(result.stdout) == -1  # RLIM_INFINITY


def test_limits_cannot_be_raised_by_the_code():
    result = execute_code("import resource\n"
                          "resource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert not result.success and result.error.startswith("PermissionError")


# -----------------------------------------------------------------------------
# destructive calls, each aimed at a canary outside the scratch dir

@pytest.fixture
def canary_dir(tmp_path):
    path = tmp_path / "canary"
    path.mkdir()
    (path / "keep.txt").write_text("still here")
    return path


def assert_canary_intact(canary_dir):
    assert (canary_dir / "keep.txt").read_text() == "still here"


def test_os_system_is_refused(tmp_path):
    target = tmp_path / "made_by_system"
    result = execute_code(f"import os\nos.system('touch {target}')")
    assert not result.success and "os.system is disabled" in result.error
    assert not target.exists()


@pytest.mark.parametrize("call", ["subprocess.run(['touch', TARGET])",
                                  "subprocess.Popen(['touch', TARGET]).wait()",
                                  "subprocess.check_output(['touch', TARGET])",
                                  "os.popen('touch ' + TARGET).read()",
                                  "os.execv('/usr/bin/touch', ['touch', TARGET])",
                                  "os.posix_spawn('/usr/bin/touch', ['touch', TARGET], {})"])
def test_starting_programs_is_refused(tmp_path, call):
    target = tmp_path / "made_by_subprocess"
    code = f"import os, subprocess\nTARGET = {str(target)!r}\n{call}"
    result = execute_code(code)
    assert not result.success and result.error.startswith("PermissionError"), result
    time.sleep(0.05)  # a real child would have had time to create the file
    assert not target.exists()


@pytest.mark.parametrize("call", ["shutil.rmtree(CANARY)",
                                  "shutil.move(CANARY, CANARY + '_moved')",
                                  "os.remove(CANARY + '/keep.txt')",
                                  "os.unlink(CANARY + '/keep.txt')",
                                  "os.rename(CANARY + '/keep.txt', 'stolen.txt')",
                                  "os.replace(CANARY + '/keep.txt', CANARY + '/other.txt')",
                                  "os.truncate(CANARY + '/keep.txt', 0)",
                                  "os.chmod(CANARY + '/keep.txt', 0)",
                                  "os.link(CANARY + '/keep.txt', 'hardlink.txt')"])
def test_deleting_or_changing_files_outside_the_scratch_dir_is_refused(canary_dir, call):
    mode_before = os.stat(canary_dir / "keep.txt").st_mode
    code = f"import os, shutil\nCANARY = {str(canary_dir)!r}\n{call}"
    result = execute_code(code)
    assert not result.success and result.error.startswith("PermissionError"), result
    assert_canary_intact(canary_dir)
    assert sorted(p.name for p in canary_dir.iterdir()) == ["keep.txt"]
    assert os.stat(canary_dir / "keep.txt").st_mode == mode_before


@pytest.mark.parametrize("write", ["open(TARGET, 'w').write('x')",
                                   "open(TARGET, mode='a').write('x')",
                                   "open(TARGET, 'xb').write(b'x')",
                                   "import io; io.open(TARGET, 'w').write('x')",
                                   "import pathlib; pathlib.Path(TARGET).write_text('x')",
                                   "import os; os.open(TARGET, os.O_CREAT | os.O_WRONLY)",
                                   "import os; os.mkdir(TARGET)",
                                   "import shutil; open('a.txt', 'w').write('x'); "
                                   "shutil.copy('a.txt', TARGET)"])
def test_writing_outside_the_scratch_dir_is_refused(tmp_path, write):
    target = tmp_path / "written_by_sandbox"
    result = execute_code(f"TARGET = {str(target)!r}\n{write}")
    assert not result.success and result.error.startswith("PermissionError"), result
    assert not target.exists()


def test_appending_to_an_existing_file_outside_is_refused(canary_dir):
    result = execute_code(f"open({str(canary_dir / 'keep.txt')!r}, 'a').write(' or not')")
    assert not result.success
    assert_canary_intact(canary_dir)


def test_reading_files_is_still_allowed(canary_dir):
    result = execute_code(f"print(open({str(canary_dir / 'keep.txt')!r}).read())")
    assert result.success and result.stdout == "still here\n"


def test_opening_a_socket_to_localhost_is_refused():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        for code in [f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
                     f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')"]:
            result = execute_code(code)
            assert not result.success and "disabled inside the nanochat sandbox" in result.error, result
        listener.settimeout(0.1)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_asyncio_still_works_without_network():
    # the event loop's self-pipe is a socketpair; wrapping existing fds stays allowed
    code = "import asyncio\nasync def f():\n    return 42\nprint(asyncio.run(f()))"
    result = execute_code(code)
    assert result.success and result.stdout == "42\n", result


def test_fork_bomb_is_refused_and_nothing_is_left_running():
    # Harmless probe first: if fork were not refused, both copies would just reach the end.
    probe = execute_code("import os\nos.fork()")
    assert not probe.success and "os.fork is disabled" in probe.error
    for code in ["import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    os.fork()",
                 "import os, posix\nprint(os.getcwd(), flush=True)\nwhile True:\n    posix.fork()",
                 "import os, multiprocessing\nprint(os.getcwd(), flush=True)\n"
                 "while True:\n    multiprocessing.Process(target=print).start()"]:
        result = execute_code(code, timeout=2.0)
        assert not result.success and not result.timeout and "fork" in result.error, result
        assert_no_process_left(first_line(result))


def test_ctypes_is_blocked():
    result = execute_code("import ctypes")
    assert not result.success and result.error.startswith("ModuleNotFoundError")
