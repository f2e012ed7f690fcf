"""Runs one untrusted program inside the limits it is given. Standard library only.

Started by ``aletheia.evaluation.sandbox`` as ``python -I -S sandbox_runner.py WORKDIR LIMITS
ROOT``, so it never imports torch, site-packages or the user's environment. Before the program
runs it: pivots into an empty root (a tmpfs at ROOT, in a mount namespace of its own) that holds
only the Python installation (read-only), WORKDIR and /dev/null, so no host file or filesystem
socket is even visible; sets resource limits (address space, CPU time, file size, no core dumps,
no new processes); drops root to ``nobody`` when started as root; applies Landlock (Linux >= 5.13)
so that the program can write only inside WORKDIR, cannot open TCP connections and cannot signal
processes outside itself; and installs a seccomp filter that refuses AF_UNIX sockets and io_uring
(Landlock and the network namespace do not cover filesystem sockets; io_uring could make sockets
past the filter).
It prints one ``@@SANDBOX {json}`` line naming the layers that were applied, then runs the program.
Exit status 0 means the program finished without raising; otherwise the last stderr line is
``@@ERROR NAME``, the nearest built-in exception type, never the exception's text.
"""


import ctypes
import importlib
import json
import os
import resource
import sys

# Modules that HumanEval-style programs import, loaded while the interpreter's files are still
# readable (after the drop to ``nobody`` the Python install under /root may not be).
PRELOAD = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools", "hashlib",
           "heapq", "itertools", "math", "operator", "random", "re", "statistics", "string", "typing")

NOBODY = 65534
FS_WRITE = [1 << 1, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12]
FS_REFER, FS_TRUNCATE, FS_WRITE_FILE = 1 << 13, 1 << 14, 1 << 1
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# Per architecture: seccomp's audit arch, and the numbers of pivot_root, socket and socketpair.
ARCHES = {"x86_64": (0xC000003E, 155, 41, 53), "aarch64": (0xC00000B7, 41, 198, 199)}
IO_URING = (425, 426, 427)  # io_uring_setup/enter/register, the same on both
X32_BIT = 0x40000000  # x32 system calls on x86-64: not for us, refused
AF_UNIX, EPERM = 1, 1
CLONE_NEWNS, MNT_DETACH = 0x20000, 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
# Never bound into the empty root, whatever a mapping says: they are what the root is there to hide.
NEVER_BIND = {"/", "/etc", "/home", "/root", "/tmp", "/var", "/run", "/proc", "/sys", "/dev",
              "/mnt"}

_LIBC = []


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def libc():
    if not _LIBC:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                              ctypes.c_char_p]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _LIBC.append(lib)
    return _LIBC[0]


def arch():
    """This process's system-call numbers, or None where we do not know them (no filter then)."""
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    machine = os.uname().machine
    return ARCHES.get({"arm64": "aarch64"}.get(machine, machine))


def _mount(source, target, fstype, flags, data=None):
    enc = [None if x is None else os.fsencode(x) for x in (source, target, fstype, data)]
    if libc().mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _kept_flags(path):
    """Mount flags of ``path`` a read-only remount must repeat (a user namespace locks them)."""
    f = os.statvfs(path).f_flag
    kept = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return kept | (MS_RELATIME if f & getattr(os, "ST_RELATIME", 4096) else 0)


def python_paths():
    """What the interpreter needs to go on importing: its sys.path and the directories of the
    shared objects it has loaded (libpython, libc, lib-dynload's libraries live beside them)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) == 6 else ""
                if name.startswith("/") and (name.endswith(".so") or ".so." in name):
                    paths.append(os.path.dirname(name))
    except OSError:
        pass
    out = []
    for p in sorted({os.path.realpath(p) for p in paths} | {os.path.abspath(p) for p in paths}):
        if p in NEVER_BIND or p == here or not os.path.isdir(p):
            continue
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def empty_root(workdir, root):
    """Pivot into a fresh tmpfs at ``root`` holding only the Python installation (read-only),
    ``workdir`` and a few device nodes: world-readable host files and Unix sockets are then not
    there to read or connect to. Everything happens in a new mount namespace made private first,
    so no mount reaches the host's; on any failure before the pivot the layer is simply absent."""
    if not root or arch() is None:
        return []
    lib = libc()
    binds = python_paths()
    if lib.unshare(CLONE_NEWNS) != 0:  # root, or root in the user namespace ``unshare`` made
        return []
    old_umask = os.umask(0o022)
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path in binds:  # every directory is made before the first symlink exists in the root
            os.makedirs(root + path, exist_ok=True)
            _mount(path, root + path, None, MS_BIND)
            _mount(None, root + path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _kept_flags(path))
        os.makedirs(root + "/dev", exist_ok=True)
        for node in ("/dev/null", "/dev/zero", "/dev/urandom"):
            if os.path.exists(node):
                open(root + node, "w").close()
                _mount(node, root + node, None, MS_BIND)
        os.makedirs(root + workdir, exist_ok=True)
        _mount(workdir, root + workdir, None, MS_BIND)
        for name in os.listdir("/"):  # /lib -> usr/lib and the like, so loader paths still resolve
            if os.path.islink("/" + name) and not os.path.lexists(root + "/" + name):
                os.symlink(os.readlink("/" + name), root + "/" + name)
        os.chdir(root)
        if lib.syscall(ctypes.c_long(arch()[1]), b".", b".") != 0:
            raise OSError(ctypes.get_errno(), "pivot_root")
    except OSError:
        os.umask(old_umask)
        os.chdir(workdir)
        return []
    os.umask(old_umask)
    if lib.umount2(b".", MNT_DETACH) != 0:  # the host's tree, now stacked under ours: gone
        raise OSError(ctypes.get_errno(), "detaching the old root")
    os.chdir("/")
    try:
        _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except OSError:  # only the tmpfs's own empty directories stay writable (and only by root)
        pass
    os.chdir(workdir)
    return ["empty-root-python-read-only"]


