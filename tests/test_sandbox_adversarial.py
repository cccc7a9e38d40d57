"""Programs written to escape the sandbox, and proof that each one is contained.

Each program first gets past the Python guard the way an attacker would (a fresh copy of posix,
_io, _socket, _ctypes or subprocess after deleting it from sys.modules, io.FileIO, sqlite3, the
real socket type found through __mro__, the real open() found in the guard's closure) and then
tries to do harm: forge its verdict, signal or read this process (the test runner), read secrets,
write outside its scratch dir, reach the network, leave daemons behind, fork without end. A
program prints "ESCAPED <what>" when a step that must fail succeeds.

Around every program the test keeps canaries: a secret in this process's environment, a file
(holding the secret) in a folder of its own, a canary process (with the secret in its environment)
that the programs try to kill, stop and read, and listening TCP, UDP, unix and abstract-unix
sockets that must receive nothing. After every program: no "ESCAPED", the secret appears nowhere in
what came back, every canary is as it was, no process of the program is alive, and the sandbox
runs the next program correctly.

These tests need the OS isolation (bubblewrap) and are skipped without it: on the Python guard
alone many of these programs would succeed (that is the point). A harmless probe first checks the
isolation is really in place before any harmful program runs; runs/test.sh installs bubblewrap,
and tests/test_execution.py fails in CI when it is missing.
"""

import os
import secrets
import socket
import subprocess
import sys
import time

import psutil
import pytest

from nanochat import execution
from nanochat.execution import execute_code, isolation_available, run_tests

pytestmark = pytest.mark.skipif(not isolation_available(),
                                reason="bubblewrap cannot isolate on this machine: these programs "
                                       "would escape the Python guard alone")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_NAME = "NANOCHAT_CANARY_SECRET"


# -----------------------------------------------------------------------------
# the canaries

@pytest.fixture(scope="module")
def canaries(tmp_path_factory):
    secret = "canary-" + secrets.token_hex(16)
    folder = tmp_path_factory.mktemp("canary")
    (folder / "keep.txt").write_text(secret)
    sockets_dir = tmp_path_factory.mktemp("sockets")
    previous = os.environ.get(SECRET_NAME)
    os.environ[SECRET_NAME] = secret
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                               env={SECRET_NAME: secret}, start_new_session=True)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(sockets_dir / "canary.sock"))
    unix.listen(8)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = "\0nanochat-canary-" + secrets.token_hex(8)
    abstract.bind(abstract_name)
    abstract.listen(8)
    listeners = [tcp, udp, unix, abstract]
    for listener in listeners:
        listener.setblocking(False)
    yield {"secret": secret, "folder": folder, "process": process, "listeners": listeners,
           "mode": os.stat(folder / "keep.txt").st_mode,
           "values": {"SECRET_NAME": SECRET_NAME, "CANARY_DIR": str(folder),
                      "CANARY_FILE": str(folder / "keep.txt"), "PARENT_PID": os.getpid(),
                      "CANARY_PID": process.pid, "TCP_PORT": tcp.getsockname()[1],
                      "UDP_PORT": udp.getsockname()[1], "UNIX_PATH": str(sockets_dir / "canary.sock"),
                      "ABSTRACT": abstract_name, "REPO": REPO}}
    process.kill()
    process.wait()
    for listener in listeners:
        listener.close()
    if previous is None:
        del os.environ[SECRET_NAME]
    else:
        os.environ[SECRET_NAME] = previous


@pytest.fixture(scope="module")
def verified(canaries):
    """A harmless probe: only once the isolation is seen in place may harmful programs run."""
    values = canaries["values"]
    probe = execute_code("import os\n"
                         "print(os.readlink('/proc/self/ns/pid'))\n"
                         "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
                         f"print(os.path.exists({values['CANARY_FILE']!r}), "
                         f"os.path.exists('/proc/{values['PARENT_PID']}'))\n"
                         "print(os.getuid())\n")
    lines = probe.stdout.splitlines()
    if not probe.success or len(lines) != 4:
        pytest.fail(f"the isolation probe did not run: {probe}")
    namespace, pids, visible, uid = lines
    if namespace == os.readlink("/proc/self/ns/pid") or pids != "[1]" or visible != "False False":
        pytest.fail(f"the sandbox is not isolated as it should be: {lines}")
    if os.geteuid() == 0 and uid != str(execution.SANDBOX_UID):
        pytest.fail(f"the sandbox kept root: uid {uid}")
    return canaries


