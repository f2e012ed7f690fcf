"""Reading training data: formats, prompts, response-only labels, and clear errors."""

import json

import pytest
from conftest import CharTokenizer

from aletheia.bootstrap import generate_bootstrap
from aletheia.data import IGNORE_INDEX, tokenize_example
from aletheia.errors import AletheiaError
from aletheia.examples import load_examples, read_examples, split_examples


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_reads_alpaca_chat_and_text_rows(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"text": "plain text"},
    ])
    a, c, t = read_examples(path)
    assert a.answer == "hi" and a.instruction == "Say hi"
    assert c.messages[0]["content"] == "2+2?" and c.answer == "4"
    assert t.text == "plain text"


def test_labels_cover_only_the_response(tmp_path):
    tok = CharTokenizer()
    ex = read_examples(write_lines(tmp_path / "d.jsonl", [{"instruction": "Echo", "input": "x", "output": "ok"}]))[0]
    item = tokenize_example(tok, ex, max_length=512)
    answer = [i for i, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(answer) == "ok</s>".replace("</s>", "\x02")
    assert item["labels"][0] == IGNORE_INDEX


def test_truncation_keeps_part_of_the_answer():
    tok = CharTokenizer()
    ex = load_examples(None, bootstrap_size=10)[0]
    item = tokenize_example(tok, ex, max_length=40)
    assert len(item["input_ids"]) == 40
    assert any(label != IGNORE_INDEX for label in item["labels"])


@pytest.mark.parametrize("line, problem", [
    ('{"instruction": "a", "output": ', "malformed JSON line"),
    ('{"foo": 1}', "none of the known fields"),
    ('{"instruction": "", "output": "x"}', "'instruction' must be a non-empty string"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "last message must have role 'assistant'"),
    ('[1, 2]', "expected"),
])
def test_a_malformed_row_names_the_file_and_line(tmp_path, line, problem):
    path = write_lines(tmp_path / "bad.jsonl", [{"text": "fine"}, line])
    with pytest.raises(AletheiaError) as err:
        read_examples(path)
    assert f"{path}:2" in str(err.value) and problem in str(err.value)


def test_empty_and_missing_datasets_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(AletheiaError, match="empty"):
        read_examples(tmp_path / "empty.jsonl")
    with pytest.raises(AletheiaError, match="data file not found"):
        read_examples(tmp_path / "nope.json")


def test_split_is_deterministic_and_disjoint():
    examples = load_examples(None, bootstrap_size=50)
    train_a, held_a = split_examples(examples, 0.2, 100, seed=1)
    train_b, held_b = split_examples(examples, 0.2, 100, seed=1)
    _, held_c = split_examples(examples, 0.2, 100, seed=2)
    assert len(held_a) == 10 and len(train_a) == 40
    assert [e.messages for e in held_a] == [e.messages for e in held_b]
    assert [e.messages for e in held_a] != [e.messages for e in held_c]
    assert not {id(e) for e in held_a} & {id(e) for e in train_a}


def test_bootstrap_set_is_deterministic_with_exact_answers():
    a, b = generate_bootstrap(200, seed=0), generate_bootstrap(200, seed=0)
    assert a == b and generate_bootstrap(200, seed=1) != a
    assert len({(r["instruction"], r["input"]) for r in a}) == 200
    for r in a:
        if r["instruction"] == "Write the given word backwards.":
            assert r["output"] == r["input"][::-1]
        if r["instruction"].startswith("Sort these numbers in ascending"):
            nums = [int(x) for x in r["output"].split(", ")]
            assert nums == sorted(nums)
