"""The HumanEval sandbox: canonical solutions pass, hostile programs fail safely, the host is untouched."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from aletheia.evaluation.humaneval import execute, program_for
from aletheia.evaluation.sandbox import BUILTIN_ERRORS, isolation, run_program
from aletheia.evaluation.sources import read_humaneval

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNNER_DIR = Path(__file__).resolve().parents[1] / "src" / "aletheia" / "evaluation"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox targets Linux")


def layers() -> set[str]:
    return set(isolation()["layers"])


def protects_files() -> bool:
    return "uid-nobody" in layers() or any(x.startswith("landlock") for x in layers())


def empty_root() -> bool:
    return any(x.startswith("empty-root") for x in layers())


def no_unix_sockets() -> bool:
    return "seccomp-no-unix-sockets" in layers()


@pytest.fixture
def world_dir():
    """A directory anyone can reach (pytest's tmp_path sits under a 0700 folder, which would hide a
    leak): only the sandbox stands between a program and what is put here."""
    path = Path(tempfile.mkdtemp(prefix="aletheia-host-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sandbox_reports_its_isolation():
    iso = isolation()
    assert iso["works"]
    assert {"separate-process", "rlimit-memory", "rlimit-cpu", "rlimit-file-size"} <= set(iso["layers"])


def test_a_program_passes_only_when_it_runs_to_the_end():
    assert run_program("assert sorted([3, 1, 2]) == [1, 2, 3]\n").passed
    failed = run_program("assert 1 + 1 == 3\n")
    assert not failed.passed and failed.status == "failed" and failed.detail == "AssertionError"
    assert run_program("undefined_name\n").detail == "NameError"
    assert not run_program("import sys\nsys.exit(0)\n").passed  # leaving early is not passing


def test_programs_can_import_the_usual_standard_library():
    imports = "import collections, hashlib, math, random, re, string, typing\nfrom typing import List\n"
    assert run_program(imports + "assert math.gcd(4, 6) == 2\n").passed


def test_the_sandbox_never_imports_torch():
    assert run_program("import sys\nassert 'torch' not in sys.modules\n").passed
    assert not run_program("import torch\n").passed  # site-packages are not even on the path


def canonical_pass_rate(n: int | None) -> tuple[int, int]:
    path = SHARED / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip("needs ../shared/data/humaneval")
    problems = read_humaneval(path).problems[:n]
    runs = execute([program_for(p, p["canonical_solution"]) for p in problems], 10, 1024, 2)
    return sum(r["passed"] for r in runs), len(problems)


def test_canonical_humaneval_solutions_pass():
    assert canonical_pass_rate(24) == (24, 24)


@pytest.mark.slow
def test_all_164_canonical_humaneval_solutions_score_pass_at_1_of_one():
    assert canonical_pass_rate(None) == (164, 164)


def test_hostile_programs_fail_safely_and_the_host_is_untouched(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(host, 0o777)  # world-writable: only the sandbox stands between the program and the file
    precious = host / "precious.txt"
    precious.write_text("keep me")
    os.chmod(precious, 0o666)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    me = os.getpid()
    hostile = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(10**8))\n",
        "delete a file": f"import os\nos.remove({str(precious)!r})\n",
        "delete via libc": f"import ctypes\nassert ctypes.CDLL(None).unlink({str(precious).encode()!r}) == 0\n",
        "overwrite a file": f"open({str(precious)!r}, 'w').write('pwned')\n",
        "create a file": f"open({str(host / 'new.txt')!r}, 'w').write('pwned')\n",
        "huge file": "open('big', 'wb').write(b'0' * (64 * 2**20))\n",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
        "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)\n",
        "kill the evaluator": f"import os, signal\nos.kill({me}, signal.SIGKILL)\nimport time\ntime.sleep(5)\n",
        "kill via libc": f"import ctypes\nassert ctypes.CDLL(None).kill({me}, 9) == 0\n",
    }
    if not protects_files():
        pytest.skip("this machine offers neither a uid drop nor Landlock to protect files")
    canonical = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
    names = list(hostile) + ["canonical"]
    runs = execute(list(hostile.values()) + [canonical], timeout=3, memory_mib=512, workers=2)
    outcome = dict(zip(names, runs))

    assert outcome["canonical"]["passed"], outcome["canonical"]  # the evaluation went on and still works
    for name in hostile:
        assert not outcome[name]["passed"], (name, outcome[name])
    assert outcome["infinite loop"]["status"] == "timeout"
    assert precious.read_text() == "keep me"
    assert sorted(p.name for p in host.iterdir()) == ["precious.txt"]
    with pytest.raises(socket.timeout):
        server.accept()  # nothing reached the host's listening socket
    server.close()
    assert os.getpid() == me  # and we are still alive to check


LIBC_UNIX_CONNECT = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(1, 1, 0)
assert fd >= 0, ctypes.get_errno()
path = {path!r}
addr = ctypes.create_string_buffer(110)
addr[0:2] = (1).to_bytes(2, "little")
addr[2:2 + len(path)] = path
assert libc.connect(fd, addr, 110) == 0, ctypes.get_errno()
assert libc.write(fd, b"pwned", 5) == 5
"""