PRELUDE = '''\
import os, sys, importlib
print(os.readlink('/proc/self/ns/pid'), os.getcwd(), flush=True)
{values}

def fresh(name):
    """A new copy of a module, past whatever the guard patched in the old one."""
    for key in [name] + (['_ctypes'] if name == 'ctypes' else []):
        sys.modules.pop(key, None)
    return importlib.import_module(name)

def attempt(what, action):
    try:
        action()
    except BaseException as e:
        print('contained:', what, type(e).__name__, e, flush=True)
    else:
        print('ESCAPED', what, flush=True)

def libc():
    ctypes = fresh('ctypes')
    return ctypes, ctypes.CDLL(None, use_errno=True)

def attempt_syscall(what, number, *args):
    ctypes, c = libc()
    result = c.syscall(number, *[ctypes.c_long(a) for a in args])
    if result == -1:
        print('contained:', what, os.strerror(ctypes.get_errno()), flush=True)
    else:
        print('ESCAPED', what, result, flush=True)

def real_open():
    """The open() the guard wrapped, taken from its closure."""
    return next(c.cell_contents for c in open.__closure__
                if getattr(c.cell_contents, '__name__', '') == 'open')
'''


def with_prelude(code, canaries):
    values = "\n".join(f"{name} = {value!r}" for name, value in canaries["values"].items())
    return PRELUDE.format(values=values) + code


# -----------------------------------------------------------------------------
# checking that a program was contained

def leftover_processes(namespace):
    leftovers = []
    for proc in psutil.process_iter(["status"]):
        try:
            same = os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace
        except OSError:
            continue
        if same and proc.info["status"] != psutil.STATUS_ZOMBIE:
            leftovers.append(proc.pid)
    return leftovers


def assert_contained(result, canaries):
    secret, folder = canaries["secret"], canaries["folder"]
    assert "ESCAPED" not in result.stdout, result.stdout
    for text in (result.stdout, result.stderr, result.error or ""):
        assert secret not in text
    # the program's own processes are all gone
    namespace = result.stdout.split()[0] if result.stdout else ""
    assert namespace.startswith("pid:[") and namespace != os.readlink("/proc/self/ns/pid")
    assert leftover_processes(namespace) == []
    # this process, its environment and files
    assert os.environ[SECRET_NAME] == secret
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == secret
    assert os.stat(folder / "keep.txt").st_mode == canaries["mode"]
    # the canary process: alive, running, its environment intact
    process = psutil.Process(canaries["process"].pid)
    assert canaries["process"].poll() is None
    assert process.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP,
                                    psutil.STATUS_ZOMBIE)
    assert process.environ().get(SECRET_NAME) == secret
    # nobody reached the listening sockets
    for listener in canaries["listeners"]:
        with pytest.raises(BlockingIOError):
            if listener.type == socket.SOCK_DGRAM:
                listener.recvfrom(1024)
            else:
                listener.accept()
    # and the sandbox still serves the next program
    after = execute_code("print(6 * 7)")
    assert after.success and after.stdout == "42\n", after


# -----------------------------------------------------------------------------
# programs: execute_code

