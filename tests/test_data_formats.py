"""Data as users have it: every source and format, down to the exact tokens that carry labels.

The tokenizer is the tiny one of ``save_tiny_model`` (one token per character), so each labelled
run of tokens decodes back to exactly the text it stands for.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, save_tiny_model

from aletheia.chat_templates import CHAT_TEMPLATES, use_chat_template
from aletheia.config import DataConfig, RunConfig
from aletheia.data import IGNORE_INDEX, prompt_text, tokenize_example, tokenize_examples
from aletheia.errors import AletheiaError, ConfigError
from aletheia.examples import Example, load_examples, read_examples

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

QA = [{"question": "What is 2+2?", "answer": "4"}, {"question": "Capital of France?", "answer": "Paris"},
      {"question": "Spell cat backwards.", "answer": "tac"}]
MAPPING = {"instruction": "question", "output": "answer"}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]
# SmolLM2's template, with no {% generation %} tags: masked by rendering prefix by prefix
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)  # fresh: tests set templates on it


def labelled(tok, item) -> list[str]:
    """The text of each run of consecutive tokens that carry a label."""
    runs, run = [], []
    for token, label in zip(item["input_ids"], item["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return [tok.decode(r) for r in runs + ([run] if run else [])]


def unlabelled_prefix(tok, item) -> str:
    first = next(i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX)
    return tok.decode(item["input_ids"][:first])


def examples_of(tmp_path, rows) -> list[Example]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_examples(path)


# --- sources ---------------------------------------------------------------------------------------

def test_parquet_with_a_column_mapping_labels_the_answer_only(tmp_path, tok):
    path = tmp_path / "qa.parquet"
    pd.DataFrame(QA).to_parquet(path)
    examples = read_examples(path, columns=MAPPING)
    assert [e.instruction for e in examples] == [r["question"] for r in QA]
    assert [e.where for e in examples] == [f"{path} row {i}" for i in (1, 2, 3)]
    item = tokenize_example(tok, examples[1], max_length=512)  # no chat template: the Alpaca prompt
    assert labelled(tok, item) == ["Paris</s>"]
    assert unlabelled_prefix(tok, item) == ("<s>Below is an instruction that describes a task. Write a response "
                                            "that appropriately completes the request.\n\n### Instruction:\n"
                                            "Capital of France?\n\n### Response:\n")


def test_csv_cells_are_read_as_written(tmp_path, tok):
    path = tmp_path / "qa.csv"
    path.write_text("question,context,answer\nAgent number?,,007\nSum 1 and 2,,3\n")
    a, b = read_examples(path, columns={"instruction": "question", "input": "context", "output": "answer"})
    assert (a.answer, a.input, b.answer) == ("007", "", "3")  # text, not the number 7
    use_chat_template(tok, "chatml")
    assert labelled(tok, tokenize_example(tok, a, 512)) == ["007<|im_end|>\n"]


def test_a_dataset_saved_to_disk_with_its_splits(tmp_path, tok):
    rows = lambda qs: {"messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                                    for q, a in qs]}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows([("a?", "A"), ("b?", "B")])),
                                   "test": datasets.Dataset.from_dict(rows([("c?", "C"), ("d?", "D")]))})
    splits.save_to_disk(str(tmp_path / "saved"))
    examples = load_examples(DataConfig(path=str(tmp_path / "saved"), split="test"))
    assert [e.answer for e in examples] == ["C", "D"]
    use_chat_template(tok, "chatml")
    item = tokenize_example(tok, examples[0], 512)
    assert labelled(tok, item) == ["C<|im_end|>\n"]
    assert unlabelled_prefix(tok, item) == "<|im_start|>user\nc?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(AletheiaError, match="has the splits train, test, not 'validation'"):
        load_examples(DataConfig(path=str(tmp_path / "saved"), split="validation"))


def test_a_dataset_repository_with_configurations_loads_like_the_hub(tmp_path, tok):
    """``load_dataset(path, subset, split=...)``, the hub's call, on a local repository layout."""
    repo = tmp_path / "repo"
    for name, answer in (("main", "M"), ("socratic", "S")):
        (repo / name).mkdir(parents=True)
        pd.DataFrame([{"question": f"{name}?", "answer": answer}] * 2).to_parquet(repo / name / "test.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test.parquet\n"
        for n in ("main", "socratic")) + "---\n# a dataset\n")
    cfg = DataConfig(path=str(repo), subset="socratic", split="test", columns=MAPPING)
    examples = load_examples(cfg)
    assert [e.answer for e in examples] == ["S", "S"] and examples[0].where == f"{repo}/socratic (test) row 1"
    assert labelled(tok, tokenize_example(tok, examples[0], 512)) == ["S</s>"]
    with pytest.raises(AletheiaError, match="could not load HF dataset .*subset 'nope'.*main"):
        load_examples(cfg.replace(subset="nope"))


