"""
Run untrusted, model-written Python (HumanEval completions, the python tool) and report what happened.

    result = execute_code("print(1 + 1)", timeout=5.0)
    result.success, result.stdout   # True, "2\n"

    result = run_tests(solution="def add(a, b):\n    return a + b",
                       tests="assert add(2, 3) == 5", functions=["add"])
    result.success                  # True: the tests, run in another sandbox, passed

Two layers, because only one of them is a boundary.

1. OS isolation (Linux with bubblewrap). Each child interpreter runs under `bwrap`, the
   sandboxing tool of Flatpak, packaged by every major distribution (Debian: `bubblewrap`). It
   gets new PID, network, IPC, UTS and mount namespaces: it sees no process but its own
   children, has no network (only a loopback device of its own), and sees a read-only view of
   the system made of /usr, the Python installation and this file (compiled), plus a private
   writable /scratch (a tmpfs of MAX_SCRATCH_BYTES) as its scratch dir, HOME and TMPDIR. No
   /home, /root, /etc (but the loader's cache), /tmp, working tree or parent environment
   (--clearenv). All capabilities are dropped and no_new_privs is set, so no setuid program
   helps. A seccomp filter (built below, no library needed) refuses
   the system calls a sandboxed program never needs and kernel exploits love: new namespaces
   (unshare, setns, clone with CLONE_NEW*), mount, ptrace, process_vm_*, bpf, perf_event_open,
   userfaultfd, io_uring, keyrings, module loading, pidfd_send_signal / pidfd_getfd; another
   syscall ABI (32-bit calls on x86_64) kills the process. When the parent runs as root, bwrap
   runs privileged (no user namespace) and the child drops to uid/gid 65534 (nobody) before it
   runs the code, so RLIMIT_NPROC holds (the kernel ignores it for root) and nothing it can
   reach is its own; as an ordinary user, bwrap uses a user namespace, and nested ones are
   refused. The child is pid 1 of its namespace (--as-pid-1): when it ends, the kernel kills
   every process left in the namespace, and bwrap, its parent, exits only after reaping it. So
   once bwrap has exited nothing the code started is alive: no double-forked daemon outlives a
   call. On a timeout the parent kills the child through a pidfd (never a recycled pid) and
   waits for bwrap; --die-with-parent ends it all if this process dies first. (As pid 1 the
   child ignores signals it sends itself: abort() ends in SIGSEGV, the CPU limit in SIGKILL.)
   Why bwrap: it is small, audited, unprivileged-friendly and does namespaces, the read-only
   view, the tmpfs, capability dropping and seccomp in one exec. `unshare` (util-linux) gives
   namespaces too, but we would have to build the mount tree, pivot_root and drop capabilities
   ourselves, which is exactly the code that is easy to get wrong. Containers (docker, podman)
   need a daemon or images; nsjail and firejail are less widely packaged.

2. The Python-level guard (everywhere). Inside the child, resource limits (address space, CPU
   seconds, file size, open files, processes) and a "reliability guard" that swaps destructive
   functions for ones raising PermissionError: os.system / fork / kill / exec* / spawn* ...,
   subprocess, deleting, renaming, chmod, writing outside the scratch dir, sockets and DNS,
   raising limits, ctypes, exit() / quit(). It turns the *accidents* of model-written code
   (an endless loop, a huge list, a stray shutil.rmtree) into clean errors. It is not a boundary:
   Python code can reach the originals in many ways (fresh imports of posix or _io, gc, frames).

Without bwrap (macOS, a laptop without the package, user namespaces switched off, a container
that forbids them), the code runs with only layer 2, in its own process group, in a fresh
scratch dir under the system temp dir that is deleted afterwards. Then a program written to
escape can read your files and this process's environment, signal or freeze this process, write
where your user may write, open sockets and leave processes behind; when run as root, also fork
without limit. execute_code says so on stderr, once per process. isolation_available() tells
which case you are in; install bubblewrap to get layer 1 (runs/test.sh does).

Who decides the verdict. Anything the untrusted process can write, it can forge, and anything in
its memory it can read: a status pipe, a secret nonce, the exit code. So:
- execute_code's `success` is the parent's reading of the child's exit status (0: the code ran to
  its end; the child's report is only used to word the error). A program that escapes the guard
  can still end itself with status 0 before its own last line: for a lone program "it finished"
  can only ever be the program's word. Do not grade anything with it.
- run_tests is how to grade. The solution runs in one sandbox, the tests in another; they talk
  over two pipes only, in plain values (None, bool, int, float, complex, str, bytes and lists,
  tuples, sets, dicts of them, as JSON). In the tests' process each name in `functions` is a
  stand-in that sends the arguments to the solution's process and returns the value it answers.
  The verdict is the tests' process's exit status, read by the parent after it is gone. The
  solution cannot reach that process (another PID namespace, no shared files), its answers are
  decoded into plain values (no pickle, no objects with a rigged __eq__), and a solution that
  crashes, lies about the protocol or exits early simply leaves a stand-in without an answer,
  which fails the test. So a forged "passed" is impossible as long as layer 1 holds; without it,
  the solution could still attack the tests' process, like anything else on the machine.
Arguments are copied, so a solution that modifies its arguments in place cannot be seen to.
"""

