"""The HumanEval sandbox: canonical solutions pass, hostile programs fail safely, the host is untouched."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from aletheia.evaluation.humaneval import execute, program_for
from aletheia.evaluation.sandbox import isolation, run_program
from aletheia.evaluation.sources import read_humaneval

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox targets Linux")


def layers() -> set[str]:
    return set(isolation()["layers"])


def protects_files() -> bool:
    return "uid-nobody" in layers() or any(x.startswith("landlock") for x in layers())


def test_sandbox_reports_its_isolation():
    iso = isolation()
    assert iso["works"]
    assert {"separate-process", "rlimit-memory", "rlimit-cpu", "rlimit-file-size"} <= set(iso["layers"])


def test_a_program_passes_only_when_it_runs_to_the_end():
    assert run_program("assert sorted([3, 1, 2]) == [1, 2, 3]\n").passed
    failed = run_program("assert 1 + 1 == 3\n")
    assert not failed.passed and failed.status == "failed" and "AssertionError" in failed.detail
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