WRITES = {
    "posix_open_after_reimport":
        "posix = fresh('posix')\n"
        "attempt('posix.open', lambda: posix.open(CANARY_DIR + '/new.txt', "
        "posix.O_WRONLY | posix.O_CREAT, 0o644))",
    "io_FileIO_truncates": "import io\nattempt('io.FileIO', lambda: io.FileIO(CANARY_FILE, 'w'))",
    "_io_FileIO_appends":
        "import _io\nattempt('_io.FileIO', lambda: _io.FileIO(CANARY_FILE, 'a').write(b'x'))",
    "_io_open_creates":
        "import _io\nattempt('_io.open', lambda: _io.open(CANARY_DIR + '/new.txt', 'w').write('x'))",
    "fresh_io_module":
        "io = fresh('io')\nattempt('fresh io.open', lambda: io.open(CANARY_FILE, 'w').write('x'))",
    "real_open_from_the_guard_closure":
        "attempt('real open', lambda: real_open()(CANARY_FILE, 'w').write('gone'))",
    "sqlite3_creates_a_database":
        "import sqlite3\n"
        "attempt('sqlite3', lambda: sqlite3.connect(CANARY_DIR + '/x.db').execute('create table t(x)'))",
    "sqlite3_attach":
        "import sqlite3\n"
        "db = sqlite3.connect(':memory:')\n"
        "attempt('sqlite3 attach', lambda: (db.execute(f\"attach database '{CANARY_DIR}/y.db' as y\"),"
        " db.execute('create table y.t(x)')))",
    "remove_rename_chmod_truncate_link":
        "posix = fresh('posix')\n"
        "attempt('remove', lambda: posix.remove(CANARY_FILE))\n"
        "attempt('rename', lambda: posix.rename(CANARY_FILE, 'stolen'))\n"
        "attempt('chmod', lambda: posix.chmod(CANARY_FILE, 0))\n"
        "attempt('truncate', lambda: posix.truncate(CANARY_FILE, 0))\n"
        "attempt('link', lambda: posix.link(CANARY_FILE, 'hard'))\n"
        "attempt('symlink', lambda: posix.symlink('/etc/passwd', CANARY_DIR + '/link'))\n"
        "attempt('utime', lambda: posix.utime(CANARY_FILE, (0, 0)))",
    "reloaded_shutil_rmtree":
        "import shutil\nfresh('posix')\nos = fresh('os')\nshutil = fresh('shutil')\n"
        "attempt('rmtree', lambda: shutil.rmtree(CANARY_DIR))",
    "write_into_the_python_installation":
        "attempt('stdlib', lambda: real_open()(sys.prefix + '/lib/python%d.%d/os.py' "
        "% sys.version_info[:2], 'a').write('import evil'))",
    "write_into_usr_and_the_harness":
        "posix = fresh('posix')\n"
        "for path in ['/usr/lib/evil.so', '/sandbox/execution.pyc', '/etc/ld.so.cache', '/evil']:\n"
        "    attempt(path, lambda: posix.open(path, posix.O_WRONLY | posix.O_CREAT, 0o644))",
    "write_kernel_settings":
        "posix = fresh('posix')\n"
        "for path in ['/proc/sys/kernel/core_pattern', '/proc/sysrq-trigger', '/proc/sys/vm/drop_caches']:\n"
        "    attempt(path, lambda: posix.open(path, posix.O_WRONLY))",
    "device_node":
        "import stat\nposix = fresh('posix')\n"
        "attempt('mknod', lambda: posix.mknod('disk', 0o600 | stat.S_IFBLK, posix.makedev(8, 0)))",
    "fill_the_scratch_dir":
        "posix = fresh('posix')\nwritten = 0\n"
        "try:\n"
        "    for i in range(200):\n"
        "        fd = posix.open(f'f{i}', posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
        "        posix.write(fd, b'x' * 1024**2)\n"
        "        posix.close(fd)\n"
        "        written += 1\n"
        "except OSError as e:\n"
        "    print('contained: scratch full after', written, 'MB', e)\n"
        "if written > 64:\n"
        "    print('ESCAPED scratch without limit')",
    "mount_over_the_canary":
        "attempt_syscall('mount', 165, 0, 0, 0, 0, 0)",
}