import json
import math
import os
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MAX_OUTPUT_BYTES = 64 * 1024  # per stream; enough for any test report, small enough for a prompt
MAX_REPORT_BYTES = 8 * 1024
MAX_FILE_BYTES = 16 * 1024**2  # RLIMIT_FSIZE: the largest file the code may write
MAX_SCRATCH_BYTES = 64 * 1024**2  # size of the isolated scratch tmpfs (it is memory)
MAX_OPEN_FILES = 64  # RLIMIT_NOFILE
MAX_PROCESSES = 32  # RLIMIT_NPROC (threads count too); holds under isolation, not for root without it
MAX_MESSAGE_BYTES = 16 * 1024**2  # one call or answer between the tests and the solution
SANDBOX_UID = 65534  # nobody: who the isolated child becomes when the parent is root
SANDBOX_SCRATCH_DIR = "/scratch"  # the isolated child's scratch dir (also its HOME and TMPDIR)
SANDBOX_DIR = "/sandbox"  # where the isolated child finds this file, compiled
TRUNCATION_NOTE = "\n... [output truncated]"
# how RLIMIT_CPU ends a child: SIGKILL at the hard limit (= the soft one here), SIGXCPU otherwise;
# the parent itself only kills after it has seen the child run past the wall clock
_CPU_LIMIT_SIGNALS = (signal.SIGXCPU, signal.SIGKILL)


@dataclass
class ExecutionResult:
    success: bool  # the child ran to its end (execute_code) / the tests passed (run_tests); see docstring
    stdout: str
    stderr: str
    error: str | None  # one line, e.g. "ZeroDivisionError: division by zero"; None on success
    timeout: bool
    memory_exceeded: bool

    def __repr__(self):
        def short(text, n=60):
            return repr(text if len(text) <= n else text[:n] + "...")
        return (f"ExecutionResult(success={self.success}, timeout={self.timeout}, "
                f"memory_exceeded={self.memory_exceeded}, error={self.error!r}, "
                f"stdout={short(self.stdout)}, stderr={short(self.stderr)})")


def execute_code(code: str, timeout: float = 5.0,
                 maximum_memory_bytes: int | None = 256 * 1024**2) -> ExecutionResult:
    """Run `code` in a sandboxed child interpreter; wait at most `timeout` seconds of wall time.

    `maximum_memory_bytes` caps the child's address space (the interpreter itself needs ~30 MB);
    None means no memory limit. `success` is the child's exit status: see the module docstring
    for why that is the program's own word, and run_tests for a verdict it cannot forge."""
    assert timeout > 0, "timeout must be positive"
    with _Sandbox("program", code, timeout, maximum_memory_bytes) as program:
        deadline = time.monotonic() + timeout
        finished = program.run_until(deadline)
        program.stop()
        timed_out = not finished or program.exit_signal() in _CPU_LIMIT_SIGNALS
        report = program.report()
        success = program.exit_status() == 0 and not timed_out
        memory_exceeded = not success and not timed_out and (
            report.get("outcome") == "memory_error"
            or (not report and "MemoryError" in program.stderr()))
        if success:
            error = None
        elif timed_out:
            error = f"timed out after {timeout:g} s"
        else:
            error = report.get("error") or ("MemoryError" if memory_exceeded
                                            else program.describe_exit())
        return ExecutionResult(success=success, stdout=program.stdout(), stderr=program.stderr(),
                               error=error, timeout=timed_out, memory_exceeded=memory_exceeded)


def run_tests(solution: str, tests: str, functions: list[str], setup: str = "",
              timeout: float = 5.0,
              maximum_memory_bytes: int | None = 256 * 1024**2) -> ExecutionResult:
    """Run untrusted `solution` in one sandbox and trusted `setup` + `tests` in another.

    In the tests, each name in `functions` calls the function of that name defined by the
    solution, with plain values in and out (see the module docstring). `success` means the tests
    ran to their end; it is decided from the tests' process, which the solution cannot touch.
    stdout and stderr are the solution's, followed on stderr by the tests' traceback if they
    failed; `timeout` covers both processes together."""
    assert timeout > 0, "timeout must be positive"
    assert functions, "the tests need at least one function of the solution to call"
    calls_read, calls_write = os.pipe()  # tests -> solution
    answers_read, answers_write = os.pipe()  # solution -> tests
    try:
        with _Sandbox("solution", solution, timeout, maximum_memory_bytes,
                      channel_fds=(calls_read, answers_write)) as answering, \
             _Sandbox("tests", tests, timeout, maximum_memory_bytes,
                      channel_fds=(answers_read, calls_write),
                      extra_config={"setup": setup, "functions": list(functions)}) as testing:
            for fd in (calls_read, calls_write, answers_read, answers_write):
                os.close(fd)  # now only the two children hold the ends, so EOF means "gone"
            calls_read = calls_write = answers_read = answers_write = None
            deadline = time.monotonic() + timeout
            finished = testing.run_until(deadline, others=[answering])
            # the solution sees end-of-file on its calls and leaves; give it a moment to flush
            answering.run_until(min(deadline, time.monotonic() + 0.5), others=[testing])
            testing.stop()
            answering.stop()
            timed_out = not finished or testing.exit_signal() in _CPU_LIMIT_SIGNALS
            report = testing.report()  # trustworthy: written by the tests' own process
            success = testing.exit_status() == 0 and not timed_out
            memory_exceeded = not success and not timed_out and (
                report.get("outcome") == "memory_error"
                or answering.report().get("outcome") == "memory_error")
            if success:
                error = None
            elif timed_out:
                error = f"timed out after {timeout:g} s"
            else:
                error = report.get("error") or testing.describe_exit()
            stderr = answering.stderr()
            if testing.stderr():
                stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + testing.stderr()
            return ExecutionResult(success=success, stdout=answering.stdout(), stderr=stderr,
                                   error=error, timeout=timed_out, memory_exceeded=memory_exceeded)
    finally:
        for fd in (calls_read, calls_write, answers_read, answers_write):
            if fd is not None:
                os.close(fd)


