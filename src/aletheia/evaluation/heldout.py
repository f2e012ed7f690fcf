"""Held-out loss for the suite: the run's own held-out split, token-weighted (see ``loss``)."""

from __future__ import annotations

from typing import Any

from ..chat_templates import use_chat_template
from ..data import IGNORE_INDEX, eval_batches, tokenize_examples
from ..examples import load_examples, split_examples
from .loss import heldout_loss


def evaluate_heldout(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    """Mean NLL per response token on the held-out split of ``cfg.data`` (split seed ``cfg.data_seed``)."""
    d = cfg.data
    examples = load_examples(d)  # its columns, split and subset, as training read them
    _, held = split_examples(examples, d.eval_fraction, d.max_eval_examples, cfg.data_seed)
    use_chat_template(tokenizer, d.chat_template)
    items = tokenize_examples(tokenizer, held, d.max_length, d.train_on)
    tokens = sum(sum(1 for x in it["labels"][1:] if x != IGNORE_INDEX) for it in items)
    loss = heldout_loss(model, eval_batches(items, cfg.batch_size, tokenizer.pad_token_id), progress)
    return {"loss": loss, "n": len(items), "tokens": tokens, "data": d.path or "bootstrap",
            "split_seed": cfg.data_seed, "max_length": d.max_length,
            "weighting": "token-weighted mean NLL over response tokens"}