def test_a_folder_of_files_is_split_by_file_name(tmp_path):
    folder = tmp_path / "data"
    (folder / "nested").mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    pd.DataFrame([{"text": "two"}]).to_parquet(folder / "nested" / "train-00001.parquet")
    (folder / "test.csv").write_text("text\nthree\n")
    assert [e.text for e in read_examples(folder)] == ["two", "one"]  # sorted by path
    assert [e.text for e in read_examples(folder, split="test")] == ["three"]
    with pytest.raises(AletheiaError, match="holds the splits train, test, not 'dev'"):
        read_examples(folder, split="dev")


# --- formats ---------------------------------------------------------------------------------------

def test_sharegpt_conversations_train_on_every_assistant_turn_or_the_last(tmp_path, tok):
    row = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([row, row]))
    ex = read_examples(path)[0]
    assert ex.messages == CHAT
    use_chat_template(tok, "chatml")
    assert labelled(tok, tokenize_example(tok, ex, 512)) == ["hello<|im_end|>\n", "4<|im_end|>\n"]
    last = tokenize_example(tok, ex, 512, train_on="last_assistant")
    assert labelled(tok, last) == ["4<|im_end|>\n"]
    assert unlabelled_prefix(tok, last) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi"
                                            "<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>"
                                            "user\n2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_multi_turn_masks_agree_between_generation_tags_and_prefix_rendering(tok):
    """The built-in chatml ({% generation %}: transformers' assistant mask) and the same template
    without tags (rendered prefix by prefix) give the same ids and the same labels."""
    ex = Example(messages=CHAT)
    tagged = tokenize_example(use_chat_template(tok, "chatml"), ex, 512)
    tok.chat_template = PLAIN_CHATML
    plain = tokenize_example(tok, ex, 512)
    assert tagged == plain
    assert labelled(tok, plain) == ["hello<|im_end|>\n", "4<|im_end|>\n"]