SECRETS = {
    "environment": "print(dict(os.environ))\nif SECRET_NAME in os.environ:\n    print('ESCAPED env')",
    "proc_self_environ": "print(open('/proc/self/environ', 'rb').read())",
    "parent_environ": "attempt('parent environ', lambda: print(open(f'/proc/{PARENT_PID}/environ').read()))",
    "parent_memory":
        "posix = fresh('posix')\n"
        "attempt('parent mem', lambda: posix.open(f'/proc/{PARENT_PID}/mem', posix.O_RDWR))\n"
        "attempt('parent maps', lambda: print(open(f'/proc/{PARENT_PID}/maps').read()))",
    "parent_files":
        "attempt('parent cwd', lambda: print(os.listdir(f'/proc/{PARENT_PID}/cwd')))\n"
        "attempt('parent root', lambda: print(os.listdir(f'/proc/{PARENT_PID}/root/')))\n"
        "attempt('parent fd', lambda: print(os.listdir(f'/proc/{PARENT_PID}/fd')))",
    "canary_process_environ":
        "attempt('canary environ', lambda: print(open(f'/proc/{CANARY_PID}/environ').read()))",
    "canary_file_by_path": "attempt('canary file', lambda: print(open(CANARY_FILE).read()))",
    "every_process_visible":
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit() and pid != '1':\n"
        "        print('ESCAPED sees process', pid)\n"
        "        for part in ['environ', 'cmdline']:\n"
        "            try:\n"
        "                print(open(f'/proc/{pid}/{part}', 'rb').read())\n"
        "            except OSError:\n"
        "                pass",
    "home_repo_and_system_secrets":
        "for path in [REPO, REPO + '/.git/config', '/root/.ssh', '/root/.bash_history', '/home',\n"
        "             '/etc/shadow', '/etc/passwd', '/var', os.path.dirname(CANARY_DIR)]:\n"
        "    if os.path.exists(path):\n"
        "        print('ESCAPED sees', path)",
    "walk_the_whole_tree_for_the_canary":
        "for top in os.listdir('/'):\n"
        "    if top in ('proc', 'usr', 'dev') or os.path.islink('/' + top):\n"
        "        continue  # /usr and its links hold the system, not the host's files\n"
        "    for folder, dirs, files in os.walk('/' + top):\n"
        "        if folder == sys.prefix:\n"
        "            dirs.clear()  # the Python installation: the stdlib, nothing of the host's\n"
        "        if 'keep.txt' in files:\n"
        "            print('ESCAPED found', folder)",
    "inherited_file_descriptors":
        "posix = fresh('posix')\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        target = posix.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError:\n"
        "        continue\n"
        "    print('fd', fd, target)\n"
        "    if target.startswith('/') and not target.startswith(('/proc', '/dev')):\n"
        "        print('ESCAPED a host file is open:', target)",
}