def test_a_program_cannot_reach_a_host_unix_socket(world_dir):
    if not (empty_root() or no_unix_sockets()):
        pytest.skip("this machine offers neither an empty root nor seccomp to stop Unix sockets")
    stream_path, dgram_path = str(world_dir / "stream.sock"), str(world_dir / "dgram.sock")
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(stream_path)
    stream.listen(4)
    stream.settimeout(0.5)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    dgram.settimeout(0.5)
    for path in (stream_path, dgram_path):
        os.chmod(path, 0o777)  # world-writable, like a D-Bus or X11 socket
    hostile = {
        "stream": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({stream_path!r})\n"
                  "s.sendall(b'pwned')\n",
        "datagram": f"import socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"
                    f".sendto(b'pwned', {dgram_path!r})\n",
        "libc connect": LIBC_UNIX_CONNECT.format(path=stream_path.encode()),
    }
    try:
        runs = dict(zip(hostile, execute(list(hostile.values()), 5, 512, 2)))
        for name, run in runs.items():
            assert not run["passed"], (name, run)
        with pytest.raises(socket.timeout):
            stream.accept()  # no connection reached the host's socket
        with pytest.raises(socket.timeout):
            dgram.recv(64)  # and no datagram
    finally:
        stream.close()
        dgram.close()


def test_seccomp_refuses_unix_sockets_but_not_tcp_sockets():
    if not no_unix_sockets():
        pytest.skip("no seccomp filter on this machine (unknown architecture or refused)")
    program = ("import socket\n"
               "for make in (lambda: socket.socket(socket.AF_UNIX), lambda: socket.socketpair()):\n"
               "    try:\n        make()\n    except PermissionError:\n        pass\n"
               "    else:\n        raise AssertionError('an AF_UNIX socket was made')\n"
               "socket.socket(socket.AF_INET).close()  # created, though it can reach nothing\n")
    assert run_program(program).passed


def test_a_program_cannot_carry_a_host_file_out_in_its_result(world_dir):
    secret = "ALETHEIA-SECRET-" + secrets.token_hex(8)
    readable = world_dir / "secret.txt"
    readable.write_text(secret + "\n")
    os.chmod(readable, 0o644)  # world-readable, like /etc/passwd
    read = f"data = open({str(readable)!r}).read()\n"
    hostile = {
        "assertion message": read + "assert False, data\n",
        "print and raise": read + "import sys\nprint(data)\nsys.stderr.write(data)\n"
                           "raise ValueError(data)\n",
        "forged error line": read + "import sys, os\nsys.stderr.write('\\n@@ERROR ' + data)\n"
                             "sys.stderr.flush()\nos._exit(1)\n",
        "named exception": read + "name = data.strip().replace('-', '_')\n"
                           "raise type(name, (Exception,), {})()\n",
        "password file": "import sys\ndata = open('/etc/passwd').read()\nprint(data)\n"
                         "sys.stderr.write(data)\nassert False, data\n",
        "exit early": read + "import sys\nsys.exit(data)\n",
        # Even text a program holds anyway (here: the secret itself) cannot pass as an error type.
        "forged error text": f"import sys, os\nsys.stderr.write('\\n@@ERROR {secret}\\n')\n"
                             "sys.stderr.flush()\nos._exit(1)\n",
    }
    runs = dict(zip(hostile, execute(list(hostile.values()), 5, 512, 2)))
    for name, run in runs.items():
        assert not run["passed"], (name, run)
        assert secret not in str(run) and "root:" not in str(run), (name, run)
        assert run["detail"] in BUILTIN_ERRORS | {"unknown error"}, (name, run)  # a type, no text


def test_the_empty_root_hides_host_files(world_dir):
    if not empty_root():
        pytest.skip("no mount namespace on this machine: world-readable files stay visible")
    (world_dir / "secret.txt").write_text("x")
    os.chmod(world_dir / "secret.txt", 0o644)
    hidden = [str(world_dir / "secret.txt"), "/etc/passwd", "/etc", "/home", "/proc/1",
              str(RUNNER_DIR)]
    program = (f"import os\nfor p in {hidden!r}:\n    assert not os.path.exists(p), p\n"
               "import json, socket, zlib  # the standard library is still all there\n"
               "open('scratch.txt', 'w').write('the workdir stays writable')\n")
    assert run_program(program).passed