def test_single_turn_tokens_are_those_of_before(tmp_path, tok):
    """One answer: the prompt and the rest of the rendered chat tokenised apart, as always."""
    tok.chat_template = PLAIN_CHATML
    ex = examples_of(tmp_path, [{"instruction": "Say hi", "output": "hi"}])[0]
    prompt = tok.apply_chat_template(ex.messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(ex.messages, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    assert tokenize_example(tok, ex, 512) == {"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids}
    assert prompt_text(tok, ex) == prompt


def test_messages_without_a_chat_template_end_each_answer_with_eos(tmp_path, tok):
    ex = examples_of(tmp_path, [{"messages": CHAT[1:]}])[0]
    item = tokenize_example(tok, ex, 512)
    assert labelled(tok, item) == ["hello</s>", "4</s>"]
    assert tok.decode(item["input_ids"]) == ("<s>### User:\nhi\n\n### Assistant:\nhello</s>\n\n### User:\n2+2?\n\n"
                                             "### Assistant:\n4</s>")


def test_plain_text_is_labelled_everywhere(tmp_path, tok):
    item = tokenize_example(tok, examples_of(tmp_path, [{"text": "just text"}])[0], 512)
    assert labelled(tok, item) == ["just text</s>"]  # this tokenizer adds no BOS


def test_a_jinja_file_chooses_the_template(tmp_path, tok):
    path = tmp_path / "tmpl.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[assistant] {% endif %}")
    cfg = RunConfig(data=DataConfig(chat_template=str(path))).validate()
    use_chat_template(tok, cfg.data.chat_template)
    ex = examples_of(tmp_path, [{"messages": CHAT[1:]}])[0]
    assert labelled(tok, tokenize_example(tok, ex, 512)) == ["hello\n", "4\n"]
    assert use_chat_template(tok, "alpaca").chat_template is None and CHAT_TEMPLATES["llama3"]


def test_multi_turn_truncation_keeps_the_start_or_cuts_the_first_exchange(tmp_path, tok):
    use_chat_template(tok, "chatml")
    ex = examples_of(tmp_path, [{"messages": CHAT}])[0]
    full = tokenize_example(tok, ex, 512)
    cut = tokenize_example(tok, ex, len(full["input_ids"]) - 3)
    assert cut["input_ids"] == full["input_ids"][:-3] and labelled(tok, cut) == ["hello<|im_end|>\n", "4<|im_end"]
    # not even the first answer fits: that exchange is cut as a single one is (a quarter of the
    # length for the answer, the prompt cut from the left)
    tiny = tokenize_example(tok, ex, 24)
    assert len(tiny["input_ids"]) == 24 and labelled(tok, tiny) == ["hello<"]
    assert tok.decode(tiny["input_ids"][:18]) == "_start|>assistant\n"


# --- errors: one line naming the file, the row and the problem --------------------------------------

def test_a_malformed_parquet_row_names_the_file_and_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame([{"question": "q", "answer": "a"}, {"question": "q2", "answer": ""}]).to_parquet(path)
    with pytest.raises(AletheiaError) as err:
        read_examples(path, columns=MAPPING)
    assert str(err.value) == f"{path} row 2: 'output' must be a non-empty string"


def test_a_bad_column_mapping_names_the_columns_found(tmp_path):
    path = tmp_path / "qa.parquet"
    pd.DataFrame(QA).to_parquet(path)
    with pytest.raises(AletheiaError) as err:
        read_examples(path, columns={"instruction": "question", "output": "answr"})
    assert str(err.value) == (f"data.columns: {path} has no column 'answr' (for output); its columns are "
                              "question, answer")


@pytest.mark.parametrize("row, problem", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "turn 2 of 'conversations' is from 'robot'; ShareGPT speakers are human"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "the last message must have role 'assistant'"),
    ({"conversations": [{"from": "gpt"}]}, "turn 1 of 'conversations' needs string 'from' and 'value'"),
    ({"conversations": []}, "'conversations' must be a non-empty list of {from, value}"),
    ({"question": "q"}, "none of the known fields"),
])
def test_malformed_chat_rows_name_the_line(tmp_path, row, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(AletheiaError) as err:
        read_examples(path)
    assert str(err.value).startswith(f"{path}:2: ") and problem in str(err.value)


def test_data_settings_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError) as err:
        RunConfig(data=DataConfig(columns={"instrucion": "q", "output": ""}, train_on="every",
                                  chat_template="no-such")).validate()
    message = str(err.value)
    for words in ("'instrucion' is not a field (did you mean 'instruction'?)", "columns: output must name a column",
                  "train_on='every' is unknown", "chat_template 'no-such' is neither a built-in"):
        assert words in message
    (tmp_path / "one.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(AletheiaError, match="is a single file, read whole"):
        read_examples(tmp_path / "one.jsonl", split="test")


# --- end to end -------------------------------------------------------------------------------------

FAST = ["--batch-size", "2", "--max-length", "96", "--quiet", "--accuracy-examples", "0", "--batches", "1"]


def test_train_on_a_parquet_file_with_data_columns(tmp_path, tiny_dir, capsys):
    path = tmp_path / "train.parquet"
    pd.DataFrame([{"question": f"Add {i} and {i + 1}.", "answer": str(2 * i + 1), "id": i}
                  for i in range(24)]).to_parquet(path)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--model", str(tiny_dir), "--data", str(path), "--data-columns",
                                 "instruction=question,output=answer", "--method", "standard", "--steps", "2",
                                 "-o", str(out), *FAST], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 2 and summary["train_examples"] == 22
    assert (out / "adapter_model.safetensors").is_file()
    from aletheia.config import RunConfig as Saved

    assert Saved.from_yaml(out / "config.yaml").data.columns == MAPPING

    code, _, err = run_cli(["train", "--model", str(tiny_dir), "--data", str(path), "--data-columns",
                            "instruction=question,output=answr", "-o", str(tmp_path / "bad"), *FAST], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"aletheia: error: data.columns: {path} has no column 'answr' (for output); its columns are "
                   "question, answer, id\n")


def test_eval_reads_held_out_data_through_the_same_column_mapping(tmp_path, tiny_dir, capsys):
    path = tmp_path / "qa.parquet"
    pd.DataFrame([{"question": f"Add {i} and {i + 1}.", "answer": str(2 * i + 1)} for i in range(12)]).to_parquet(path)
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--tasks", "heldout", "--data", str(path),
                            "--data-columns", "instruction=question,output=answer", "-o", str(tmp_path / "e.json"),
                            "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["settings"]["data"]["columns"] == MAPPING and result["results"]["base"]["heldout"]["loss"] > 0


def test_tokenize_examples_passes_train_on(tmp_path, tok):
    use_chat_template(tok, "chatml")
    ex = examples_of(tmp_path, [{"messages": CHAT}])
    [every], [last] = tokenize_examples(tok, ex, 512), tokenize_examples(tok, ex, 512, "last_assistant")
    assert len(labelled(tok, every)) == 2 and labelled(tok, last) == ["4<|im_end|>\n"]
