"""The sandbox for model-written code: it runs normal code, and contains loops, memory hogs and
destructive calls; run_tests grades a solution from a process the solution cannot reach. Every
destructive test aims at a throwaway canary in pytest's tmp_path, so even a broken guard could
only harm that canary; the fork bomb and the 2 GB allocation only run after a harmless probe has
shown that the guard / memory limit is in place. These tests hold with and without OS isolation
(bubblewrap); tests/test_sandbox_adversarial.py attacks the isolation itself."""

import json
import os
import socket
import struct
import time

import psutil
import pytest

from nanochat import execution
from nanochat.execution import (MAX_OUTPUT_BYTES, SANDBOX_SCRATCH_DIR, TRUNCATION_NOTE,
                                ExecutionResult, execute_code, isolation_available, run_tests)

# A program's first line, printed before it does anything else: its PID namespace (which every
# process it starts shares, under isolation) and its scratch dir (in every command line without).
WHERE_AM_I = "import os\nprint(os.readlink('/proc/self/ns/pid'), os.getcwd(), flush=True)\n"


def leftover_processes(where):
    """Processes still alive from the run whose WHERE_AM_I line is `where`."""
    namespace, scratch_dir = where.split()
    ours = os.readlink("/proc/self/ns/pid")
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            in_its_namespace = namespace != ours and \
                os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace
        except OSError:
            in_its_namespace = False
        names_its_scratch = scratch_dir != SANDBOX_SCRATCH_DIR and \
            any(scratch_dir in part for part in proc.info["cmdline"] or [])
        if in_its_namespace or names_its_scratch:
            leftovers.append(proc.pid)
    return leftovers


def assert_no_process_left(result):
    """Nothing the child started (or the child itself) may outlive the call."""
    assert leftover_processes(first_line(result)) == []


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
    if isolation_available():
        # a private tmpfs that vanished with the sandbox; the host's /tmp never saw the file
        assert scratch_dir == SANDBOX_SCRATCH_DIR
        assert not os.path.exists(os.path.join(SANDBOX_SCRATCH_DIR, "renamed.txt"))
    else:
        assert "nanochat-exec-" in scratch_dir and not os.path.exists(scratch_dir)


def test_the_scratch_dir_is_fresh_for_every_run():
    assert execute_code("open('left_behind.txt', 'w').write('x')").success
    result = execute_code("import os; print(sorted(os.listdir('.')))")
    assert result.success and result.stdout == "[]\n"


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
    result = execute_code(WHERE_AM_I + "while True:\n    pass", timeout=1.0)
    elapsed = time.perf_counter() - started
    assert result.timeout and not result.success and not result.memory_exceeded
    assert result.error == "timed out after 1 s"
    assert 0.9 < elapsed < 3.0
    assert_no_process_left(result)  # output printed before the kill is kept


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


def test_files_outside_are_invisible_under_isolation_and_readable_without(canary_dir):
    result = execute_code(f"print(open({str(canary_dir / 'keep.txt')!r}).read())")
    if isolation_available():
        assert not result.success and result.error.startswith("FileNotFoundError")
    else:  # the guard only refuses writing: reading is the first gap the docstring names
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
    for code in ["while True:\n    os.fork()",
                 "import posix\nwhile True:\n    posix.fork()",
                 "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()"]:
        result = execute_code(WHERE_AM_I + code, timeout=2.0)
        assert not result.success and not result.timeout and "fork" in result.error, result
        assert_no_process_left(result)


def test_ctypes_is_blocked():
    result = execute_code("import ctypes")
    assert not result.success and result.error.startswith("ModuleNotFoundError")


# -----------------------------------------------------------------------------
# who decides the verdict

def test_a_forged_report_followed_by_a_crash_is_a_failure():
    # the report pipe is named in the child's own command line; writing "ok" there and dying
    # used to count as success. Now the parent reads the exit status.
    code = ("import json, os\n"
            "config = json.loads(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
            "os.write(config['report_fd'], b'{\"outcome\": \"ok\", \"error\": null}')\n"
            "os.abort()\n")
    result = execute_code(code)
    assert not result.success and result.error.startswith("killed by signal"), result


