"""The README's Python API example, and Aletheia's LoraConfig inside a plain HF Trainer."""

import torch
from conftest import CharTokenizer, tiny_llama
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from aletheia import (
    aletheia_lora_config,
    get_architecture,
    load_examples,
    probe_batches,
    run_probe,
    tokenize_examples,
    top_fraction,
)
from aletheia.data import collate
from aletheia.lora import found_adapters


def test_readme_api_example_composes_with_peft():
    model, tok = tiny_llama(num_layers=6), CharTokenizer()
    items = tokenize_examples(tok, load_examples(None, bootstrap_size=40), max_length=96)
    scores = run_probe(model, probe_batches(items, 5, 4, seed=42, pad_id=tok.pad_token_id), progress=False).scores
    layers = top_fraction(scores, 0.5)
    lora_config = aletheia_lora_config(get_architecture(model), layers)
    assert isinstance(lora_config, LoraConfig)
    peft_model = get_peft_model(model, lora_config)
    assert {layer for layer, _ in found_adapters(peft_model, "layers")} == set(layers)


def test_hf_trainer_trains_only_the_selected_layers(tmp_path):
    model, tok = tiny_llama(num_layers=4), CharTokenizer()
    items = tokenize_examples(tok, load_examples(None, bootstrap_size=40), max_length=96)
    lora_config = aletheia_lora_config(get_architecture(model), [0, 3])
    peft_model = get_peft_model(model, lora_config)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", remove_unused_columns=False)
    trainer = Trainer(model=peft_model, args=args, train_dataset=items,
                      data_collator=lambda rows: collate(rows, tok.pad_token_id))
    trainer.train()
    changed = [n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
    assert {int(n.split(".layers.")[1].split(".")[0]) for n in changed} == {0, 3}