SIGNALS = {
    "parent_exists_probe": "posix = fresh('posix')\nattempt('kill parent 0', lambda: posix.kill(PARENT_PID, 0))",
    "kill_the_canary_process":
        "import signal\nposix = fresh('posix')\n"
        "attempt('SIGKILL', lambda: posix.kill(CANARY_PID, signal.SIGKILL))\n"
        "attempt('SIGSTOP', lambda: posix.kill(CANARY_PID, signal.SIGSTOP))\n"
        "attempt('killpg', lambda: posix.killpg(CANARY_PID, signal.SIGKILL))",
    "kill_everything_visible":
        "import signal\nposix = fresh('posix')\n"
        "try:\n"
        "    posix.kill(-1, signal.SIGKILL)\n"
        "except OSError as e:\n"
        "    print('contained: kill(-1)', e)",
    "kill_the_parent_via_getppid":
        "import signal\nposix = fresh('posix')\nprint('ppid', posix.getppid())\n"
        "for target in (posix.getppid(), 1):\n"
        "    try:\n"
        "        posix.kill(target, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print('contained:', target, e)",
    "pidfd_to_the_canary_process":
        "import signal\n"
        "attempt('pidfd_open', lambda: signal.pidfd_send_signal(os.pidfd_open(CANARY_PID), signal.SIGKILL))",
    "pidfd_send_signal_syscall_on_itself":
        "fd = os.pidfd_open(os.getpid())\n"
        "attempt_syscall('pidfd_send_signal', 424, fd, 0, 0, 0)",
    "pidfd_getfd_from_itself":
        "fd = os.pidfd_open(os.getpid())\nattempt_syscall('pidfd_getfd', 438, fd, 0, 0)",
    "tgkill_the_parent": "attempt_syscall('tgkill', 234, PARENT_PID, PARENT_PID, 0)",
    "ptrace_the_canary_process": "attempt_syscall('ptrace attach', 101, 16, CANARY_PID, 0, 0)",
    "ptrace_traceme": "attempt_syscall('ptrace traceme', 101, 0, 0, 0, 0)",
    "process_vm_readv_of_the_parent": "attempt_syscall('process_vm_readv', 310, PARENT_PID, 0, 0, 0, 0, 0)",
    "libc_kill_through_ctypes":
        "ctypes, c = libc()\n"
        "if c.kill(CANARY_PID, 9) == 0 or c.kill(PARENT_PID, 0) == 0:\n"
        "    print('ESCAPED libc kill')",
}

ISOLATION = {
    "new_user_namespace_by_unshare": "attempt_syscall('unshare', 272, 0x10000000)",
    "new_namespaces_by_clone": "attempt_syscall('clone newuser', 56, 0x10000000 | 17, 0, 0, 0, 0)",
    "clone3": "attempt_syscall('clone3', 435, 0, 0)",
    "setns_into_the_hosts_namespaces":
        "posix = fresh('posix')\n"
        "attempt('open host ns', lambda: posix.open(f'/proc/{PARENT_PID}/ns/net', posix.O_RDONLY))\n"
        "attempt_syscall('setns', 308, 0, 0)",
    "become_root":
        "posix = fresh('posix')\n"
        "attempt('setuid', lambda: posix.setuid(0))\n"
        "attempt('setresuid', lambda: posix.setresuid(0, 0, 0))",
    "capabilities_and_no_new_privs":
        "status = open('/proc/self/status').read()\n"
        "print([l for l in status.splitlines() if l.startswith(('Cap', 'NoNew', 'Seccomp'))])\n"
        "if 'CapEff:\\t0000000000000000' not in status or 'NoNewPrivs:\\t1' not in status:\n"
        "    print('ESCAPED has capabilities')",
    "raise_the_limits":
        "resource = fresh('resource')\n"
        "attempt('NPROC', lambda: resource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6)))\n"
        "attempt('AS', lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)))",
    "kernel_attack_surface":
        "for name, number in [('bpf', 321), ('perf_event_open', 298), ('userfaultfd', 323),\n"
        "                     ('keyctl', 250), ('add_key', 248), ('io_uring_setup', 425),\n"
        "                     ('init_module', 175), ('kexec_load', 246), ('open_by_handle_at', 304)]:\n"
        "    attempt_syscall(name, number, 0, 0, 0, 0)",
    "setuid_programs_gain_nothing":
        "posix = fresh('posix')\n"
        "pid = posix.fork()\n"
        "if pid == 0:\n"
        "    fd = posix.open('out', posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
        "    posix.dup2(fd, 1)\n"
        "    try:\n"
        "        posix.execv('/usr/bin/su', ['su', '-c', 'id -u'])\n"
        "    finally:\n"
        "        posix._exit(1)\n"
        "posix.waitpid(pid, 0)\n"
        "if open('out').read().strip() == '0':\n"
        "    print('ESCAPED root through su')",
}

