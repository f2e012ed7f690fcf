"""A disk that fills up: one line, nothing finished lost, and the same results once space is freed.

The disk is real: a small tmpfs mounted under ``tmp_path`` (needs root or CAP_SYS_ADMIN; skipped
otherwise), filled by a filler file to leave exactly the room a test wants, then freed by deleting the
filler and growing the mount. A tiny model's adapter is 100-140 KB, so a few pages of room make a run
fail while it saves its results. ``aletheia.outputs.MIN_FREE_BYTES`` (64 MiB, the up-front refusal)
is lowered in the tests that want a run to start on such a disk; one test keeps it and checks that
refusal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from aletheia.campaign import run_campaign, runner
from aletheia.campaign.results import read_results_csv
from aletheia.runs import finished_run, unfinished_run

KiB = 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
TINY = {"data": {"bootstrap_size": 30, "max_length": 48, "max_eval_examples": 4},
        "probe": {"batches": 1, "batch_size": 2},
        "train": {"steps": 2, "batch_size": 2, "grad_accum": 1, "warmup_steps": 1}}
FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


class SmallDisk:
    """A mounted tmpfs: ``fill(leave=N)`` takes all but N bytes, ``free_space()`` gives them back."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler.bin"

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int = 0) -> None:
        """Another program's file takes every byte but ``leave`` (a multiple of the page size)."""
        assert leave % PAGE == 0 and self.free() >= leave
        with open(self.filler, "ab") as fh:
            os.posix_fallocate(fh.fileno(), fh.seek(0, os.SEEK_END), self.free() - leave)
        assert self.free() == leave

    def limit_inodes(self, leave: int) -> None:
        """Room for only ``leave`` more files or folders (running out of inodes is a full disk too)."""
        st = os.statvfs(self.path)
        self._remount(f"nr_inodes={st.f_files - st.f_ffree + leave}")
        assert os.statvfs(self.path).f_ffree == leave

    def free_space(self, size: str = "16m") -> None:
        """Delete the filler and grow the disk."""
        self.filler.unlink(missing_ok=True)
        self._remount(f"size={size},nr_inodes=100000")

    def _remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs under ``tmp_path``, always unmounted at teardown."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if PAGE != 4 * KiB:
        pytest.skip(f"the room each test leaves is sized for 4 KiB pages, not {PAGE // KiB} KiB")
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small real disk to fill")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): the disk-full tests need root or CAP_SYS_ADMIN")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the disk-full "
                    "tests need root or CAP_SYS_ADMIN")
    try:
        yield SmallDisk(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # busy: detach it anyway


@pytest.fixture
def low_floor(monkeypatch):
    """Let runs start on a small disk (the up-front refusal asks for 64 MiB free)."""
    monkeypatch.setattr("aletheia.outputs.MIN_FREE_BYTES", PAGE)


def error_line(err: str) -> str:
    """The one error line of a failed command: last on stderr, alone, no traceback.

    The lines before it, if any, are the run's own ``aletheia: ...`` progress notes.
    """
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("aletheia: error:")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("aletheia: ") for line in lines), err
    return errors[0]


def snapshot(folder: Path, hidden: bool = True) -> dict[str, bytes]:
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {k: v for k, v in files.items() if hidden or not k.startswith(".")}


def train_args(model, out, *extra):
    return ["train", "--method", "standard", "--model", str(model), "--steps", "2", "--output", str(out),
            *FAST, *extra]


# --- one run ------------------------------------------------------------------------------------

@pytest.mark.parametrize("room", [4 * KiB, 64 * KiB, 160 * KiB],
                         ids=["fills-at-first-write", "fills-saving-the-adapter", "fills-after-the-adapter"])
def test_train_onto_a_disk_that_fills_gives_one_line_and_keeps_the_finished_run(
        room, small_disk, low_floor, tiny_model_dir, capsys):
    run = small_disk.path / "run"
    assert run_cli(train_args(tiny_model_dir, run), capsys)[0] == 0
    before = snapshot(run)
    old_state = finished_run(run)
    assert old_state["status"] == "completed" and "adapter_model.safetensors" in before

    small_disk.fill(leave=room)
    code, out, err = run_cli(train_args(tiny_model_dir, run, "--overwrite", "--seed", "9"), capsys)
    assert code == 2 and "completed" not in out
    line = error_line(err)
    assert "no space left" in line and "free space" in line, line

    # the finished run is byte-identical; what the new run staged is never presented as finished
    assert snapshot(run, hidden=False) == before
    assert finished_run(run) == old_state
    assert unfinished_run(run) is None  # the staged files of a run the disk stopped are removed:
    assert sorted(os.listdir(run)) == sorted(before)  # they only held the room that must be freed

    # space freed: the same command replaces the run, and nothing of the failed attempt is left
    small_disk.free_space()
    assert run_cli(train_args(tiny_model_dir, run, "--overwrite", "--seed", "9"), capsys)[0] == 0
    assert json.loads((run / "summary.json").read_text())["seed"] == 9
    assert finished_run(run)["status"] == "completed" and not (run / ".partial").exists()
    assert sorted(os.listdir(run)) == sorted(finished_run(run)["files"] + ["run_state.json"])


