"""The bootstrap instruction set: generated, deterministic, with exact answers.

A fresh machine has no instruction data, so Aletheia generates its own: short tasks (arithmetic word
problems, sorting, string transforms, unit conversions, counting) whose answers are exact, so that a
run can measure held-out exact-match accuracy as well as loss. Same seed, same records.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .outputs import check_file_output
from .utils import write_json

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "cards"]
WORDS = ["river", "garden", "planet", "silver", "window", "orange", "castle", "pencil", "market",
         "forest", "rocket", "bridge", "candle", "dragon", "island", "violin", "winter", "button"]
UNITS = [  # (from, to, factor)
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
    ("days", "hours", 24), ("weeks", "days", 7),
]


def _add(r: random.Random) -> dict:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 60), r.randint(2, 40)
    q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    return {"instruction": q, "input": "", "output": str(a + b)}


def _sub(r: random.Random) -> dict:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(10, 90)
    b = r.randint(1, a - 1)
    q = f"{name} had {a} {item} and gave away {b}. How many {item} are left?"
    return {"instruction": q, "input": "", "output": str(a - b)}


def _mul(r: random.Random) -> dict:
    item = r.choice(ITEMS)
    a, b = r.randint(2, 12), r.randint(2, 12)
    q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
    return {"instruction": q, "input": "", "output": str(a * b)}


def _sort(r: random.Random) -> dict:
    nums = r.sample(range(1, 100), r.randint(3, 6))
    desc = r.random() < 0.3
    order = "descending" if desc else "ascending"
    out = ", ".join(str(n) for n in sorted(nums, reverse=desc))
    return {"instruction": f"Sort these numbers in {order} order.",
            "input": ", ".join(str(n) for n in nums), "output": out}


def _reverse(r: random.Random) -> dict:
    w = r.choice(WORDS)
    return {"instruction": "Write the given word backwards.", "input": w, "output": w[::-1]}


def _upper(r: random.Random) -> dict:
    words = " ".join(r.sample(WORDS, 2))
    return {"instruction": "Rewrite the text in capital letters.", "input": words, "output": words.upper()}


def _convert(r: random.Random) -> dict:
    src, dst, factor = r.choice(UNITS)
    n = r.randint(2, 15)
    return {"instruction": f"Convert {n} {src} to {dst}. Answer with the number and the unit.",
            "input": "", "output": f"{n * factor} {dst}"}


def _count(r: random.Random) -> dict:
    w = r.choice(WORDS)
    return {"instruction": "How many letters are in the given word?", "input": w, "output": str(len(w))}


def _max(r: random.Random) -> dict:
    nums = r.sample(range(1, 200), r.randint(3, 6))
    return {"instruction": "Which is the largest number in the list?",
            "input": ", ".join(str(n) for n in nums), "output": str(max(nums))}


TASKS = [_add, _sub, _mul, _sort, _reverse, _upper, _convert, _count, _max]


def generate_bootstrap(n: int = 600, seed: int = 0) -> list[dict]:
    """``n`` Alpaca records (instruction, input, output), deterministic from ``seed``."""
    r = random.Random(seed)
    records, seen = [], set()
    while len(records) < n:
        rec = r.choice(TASKS)(r)
        key = (rec["instruction"], rec["input"])
        if key in seen and len(seen) < n * 10:
            continue
        seen.add(key)
        records.append(rec)
    return records


def write_bootstrap(path: str | Path, n: int = 600, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the bootstrap set as an Alpaca JSON file and return its path.

    An existing file is replaced only when told to, or when it already holds exactly this set."""
    path = Path(path)
    records = generate_bootstrap(n, seed)

    def same_set(p: Path) -> bool:
        try:
            return json.loads(p.read_text()) == records
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    check_file_output(path, same_set, overwrite)
    write_json(path, records)
    return path