NETWORK = {
    "socket_type_through_mro":
        "import socket\nreal = socket.socket.__mro__[2]\nprint(real)\n"
        "s = real(socket.AF_INET, socket.SOCK_STREAM)\ns.settimeout(1)\n"
        "attempt('tcp via mro', lambda: s.connect(('127.0.0.1', TCP_PORT)))",
    "fresh_socket_module":
        "_socket = fresh('_socket')\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
        "s.settimeout(1)\nattempt('tcp via fresh _socket', lambda: s.connect(('127.0.0.1', TCP_PORT)))",
    "udp_datagram_to_the_host":
        "_socket = fresh('_socket')\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
        "print('sent', s.sendto(b'leak', ('127.0.0.1', UDP_PORT)), 'bytes to its own loopback')",
    "unix_socket_by_path":
        "_socket = fresh('_socket')\ns = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        "attempt('unix', lambda: s.connect(UNIX_PATH))",
    "abstract_unix_socket":
        "_socket = fresh('_socket')\ns = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        "attempt('abstract', lambda: s.connect(ABSTRACT))",
    "outside_world":
        "_socket = fresh('_socket')\n"
        "for address in [('1.1.1.1', 80), ('10.0.0.1', 80), ('192.168.0.1', 80)]:\n"
        "    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
        "    s.settimeout(1)\n"
        "    attempt(str(address), lambda: s.connect(address))",
    "dns_lookup":
        "fresh('_socket')\nsocket = fresh('socket')\n"
        "attempt('dns', lambda: socket.getaddrinfo('example.com', 80))",
    "raw_and_packet_sockets":
        "_socket = fresh('_socket')\n"
        "attempt('raw', lambda: _socket.socket(_socket.AF_INET, _socket.SOCK_RAW, 1))\n"
        "attempt('packet', lambda: _socket.socket(17, _socket.SOCK_RAW, 0))",
    "network_interfaces":
        "fresh('_socket')\nsocket = fresh('socket')\nprint(socket.if_nameindex())\n"
        "if [name for _, name in socket.if_nameindex() if name != 'lo']:\n"
        "    print('ESCAPED has a network interface')",
    "connect_through_libc":
        "ctypes, c = libc()\nfd = c.socket(2, 1, 0)\n"
        "address = (2).to_bytes(2, 'little') + TCP_PORT.to_bytes(2, 'big') + bytes([127, 0, 0, 1]) + bytes(8)\n"
        "if c.connect(fd, address, 16) == 0:\n"
        "    print('ESCAPED libc connect')",
}

PROCESSES = {
    "double_fork_daemon":
        "import time\nposix = fresh('posix')\n"
        "if posix.fork() == 0:\n"
        "    posix.setsid()\n"
        "    if posix.fork() == 0:\n"
        "        posix.close(1); posix.close(2)\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    posix._exit(0)\n"
        "time.sleep(0.2)",
    "daemon_through_ctypes":
        "import time\nctypes, c = libc()\n"
        "if c.fork() == 0:\n"
        "    c.setsid()\n"
        "    if c.fork() == 0:\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    c._exit(0)\n"
        "time.sleep(0.2)",
    "daemon_through_multiprocessing":
        "import time, multiprocessing\nposix = fresh('posix')\nos.fork = posix.fork\n"
        "multiprocessing.Process(target=time.sleep, args=(3600,)).start()\n"
        "posix._exit(0)",
    "shell_background_job":
        "_posixsubprocess = fresh('_posixsubprocess')\nsubprocess = fresh('subprocess')\n"
        "subprocess.Popen(['/bin/sh', '-c', 'sleep 3600 & touch ' + CANARY_DIR + '/from_sh; "
        "cat ' + CANARY_FILE + '; env'], start_new_session=True).wait()",
    "libc_system":
        "ctypes, c = libc()\n"
        "c.system(('cat ' + CANARY_FILE + '; touch ' + CANARY_DIR + '/x; (sleep 3600 &)').encode())",
    "threads_that_outlive_the_code":
        "import threading, time\n"
        "threading.Thread(target=lambda: time.sleep(3600)).start()\n"
        "print('main ends, the thread does not')",
    "thread_bomb":
        "import threading, time\nstarted = 0\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
        "        started += 1\n"
        "except RuntimeError as e:\n"
        "    print('contained: threads stopped at', started, e)\n"
        "if started > 64:\n"
        "    print('ESCAPED started', started, 'threads')",
    "memory_past_the_limit":
        "resource = fresh('resource')\n"
        "attempt('AS', lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)))\n"
        "attempt('2 GB', lambda: bytearray(2 * 1024**3))",
}

