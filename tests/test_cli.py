"""The command line end to end on a tiny saved model: files written, and one-line errors."""

import json

import pytest
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from aletheia.cli import main
from aletheia.config import RunConfig
from aletheia.lora import found_adapters

PROBE_FAST = ["--batch-size", "2", "--max-length", "64", "--quiet"]
FAST = PROBE_FAST + ["--accuracy-examples", "4"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_compare_writes_both_run_folders_and_a_table(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(["compare", "--model", str(tiny_model_dir), "--steps", "3",
                               "--output", str(out), *FAST], capsys)
    assert code == 0
    assert "speedup (std / ale time)" in stdout and "held-out loss after" in stdout
    comparison = json.loads((out / "comparison.json").read_text())
    selected = comparison["selected_layers"]
    assert len(selected) == 2  # half of 4 layers
    for method in ("standard", "aletheia"):
        summary = json.loads((out / method / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 3
        for key in ("train_seconds", "median_step_seconds", "tokens_per_second", "peak_memory_bytes",
                    "trainable_params", "eval_loss_before", "eval_loss", "versions"):
            assert summary[key] is not None, key
        assert len((out / method / "metrics.jsonl").read_text().splitlines()) == 3
        saved = yaml.safe_load((out / method / "config.yaml").read_text())
        assert RunConfig.from_dict(saved).method == method
    assert (out / "probe_scores.png").stat().st_size > 1000
    probe = json.loads((out / "aletheia" / "probe.json").read_text())
    assert probe["selected_layers"] == selected and len(probe["scores"]) == 4
    assert probe["model_path"] == str(tiny_model_dir)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, out / "aletheia")
    found = found_adapters(loaded, "layers")
    assert {layer for layer, _ in found} == set(selected)
    assert {rank for (_, name), rank in found.items() if name == "down_proj"} == {32}
    assert {rank for (_, name), rank in found.items() if name == "q_proj"} == {16}


def test_probe_is_reproducible_and_modes_agree(tmp_path, tiny_model_dir, capsys):
    runs = {}
    for name, mode in [("a", "single-pass"), ("b", "single-pass"), ("c", "chunked")]:
        code, _, _ = run_cli(["probe", "--model", str(tiny_model_dir), "--seed", "5", "--probe-mode", mode,
                              "--output", str(tmp_path / name), *PROBE_FAST], capsys)
        assert code == 0
        runs[name] = json.loads((tmp_path / name / "probe.json").read_text())
    assert runs["a"]["scores"] == runs["b"]["scores"]
    assert runs["a"]["selected_layers"] == runs["c"]["selected_layers"]
    assert runs["c"]["scores"] == pytest.approx(runs["a"]["scores"], rel=1e-5)


def test_a_finished_run_is_not_overwritten(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "standard", "--model", str(tiny_model_dir), "--steps", "1",
            "--output", str(out), *FAST]
    assert run_cli(args, capsys)[0] == 0
    before = (out / "summary.json").read_text()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "summary.json").read_text() == before


def test_config_file_with_flag_overrides(tmp_path, tiny_model_dir, capsys):
    cfg = RunConfig(model=str(tiny_model_dir), output=str(tmp_path / "from-yaml"))
    cfg.train.steps = 50
    cfg.probe.fraction = 0.25
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    code, _, _ = run_cli(["train", "--config", str(path), "--steps", "2", *FAST], capsys)
    assert code == 0
    summary = json.loads((tmp_path / "from-yaml" / "summary.json").read_text())
    assert summary["steps"] == 2 and len(summary["selected_layers"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model"], "model path not found"),
    (["--data", "/no/such/file.jsonl"], "data file not found"),
    (["--fraction", "0"], "fraction=0.0"),
    (["--fraction", "1.5"], "fraction=1.5"),
    (["--steps", "-3"], "steps=-3"),
    (["--method", "magic"], "method='magic' is unknown"),
])
def test_bad_input_gives_one_clear_line(tmp_path, tiny_model_dir, capsys, args, message):
    base = ["train", "--model", str(tiny_model_dir), "--output", str(tmp_path / "x"), "--steps", "1", *FAST]
    code, _, err = run_cli(base + args, capsys)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_malformed_and_empty_data_files(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for path, message in [(bad, f"{bad}:2: malformed JSON line"), (empty, "empty")]:
        code, _, err = run_cli(["train", "--model", str(tiny_model_dir), "--data", str(path),
                                "--output", str(tmp_path / "y"), *FAST], capsys)
        assert code == 2 and message in err and "Traceback" not in err


def test_unknown_config_key_is_named(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stepz: 3\n")
    code, _, err = run_cli(["train", "--config", str(path)], capsys)
    assert code == 2 and "'stepz' (did you mean 'steps'?)" in err


def test_every_verb_has_help(capsys):
    for verb in ("fetch-model", "probe", "train", "compare", "bootstrap-data"):
        code, out, _ = run_cli([verb, "-h"], capsys)
        assert code == 0 and "Usage" in out


def test_match_parameters_trains_the_selected_layers_at_standard_loras_parameter_count(tmp_path, tiny_model_dir,
                                                                                        capsys):
    out = tmp_path / "matched"
    code, _, _ = run_cli(["compare", "--model", str(tiny_model_dir), "--steps", "1", "--match-parameters",
                          "--output", str(out), *FAST], capsys)
    assert code == 0
    std = json.loads((out / "standard" / "summary.json").read_text())
    ale = json.loads((out / "aletheia" / "summary.json").read_text())
    assert ale["ranks"]["attention"] == 16 and ale["ranks"]["mlp"] > 32  # half the layers, larger MLP rank
    assert std["trainable_params"] * 0.9 < ale["trainable_params"] <= std["trainable_params"]
    found = found_adapters(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                                     out / "aletheia"), "layers")
    assert {rank for (_, name), rank in found.items() if name == "down_proj"} == {ale["ranks"]["mlp"]}
