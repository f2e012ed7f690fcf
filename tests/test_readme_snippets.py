"""Every Python block of README.md runs as written, in order, in one namespace (as a reader would
paste them), with a tiny random model in place of the hub model the README names."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model

from aletheia.architectures import supported_table
from aletheia.bootstrap import generate_bootstrap
from aletheia.lora import found_adapters

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MODEL = '"Qwen/Qwen2.5-0.5B"'


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", text, re.M | re.S)]


def adapted_layers(model) -> set[int]:
    return {layer for layer, _ in found_adapters(model, "layers")}


def trained_layers(model, before: dict) -> set[int]:
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert changed and all("lora_" in n for n in changed), changed
    return {int(n.split(".layers.")[1].split(".")[0]) for n in changed}


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    blocks = python_blocks(README.read_text())
    code = "\n".join(blocks)
    assert len(blocks) >= 3 and "SFTTrainer" in code and "Trainer(" in code and code.count(HUB_MODEL) == 1
    tiny = save_tiny_model(tmp_path / "tiny-llama")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(generate_bootstrap(40, seed=0)))  # bootstrap-data -o train.json

    namespace: dict = {}
    for i, block in enumerate(blocks):
        block = block.replace(HUB_MODEL, repr(str(tiny)))
        if "trainer.train()" in block:  # the HF Trainer block: which weights did it move?
            before = {n: p.detach().clone() for n, p in namespace["peft_model"].named_parameters()}
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        if "peft_model =" in block:
            assert adapted_layers(namespace["peft_model"]) == set(namespace["layers"])
        if "trainer.train()" in block:
            assert namespace["trainer"].state.global_step == 10
            assert trained_layers(namespace["peft_model"], before) == set(namespace["layers"])
        if "sft.train()" in block:
            sft = namespace["sft"]
            assert sft.state.global_step == 10
            assert adapted_layers(sft.model) == set(namespace["layers"])  # TRL kept Aletheia's placement
            row = sft.train_dataset[0]  # the loss is on the completion only
            answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
            assert row["labels"][0] == -100 and namespace["tok"].decode(answer) == row["completion"]
    assert {"peft_model", "trainer", "sft"} <= set(namespace)


def test_the_readmes_table_of_families_is_the_registry():
    """The supported-families table is made by ``supported_table``: a family registered without it is caught."""
    assert supported_table() in README.read_text()
