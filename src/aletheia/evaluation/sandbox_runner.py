"""Runs one untrusted program inside the limits it is given. Standard library only.

Started by ``aletheia.evaluation.sandbox`` as ``python -I -S sandbox_runner.py WORKDIR LIMITS``, so it
never imports torch, site-packages or the user's environment. Before the program runs it:
sets resource limits (address space, CPU time, file size, no core dumps, no new processes), drops
root to ``nobody`` when started as root, and applies Landlock (Linux >= 5.13) so that the program can
write only inside WORKDIR, cannot open TCP connections and cannot signal processes outside itself.
It prints one ``@@SANDBOX {json}`` line naming the layers that were applied, then runs the program.
Exit status 0 means the program finished without raising.
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


def main():
    workdir, limits = sys.argv[1], json.loads(sys.argv[2])
    os.chdir(workdir)
    with open(os.path.join(workdir, "program.py"), encoding="utf-8") as fh:
        source = fh.read()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    layers = set_limits(limits)
    layers += drop_root(workdir)
    layers += limit_processes()
    layers += landlock(workdir)
    sys.stdout.write("@@SANDBOX " + json.dumps({"layers": layers}) + "\n")
    sys.stdout.flush()
    try:
        code = compile(source, "program.py", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 (the sandboxed program)
    except BaseException as exc:  # noqa: BLE001 (SystemExit too: a program that exits early did not pass)
        try:
            sys.stderr.write(f"{type(exc).__name__}: {str(exc)[:500]}\n")
            sys.stderr.flush()
        finally:
            os._exit(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
