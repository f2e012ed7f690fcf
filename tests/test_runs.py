"""The runs layer: one ``RunRecord`` for every layer above the core, and folders from earlier versions.

``fixtures/legacy/`` holds a campaign and a search written by the code before ``RunRecord`` existed
(their text files only: records, summaries, stage files, results.csv, SEARCH_REPORT.md). Reading
them must give the same tables, and resuming them must redo nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from aletheia.campaign import load_spec, run_campaign
from aletheia.campaign.results import write_results_csv
from aletheia.runs import RunRecord, RunStore, read_record
from aletheia.search import load_search_config, run_search

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture
def legacy(tmp_path) -> Path:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_an_old_summary_reads_under_the_records_names():
    path = next((LEGACY / "campaign" / "runs").glob("*__aletheia__*/summary.json"))
    old = json.loads(path.read_text())
    record = read_record(path)
    assert record.selected_layers == old["adapted_layers"] and record.eval_loss == old["eval_loss_after"]
    assert (record.parameters, record.layers) == (old["base_params"], old["num_layers"])
    assert record.status == "completed" and record.method == "aletheia"


def test_a_record_round_trips_through_its_dict():
    r = RunRecord(status="failed", method="standard", seed=3, steps=10, reason="non-finite loss at step 2",
                  failed_step=2, selected_layers=[0, 1], notes=["x"])
    assert RunRecord.from_dict(r.to_dict()) == r
    # an older summary's failure dict becomes reason and failed_step
    assert RunRecord.from_dict({"status": "failed", "failure": {"step": 4, "reason": "nan"}}).failed_step == 4


def test_an_old_campaign_gives_the_same_results_csv_and_resumes_without_training(legacy, monkeypatch):
    folder = legacy / "campaign"
    saved = (folder / "results.csv").read_text()
    write_results_csv(folder)
    assert (folder / "results.csv").read_text() == saved

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("aletheia.recipe.run_training", no_training)
    rows = run_campaign(load_spec(folder / "campaign.yaml"), folder, progress=False)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    assert (folder / "results.csv").read_text() == saved
    assert all(r.completed for r in RunStore(folder).records())


def test_an_old_search_gives_the_same_report_and_resumes_without_training(legacy, monkeypatch):
    folder = legacy / "search"
    saved = (folder / "SEARCH_REPORT.md").read_text()
    monkeypatch.setattr("aletheia.recipe.run_training", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.chdir(legacy.parent)  # the saved report names its folder relative to where it ran
    shutil.move(str(folder), "search")
    summary = run_search(load_search_config("search/search.yaml"), "search")
    assert Path("search/SEARCH_REPORT.md").read_text() == saved
    assert summary["winner"]["arm"] == json.loads((LEGACY / "search" / "summary.json").read_text())["winner"]["arm"]


def test_the_store_retries_failed_runs_only(tmp_path):
    store = RunStore(tmp_path)
    store.save("a", RunRecord(status="completed", seed=1, steps=2))
    store.save("b", RunRecord(status="failed", seed=1, steps=2, reason="oom"))
    jobs = [SimpleNamespace(run_id=name) for name in "abc"]
    assert [j.run_id for j in store.todo(jobs)] == ["c"]
    assert [j.run_id for j in store.todo(jobs, retry_failed=True)] == ["b", "c"]
    assert [j.run_id for j in store.todo(jobs)] == ["b", "c"]  # b's failed record is gone


def test_a_job_the_executor_lost_is_recorded_as_failed_and_a_finished_one_is_kept(tmp_path):
    store = RunStore(tmp_path)
    store.save("a", RunRecord(status="completed", seed=1, steps=2))

    class LosingExecutor:  # a killed worker: the executor answers for the job itself
        def map(self, fn, jobs, on_event=None):
            return [RunRecord(status="failed", reason=f"executor job failed: killed ({j.run_id})") for j in jobs]

    jobs = [SimpleNamespace(run_id="a"), SimpleNamespace(run_id="b")]
    store.run(LosingExecutor(), lambda job: pytest.fail("the executor calls fn, not the store"), jobs)
    assert store.record("b").reason == "executor job failed: killed (b)"
    assert store.record("a").completed