ESCAPE_TO_EXIT_0 = ("import sys\n"
                    "del sys.modules['posix']\n"
                    "import posix\n"  # a fresh copy of the C module: the real _exit
                    "posix._exit(0)\n")


def test_a_lone_program_can_still_claim_it_finished_which_is_why_tests_run_apart():
    # execute_code's success is the program's own word: escaping the guard to exit 0 early works
    assert execute_code(ESCAPE_TO_EXIT_0 + "assert False").success
    # graded by run_tests, the same trick leaves the tests without an answer: a failure
    result = run_tests(ESCAPE_TO_EXIT_0 + "def add(a, b):\n    return 0\n",
                       "assert add(2, 3) == 5", functions=["add"])
    assert not result.success and "SolutionError" in result.error, result


# -----------------------------------------------------------------------------
# run_tests: the solution in one sandbox, the tests in another

def test_run_tests_passes_a_right_solution_and_keeps_its_output():
    result = run_tests("def add(a, b):\n    print('adding', a, b)\n    return a + b\n",
                       "assert add(2, 3) == 5\nassert add('a', 'b') == 'ab'", functions=["add"])
    assert result.success and result.error is None, result
    assert result.stdout == "adding 2 3\nadding a b\n"


def test_run_tests_fails_a_wrong_solution_with_the_tests_traceback():
    result = run_tests("def add(a, b):\n    return a - b\n", "assert add(2, 3) == 5", ["add"])
    assert not result.success and not result.timeout and result.error == "AssertionError"
    assert "<tests>" in result.stderr and "assert add(2, 3) == 5" in result.stderr


def test_run_tests_setup_defines_helpers_for_the_tests_and_the_stand_in_wins():
    setup = 'def double(x):\n    return 2 * x\ndef f(x):\n    """to be written"""\n'
    result = run_tests("def f(x):\n    return x * 2\n", "assert f(3) == double(3)",
                       functions=["f"], setup=setup)
    assert result.success, result


@pytest.mark.parametrize("solution,error", [
    ("def f(x):\n    return 1 / 0\n", "SolutionError: f() raised ZeroDivisionError"),
    ("def f(x):\n    return object()\n", "SolutionError: f() raised TypeError: a object cannot"),
    ("def f(x):\n    return (i for i in x)\n", "SolutionError: f() raised TypeError: a generator"),
    ("def f(x):\n    raise SystemExit(0)\n", "SolutionError: f() raised SystemExit"),
    ("1 / 0\ndef f(x):\n    return x\n",
     "SolutionError: the solution failed before the tests ran: ZeroDivisionError"),
    ("def g(x):\n    return x\n", "SolutionError: f() raised KeyError: 'f'"),
])
def test_run_tests_reports_a_solution_that_does_not_answer(solution, error):
    result = run_tests(solution, "assert f([1]) == [1]", functions=["f"])
    assert not result.success and result.error.startswith("nanochat.execution." + error), result


def test_run_tests_times_out_on_a_looping_solution():
    started = time.perf_counter()
    result = run_tests("def f():\n    while True:\n        pass\n", "f()", ["f"], timeout=1.0)
    assert result.timeout and not result.success and result.error == "timed out after 1 s"
    assert time.perf_counter() - started < 3.0


def test_plain_values_cross_unchanged():
    solution = "def echo(*args, **kwargs):\n    return args[0] if args else kwargs\n"
    tests = ("import math\n"
             "values = [None, True, 0, -7, 2**80, 1.5, -0.0, math.inf, 'héllo', b'\\x00\\xff',\n"
             "          2 + 3j, [1, [2, (3,)]], (1, 'a'), {1, 2}, frozenset({3}),\n"
             "          {'k': [1], 2: (None,)}, ()]\n"
             "for v in values:\n"
             "    back = echo(v)\n"
             "    assert back == v and type(back) is type(v), (v, back)\n"
             "assert math.isnan(echo(math.nan))\n"
             "assert echo(x=[1]) == {'x': [1]}\n")
    result = run_tests(solution, tests, ["echo"])
    assert result.success, result