def test_a_disk_out_of_room_while_the_run_folder_is_set_up_releases_it(small_disk, low_floor, tiny_model_dir,
                                                                       capsys):
    run = small_disk.path / "run"
    small_disk.limit_inodes(leave=3)  # the folder, its lock file, the staging folder: not its state file
    code, _, err = run_cli(train_args(tiny_model_dir, run), capsys)
    line = error_line(err)
    assert code == 2 and "no space left" in line, line
    assert os.listdir(small_disk.path) == []  # no folder, no lock, no staging left behind
    small_disk.free_space()  # and the lock was released: the same command, in the same process, runs
    assert run_cli(train_args(tiny_model_dir, run), capsys)[0] == 0
    assert finished_run(run)["status"] == "completed"


@pytest.mark.parametrize("verb", ["train", "campaign"])
def test_a_nearly_full_disk_is_refused_before_the_model_loads(verb, small_disk, tiny_model_dir, tmp_path,
                                                               capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr("aletheia.recipe.load_model_and_tokenizer", lambda *a, **k: loaded.append(1))
    out = small_disk.path / "out"
    if verb == "train":
        args = train_args(tiny_model_dir, out)
    else:
        spec = tmp_path / "spec.yaml"
        spec.write_text(tiny_spec_yaml(tiny_model_dir))
        args = ["campaign", "run", str(spec), "--output", str(out), "-q"]
    code, _, err = run_cli(args, capsys)
    line = error_line(err)
    assert code == 2 and "MiB free" in line and "free some space" in line, line
    assert not loaded and not out.exists() and os.listdir(small_disk.path) == []


# --- a campaign ---------------------------------------------------------------------------------

def tiny_spec_yaml(model: Path) -> str:
    import yaml

    return yaml.safe_dump({"name": "tiny", "models": [str(model)], "seeds": [42, 123],
                           "recipes": ["standard", "aletheia"], **TINY}, sort_keys=False)


def same_rows(rows: list[dict], reference: list[dict]) -> None:
    by_key = {(r["seed"], r["recipe"], r["budget"]): r for r in reference}
    assert sorted(by_key) == sorted((r["seed"], r["recipe"], r["budget"]) for r in rows)
    for r in rows:
        ref = by_key[(r["seed"], r["recipe"], r["budget"])]
        assert r["status"] == ref["status"] == "completed", r
        assert r["selected_layers"] == ref["selected_layers"]
        assert r["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("room", [0, 4 * KiB, 64 * KiB],
                         ids=["full-before-a-run", "one-page-left", "fills-saving-adapters"])
def test_a_campaign_whose_disk_fills_goes_on_or_stops_cleanly_and_resumes_to_the_same_rows(
        room, small_disk, low_floor, tiny_model_dir, tmp_path, capsys, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec_yaml(tiny_model_dir))
    from aletheia.campaign import load_spec

    run_campaign(load_spec(spec), tmp_path / "reference", progress=False)  # on a roomy disk, uninterrupted
    reference = read_results_csv(tmp_path / "reference" / "results.csv")
    assert len(reference) == 4

    # the disk fills (another program's file) just before the third of the four runs
    real_run_one, started = runner.run_one, []

    def run_one(job):
        started.append(job.run_id)
        if len(started) == 3:
            small_disk.fill(leave=room)
        return real_run_one(job)

    monkeypatch.setattr(runner, "run_one", run_one)
    out = small_disk.path / "camp"
    code, stdout, err = run_cli(["campaign", "run", str(spec), "--output", str(out), "-q"], capsys)
    monkeypatch.setattr(runner, "run_one", real_run_one)
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}
    done = [r for r in records.values() if r["status"] == "completed"]
    failed = [r for r in records.values() if r["status"] != "completed"]
    assert len(done) == 2  # the runs before the disk filled are kept

    if code == 0:  # the campaign went on: the runs that could not be saved are recorded, with why
        assert len(failed) == 2 and len(started) == 4, records
        for r in failed:
            assert "no space left on the disk" in r["reason"], r
        assert "4 runs recorded (2 failed)" in stdout and err.strip() == ""
        assert {r["status"] for r in read_results_csv(out / "results.csv")} == {"completed", "failed"}
    else:  # not even a record could be written: the campaign stopped with one line
        line = error_line(err)
        assert code == 2 and "no space left on the disk" in line and "rerun" in line, line
        assert len(started) == 3 and not failed, records
    if room == 0:
        assert code == 2  # nothing can be written: the campaign stops, it does not record 2 bogus failures
    if room == 64 * KiB:
        assert code == 0  # room for records but not adapters: the campaign goes on
    for rd in out.glob("runs/*"):  # nothing half-written is presented as finished
        if rd.name not in {r["run_id"] for r in done}:
            assert not (rd / "run_state.json").exists() and not (rd / "summary.json").exists()

    # free the space; --retry-failed (or, after a stop, the same command) finishes the campaign
    small_disk.free_space()
    again = ["campaign", "run", str(spec), "--output", str(out), "-q"] + (["--retry-failed"] if failed else [])
    code, stdout, err = run_cli(again, capsys)
    assert code == 0, err
    assert "4 runs recorded (0 failed)" in stdout
    same_rows(read_results_csv(out / "results.csv"), reference)
    kept = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}
    for r in done:  # the runs finished before the disk filled were not run again
        assert kept[r["run_id"]] == r
