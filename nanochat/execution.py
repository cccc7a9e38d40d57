"""
Run untrusted, model-written Python (HumanEval completions, the python tool) and report what happened.

    result = execute_code("print(1 + 1)", timeout=5.0)
    result.success, result.stdout   # True, "2\n"

Each call starts a fresh Python interpreter (`python -I -B`, a clean environment) in its own
process group, inside a new scratch directory that is deleted afterwards. The child runs this same
file as a script (see `_child_main` at the bottom): it reads the code from stdin, sets resource
limits on itself (address space, CPU seconds, file size, open files), installs a "reliability
guard" that swaps destructive functions for ones that raise PermissionError, runs the code and
writes one status line (ok / error / memory_error) on a separate pipe. The parent feeds stdin,
collects at most MAX_OUTPUT_BYTES of stdout and of stderr, and kills the whole process group when
the wall-clock timeout runs out.

What the guard switches off: os.system / fork / kill / exec* / spawn* / setsid ..., subprocess,
_posixsubprocess, deleting, renaming, chmod/chown, links and device nodes, shutil.rmtree / move /
chown, opening files for writing (and os.mkdir) anywhere but the scratch directory, creating
sockets and DNS look-ups, raising resource limits, ctypes, and the builtins exit / quit / help.
Deleting and renaming inside the scratch directory still works, so tempfile does too.

Be honest about what this is: it contains the *accidents* of model-written code (an endless loop,
a huge list, a stray `shutil.rmtree`), not a determined attacker. Python code can reach the
originals in many ways (gc, frames, already-imported C modules), reading files is not restricted,
and when this runs as root the kernel ignores RLIMIT_NPROC, so the fork guard and the process-group
kill are all that stop a fork bomb. For real isolation run it inside a container or VM with no
network, a read-only root file system and a pids/memory cgroup.
"""

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MAX_OUTPUT_BYTES = 64 * 1024  # per stream; enough for any test report, small enough for a prompt
MAX_STATUS_BYTES = 8 * 1024
MAX_FILE_BYTES = 16 * 1024**2  # RLIMIT_FSIZE: the largest file the code may write in its scratch dir
MAX_OPEN_FILES = 64  # RLIMIT_NOFILE
TRUNCATION_NOTE = "\n... [output truncated]"


