"""Output folders never lose data: staged runs, --overwrite at the last moment, one writer at a time.

Every test here starts from files a user cares about and checks they are byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from aletheia.runs import RunFolder, finished_run, unfinished_run

FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0",
        "--batches", "1"]


def snapshot(folder: Path, hidden: bool = True) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (``hidden=False``: not the staged ``.partial/``)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {k: v for k, v in files.items() if hidden or not k.startswith(".")}


def train_args(model, out, *extra, steps=2):
    return ["train", "--method", "standard", "--model", str(model), "--steps", str(steps),
            "--output", str(out), *FAST, *extra]


def cli_process(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "aletheia.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture
def finished(tmp_path, tiny_model_dir, capsys) -> Path:
    out = tmp_path / "run"
    assert run_cli(train_args(tiny_model_dir, out), capsys)[0] == 0
    return out


def test_overwrite_into_the_working_directory_never_deletes_unrelated_files(tmp_path, tiny_model_dir,
                                                                            capsys, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "notes.tex").write_text("keep\n")
    (scratch / "summary.json").write_text("{}\n")
    before = snapshot(scratch)
    monkeypatch.chdir(scratch)
    for model in ("./no-model", str(tiny_model_dir)):  # a bad model path, then a good one
        code, _, err = run_cli(train_args(model, ".", "--overwrite"), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert snapshot(scratch) == before


def test_a_run_writes_into_a_folder_of_other_files_and_leaves_them_alone(tmp_path, tiny_model_dir, capsys,
                                                                         monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "notes.tex").write_text("keep\n")
    monkeypatch.chdir(scratch)
    assert run_cli(train_args(tiny_model_dir, "."), capsys)[0] == 0
    assert (scratch / "notes.tex").read_text() == "keep\n"
    assert finished_run(scratch)["status"] == "completed"
    assert not (scratch / ".partial").exists() and not (scratch / ".aletheia.lock").exists()
    # and --overwrite replaces the run, still not the notes
    assert run_cli(train_args(tiny_model_dir, ".", "--overwrite", "--seed", "7"), capsys)[0] == 0
    assert (scratch / "notes.tex").read_text() == "keep\n"
    assert json.loads((scratch / "summary.json").read_text())["seed"] == 7


def test_overwrite_never_replaces_a_users_file_that_the_old_run_did_not_own(finished, tiny_model_dir, capsys):
    state = json.loads((finished / "run_state.json").read_text())  # an old run that wrote no metrics
    state["files"].remove("metrics.jsonl")
    (finished / "run_state.json").write_text(json.dumps(state))
    (finished / "metrics.jsonl").write_text("the user's own notes, under a name the new run writes\n")
    before = snapshot(finished, hidden=False)
    code, _, err = run_cli(train_args(tiny_model_dir, finished, "--overwrite", "--seed", "5"), capsys)
    assert code == 2 and "metrics.jsonl" in err and "not written by its run" in err
    assert snapshot(finished, hidden=False) == before


def test_a_bad_model_path_with_overwrite_leaves_the_finished_run_intact(finished, capsys):
    before = snapshot(finished)
    code, _, err = run_cli(train_args("./no-model", finished, "--overwrite"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert snapshot(finished) == before


def test_overwrite_swaps_the_new_run_in_only_when_it_is_complete(finished, tiny_model_dir, capsys):
    old = json.loads((finished / "summary.json").read_text())
    assert run_cli(train_args(tiny_model_dir, finished, "--overwrite", "--seed", "9"), capsys)[0] == 0
    new = json.loads((finished / "summary.json").read_text())
    assert (old["seed"], new["seed"]) == (42, 9)
    assert sorted(os.listdir(finished)) == sorted(finished_run(finished)["files"] + ["run_state.json"])


def test_a_killed_overwrite_keeps_the_old_run_and_says_the_new_one_is_unfinished(finished, tiny_model_dir,
                                                                                 capsys):
    before = snapshot(finished)
    proc = cli_process(train_args(tiny_model_dir, finished, "--overwrite", "--seed", "3", steps=2000))
    wait_for(lambda: (finished / ".partial" / "metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(finished, hidden=False) == before
    assert unfinished_run(finished)["status"] == "interrupted"  # killed: nobody holds the lock
    # a new run neither mistakes it for a finished one nor silently discards it
    code, _, err = run_cli(train_args(tiny_model_dir, finished), capsys)
    assert code == 2 and "already holds a finished run" in err
    code, _, err = run_cli(train_args(tiny_model_dir, finished, "--overwrite", "--seed", "4"), capsys)
    assert code == 0 and json.loads((finished / "summary.json").read_text())["seed"] == 4
    assert not (finished / ".partial").exists()


def test_sigterm_stops_the_run_with_one_line_and_keeps_the_finished_run(finished, tiny_model_dir):
    before = snapshot(finished)
    proc = cli_process(train_args(tiny_model_dir, finished, "--overwrite", steps=2000))
    wait_for(lambda: (finished / ".partial" / "metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("aletheia: error: interrupted (SIGTERM")
    assert "Traceback" not in err and ".partial" in err.strip().splitlines()[-1]
    assert snapshot(finished, hidden=False) == before
    assert unfinished_run(finished)["status"] == "interrupted"


def test_two_trains_into_one_folder_one_runs_and_the_other_gets_one_line(tmp_path, tiny_model_dir):
    out = tmp_path / "shared-run"
    first = cli_process(train_args(tiny_model_dir, out, steps=100_000))
    wait_for(lambda: (out / ".partial" / "run_state.json").is_file(), first)
    second = cli_process(train_args(tiny_model_dir, out, steps=2))
    _, err2 = second.communicate(timeout=120)
    assert second.returncode == 2 and first.poll() is None  # the first is still training
    lines = err2.strip().splitlines()
    assert len(lines) == 1 and "another aletheia process is writing to" in lines[0]
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 130 and not (out / "summary.json").exists()


def test_the_lock_holds_within_one_process_too(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "locked"
    with RunFolder(out):
        code, _, err = run_cli(train_args(tiny_model_dir, out), capsys)
    assert code == 2 and "another aletheia process" in err


def test_a_failed_run_saves_no_adapter_and_never_replaces_a_finished_one(finished, nan_model_dir, capsys):
    before = snapshot(finished)
    code, _, err = run_cli(train_args(nan_model_dir, finished, "--overwrite"), capsys)
    assert code == 2 and "finished run in" in err and "was kept" in err
    assert snapshot(finished, hidden=False) == before
    assert not (finished / ".partial" / "adapter_model.safetensors").exists()
    fresh = finished.parent / "fresh"
    code, _, _ = run_cli(train_args(nan_model_dir, fresh), capsys)
    assert code == 1  # the run failed (non-finite loss): recorded, with no adapter to pick up
    assert json.loads((fresh / "summary.json").read_text())["status"] == "failed"
    assert not (fresh / "adapter_model.safetensors").exists()
    assert finished_run(fresh)["status"] == "failed"


def test_eval_and_bootstrap_data_never_replace_a_file_they_did_not_write(finished, tmp_path, capsys):
    before = snapshot(finished)
    code, _, err = run_cli(["eval", "--adapter", str(finished), "--tasks", "heldout",
                            "-o", str(finished / "summary.json"), "--quiet"], capsys)
    assert code == 2 and "--overwrite" in err and snapshot(finished) == before

    mine = tmp_path / "mine.json"
    mine.write_text("my data\n")
    code, _, err = run_cli(["bootstrap-data", "-o", str(mine), "--size", "20"], capsys)
    assert code == 2 and "--overwrite" in err and mine.read_text() == "my data\n"
    fresh = tmp_path / "boot.json"
    assert run_cli(["bootstrap-data", "-o", str(fresh), "--size", "20"], capsys)[0] == 0
    assert run_cli(["bootstrap-data", "-o", str(fresh), "--size", "20"], capsys)[0] == 0  # same set: fine
    assert run_cli(["bootstrap-data", "-o", str(mine), "--size", "20", "--overwrite"], capsys)[0] == 0
    assert json.loads(mine.read_text()) == json.loads(fresh.read_text())


@pytest.mark.parametrize("where", ["a-file", "/proc/aletheia-run", "/dev/null/run"])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(where, tmp_path, capsys,
                                                                           monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr("aletheia.recipe.load_model_and_tokenizer", lambda *a, **k: loaded.append(1))
    code, _, err = run_cli(train_args("./any-model", where), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not loaded
    assert (tmp_path / "a-file").read_text() == "x"


def wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)