SLOW_PROCESSES = {
    "fork_bomb_through_posix":
        "posix = fresh('posix')\n"
        "while True:\n"
        "    try:\n"
        "        posix.fork()\n"
        "    except OSError:\n"
        "        pass",
    "fork_bomb_through_ctypes":
        "ctypes, c = libc()\n"
        "while True:\n"
        "    c.fork()",
    "cpu_burner_ignoring_sigxcpu":
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass",
    "sleeper_behind_closed_pipes":
        "import time\nposix = fresh('posix')\n"
        "posix.close(1); posix.close(2)\n"
        "time.sleep(3600)",
}

FORGED_VERDICTS = {
    # the old attack: find the status fd in the command line, write "ok", die
    "forged_report_then_abort":
        "import json\n"
        "config = json.loads(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "os.write(config['report_fd'], b'{\"outcome\": \"ok\", \"error\": null}')\n"
        "os.abort()\nassert False",
    "forged_report_then_segfault":
        "import json\n"
        "config = json.loads(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "os.write(config['report_fd'], b'{\"outcome\": \"ok\", \"error\": null}')\n"
        "ctypes, c = libc()\nctypes.string_at(0)\nassert False",
    "forged_report_then_exit_0_through_libc":
        "import json\n"
        "config = json.loads(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
        "os.write(config['report_fd'], b'{\"outcome\": \"ok\", \"error\": null}')\n"
        "ctypes, c = libc()\nc._exit(3)\nassert False",
}

PROGRAMS = {**WRITES, **SECRETS, **SIGNALS, **ISOLATION, **NETWORK, **PROCESSES}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_is_contained(name, verified):
    result = execute_code(with_prelude(PROGRAMS[name], verified), timeout=3.0)
    assert_contained(result, verified)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_PROCESSES))
def test_program_that_never_ends_is_stopped_and_contained(name, verified):
    started = time.perf_counter()
    result = execute_code(with_prelude(SLOW_PROCESSES[name], verified), timeout=2.0)
    assert not result.success and time.perf_counter() - started < 6.0, result
    assert_contained(result, verified)


@pytest.mark.parametrize("name", sorted(FORGED_VERDICTS))
def test_forged_verdict_of_a_failing_program_is_a_failure(name, verified):
    result = execute_code(with_prelude(FORGED_VERDICTS[name], verified))
    assert not result.success, result
    assert_contained(result, verified)


# -----------------------------------------------------------------------------
# solutions graded by run_tests: each is wrong and tries to pass anyway

TESTS = "assert add(2, 3) == 5\nassert add(10, -4) == 6\nassert add(0, 0) == 0\n"
WRONG = "\ndef add(a, b):\n    return a - b\n"

CHANNEL = ("import json\n"
           "config = json.loads(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2])\n"
           "calls_fd, answers_fd = config['channel_fds']\n")

