"""Bigger than one device: data parallel over two CPU processes (gloo) and ``device_map`` loading give
the probe scores, the selection and the training losses of a single process."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import yaml
from test_families import as_batch, token_items

from aletheia.config import RunConfig
from aletheia.models import load_model_and_tokenizer
from aletheia.probe import run_probe
from aletheia.recipe import run_training


def write_config(tmp_path, model_dir, data_file, output) -> str:
    cfg = RunConfig.from_dict({
        "model": str(model_dir), "output": str(output), "eval_accuracy_examples": 0,
        "data": {"path": str(data_file), "max_length": 32},
        "probe": {"batches": 4, "batch_size": 2, "fraction": 0.5},
        # no adapter dropout: its random masks would differ between one and two processes
        "adapter": {"dropout": 0.0},
        "train": {"steps": 2, "batch_size": 2, "grad_accum": 2, "warmup_steps": 0, "lr": 1e-2},
    }).validate()
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(cfg.to_yaml())
    return str(path)


def read_run(folder) -> tuple[dict, dict, list[float]]:
    probe = json.loads((folder / "probe.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return probe, summary, losses


def torchrun_cli(verb: str, config: str) -> subprocess.CompletedProcess:
    """``aletheia VERB --config CONFIG`` in two CPU processes under torchrun (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "aletheia.cli", verb, "--config", config, "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_cpu_processes_match_one(tiny_model_dir, alpaca_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_training(RunConfig.from_yaml(write_config(tmp_path, tiny_model_dir, alpaca_file, one)), progress=False)

    torchrun_cli("train", write_config(tmp_path, tiny_model_dir, alpaca_file, two))

    probe1, summary1, losses1 = read_run(one)
    probe2, summary2, losses2 = read_run(two)
    assert summary2["processes"] == 2 and summary1["processes"] == 1
    # each process probed two whole batches; the summed per-batch norms are the single-process scores
    assert probe2["scores"] == pytest.approx(probe1["scores"], rel=1e-5)
    flat = [list(itertools.chain(*p["per_batch_norms"])) for p in (probe1, probe2)]
    assert flat[1] == pytest.approx(flat[0], rel=1e-5)
    assert probe2["ranking"] == probe1["ranking"]
    assert probe2["selected_layers"] == probe1["selected_layers"]
    # the micro-batches of each step were split over the processes: the same steps, the same losses
    assert losses2 == pytest.approx(losses1, rel=1e-4)
    assert summary2["eval_loss"] == pytest.approx(summary1["eval_loss"], rel=1e-4)
    # only process 0 wrote the run folder, and it holds a loadable adapter
    assert (two / "adapter_config.json").is_file() and (two / "adapter_model.safetensors").is_file()


def test_compare_under_torchrun_writes_once_and_prints_one_table(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "cmp"
    done = torchrun_cli("compare", write_config(tmp_path, tiny_model_dir, alpaca_file, out))
    assert done.stdout.count("speedup (std / ale time)") == 1  # process 1 prints nothing
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["standard"]["processes"] == 2 and comparison["aletheia"]["processes"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "aletheia", "comparison.json", "comparison.md", "config.yaml", "loss_curves.png", "probe.json",
        "probe_scores.png", "run_state.json", "standard"]
    assert (out / "aletheia" / "summary.json").is_file() and (out / "standard" / "adapter_config.json").is_file()


def test_device_map_auto_gives_the_same_probe_scores(tiny_model_dir):
    pytest.importorskip("accelerate")
    batches = [as_batch(token_items(2, seed=s)) for s in (1, 2)]
    plain, _ = load_model_and_tokenizer(str(tiny_model_dir))
    mapped, _ = load_model_and_tokenizer(str(tiny_model_dir), device_map="auto")
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}  # no GPU here: auto keeps it on the CPU
    assert run_probe(mapped, batches, progress=False).scores == pytest.approx(
        run_probe(plain, batches, progress=False).scores, rel=1e-6)


def test_grad_accum_must_split_evenly_over_the_processes(monkeypatch):
    from aletheia import distributed
    from aletheia.errors import AletheiaError

    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(AletheiaError, match="grad_accum=2 must be a multiple of the 4 processes"):
        distributed.check_grad_accum(2)
    distributed.check_grad_accum(8)


def test_the_config_names_the_memory_options():
    cfg = yaml.safe_load(RunConfig().to_yaml())
    assert cfg["memory"] == {"quantize": None, "device_map": None, "gradient_checkpointing": False}
