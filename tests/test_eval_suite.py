"""Evaluation suite on tiny random models: subsets, scoring, generation, eval.json, forgetting."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch

from aletheia.errors import AletheiaError
from aletheia.evaluation.forgetting import forgetting_report, forgetting_table, mcnemar
from aletheia.evaluation.generation import cut_at_stop, generate_greedy
from aletheia.evaluation.gsm8k import flexible_answer, strict_answer
from aletheia.evaluation.mmlu import (
    PrefixCache,
    allocate,
    build_prompt,
    choice_loglikelihoods,
    encode_pair,
    format_question,
    read_questions,
    stratified_subset,
)
from aletheia.evaluation.sources import load_gsm8k, load_humaneval, load_mmlu, read_mmlu_folder
from aletheia.evaluation.suite import EvalConfig, run_suite

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_mmlu(root: Path, sizes: dict[str, int]) -> Path:
    for split, count in (("dev", None), ("test", None)):
        (root / split).mkdir(parents=True)
        for subject, n in sizes.items():
            rows = [[f"{subject} question {i}?", "one", "two", "three", "four", "ABCD"[i % 4]]
                    for i in range(5 if split == "dev" else n)]
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as fh:
                csv.writer(fh).writerows(rows)
    return root


@pytest.fixture
def mmlu_dir(tmp_path) -> Path:
    return write_mmlu(tmp_path / "mmlu", {"algebra": 12, "anatomy": 6, "law": 2})


@pytest.fixture
def gsm8k_file(tmp_path) -> Path:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for name, n in (("test", 6), ("train", 9)):
        rows = [{"question": f"What is {i} plus {i}?",
                 "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
                for i in range(n)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "test.jsonl"


@pytest.fixture
def humaneval_file(tmp_path) -> Path:
    problems = [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x + {i}.\"\"\"\n",
                 "canonical_solution": f"    return x + {i}\n", "entry_point": f"f{i}",
                 "test": f"def check(c):\n    assert c(1) == {1 + i}\n"} for i in range(3)]
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in problems)
    return path


def test_allocation_is_proportional_with_at_least_one_per_subject():
    alloc = allocate({"big": 1000, "mid": 100, "tiny": 3}, 20)
    assert sum(alloc.values()) == 20 and alloc["tiny"] == 1 and alloc["big"] > alloc["mid"] >= 1
    with pytest.raises(AletheiaError, match="one question from each"):
        allocate({"a": 5, "b": 5, "c": 5}, 2)


def test_subset_is_fixed_by_the_seed_and_can_be_reused(mmlu_dir, tmp_path):
    data = read_mmlu_folder(mmlu_dir)
    first, again = stratified_subset(data, 8, 7), stratified_subset(data, 8, 7)
    assert first == again and len(first) == 8 and {s for s, _ in first} == {"algebra", "anatomy", "law"}
    saved = tmp_path / "eval.json"
    saved.write_text(json.dumps({"results": {"base": {"mmlu": {"questions": [list(q) for q in first]}}}}))
    assert read_questions(saved) == first


@pytest.mark.skipif(not (SHARED / "mmlu").is_dir(), reason="needs ../shared/data/mmlu")
def test_the_200_question_mmlu_subset_covers_all_57_subjects():
    data = load_mmlu(str(SHARED / "mmlu"), hub=False, pypi=False)
    chosen = stratified_subset(data, 200, 1234)
    assert len(chosen) == 200 and len({s for s, _ in chosen}) == 57
    assert data.source.startswith("local:") and len(data.dev) == 57


def test_missing_benchmark_data_is_one_line_saying_how_to_provide_it():
    for loader, flag in ((load_mmlu, "--mmlu-path"), (load_gsm8k, "--gsm8k-path"),
                         (load_humaneval, "--humaneval-path")):
        with pytest.raises(AletheiaError, match=flag) as err:
            loader(None, hub=False, pypi=False)
        assert "\n" not in str(err.value)


def test_continuation_tokens_come_from_tokenising_context_and_continuation_together(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx, cont = encode_pair(tok, "Question?\nAnswer:", " B")
    whole = tok("Question?\nAnswer: B")["input_ids"]
    assert ctx + cont == whole and tok.decode(cont) == " B"


def test_prefix_cache_gives_the_same_scores_as_a_full_forward(mmlu_dir, tiny_model, tokenizer):
    data = read_mmlu_folder(mmlu_dir)
    item, shots = data.test["algebra"][3], data.dev["algebra"]
    prompt = build_prompt(item, shots)
    head = prompt[: len(prompt) - len(format_question(item))].rstrip()
    cache = PrefixCache(tiny_model, tokenizer(head)["input_ids"])
    choices = [" A", " B", " C", " D"]
    full = choice_loglikelihoods(tiny_model, tokenizer, prompt, choices)
    cached = choice_loglikelihoods(tiny_model, tokenizer, prompt, choices, cache)
    assert torch.allclose(torch.tensor(full), torch.tensor(cached), atol=1e-4)
    assert choice_loglikelihoods(tiny_model, tokenizer, prompt, choices, cache) == cached  # cache restored


def test_gsm8k_answers_are_extracted_and_normalised():
    assert strict_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert strict_answer("The answer is $18.") == "18"
    assert strict_answer("It is 18") is None and flexible_answer("It is 18.00.") == "18"
    assert flexible_answer("first 3, then -4.5 apples") == "-4.5"


def test_batched_generation_equals_one_by_one_and_cuts_at_stop_strings(tiny_model, tokenizer):
    prompts = ["def f(x):\n", "hello there, a longer prompt", "x"]
    batched = generate_greedy(tiny_model, tokenizer, prompts, 12, ["zz"], batch_size=3)
    single = [generate_greedy(tiny_model, tokenizer, [p], 12, ["zz"], batch_size=1)[0] for p in prompts]
    assert batched == single
    assert cut_at_stop("return 1\ndef g():", ["\ndef", "\nclass"]) == "return 1"


def test_run_suite_evaluates_every_task(tiny_model, tokenizer, mmlu_dir, gsm8k_file, humaneval_file):
    cfg = EvalConfig(mmlu_path=str(mmlu_dir), mmlu_n=6, mmlu_shots=2, gsm8k_path=str(gsm8k_file), gsm8k_n=4,
                     gsm8k_max_new_tokens=8, humaneval_path=str(humaneval_file), humaneval_max_new_tokens=8,
                     allow_code_execution=True, hub=False, pypi=False)
    cfg.data.bootstrap_size, cfg.data.max_eval_examples = 40, 4
    out = run_suite(tiny_model, tokenizer, ["mmlu", "gsm8k", "humaneval", "heldout"], cfg, progress=False)
    assert out["mmlu"]["n"] == 6 and 0 <= out["mmlu"]["accuracy"] <= 1 and out["mmlu"]["shots"] == 2
    assert len(out["mmlu"]["items"]) == 6 and out["mmlu"]["questions"] == [[i["subject"], i["index"]]
                                                                         for i in out["mmlu"]["items"]]
    assert out["gsm8k"]["n"] == 4 and out["gsm8k"]["prompt_format"] == "8shot" and out["gsm8k"]["shots"] == 8
    assert out["humaneval"]["n"] == 3 and out["humaneval"]["pass@1"] == 0.0  # random weights write no code
    assert out["heldout"]["loss"] > 0 and out["heldout"]["tokens"] > 0
    assert all(out[t]["seconds"] >= 0 for t in out)


def test_humaneval_is_skipped_unless_code_execution_is_allowed(tiny_model, tokenizer, humaneval_file):
    cfg = EvalConfig(humaneval_path=str(humaneval_file))
    out = run_suite(tiny_model, tokenizer, ["humaneval"], cfg, progress=False)
    assert out["humaneval"]["pass@1"] is None and "--allow-code-execution" in out["humaneval"]["skipped"]


def test_eval_config_rejects_bad_values():
    with pytest.raises(AletheiaError, match="tasks=.*backend="):
        EvalConfig(tasks=["mmlu", "trivia"], backend="vllm").validate()


def test_mcnemar_and_extra_forgetting():
    assert mcnemar([True] * 10, [True] * 10)["p_value"] == 1.0
    assert mcnemar([True] * 12 + [False] * 8, [False] * 12 + [False] * 8)["p_value"] < 0.001
    items = lambda pattern: [{"subject": "s", "index": i, "correct": c} for i, c in enumerate(pattern)]
    results = {
        "base": {"mmlu": {"accuracy": 0.50, "items": items([1, 1, 0, 0])}, "heldout": {"loss": 2.0}},
        "standard": {"mmlu": {"accuracy": 0.25, "items": items([1, 0, 0, 0])}, "heldout": {"loss": 1.5}},
        "aletheia": {"mmlu": {"accuracy": 0.50, "items": items([1, 0, 1, 0])}, "heldout": {"loss": 1.6}},
    }
    report = forgetting_report(results)
    mmlu = report["rows"][0]
    assert mmlu["delta"] == {"standard": -25.0, "aletheia": 0.0} and mmlu["extra_forgetting"] == 25.0
    assert set(report["mcnemar_mmlu"]) == {"base vs standard", "base vs aletheia", "standard vs aletheia"}
    table = forgetting_table(report, ["base", "standard", "aletheia"])
    assert "extra forgetting" in table and "+25.0 pp" in table and "McNemar" in table


def _adapter_run(model_dir: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0
    get_peft_model(base, lora).save_pretrained(folder)
    return folder


def test_eval_cli_writes_base_and_adapter_results_from_one_load(tiny_model_dir, mmlu_dir, alpaca_file, tmp_path,
                                                                capsys):
    from aletheia.cli import main

    run = _adapter_run(tiny_model_dir, tmp_path / "run")
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as done:
        main(["eval", "--model", str(tiny_model_dir), "--adapter", str(run), "--tasks", "mmlu,heldout",
              "--mmlu-path", str(mmlu_dir), "--mmlu-n", "5", "--mmlu-shots", "1", "--data", str(alpaca_file),
              "-o", str(out), "-q"])
    assert done.value.code == 0
    res = json.loads(out.read_text())
    base, adapted = res["results"]["base"], res["results"]["adapter"]
    assert base["mmlu"]["questions"] == adapted["mmlu"]["questions"] and base["mmlu"]["n"] == 5
    assert base["heldout"]["loss"] != adapted["heldout"]["loss"]  # the adapter is really applied
    assert res["versions"]["torch"] and res["settings"]["mmlu_n"] == 5
    assert "mmlu" in res["results"]["base"] and res["results"]["base"]["mmlu"]["seconds"] >= 0
    printed = capsys.readouterr().out
    assert "base: MMLU" in printed and "Δ adapter" in printed

    # disable_adapter() inside the PeftModel gives exactly the separately loaded base model
    from aletheia.models import load_model_and_tokenizer

    alone, tok = load_model_and_tokenizer(str(tiny_model_dir))
    cfg = EvalConfig(mmlu_path=str(mmlu_dir), mmlu_n=5, mmlu_shots=1, hub=False, pypi=False)
    solo = run_suite(alone, tok, ["mmlu"], cfg, progress=False)["mmlu"]
    assert [i["loglikelihoods"] for i in solo["items"]] == [i["loglikelihoods"] for i in base["mmlu"]["items"]]


def test_lm_eval_backend_agrees_with_ours_on_the_same_questions(tiny_model_dir, mmlu_dir):
    pytest.importorskip("lm_eval")
    from aletheia.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    cfg = EvalConfig(mmlu_path=str(mmlu_dir), mmlu_n=6, mmlu_shots=2, hub=False, pypi=False)
    ours = run_suite(model, tok, ["mmlu"], cfg, progress=False)["mmlu"]
    theirs = run_suite(model, tok, ["mmlu"], cfg.replace(backend="lm-eval"), progress=False)["mmlu"]
    assert theirs["questions"] == ours["questions"]
    assert [i["prediction"] for i in theirs["items"]] == [i["prediction"] for i in ours["items"]]
    for a, b in zip(ours["items"], theirs["items"]):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-3)


def test_lm_eval_gsm8k_generates_the_same_completions_as_ours(tiny_model_dir, gsm8k_file):
    pytest.importorskip("lm_eval")
    from aletheia.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    cfg = EvalConfig(gsm8k_path=str(gsm8k_file), gsm8k_n=3, gsm8k_max_new_tokens=6, batch_size=2, hub=False, pypi=False)
    ours = run_suite(model, tok, ["gsm8k"], cfg, progress=False)["gsm8k"]
    theirs = run_suite(model, tok, ["gsm8k"], cfg.replace(backend="lm-eval"), progress=False)["gsm8k"]
    assert theirs["questions"] == ours["questions"] and theirs["prompt_format"] == ours["prompt_format"] == "8shot"
    assert [i["completion"] for i in theirs["items"]] == [i["completion"] for i in ours["items"]]
    assert (theirs["strict_match"], theirs["flexible_extract"]) == (ours["strict_match"], ours["flexible_extract"])


def test_eval_cli_reports_missing_data_in_one_line_before_loading_the_model(tiny_model_dir, tmp_path, capsys):
    from aletheia.cli import main

    with pytest.raises(SystemExit) as done:
        main(["eval", "--model", str(tiny_model_dir), "--tasks", "mmlu", "--mmlu-path", str(tmp_path / "nope"),
              "-o", str(tmp_path / "eval.json")])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and err.startswith("aletheia: error: MMLU folder not found") and "\n" not in err
    assert not (tmp_path / "eval.json").exists()


def test_eval_of_a_compare_folder_prints_the_forgetting_table(tiny_model_dir, mmlu_dir, alpaca_file, tmp_path,
                                                             capsys):
    from aletheia.cli import main

    folder = tmp_path / "compare"
    for name in ("standard", "aletheia"):
        _adapter_run(tiny_model_dir, folder / name)
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_model_dir), "--adapter", str(folder), "--tasks", "mmlu,heldout",
              "--mmlu-path", str(mmlu_dir), "--mmlu-n", "4", "--mmlu-shots", "0", "--data", str(alpaca_file),
              "-o", str(out), "-q"])
    res = json.loads(out.read_text())
    assert list(res["results"]) == ["base", "standard", "aletheia"]
    loss = next(r for r in res["forgetting"]["rows"] if r["task"] == "heldout")
    assert loss["extra_forgetting"] == pytest.approx(loss["delta"]["aletheia"] - loss["delta"]["standard"])
    printed = capsys.readouterr().out
    assert "extra forgetting" in printed and "MMLU McNemar standard vs aletheia" in printed


def test_the_shipped_eval_config_loads_and_round_trips():
    path = Path(__file__).resolve().parents[1] / "configs" / "eval-quick.yaml"
    cfg = EvalConfig.from_yaml(path).validate()
    assert cfg.tasks == ["mmlu", "heldout"] and EvalConfig.from_dict(cfg.to_dict()) == cfg