SOLUTIONS = {
    "exits_0_before_the_tests":
        "posix = fresh('posix')\nposix._exit(0)" + WRONG,
    "forged_report_and_exit_0":
        CHANNEL + "posix = fresh('posix')\n"
        "posix.write(config['report_fd'], b'{\"outcome\": \"ok\", \"error\": null}')\n"
        "posix._exit(0)" + WRONG,
    "fake_ready_and_answers_then_exit":
        CHANNEL + "posix = fresh('posix')\n"
        "posix.write(answers_fd, b'[\"ready\"]\\n' + b'[\"return\", true]\\n' * 10)\n"
        "posix._exit(0)" + WRONG,
    "garbage_on_the_channel":
        CHANNEL + "os.write(answers_fd, b'\\x00' * 100000 + b'\\n')" + WRONG,
    "huge_answer":
        "def add(a, b):\n    return 'x' * (64 * 1024**2)\n",
    "deeply_nested_answer":
        "def add(a, b):\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
    "writes_to_its_own_calls_pipe":
        CHANNEL + "attempt('write calls', lambda: os.write(calls_fd, b'[\"call\"]\\n'))" + WRONG,
    "rigged_equality":
        "class Yes(list):\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Yes()\n",
    "rigged_int_subclass":
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Yes(0)\n",
    "patches_assert_machinery_in_its_own_process":
        "import builtins\nbuiltins.AssertionError = type('Nothing', (Exception,), {})\n"
        "sys.excepthook = lambda *a: None" + WRONG,
    "passes_on_stdout_and_stderr":
        "print('{\"outcome\": \"ok\"}\\nall tests passed')\n"
        "print('OK', file=sys.stderr)" + WRONG,
    "hunts_for_the_tests_process":
        "import signal\nposix = fresh('posix')\n"
        "for pid in range(1, 500):\n"
        "    if pid == posix.getpid():\n"
        "        continue\n"
        "    try:\n"
        "        posix.kill(pid, signal.SIGSTOP)\n"
        "        print('ESCAPED stopped', pid)\n"
        "    except OSError:\n"
        "        pass" + WRONG,
    "raises_system_exit_0_when_called":
        "def add(a, b):\n    raise SystemExit(0)\n",
    "never_answers":
        "def add(a, b):\n    import time\n    time.sleep(3600)\n",
}


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_wrong_solution_cannot_pass_the_tests(name, verified):
    result = run_tests(with_prelude(SOLUTIONS[name], verified), TESTS, functions=["add"],
                       timeout=2.0)
    assert not result.success, result
    assert_contained(result, verified)


def test_a_right_solution_still_passes_after_all_that(verified):
    result = run_tests("def add(a, b):\n    return a + b\n", TESTS, functions=["add"])
    assert result.success, result


# -----------------------------------------------------------------------------
# HumanEval: wrong replies to problem 0 that try to score anyway

HUMANEVAL_REPLIES = {
    "exits_0_at_import":
        "import sys\ndel sys.modules['posix']\nimport posix\nposix._exit(0)\n"
        "def has_close_elements(numbers, threshold):\n    return False\n",
    "defines_its_own_check":
        "def check(candidate):\n    pass\n"
        "def has_close_elements(numbers, threshold):\n    return False\n",
    "reads_the_tests_from_the_dataset":
        "import os\nfound = [folder for top in os.listdir('/') if top not in ('proc', 'dev', 'usr')\n"
        "         for folder, _, files in os.walk('/' + top) if 'HumanEval.jsonl.gz' in files]\n"
        "print('ESCAPED found the tests' if found else 'no dataset here')\n"
        "def has_close_elements(numbers, threshold):\n    return False\n",
}


@pytest.mark.parametrize("name", sorted(HUMANEVAL_REPLIES))
def test_wrong_humaneval_reply_scores_0(name, verified):
    from nanochat_tasks.humaneval import HumanEval, check_parts  # imports torch: only when these run
    humaneval = HumanEval(stop=1)
    problem = humaneval.problem_of(humaneval[0])
    prelude = "import os\nprint(os.readlink('/proc/self/ns/pid'), os.getcwd(), flush=True)\n"
    reply = prelude + HUMANEVAL_REPLIES[name]
    result = run_tests(**check_parts(problem, reply), timeout=5.0)
    assert not result.success, result
    assert humaneval.evaluate(humaneval[0], f"```python\n{reply}```") == 0
    assert_contained(result, verified)


def test_there_are_at_least_sixty_attacks():
    count = len(PROGRAMS) + len(SLOW_PROCESSES) + len(FORGED_VERDICTS) + len(SOLUTIONS) \
        + len(HUMANEVAL_REPLIES)
    assert count >= 60, count
