"""``--backend lm-eval``: MMLU and GSM8K through lm-evaluation-harness's Python API.

The in-memory model (a ``PeftModel`` with its adapter active or disabled, or a plain model) is wrapped
in lm-eval's ``HFLM``; the data are the same local copies our backend reads, written to JSONL and
described by task configs with ``dataset_path: json``; the questions are chosen with ``samples=``
(not ``limit=``), so both backends answer exactly the same questions with the same prompts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AletheiaError
from .gsm8k import (
    CHAT_INSTRUCTION,
    FEWSHOT_STOPS,
    fewshot_examples,
    normalize_number,
    resolve_format,
    subset,
)
from .mmlu import prepare_mmlu
from .sources import LETTERS, load_gsm8k, strip_calculator

MMLU_TEXT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
             "D. {{choices[3]}}\nAnswer:")


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise AletheiaError("--backend lm-eval needs lm-evaluation-harness: pip install 'lm-eval==0.4.13'") from None
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    return lm_eval, HFLM


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _hflm(model, tokenizer, batch_size: int):
    _, HFLM = _lm_eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=int(getattr(model.config, "max_position_embeddings", 2048) or 2048))


def _task_name(subject: str) -> str:
    return f"aletheia_mmlu_{subject}"


def lmeval_mmlu(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    """MMLU through lm-eval on the same (subject, index) list, prompt and shots as our backend."""
    lm_eval, _ = _lm_eval()
    data, questions, shots = prepare_mmlu(cfg)
    by_subject: dict[str, list[int]] = {}
    for subject, index in questions:
        by_subject.setdefault(subject, []).append(index)
    with tempfile.TemporaryDirectory(prefix="aletheia-lmeval-") as tmp:
        tasks, samples = [], {}
        for subject, indices in by_subject.items():
            files = {"test": _write_jsonl(Path(tmp) / f"{subject}_test.jsonl", data.test[subject])}
            if shots:
                files["dev"] = _write_jsonl(Path(tmp) / f"{subject}_dev.jsonl", data.dev[subject])
            task = {
                "task": _task_name(subject), "dataset_path": "json", "dataset_kwargs": {"data_files": files},
                "test_split": "test", "output_type": "multiple_choice",
                "description": f"The following are multiple choice questions (with answers) about "
                               f"{subject.replace('_', ' ')}.\n\n",
                "doc_to_text": MMLU_TEXT, "doc_to_choice": list(LETTERS), "doc_to_target": "answer",
                "num_fewshot": shots,
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
            if shots:
                task.update({"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}})
            tasks.append(task)
            samples[_task_name(subject)] = indices
        out = lm_eval.simple_evaluate(model=_hflm(model, tokenizer, 1), tasks=tasks, samples=samples,
                                      log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    records, correct = [], 0
    for subject in by_subject:
        for s in sorted(out["samples"][_task_name(subject)], key=lambda s: s["doc_id"]):
            ll = [float(r[0]) for r in s["filtered_resps"]]
            pred = max(range(4), key=lambda i: ll[i])
            ok = pred == int(s["target"])
            correct += ok
            records.append({"subject": subject, "index": s["doc_id"], "answer": LETTERS[int(s["target"])],
                            "prediction": LETTERS[pred], "correct": ok,
                            "loglikelihoods": [round(x, 4) for x in ll]})
    order = {q: i for i, q in enumerate(questions)}
    records.sort(key=lambda r: order[(r["subject"], r["index"])])
    return {
        "accuracy": correct / len(records) if records else None, "n": len(records), "correct": correct,
        "backend": f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''}".strip(),
        "source": data.source, "shots": shots, "seed": cfg.seed,
        "prompt_format": "lm-eval mmlu task config (description, first_n dev shots, 'Answer:' + ' A'..' D')",
        "questions": [list(q) for q in questions], "items": records,
    }


def lmeval_gsm8k(model, tokenizer, cfg, progress: bool = True) -> dict[str, Any]:
    """GSM8K through lm-eval with our subset, shots, stop strings and answer extraction."""
    lm_eval, _ = _lm_eval()
    data = load_gsm8k(cfg.gsm8k_path, cfg.cache_dir, cfg.hub, cfg.pypi)
    chosen = subset(data, cfg.gsm8k_n, cfg.seed)
    fmt = resolve_format(cfg.gsm8k_format, tokenizer)
    shots, shots_note = fewshot_examples(data, chosen) if fmt == "8shot" else ([], "zero-shot")
    strict = r"(?:#### *|[Tt]he (?:final )?answer is:? *\$?)(-?[$0-9.,]+)"
    with tempfile.TemporaryDirectory(prefix="aletheia-lmeval-") as tmp:
        test = [{"question": r["question"], "target": normalize_number(r["target"])} for r in data.test]
        files = {"test": _write_jsonl(Path(tmp) / "test.jsonl", test)}
        task = {
            "task": "aletheia_gsm8k", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
            "test_split": "test", "output_type": "generate_until", "doc_to_target": "{{target}}",
            "doc_to_text": "Question: {{question}}\nAnswer:" if fmt == "8shot" else CHAT_INSTRUCTION + "{{question}}",
            "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": len(shots),
            "generation_kwargs": {"until": FEWSHOT_STOPS if fmt == "8shot" else ["<|im_end|>", "</s>"],
                                  "do_sample": False, "max_gen_toks": cfg.gsm8k_max_new_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": False,
                             "regexes_to_ignore": [",", "\\$", "\\.$"]}],
            "filter_list": [
                {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": strict},
                                                    {"function": "take_first"}]},
                {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                         "regex_pattern": r"(-?[$0-9.,]*[0-9])"},
                                                        {"function": "take_first"}]},
            ],
        }
        if shots:
            train = [{"question": s["question"], "target": strip_calculator(s["solution"])} for s in shots]
            files["train"] = _write_jsonl(Path(tmp) / "train.jsonl", train)
            task.update({"fewshot_split": "train", "fewshot_config": {"sampler": "first_n"},
                         "doc_to_target": "{{target}}"})
        out = lm_eval.simple_evaluate(model=_hflm(model, tokenizer, cfg.batch_size), tasks=[task],
                                      samples={"aletheia_gsm8k": chosen}, log_samples=True, bootstrap_iters=0,
                                      apply_chat_template=fmt == "chat-0shot", verbosity="WARNING")
    res = out["results"]["aletheia_gsm8k"]
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in out["samples"]["aletheia_gsm8k"]:
        entry = by_doc.setdefault(sample["doc_id"], {"index": sample["doc_id"], "target": sample["target"]})
        entry["completion"] = sample["resps"][0][0]
        entry[f"{sample['filter'].split('-')[0]}_correct"] = bool(sample["exact_match"])
    return {
        "strict_match": res.get("exact_match,strict-match"),
        "flexible_extract": res.get("exact_match,flexible-extract"),
        "n": len(chosen), "backend": "lm-eval", "source": data.source, "seed": cfg.seed, "prompt_format": fmt,
        "shots": len(shots), "shots_note": shots_note,
        "decoding": {"greedy": True, "max_new_tokens": cfg.gsm8k_max_new_tokens},
        "questions": chosen, "items": [by_doc[i] for i in sorted(by_doc)],
    }