# -----------------------------------------------------------------------------
# finding out whether this machine can isolate: bubblewrap, probed once per process

_isolation = None  # {"bwrap": path or None, "problem": why not, "as_root": bool, "disable_userns": bool}
_warned_without_isolation = False


def isolation_available() -> bool:
    """True when child interpreters run under bwrap (layer 1); False: only the Python guard."""
    return _get_isolation()["bwrap"] is not None


def _get_isolation():
    global _isolation
    if _isolation is None:
        _isolation = _probe_isolation()
    return _isolation


def _probe_isolation():
    none = {"bwrap": None, "as_root": False, "disable_userns": False}
    if not sys.platform.startswith("linux"):
        return {**none, "problem": f"bubblewrap needs Linux; this is {sys.platform}"}
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return {**none, "problem": "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"}
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.split()[-1]
        version = tuple(int(part) for part in version.split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        version = (0, 0)
    if version < (0, 5):
        return {**none, "problem": f"{bwrap} is too old (need bubblewrap 0.5 or newer for --size)"}
    candidate = {"bwrap": bwrap, "problem": None, "as_root": os.geteuid() == 0,
                 "disable_userns": version >= (0, 8)}
    # the probe is a real run with the real profile: if this works, every run can
    try:
        with _Sandbox("program", "pass", 10.0, None, isolation=candidate) as probe:
            probe.run_until(time.monotonic() + 10.0)
            probe.stop()
            if probe.exit_status() == 0:
                return candidate
            why = probe.stderr().strip().splitlines()[-1:] or [probe.describe_exit()]
    except OSError as e:
        why = [str(e)]
    return {**none, "problem": f"bwrap cannot create a sandbox here: {why[0]}"}


def _warn_once_without_isolation(problem):
    global _warned_without_isolation
    if _warned_without_isolation:
        return
    _warned_without_isolation = True
    sys.stderr.write(
        "\n" + "!" * 78 + "\n"
        "WARNING: nanochat.execution runs untrusted code WITHOUT OS isolation.\n"
        f"  Why: {problem}.\n"
        "  Only the Python-level guard is in place. It stops accidents, it is NOT a security\n"
        "  boundary: code written to escape can read your files and this process's\n"
        "  environment, kill this process, forge its verdict and leave processes running.\n"
        "  Install bubblewrap to isolate it (runs/test.sh does this on Debian/Ubuntu).\n"
        + "!" * 78 + "\n\n")
    sys.stderr.flush()


# -----------------------------------------------------------------------------
# the bwrap command line and its seccomp filter

def _child_environment(scratch_dir):
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "HOME": scratch_dir, "TMPDIR": scratch_dir}


def _interpreter():
    """The real interpreter behind a virtual environment; the sandbox sees only the stdlib."""
    return os.path.realpath(sys.executable)


def _bwrap_command(isolation, info_fd, seccomp_fd):
    python = _interpreter()
    command = [isolation["bwrap"], "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):  # merged-/usr symlinks or real dirs
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    command += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    python_dirs = {os.path.realpath(p) for p in
                   (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(python)))}
    made = set()
    for path in sorted(python_dirs):
        if path == "/usr" or path.startswith("/usr/"):
            continue
        # bwrap makes missing parents 0700 (the host's /root is); the dropped uid must pass them
        parents = [os.path.dirname(path)]
        while parents[-1] != "/":
            parents.append(os.path.dirname(parents[-1]))
        for parent in reversed(parents[:-1]):
            if parent not in made:
                made.add(parent)
                command += ["--perms", "0755", "--dir", parent]
        command += ["--ro-bind", path, path]
    command += [
        "--ro-bind", _compiled_dir(), SANDBOX_DIR,
        "--dev", "/dev", "--proc", "/proc",
        "--perms", "1777", "--size", str(MAX_SCRATCH_BYTES), "--tmpfs", SANDBOX_SCRATCH_DIR,
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "sandbox", "--as-pid-1", "--die-with-parent", "--new-session",
        "--clearenv", "--chdir", SANDBOX_SCRATCH_DIR, "--cap-drop", "ALL",
        "--info-fd", str(info_fd)]
    for name, value in _child_environment(SANDBOX_SCRATCH_DIR).items():
        command += ["--setenv", name, value]
    if isolation["as_root"]:
        # no user namespace: the child is real root with only these two capabilities, which it
        # uses to become SANDBOX_UID before it reads the code
        command += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user"] + (["--disable-userns"] if isolation["disable_userns"] else [])
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    return command + ["--", *_child_command(python, SANDBOX_DIR)]


