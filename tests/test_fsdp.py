"""FSDP2 over two CPU processes (gloo) computes what one process does: the probe's scores from
gradient slices, the training losses, and an exact resume from a checkpoint written while sharded.

torch 2.13 runs ``fully_shard`` on CPU tensors with the gloo backend, so this runs on any machine; the
two processes are started by torchrun in a subprocess and each holds half of every parameter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from test_families import as_batch, token_items

from aletheia.architectures import get_architecture
from aletheia.config import TrainConfig
from aletheia.lora import aletheia_lora_config, apply_lora
from aletheia.probe import run_probe
from aletheia.train import train_lora
from aletheia.utils import set_seed

# no adapter dropout: the two processes split each step's micro-batches, so their masks differ from one
# process's; fsdp=True is ignored by one process and shards over two
SETTINGS = TrainConfig(steps=4, batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=1, fsdp=True)

WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from aletheia import distributed
from aletheia.architectures import get_blocks
from aletheia.probe import run_probe
from aletheia.train import train_lora
from test_fsdp import SETTINGS, adapted, probe_batches, train_items, train_in_two_halves

dist.init_process_group("gloo")
model = tiny_llama_for_probe = __import__("conftest").tiny_llama(num_layers=4)
for block in get_blocks(model):
    fully_shard(block)
fully_shard(model)
out = {{"probe_sharded": distributed.sharded(model)}}
for mode in ("single-pass", "chunked"):
    out[mode] = run_probe(model, probe_batches(), mode=mode, chunk_size=3, progress=False).per_batch
model = adapted()
result = train_lora(model, train_items(), SETTINGS, seed=0, pad_id=2, progress=False)
out.update(losses=result.losses, processes=result.processes, train_sharded=distributed.sharded(model))
out["resumed"] = train_in_two_halves({folder!r})
if dist.get_rank() == 0:
    with open({result!r}, "w") as fh:
        json.dump(out, fh)
dist.destroy_process_group()
"""


def probe_batches() -> list[dict[str, torch.Tensor]]:
    return [as_batch(token_items(2, seed=s)) for s in (1, 2, 3)]


def train_items():
    return token_items(8)


def adapted():
    model = tiny_llama(num_layers=4)
    set_seed(0)
    cfg = aletheia_lora_config(get_architecture(model), [1, 2])
    cfg.lora_dropout = 0.0
    return apply_lora(model, cfg)


def train_in_two_halves(folder: str) -> list[float]:
    """A run stopped as by SIGTERM after step 2 (checkpoint written while sharded), then a fresh model
    resumed from that checkpoint: its losses, the two steps it loaded and the two it trained."""
    from aletheia import train
    from aletheia.interrupts import RunInterrupted

    calls, stop_requested = [], train.stop_requested
    train.stop_requested = lambda: "SIGTERM" if calls.append(1) or len(calls) == 2 else None
    try:
        with pytest.raises(RunInterrupted):
            train_lora(adapted(), train_items(), SETTINGS, seed=0, pad_id=2, progress=False,
                       checkpoint_dir=Path(folder))
    finally:
        train.stop_requested = stop_requested
    resumed = train_lora(adapted(), train_items(), SETTINGS, seed=0, pad_id=2, progress=False,
                         resume_from=Path(folder) / "step-00000002")
    assert resumed.resumed_from_step == 2
    return resumed.losses


def test_fsdp_over_two_cpu_processes_gives_the_scores_and_losses_of_one(tmp_path):
    result = tmp_path / "two.json"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "ckpt"),
                                    result=str(result)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(result.read_text())
    assert two["probe_sharded"] and two["train_sharded"] and two["processes"] == 2

    model = tiny_llama(num_layers=4)
    for mode in ("single-pass", "chunked"):
        one = run_probe(model, probe_batches(), mode=mode, chunk_size=3, progress=False).per_batch
        assert [x for row in two[mode] for x in row] == pytest.approx([x for row in one for x in row], rel=1e-5)
    losses = train_lora(adapted(), train_items(), SETTINGS, seed=0, pad_id=2, progress=False).losses
    assert two["losses"] == pytest.approx(losses, rel=1e-5)
    assert two["resumed"] == pytest.approx(two["losses"], rel=1e-6)