@dataclass
class ExecutionResult:
    success: bool  # the code ran to its end without raising (SystemExit counts as raising)
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
    None means no memory limit."""
    assert timeout > 0, "timeout must be positive"
    scratch_dir = tempfile.mkdtemp(prefix="nanochat-exec-")
    try:
        return _run_in_child(code, timeout, maximum_memory_bytes, scratch_dir)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)  # rmtree never follows symlinks out of it


# -----------------------------------------------------------------------------
# parent side: start the child, pump its pipes, enforce the wall clock

def _run_in_child(code, timeout, maximum_memory_bytes, scratch_dir):
    config = {"scratch_dir": os.path.realpath(scratch_dir), "timeout": timeout,
              "maximum_memory_bytes": maximum_memory_bytes}
    status_read, status_write = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
           "HOME": scratch_dir, "TMPDIR": scratch_dir}
    try:
        config["status_fd"] = status_write
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", os.path.abspath(__file__), "--child", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=scratch_dir, env=env, pass_fds=(status_write,),
            start_new_session=True,  # own process group, so one killpg reaches every descendant
        )
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)  # the child holds its own copy; ours would keep the pipe open

    deadline = time.monotonic() + timeout
    pipes = _ChildPipes(proc, code.encode("utf-8", errors="surrogatepass"), status_read)
    try:
        timed_out = not pipes.pump_until(deadline) or not _wait_without_reaping(proc, deadline)
    finally:
        _kill_group(proc)  # also ends anything the code left running in the background
        proc.wait()
        pipes.pump_until(time.monotonic() + 0.2)  # whatever was still in the pipe buffers
        pipes.close()

    stdout, stderr = pipes.text(pipes.stdout_fd), pipes.text(pipes.stderr_fd)
    status = _parse_status(pipes.chunks[status_read])
    timed_out = timed_out or proc.returncode == -signal.SIGXCPU  # RLIMIT_CPU fired first
    outcome = status.get("outcome")
    # no status but a MemoryError on stderr: it struck outside the code (e.g. while reporting)
    memory_exceeded = outcome == "memory_error" or (
        outcome is None and not timed_out and "MemoryError" in stderr)
    success = outcome == "ok" and not timed_out

    if success:
        error = None
    elif timed_out:
        error = f"timed out after {timeout:g} s"
    elif status.get("error"):
        error = status["error"]
    elif memory_exceeded:
        error = "MemoryError"
    else:
        error = _describe_exit(proc.returncode)
    return ExecutionResult(success=success, stdout=stdout, stderr=stderr, error=error,
                           timeout=timed_out, memory_exceeded=memory_exceeded)


class _ChildPipes:
    """Feeds the code into the child's stdin and reads stdout, stderr and the status pipe,
    keeping a bounded prefix of each, without threads (one selector over all four fds)."""

    def __init__(self, proc, code_bytes, status_fd):
        self.proc = proc
        self.pending = memoryview(code_bytes)
        self.limits = {proc.stdout.fileno(): MAX_OUTPUT_BYTES,
                       proc.stderr.fileno(): MAX_OUTPUT_BYTES, status_fd: MAX_STATUS_BYTES}
        self.chunks = {fd: bytearray() for fd in self.limits}
        self.truncated = {fd: False for fd in self.limits}
        self.open_fds = set(self.limits)
        self.status_fd = status_fd
        self.stdout_fd, self.stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self.selector = selectors.DefaultSelector()
        for fd in self.limits:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        self.selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)

    def pump_until(self, deadline):
        """Move data until every output pipe is closed (True) or the deadline passes (False)."""
        while self.open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self.selector.select(remaining):
                if key.fd in self.open_fds:
                    self._read(key.fd)
                else:
                    self._write_stdin()
        return True

    def _write_stdin(self):
        try:
            written = os.write(self.proc.stdin.fileno(), self.pending[:65536])
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError):
            written = len(self.pending)  # the child is gone; nothing left to feed
        self.pending = self.pending[written:]
        if not self.pending:
            self.selector.unregister(self.proc.stdin.fileno())
            self.proc.stdin.close()  # EOF tells the child the whole program has arrived

    def _read(self, fd):
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(fd)
            self.open_fds.discard(fd)
            return
        room = self.limits[fd] - len(self.chunks[fd])
        self.chunks[fd] += data[:max(room, 0)]
        # past the limit we keep draining (so the child never blocks on a full pipe) but drop it
        self.truncated[fd] |= len(data) > room

    def text(self, fd):
        text = self.chunks[fd].decode("utf-8", errors="replace")
        return text + TRUNCATION_NOTE if self.truncated[fd] else text

    def close(self):
        self.selector.close()
        os.close(self.status_fd)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


def _wait_without_reaping(proc, deadline):
    """Wait for the child to exit but leave it a zombie, so its pid (= the process group id) cannot
    be reused by an unrelated process before _kill_group runs. Returns False on timeout."""
    while True:
        if hasattr(os, "waitid"):
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        elif proc.poll() is not None:  # macOS before Python 3.13 has no waitid
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty


def _parse_status(raw):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}  # the child died (or was killed) before it could report


def _describe_exit(returncode):
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"the process exited with code {returncode} before the code finished"


# -----------------------------------------------------------------------------
# child side: limits, the reliability guard, running the code

def _set_resource_limits(timeout, maximum_memory_bytes):
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
    # CPU seconds as a backstop for the parent's wall clock: a busy loop gets SIGXCPU even if the
    # parent is stuck. One extra second so the wall clock normally fires first.
    limit("RLIMIT_CPU", math.ceil(timeout) + 1)
    limit("RLIMIT_FSIZE", MAX_FILE_BYTES)
    limit("RLIMIT_NOFILE", MAX_OPEN_FILES)
    limit("RLIMIT_CORE", 0)
    # Past RLIMIT_FSIZE a write should fail with an OSError, not kill the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


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


def _run_user_code(code):
    """Run `code` as the __main__ module; return (outcome, one-line error or None)."""
    import linecache
    import traceback
    import types

    filename = "<solution>"
    # register the source so tracebacks show the offending lines
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    main = types.ModuleType("__main__")
    main.__file__ = filename
    sys.modules["__main__"] = main  # so pickle, dataclasses, ... find the code's classes
    sys.argv = [filename]
    try:
        exec(compile(code, filename, "exec"), main.__dict__)
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


def _child_main(config):
    code = sys.stdin.buffer.read().decode("utf-8", errors="surrogatepass")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() then sees end-of-file instead of waiting forever
    os.close(devnull)
    status_fd = config["status_fd"]
    real_exit, real_write = os._exit, os.write  # kept before the guard replaces them

    _set_resource_limits(config["timeout"], config["maximum_memory_bytes"])
    _install_reliability_guard(config["scratch_dir"])
    outcome, error = _run_user_code(code)

    status = json.dumps({"outcome": outcome, "error": error}).encode()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    real_write(status_fd, status)
    # _exit skips atexit handlers and threads the code left behind; the status is already written
    real_exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(json.loads(sys.argv[2]))