def _child_command(python, directory):
    """`python` running _child_main of this file, compiled in `directory` (see _compiled_dir).
    Flags: isolated mode (no PYTHON* variables, no user site), no .pyc writing, no site module,
    so the code gets the standard library only and the interpreter starts in ~20 ms, not ~100."""
    bootstrap = (f"import sys; sys.path.insert(0, {directory!r}); import execution; "
                 "del sys.path[0]; execution._child_main()")
    return [python, "-I", "-B", "-S", "-c", bootstrap, "--child"]


_compiled = None


def _compiled_dir():
    """A private folder holding this file compiled (execution.pyc, which `import` loads without
    a source), made once per process: compiling this file costs a child more than starting the
    interpreter, and PYTHONDONTWRITEBYTECODE or a read-only checkout leave no __pycache__."""
    global _compiled
    if _compiled is None:
        import atexit
        import py_compile
        folder, maker = tempfile.mkdtemp(prefix="nanochat-exec-compiled-"), os.getpid()
        # only the process that made it removes it, not a forked copy of this process at its exit
        atexit.register(lambda: os.getpid() == maker and shutil.rmtree(folder, ignore_errors=True))
        py_compile.compile(__file__, cfile=os.path.join(folder, "execution.pyc"), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        _compiled = folder
    return _compiled


# System calls refused with EPERM (numbers from <asm/unistd_64.h> and <asm-generic/unistd.h>).
_DENIED_SYSCALLS = {
    # name: (x86_64, aarch64)
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "pidfd_send_signal": (424, 424), "pidfd_getfd": (438, 438),
}
_CLONE, _CLONE3 = {"x86_64": 56, "aarch64": 220}, 435
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_CLONE_NEW_FLAGS = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME


def _seccomp_program():
    """A classic-BPF seccomp filter (an array of struct sock_filter) for bwrap --seccomp, or None
    on an architecture whose syscall numbers are not listed here (namespaces still apply)."""
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    LOAD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|..|K, BPF_RET|K
    ALLOW, KILL, ERRNO, EPERM, ENOSYS = 0x7FFF0000, 0x80000000, 0x00050000, 1, 38
    program = []

    def op(code, k, jump_true=0, jump_false=0):
        program.append(struct.pack("HBBI", code, jump_true, jump_false, k))

    op(LOAD, 4)  # seccomp_data.arch
    op(JEQ, _AUDIT_ARCH[machine], 1, 0)
    op(RET, KILL)  # another syscall ABI (int 0x80 on x86_64) would bypass the numbers below
    op(LOAD, 0)  # seccomp_data.nr
    if machine == "x86_64":
        op(JGE, 0x40000000, 0, 1)
        op(RET, KILL)  # the x32 ABI, same reason
    for numbers in _DENIED_SYSCALLS.values():
        op(JEQ, numbers[column], 0, 1)
        op(RET, ERRNO | EPERM)
    op(JEQ, _CLONE3, 0, 1)
    op(RET, ERRNO | ENOSYS)  # its flags sit in memory a filter cannot read; libc falls back to clone
    op(JEQ, _CLONE[machine], 0, 3)
    op(LOAD, 16)  # low half of clone's first argument, the flags (little-endian)
    op(JSET, _CLONE_NEW_FLAGS, 0, 1)
    op(RET, ERRNO | EPERM)
    op(RET, ALLOW)
    return b"".join(program)


# -----------------------------------------------------------------------------
# parent side: one sandboxed child interpreter, its pipes, its end

class _Sandbox:
    """One child interpreter (under bwrap, or plainly in its own process group), the bytes fed to
    its stdin, a bounded prefix of its stdout, stderr and report pipe, and its teardown."""

    def __init__(self, role, code, timeout, maximum_memory_bytes, channel_fds=(),
                 extra_config=None, isolation=None):
        self.isolation = isolation or _get_isolation()
        self.isolated = self.isolation["bwrap"] is not None
        if not self.isolated:
            _warn_once_without_isolation(self.isolation["problem"])
        self.scratch_dir = None if self.isolated else tempfile.mkdtemp(prefix="nanochat-exec-")
        self.proc = self.sandbox_pidfd = None
        self.stop_called = False
        self.code = code.encode("utf-8", errors="surrogatepass")
        self.config = {"role": role, "timeout": timeout,
                       "maximum_memory_bytes": maximum_memory_bytes,
                       "scratch_dir": SANDBOX_SCRATCH_DIR if self.isolated
                       else os.path.realpath(self.scratch_dir),
                       "drop_to_uid": SANDBOX_UID if self.isolated and self.isolation["as_root"]
                       else None,
                       # without a user namespace or uid of its own, RLIMIT_NPROC would count
                       # every process of the user and could stop the code from starting a thread
                       "max_processes": MAX_PROCESSES if self.isolated else None,
                       "channel_fds": list(channel_fds), **(extra_config or {})}
        self.channel_fds = tuple(channel_fds)

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.stop()
        if self.sandbox_pidfd is not None:
            os.close(self.sandbox_pidfd)
            self.sandbox_pidfd = None
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)  # never follows symlinks out
            self.scratch_dir = None

    def _start(self):
        report_read, report_write = os.pipe()
        self.report_fd = report_read
        info_read = None
        self.config["report_fd"] = report_write
        to_close = [report_write]
        pass_fds = [report_write, *self.channel_fds]
        try:
            if self.isolated:
                info_read, info_write = os.pipe()
                to_close.append(info_write)
                seccomp_fd = self._seccomp_fd()
                if seccomp_fd is not None:
                    to_close.append(seccomp_fd)
                    pass_fds.append(seccomp_fd)
                command = _bwrap_command(self.isolation, info_write, seccomp_fd)
                pass_fds.append(info_write)
                cwd, env = "/", {"PATH": "/usr/bin:/bin"}  # bwrap's own environment stays bare
            else:
                command = _child_command(sys.executable, _compiled_dir())
                cwd, env = self.scratch_dir, _child_environment(self.scratch_dir)
            self.proc = subprocess.Popen(
                command + [json.dumps(self.config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=env, pass_fds=pass_fds,
                start_new_session=True)  # own process group, so one killpg reaches it all
        except BaseException:
            for fd in (report_read, info_read):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in to_close:
                os.close(fd)  # the child holds its own copies; ours would keep the pipes open
        self._start_pipes()
        if self.isolated:
            self._learn_sandbox_pid(info_read)

    @staticmethod
    def _seccomp_fd():
        program = _seccomp_program()
        if program is None:
            return None
        read_fd, write_fd = os.pipe()
        os.write(write_fd, program)  # a few hundred bytes: fits in the pipe buffer
        os.close(write_fd)
        return read_fd

    def _learn_sandbox_pid(self, info_read):
        """bwrap writes {"child-pid": N}: the host pid of the child, pid 1 of the sandbox, whose
        death tears the whole PID namespace down. Held as a pidfd so stop() never hits a recycled
        pid (bwrap cannot reap the child before we read this unless it already exited, and the
        pid counter would have to wrap around within that moment)."""
        raw, pid = b"", None
        deadline = time.monotonic() + 10.0
        try:
            while pid is None and select.select([info_read], [], [],
                                                max(deadline - time.monotonic(), 0))[0]:
                chunk = os.read(info_read, 4096)
                if not chunk:
                    return  # bwrap failed before it made a sandbox
                raw += chunk
                try:
                    pid = json.loads(raw)["child-pid"]
                except (ValueError, KeyError, TypeError):
                    continue  # not all of it yet
        finally:
            os.close(info_read)
        if pid is not None:
            try:
                self.sandbox_pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pass  # the child is already gone, or no pidfds (old kernel): stop() kills the group

    # -- pipes ---------------------------------------------------------------

    def _start_pipes(self):
        self.stdout_fd, self.stderr_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        self.limits = {self.stdout_fd: MAX_OUTPUT_BYTES, self.stderr_fd: MAX_OUTPUT_BYTES,
                       self.report_fd: MAX_REPORT_BYTES}
        self.chunks = {fd: bytearray() for fd in self.limits}
        self.truncated = {fd: False for fd in self.limits}
        self.open_fds = set(self.limits)
        self.pending = memoryview(self.code)
        for fd in self.limits:
            os.set_blocking(fd, False)
        os.set_blocking(self.proc.stdin.fileno(), False)

    def run_until(self, deadline, others=()):
        """Move data for this child and `others` until this child has closed its pipes and exited
        (True) or the deadline passes (False)."""
        return self._pump(deadline, others) and self._wait_without_reaping(deadline)

    def _pump(self, deadline, others=()):
        """Move data until this child has closed its pipes (True) or the deadline passes (False).
        One selector over every pipe of every child, no threads."""
        sandboxes = [self, *others]
        with selectors.DefaultSelector() as selector:
            for box in sandboxes:
                for fd in box.open_fds:
                    selector.register(fd, selectors.EVENT_READ, (box, "read"))
                if box.pending is not None and not box.proc.stdin.closed:
                    selector.register(box.proc.stdin.fileno(), selectors.EVENT_WRITE, (box, "write"))
            while self.open_fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for key, _ in selector.select(remaining):
                    box, action = key.data
                    if action == "read":
                        if not box._read(key.fd):
                            selector.unregister(key.fd)
                    elif not box._write_stdin():
                        selector.unregister(key.fd)
        return True

    def _write_stdin(self):
        """Feed more code; False once it is all written (stdin closed)."""
        try:
            written = os.write(self.proc.stdin.fileno(), self.pending[:65536])
        except BlockingIOError:
            return True
        except OSError:
            written = len(self.pending)  # the child is gone; nothing left to feed
        self.pending = self.pending[written:]
        if self.pending:
            return True
        self.pending = None
        self.proc.stdin.close()  # EOF tells the child the whole program has arrived
        return False

    def _read(self, fd):
        """Keep a bounded prefix of what arrives; False at end-of-file."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not data:
            self.open_fds.discard(fd)
            return False
        room = self.limits[fd] - len(self.chunks[fd])
        self.chunks[fd] += data[:max(room, 0)]
        # past the limit we keep draining (so the child never blocks on a full pipe) but drop it
        self.truncated[fd] |= len(data) > room
        return True

    def _wait_without_reaping(self, deadline):
        """Wait for the child to exit but leave it a zombie, so its pid (= the process group id)
        cannot be reused by an unrelated process before stop() kills the group."""
        while True:
            if hasattr(os, "waitid"):
                if os.waitid(os.P_PID, self.proc.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            elif self.proc.poll() is not None:  # macOS before Python 3.13 has no waitid
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    # -- the end ---------------------------------------------------------------

    def stop(self):
        """Kill everything the child started and wait until it is gone. Under bwrap the child is
        the namespace's pid 1: killing it makes the kernel kill the rest, and bwrap exits only
        after reaping it. Without bwrap, the process group is killed."""
        if self.stop_called:
            return
        self.stop_called = True
        if self.sandbox_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.sandbox_pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass  # already gone
            self._wait_without_reaping(time.monotonic() + 10.0)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already empty
        self.proc.wait()
        self._pump(time.monotonic() + 0.2)  # whatever was still in the pipe buffers
        self.open_fds.clear()
        os.close(self.report_fd)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()

    # -- what came back ----------------------------------------------------------

    def _text(self, fd):
        text = self.chunks[fd].decode("utf-8", errors="replace")
        return text + TRUNCATION_NOTE if self.truncated[fd] else text

    def stdout(self):
        return self._text(self.stdout_fd)

    def stderr(self):
        return self._text(self.stderr_fd)

    def report(self):
        """What the child said about how it ended: wording only, never the verdict."""
        try:
            report = json.loads(self.chunks[self.report_fd].decode("utf-8"))
            return report if isinstance(report, dict) else {}
        except (UnicodeDecodeError, ValueError):
            return {}  # the child died (or was killed) before it could report

    def exit_status(self):
        return self.proc.returncode

    def exit_signal(self):
        """The signal that ended the child, or None. bwrap passes one on as 128 + its number."""
        code = self.proc.returncode
        if code is not None and code < 0:
            return -code
        if self.isolated and code is not None and 128 < code < 128 + 65:
            return code - 128
        return None

    def describe_exit(self):
        number = self.exit_signal()
        if number is not None:
            try:
                return f"killed by signal {signal.Signals(number).name}"
            except ValueError:
                return f"killed by signal {number}"
        return f"the process exited with code {self.proc.returncode} before the code finished"


# -----------------------------------------------------------------------------
# plain values across the pipe between the tests and the solution

def _to_wire(value):
    """A plain value as JSON-ready data; containers and floats are tagged so a tuple comes back
    a tuple and nan stays nan. Anything else (functions, generators, objects) cannot cross."""
    if value is None or isinstance(value, bool):  # bool before int: True is an int too
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return ["float", repr(float(value))]
    if isinstance(value, complex):
        return ["complex", repr(complex(value).real), repr(complex(value).imag)]
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(value).hex()]
    for kind, tag in ((list, "list"), (tuple, "tuple"), (set, "set"), (frozenset, "frozenset")):
        if isinstance(value, kind):
            return [tag, [_to_wire(item) for item in value]]
    if isinstance(value, dict):
        return ["dict", [[_to_wire(k), _to_wire(v)] for k, v in value.items()]]
    raise TypeError(f"a {type(value).__name__} cannot be passed between the tests and the "
                    f"solution (only None, bool, int, float, complex, str, bytes and "
                    f"lists, tuples, sets and dicts of them)")


def _from_wire(data):
    """The inverse of _to_wire. On the tests' side this reads what the untrusted solution sent,
    so it builds nothing but plain built-in values and raises ValueError on anything else."""
    if data is None or type(data) in (bool, int, str, float):
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("malformed value")
    tag, rest = data[0], data[1:]
    if tag == "float" and len(rest) == 1 and type(rest[0]) is str:
        return float(rest[0])
    if tag == "complex" and len(rest) == 2 and all(type(part) is str for part in rest):
        return complex(float(rest[0]), float(rest[1]))
    if tag == "bytes" and len(rest) == 1 and type(rest[0]) is str:
        return bytes.fromhex(rest[0])
    if len(rest) != 1 or type(rest[0]) is not list:
        raise ValueError("malformed value")
    items = rest[0]
    if tag == "list":
        return [_from_wire(item) for item in items]
    if tag == "tuple":
        return tuple(_from_wire(item) for item in items)
    if tag == "set":
        return {_from_wire(item) for item in items}
    if tag == "frozenset":
        return frozenset(_from_wire(item) for item in items)
    if tag == "dict":
        if not all(type(pair) is list and len(pair) == 2 for pair in items):
            raise ValueError("malformed value")
        return {_from_wire(k): _from_wire(v) for k, v in items}
    raise ValueError("malformed value")


class _Channel:
    """One JSON message per line over a pair of pipes (child side)."""

    def __init__(self, read_fd, write_fd):
        self.reader = os.fdopen(read_fd, "rb")
        self.write_fd = write_fd

    def send(self, message):
        data = memoryview((json.dumps(message) + "\n").encode())
        while data:
            data = data[os.write(self.write_fd, data):]

    def receive(self):
        """The next message, or None at end-of-file; ValueError if it is not a message."""
        line = self.reader.readline(MAX_MESSAGE_BYTES + 1)
        if not line:
            return None
        if len(line) > MAX_MESSAGE_BYTES:
            raise ValueError(f"a message longer than {MAX_MESSAGE_BYTES} bytes")
        return json.loads(line)


# -----------------------------------------------------------------------------
# child side: limits, privileges, the reliability guard, running the code

def _set_resource_limits(timeout, maximum_memory_bytes, max_processes):
    import resource

    def limit(name, value):
        kind = getattr(resource, name, None)
        if kind is None:
            return  # not every platform has every limit
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # e.g. macOS refuses RLIMIT_AS; the wall-clock timeout still holds

    if maximum_memory_bytes is not None:
        limit("RLIMIT_AS", maximum_memory_bytes)  # allocations beyond this raise MemoryError
        limit("RLIMIT_DATA", maximum_memory_bytes)
    # CPU seconds as a backstop for the parent's wall clock: a busy loop is killed even if the
    # parent is stuck. One extra second so the wall clock normally fires first.
    limit("RLIMIT_CPU", math.ceil(timeout) + 1)
    limit("RLIMIT_FSIZE", MAX_FILE_BYTES)
    limit("RLIMIT_NOFILE", MAX_OPEN_FILES)
    if max_processes is not None:
        limit("RLIMIT_NPROC", max_processes)  # per uid (of the user namespace): see the docstring
    limit("RLIMIT_CORE", 0)
    # Past RLIMIT_FSIZE a write should fail with an OSError, not kill the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _drop_privileges(uid):
    """Become `uid` for good (real, effective and saved ids, no supplementary groups); the kernel
    then clears every capability. Refuse to go on if that did not happen."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise SystemExit("the sandbox could not drop its privileges; refusing to run the code")


def _install_reliability_guard(scratch_dir):
    """Replace destructive functions with ones that raise PermissionError (see module docstring)."""
    import builtins
    import io
    import posix
    import socket
    import _posixsubprocess
    import _socket
    import resource

    def refuse(what):
        def refused(*args, **kwargs):
            raise PermissionError(f"{what} is disabled inside the nanochat sandbox")
        return refused

    def is_inside_scratch(path):
        if isinstance(path, int):
            return True  # an already-open file descriptor; it was checked when it was opened
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
        return real == os.devnull or os.path.commonpath([real, scratch_dir]) == scratch_dir

    def scratch_only(name, function, path_count=1):
        def guarded(*args, **kwargs):
            if kwargs.get("src_dir_fd") is not None or kwargs.get("dst_dir_fd") is not None \
                    or kwargs.get("dir_fd") is not None:
                raise PermissionError(f"os.{name} with dir_fd is disabled inside the nanochat sandbox")
            for path in args[:path_count]:
                if not is_inside_scratch(path):
                    raise PermissionError(f"os.{name}({path!r}) is outside the scratch directory "
                                          f"{scratch_dir}, the only place the code may change files")
            return function(*args, **kwargs)
        return guarded

    # os and posix hold the same functions; patch both so `import posix` is no way around.
    refused_os = [
        "system", "popen", "kill", "killpg", "fork", "forkpty", "_exit", "putenv", "unsetenv",
        "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chflags", "lchflags",
        "truncate", "link", "symlink", "mknod", "mkfifo", "utime",
        "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
        "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
        "setgroups", "setsid", "setpgid", "setpgrp", "setpriority", "plock",
        "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
        "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
        "posix_spawn", "posix_spawnp",
    ]
    scratch_only_os = {"remove": 1, "unlink": 1, "rmdir": 1, "mkdir": 1,
                       "rename": 2, "renames": 2, "replace": 2}
    for module in (os, posix):
        for name in refused_os:
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))
        for name, path_count in scratch_only_os.items():
            if hasattr(module, name):
                setattr(module, name, scratch_only(name, getattr(module, name), path_count))

    real_os_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            return scratch_only("open", real_os_open)(path, flags, *args, **kwargs)
        return real_os_open(path, flags, *args, **kwargs)
    os.open = posix.open = guarded_os_open

    real_open = io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and not is_inside_scratch(file):
            raise PermissionError(f"opening {file!r} for writing is refused: only the scratch "
                                  f"directory {scratch_dir} may be written")
        return real_open(file, mode, *args, **kwargs)
    builtins.open = io.open = guarded_open

    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse(f"shutil.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput",
                 "getstatusoutput"):
        setattr(subprocess, name, refuse(f"subprocess.{name}"))
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    for name in ("setrlimit", "prlimit"):
        if hasattr(resource, name):
            setattr(resource, name, refuse(f"resource.{name}"))

    # No network: new sockets and DNS look-ups raise. Wrapping an existing file descriptor is still
    # allowed (socket(fileno=...)), so socketpair() and hence asyncio keep working. socket.socket's
    # own __init__ calls _socket.socket.__init__ by name, so patching the C type catches code that
    # grabbed socket.socket before the guard ran.
    def refuse_new_sockets(real_init):
        def init(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError("network access (creating a socket) is disabled inside "
                                      "the nanochat sandbox")
            real_init(self, family, type, proto, fileno)
        return init

    NoNewSocket = type("socket", (socket.socket,),
                       {"__init__": refuse_new_sockets(socket.socket.__init__)})
    NoNewRawSocket = type("socket", (_socket.socket,),
                          {"__init__": refuse_new_sockets(_socket.socket.__init__)})
    socket.socket = socket.SocketType = NoNewSocket
    _socket.socket = _socket.SocketType = NoNewRawSocket
    for name in ("create_connection", "create_server", "fromfd", "getaddrinfo", "gethostbyname",
                 "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, refuse(f"socket.{name}"))

    # ctypes could call any C function directly; a None in sys.modules makes `import` fail.
    sys.modules["ctypes"] = None
    sys.modules["_ctypes"] = None

    builtins.exit = refuse("exit()")
    builtins.quit = refuse("quit()")
    builtins.help = refuse("help()")


def _run_user_code(code, module, filename):
    """Run `code` in `module`'s namespace; return (outcome, one-line error or None)."""
    import linecache
    import traceback

    # register the source so tracebacks show the offending lines
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
        return "ok", None
    except MemoryError:
        sys.stderr.write("MemoryError: the code used more memory than the sandbox allows\n")
        return "memory_error", "MemoryError: the code used more memory than the sandbox allows"
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the code did not finish
        try:
            # drop our own frame so the traceback starts at the user's code
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
            error = traceback.format_exception_only(type(e), e)[-1].strip()
        except MemoryError:
            error = type(e).__name__
        return "error", error[:2000]


def _main_module(filename):
    import types
    main = types.ModuleType("__main__")
    main.__file__ = filename
    sys.modules["__main__"] = main  # so pickle, dataclasses, ... find the code's classes
    sys.argv = [filename]
    return main


def _one_line(error):
    import traceback
    return traceback.format_exception_only(type(error), error)[-1].strip()[:2000]


def _answer_calls(main, channel):
    """The solution's side: run each call the tests send, answer with the value or the error,
    until the tests close the pipe."""
    while True:
        try:
            message = channel.receive()
        except ValueError:
            return
        if message is None:
            return
        try:
            _, name, args, kwargs = message
            function = main.__dict__[name]
            value = _to_wire(function(*_from_wire(args), **_from_wire(kwargs)))
            answer = ["return", value]
        except BaseException as e:  # the tests see it as an exception raised by the function
            answer = ["raise", _one_line(e)]
        try:
            channel.send(answer)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            channel.send(["raise", _one_line(e)])


class SolutionError(Exception):
    """Raised in the tests when a call into the solution did not return a value."""
    __module__ = "nanochat.execution"  # the child imports this file as `execution`


def _stand_in(name, channel):
    """In the tests' process: a function that calls `name` in the solution's process."""
    def call(*args, **kwargs):
        channel.send(["call", name, _to_wire(args), _to_wire(kwargs)])
        try:
            answer = channel.receive()
        except (ValueError, RecursionError) as e:
            raise SolutionError(f"{name}() sent an answer that is not a message: {e}") from None
        if answer is None:
            raise SolutionError(f"the solution's process ended during the call to {name}()")
        if type(answer) is list and len(answer) == 2 and answer[0] == "return":
            try:
                return _from_wire(answer[1])
            except (ValueError, TypeError, RecursionError, OverflowError) as e:
                raise SolutionError(f"{name}() returned something that is not a plain value "
                                    f"({e})") from None
        if type(answer) is list and len(answer) == 2 and answer[0] == "raise":
            raise SolutionError(f"{name}() raised {str(answer[1])[:2000]}")
        raise SolutionError(f"{name}() sent an answer that is not a message")
    call.__name__ = call.__qualname__ = name
    return call


def _run_tests_role(config, tests, channel):
    """The tests' side: wait for the solution to load, then run setup and tests with a stand-in
    for each of its functions. Returns (outcome, error) like _run_user_code."""
    try:
        hello = channel.receive()
    except (ValueError, RecursionError):
        hello = None
    if hello != ["ready"]:
        detail = hello[1] if type(hello) is list and len(hello) == 2 and hello[0] == "failed" \
            else "it did not say it was ready"
        error = _one_line(SolutionError(f"the solution failed before the tests ran: "
                                        f"{str(detail)[:1000]}"))
        sys.stderr.write(error + "\n")
        return "error", error
    main = _main_module("<tests>")
    outcome, error = _run_user_code(config["setup"], main, "<setup>")
    if outcome != "ok":
        return outcome, f"the test setup failed: {error}"
    for name in config["functions"]:
        setattr(main, name, _stand_in(name, channel))
    return _run_user_code(tests, main, "<tests>")


def _child_main():
    config = json.loads(sys.argv[-1])
    code = sys.stdin.buffer.read().decode("utf-8", errors="surrogatepass")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() then sees end-of-file instead of waiting forever
    os.close(devnull)
    real_exit, real_write = os._exit, os.write  # kept before the guard replaces them
    role = config["role"]
    channel = _Channel(*config["channel_fds"]) if config["channel_fds"] else None

    _set_resource_limits(config["timeout"], config["maximum_memory_bytes"], config["max_processes"])
    if config["drop_to_uid"] is not None:
        _drop_privileges(config["drop_to_uid"])
    _install_reliability_guard(config["scratch_dir"])

    if role == "tests":
        outcome, error = _run_tests_role(config, code, channel)
    else:
        outcome, error = _run_user_code(code, _main_module("<solution>"), "<solution>")
        if role == "solution":
            channel.send(["ready"] if outcome == "ok" else ["failed", error])
            if outcome == "ok":
                _answer_calls(sys.modules["__main__"], channel)

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    # the parent decides from the exit status; this report only words the error
    real_write(config["report_fd"], json.dumps({"outcome": outcome, "error": error}).encode())
    # _exit skips atexit handlers and threads the code left behind
    real_exit(0 if outcome == "ok" else 1)

