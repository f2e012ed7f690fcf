"""The sandbox for generated code: each program in its own fresh process, never in this one.

A program runs as ``python -I -S sandbox_runner.py`` (no site-packages, no torch, no user
environment) in a new temporary directory, with a wall-clock timeout, limits on memory, CPU time,
file size and processes, in a new network and PID namespace when ``unshare`` allows it, in an empty
root of its own (only the Python installation, read-only, and its directory: no host file or Unix
socket to reach) when a mount namespace is allowed, as ``nobody`` when we are root, under Landlock
when the kernel has it (writes only in its directory, no TCP, no signals to other processes) and
under a seccomp filter refusing AF_UNIX sockets and io_uring (x86-64, aarch64). ``isolation()``
reports which layers this machine provides; results record it. Output goes to capped files, never
into this process's memory unbounded, and never into a result: a result says passed, failed or
timeout and, for a failure, only the built-in exception type (``AssertionError``), so a program
cannot carry what it read out through ``detail``.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("sandbox_runner.py")
OUTPUT_TAIL = 4000
# The only words a failed result's detail may hold besides our own: names a program cannot choose.
BUILTIN_ERRORS = frozenset(name for name, value in vars(builtins).items()
                           if isinstance(value, type) and issubclass(value, BaseException))


@dataclass
class SandboxResult:
    passed: bool
    status: str  # passed | failed | timeout
    # "" | a built-in exception type | "unknown error" | "timed out after Ns" | "exit status N" |
    # "killed by signal N": never any text of the program's
    detail: str = ""


@functools.lru_cache(maxsize=1)
def namespace_wrapper() -> tuple[str, ...]:
    """The ``unshare`` prefix that works here (new network + PID namespace), or () when none does."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    root = os.getuid() == 0
    candidates = []
    for base in (["--net", "--pid", "--fork", "--kill-child", "--mount-proc"], ["--net", "--pid", "--fork",
                 "--kill-child"], ["--net"]):
        candidates.append([exe] + ([] if root else ["--map-root-user"]) + base)
    for cmd in candidates:
        try:
            if subprocess.run(cmd + ["true"], capture_output=True, timeout=10, check=False).returncode == 0:
                return tuple(cmd)
        except (OSError, subprocess.SubprocessError):
            continue
    return ()


def _python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _limits(timeout: float, memory_mib: int, file_mib: int) -> dict:
    return {"memory_bytes": memory_mib * 2**20, "cpu_seconds": int(timeout) + 1, "file_bytes": file_mib * 2**20}


def run_program(program: str, timeout: float = 10.0, memory_mib: int = 1024, file_mib: int = 16) -> SandboxResult:
    """Run ``program`` in the sandbox; passed means it ran to the end without raising."""
    res = _run(program, timeout, memory_mib, file_mib)
    return res[0]


def _run(program: str, timeout: float, memory_mib: int, file_mib: int) -> tuple[SandboxResult, list[str]]:
    workdir = Path(tempfile.mkdtemp(prefix="aletheia-sandbox-"))
    logs = Path(tempfile.mkdtemp(prefix="aletheia-sandbox-log-"))
    root = Path(tempfile.mkdtemp(prefix="aletheia-sandbox-root-"))  # stays empty on the host
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if os.getuid() == 0:  # the program runs as nobody: only its own directory is writable
            os.chown(workdir, 65534, 65534)
            os.chmod(workdir, 0o700)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        cmd = [*namespace_wrapper(), _python(), "-I", "-S", "-B", str(RUNNER), str(workdir),
               json.dumps(_limits(timeout, memory_mib, file_mib)), str(root)]
        with open(logs / "out", "wb") as out, open(logs / "err", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir,
                                    env=env, start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=timeout + 2.0)  # CPU limit first; wall clock catches sleepers
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
            _kill_group(proc)
        layers = _layers(_head(logs / "out"))
        if timed_out or _cpu_killed(rc):
            return SandboxResult(False, "timeout", f"timed out after {timeout:g}s"), layers or []
        if rc == 0 and layers is not None:
            return SandboxResult(True, "passed"), layers
        return SandboxResult(False, "failed", _error_type(_tail(logs / "err"), rc)), layers or []
    finally:
        for path in (workdir, logs, root):
            shutil.rmtree(path, ignore_errors=True)


def _layers(head: str) -> list[str] | None:
    """The runner's layers from the first stdout line (written before the program ran), or None
    when the runner never got that far."""
    first = head.split("\n", 1)[0]
    if not first.startswith("@@SANDBOX "):
        return None
    try:
        return list(json.loads(first[len("@@SANDBOX "):]).get("layers", []))
    except (ValueError, AttributeError):
        return None


def _error_type(stderr: str, rc: int | None) -> str:
    """The failure's built-in exception type as the runner reported it; anything else in stderr
    (the program's own text, a forged line naming no built-in type) is never passed on."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("@@ERROR "):
            name = line[len("@@ERROR "):].strip()
            return name if name in BUILTIN_ERRORS else "unknown error"
    if rc is not None and rc < 0:
        return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _cpu_killed(rc: int | None) -> bool:
    """SIGXCPU from the CPU-time limit (unshare reports a child's signal as 128 + signal)."""
    return rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program's whole process group (and with it its PID namespace), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _head(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(OUTPUT_TAIL).decode("utf-8", errors="replace")


def _tail(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - OUTPUT_TAIL))
        return fh.read().decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def isolation() -> dict:
    """Which isolation layers this machine gives a sandboxed program (measured by running one)."""
    result, layers = _run("pass\n", 10.0, 256, 1)
    wrapper = namespace_wrapper()
    ns = []
    if "--net" in wrapper:
        ns.append("network-namespace")
    if "--pid" in wrapper:
        ns.append("pid-namespace")
    notes = []
    if "--net" not in wrapper and not any("no-tcp" in x for x in layers):
        notes.append("no network isolation available on this machine (no unshare --net, no Landlock net)")
    if not any(x.startswith("empty-root") for x in layers):
        notes.append("no empty root (a mount namespace is not allowed here): a program can read "
                     "world-readable host files")
    if not any(x.startswith("seccomp-no-unix") for x in layers):
        notes.append("no seccomp filter (unknown architecture or seccomp refused): a program may "
                     "reach host Unix sockets unless the empty root hides them")
    return {"works": result.passed, "layers": ["separate-process", "python -I -S", "temp-dir", "timeout"]
            + ns + layers, "notes": notes}