def _assemble(code):
    """(op, jt, jf, k) with jumps given as labels, and ("label", name) markers, to sock_filters."""
    labels, ops = {}, []
    for item in code:
        if item[0] == "label":
            labels[item[1]] = len(ops)
        else:
            ops.append(item)
    prog = (_SockFilter * len(ops))()
    for i, (op, jt, jf, k) in enumerate(ops):
        rel = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        prog[i] = _SockFilter(op, rel[0], rel[1], k)
    return prog


def seccomp_filter(audit_arch, nr_socket, nr_socketpair):
    """socket/socketpair(AF_UNIX, ...) and io_uring fail with EPERM; another ABI kills."""
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
    allow, deny, kill = 0x7FFF0000, 0x00050000 | EPERM, 0x80000000
    code = [(ld, 0, 0, 4), (jeq, 0, "kill", audit_arch), (ld, 0, 0, 0), (jge, "deny", 0, X32_BIT),
            (jeq, "domain", 0, nr_socket), (jeq, "domain", 0, nr_socketpair)]
    code += [(jeq, "deny", 0, nr) for nr in IO_URING]
    code += [(ret, 0, 0, allow), ("label", "domain"), (ld, 0, 0, 16),  # args[0], low half
             (jeq, "deny", 0, AF_UNIX), (ret, 0, 0, allow), ("label", "deny"), (ret, 0, 0, deny),
             ("label", "kill"), (ret, 0, 0, kill)]
    return _assemble(code)


def seccomp():
    """Install the filter (after Landlock, so it needs no privilege), then check it holds."""
    nums = arch()
    if nums is None:
        return []
    lib = libc()
    prog = seccomp_filter(nums[0], nums[2], nums[3])
    fprog = _SockFprog(len(prog), prog)
    if lib.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return []
    if lib.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return []
    fd = lib.socket(AF_UNIX, 1, 0)
    if fd >= 0:
        os.close(fd)
        return []
    return ["seccomp-no-unix-sockets", "seccomp-no-io-uring"]


def set_limits(limits):
    mem = limits["memory_bytes"]
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return ["rlimit-memory", "rlimit-cpu", "rlimit-file-size", "no-core"]


def drop_root(workdir):
    if os.getuid() != 0:
        return []
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError:  # e.g. a user namespace without ``nobody`` mapped
        return []
    return ["uid-nobody"]


def limit_processes():
    # Counted per user: a limit at or below the processes this user already has forbids fork().
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    return ["no-new-processes"]


def landlock(workdir):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        abi = syscall(ctypes.c_long(444), ctypes.c_void_p(None), ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return []
    if abi < 1:
        return []
    fs = 0
    for bit in FS_WRITE:
        fs |= bit
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    fd = syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return []
    rules = [(workdir, fs)]
    if os.path.exists("/dev/null"):
        rules.append(("/dev/null", FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)))
    for path, access in rules:
        pfd = os.open(path, os.O_PATH | getattr(os, "O_CLOEXEC", 0))
        rule = _PathBeneath(access, pfd)
        if syscall(ctypes.c_long(445), ctypes.c_int(fd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            os.close(pfd)
            os.close(fd)
            return []
        os.close(pfd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by Landlock
        os.close(fd)
        return []
    ok = syscall(ctypes.c_long(446), ctypes.c_int(fd), ctypes.c_uint32(0)) == 0
    os.close(fd)
    if not ok:
        return []
    layers = [f"landlock-abi{abi}-writes-only-in-workdir"]
    if net:
        layers.append("landlock-no-tcp")
    if scoped:
        layers.append("landlock-no-signals-outside")
    return layers


def error_type(exc):
    """The nearest built-in exception type: the test's kind of failure, never its message."""
    return next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")


def main():
    workdir, limits = sys.argv[1], json.loads(sys.argv[2])
    root = sys.argv[3] if len(sys.argv) > 3 else ""
    os.chdir(workdir)
    with open(os.path.join(workdir, "program.py"), encoding="utf-8") as fh:
        source = fh.read()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    layers = empty_root(workdir, root)
    layers += set_limits(limits)
    layers += drop_root(workdir)
    layers += limit_processes()
    layers += landlock(workdir)
    layers += seccomp()
    sys.stdout.write("@@SANDBOX " + json.dumps({"layers": layers}) + "\n")
    sys.stdout.flush()
    try:
        code = compile(source, "program.py", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 (the sandboxed program)
    except BaseException as exc:  # noqa: BLE001 (SystemExit too: a program that exits early did not pass)
        try:
            sys.stderr.write(f"\n@@ERROR {error_type(exc)}\n")
            sys.stderr.flush()
        finally:
            os._exit(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