@pytest.mark.parametrize("data", [
    ["list"], ["list", "x"], ["tuple", [1], 2], ["dict", [[1]]], ["float", 1], ["bytes", "zz"],
    ["object", []], {"a": 1}, ["set", [["list", []]]],
])
def test_malformed_values_from_the_solution_are_refused(data):
    with pytest.raises((ValueError, TypeError)):
        execution._from_wire(json.loads(json.dumps(data)))


def test_rigged_values_arrive_as_plain_ones():
    # an int subclass whose __eq__ says yes to everything crosses as the plain int it holds
    solution = ("class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                "def f():\n    return Yes(0)\n")
    result = run_tests(solution, "assert f() == 1", ["f"])
    assert not result.success and result.error == "AssertionError", result


# -----------------------------------------------------------------------------
# the OS isolation layer

def test_seccomp_filter_is_whole_instructions_and_checks_the_architecture():
    program = execution._seccomp_program()
    if os.uname().machine not in ("x86_64", "aarch64"):
        assert program is None
        return
    assert len(program) % 8 == 0
    assert struct.unpack("HBBI", program[:8]) == (0x20, 0, 0, 4)  # load the arch first
    assert struct.unpack("HBBI", program[-8:]) == (0x06, 0, 0, 0x7FFF0000)  # allow the rest


def test_without_isolation_the_warning_is_loud_and_said_once_per_process(monkeypatch, capsys):
    monkeypatch.setattr(execution, "_isolation",
                        {"bwrap": None, "problem": "testing the fallback", "as_root": False,
                         "disable_userns": False})
    monkeypatch.setattr(execution, "_warned_without_isolation", False)
    first = execute_code("print(1)")
    second = run_tests("def f():\n    return 1\n", "assert f() == 1", ["f"])
    assert first.success and first.stdout == "1\n" and second.success, (first, second)
    err = capsys.readouterr().err
    assert err.count("WITHOUT OS isolation") == 1
    assert "testing the fallback" in err and "NOT a security" in err


def test_isolation_is_available_in_ci():
    # runs/test.sh installs bubblewrap; CI must not quietly fall back to the Python guard
    if not os.environ.get("CI"):
        pytest.skip("only enforced in CI (CI=true)")
    assert isolation_available(), execution._get_isolation()["problem"]


needs_isolation = pytest.mark.skipif(not isolation_available(),
                                     reason="bubblewrap cannot isolate on this machine")


@needs_isolation
def test_the_isolated_child_sees_no_other_process_no_home_and_a_read_only_system():
    code = ("import os\n"
            "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            "print(sorted(os.listdir('/')))\n"
            f"print(os.access('/usr', os.W_OK), os.access({SANDBOX_SCRATCH_DIR!r}, os.W_OK))\n"
            "print(os.getuid())\n")
    result = execute_code(code)
    assert result.success, result
    pids, top, writable, uid = result.stdout.splitlines()
    assert pids == "[1]"  # the child is pid 1 of its own namespace
    assert "'home'" not in top and "'work'" not in top and "'var'" not in top
    assert writable == "False True"
    if os.geteuid() == 0:
        assert uid == str(execution.SANDBOX_UID)


@needs_isolation
def test_the_isolated_child_has_limits_on_processes_and_scratch_space():
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
            "try:\n"
            "    open('big', 'wb').write(b'x' * (100 * 1024**2))\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n")
    result = execute_code(code, maximum_memory_bytes=512 * 1024**2)
    assert result.success, result
    assert result.stdout.splitlines() == [str(execution.MAX_PROCESSES), "OSError"]
