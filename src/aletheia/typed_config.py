"""Typed configs: dataclasses that round-trip through YAML, refuse unknown keys and check their types.

``Config`` is the base of every stage config (config.py), the campaign and search specs and the
evaluation config. ``from_dict`` rejects unknown keys (with a close match as the hint) and values of
the wrong type, one ``FieldError`` naming the dotted field; ``validate`` collects every problem at
once, types first, then each config's own ``problems()``, as one ``ConfigError``. The common checks
are declared, not written: ``LIMITS`` maps a field to its range (``at_least``, ``positive``,
``within``) or its choices (``one_of``), and every breach is worded the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .yaml_io import load_yaml_file


class FieldError(ConfigError):
    """One field has a value of the wrong type; ``field`` is its dotted name (``train.steps``)."""

    def __init__(self, field_name: str, detail: str):
        self.field, self.detail = field_name, detail
        super().__init__(f"'{field_name}' {detail}")

    def under(self, prefix: str) -> "FieldError":
        """The same problem, named from an enclosing section (``steps`` -> ``train.steps``)."""
        sep = "" if self.field.startswith("[") else "."
        return FieldError(f"{prefix}{sep}{self.field}", self.detail)


@dataclass(frozen=True)
class Limit:
    """What one field's value must be: a number in a range, or one of some names. None passes
    (an optional field left out)."""

    low: float | None = None
    high: float | None = None
    open: str = ""
    """The range ends that are excluded: ``low``, ``high`` or ``both``."""
    choices: tuple[str, ...] = ()
    hint: str = ""
    """Said after the problem, e.g. ``" (e.g. 2e-4)"``."""
    says: str = ""
    """What the value must be, in words, instead of the range (e.g. ``"a positive number of passes"``)."""

    def problem(self, name: str, value: Any) -> str | None:
        if value is None:
            return None
        if self.choices:
            return None if value in self.choices else (
                f"{name}={value!r} is unknown; use one of {', '.join(self.choices)}{self.hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # a type problem, reported as such
        low_open, high_open = self.open in ("low", "both"), self.open in ("high", "both")
        fine = ((self.low is None or (value > self.low if low_open else value >= self.low))
                and (self.high is None or (value < self.high if high_open else value <= self.high)))
        if fine:
            return None
        if self.says:
            text = self.says
        elif self.high is not None:
            text = f"in {'(' if low_open else '['}{self.low:g}, {self.high:g}{')' if high_open else ']'}"
        elif low_open and self.low == 0:
            text = "positive"
        else:
            text = ">= 0" if self.low == 0 else f"at least {self.low:g}"
        return f"{name}={value} must be {text}{self.hint}"


def at_least(low: float, hint: str = "") -> Limit:
    return Limit(low, hint=hint)


def positive(hint: str = "") -> Limit:
    return Limit(0, open="low", hint=hint)


def within(low: float, high: float, open: str = "", hint: str = "", says: str = "") -> Limit:
    return Limit(low, high, open, hint=hint, says=says)


def one_of(choices: Iterable[str], hint: str = "") -> Limit:
    return Limit(choices=tuple(choices), hint=hint)


class Config:
    """Mixin: dict/YAML round trip, unknown-key rejection and collected validation."""

    LIMITS = {}  # noqa: RUF012 - field -> what its value must be (a class attribute, not a field)
    SHORTHAND: str | None = None
    """In a list of these configs, a plain string stands for this field (``- aletheia`` is
    ``- {name: aletheia}``)."""

    def problems(self) -> list[str]:
        """Everything wrong with this config's values (not their types), one line each."""
        return [p for name, limit in self.LIMITS.items() if (p := limit.problem(name, getattr(self, name)))]

    def validate(self) -> "Config":
        problems = _own_type_problems(self) or self.problems()
        for f in fields(self):  # nested configs report with a prefix
            value = getattr(self, f.name)
            if isinstance(value, Config):
                problems += [f"{f.name}.{p}" for p in (type_problems(value) or value.problems())]
        if problems:
            raise ConfigError("invalid config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in out.items():
            if isinstance(value, Config):
                out[name] = value.to_dict()
            elif isinstance(value, (list, tuple)):
                out[name] = [v.to_dict() if isinstance(v, Config) else v for v in value]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Config":
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - names):
            close = {key: difflib.get_close_matches(key, names, n=1) for key in unknown}
            hints = [f"'{k}'" + (f" (did you mean '{c[0]}'?)" if c else "") for k, c in close.items()]
            raise ConfigError(f"unknown key(s) in {cls.__name__}: {', '.join(hints)}; "
                              f"known keys: {', '.join(sorted(names))}")
        types = get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            typ = types[name]
            if isinstance(typ, type) and issubclass(typ, Config):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"'{name}' must be a mapping, got {value!r}")
                try:
                    value = typ.from_dict(value)
                except FieldError as exc:
                    raise exc.under(name) from None
            elif (item := _config_item(typ)) is not None:
                value = _configs(name, value, item, optional=type(None) in get_args(typ))
            try:
                kwargs[name] = _coerce(name, value, typ)
            except FieldError as exc:
                raise _with_default(exc, cls, name) from None
        return cls(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        """Read a YAML file strictly (no repeated keys); every problem names the file."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path} (pass an existing YAML file to --config)")
        data = load_yaml_file(path, "config file")
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _config_item(typ: Any) -> type[Config] | None:
    """The config class of a ``list[SomeConfig]`` field, else None."""
    typ, origin = unwrap_optional(typ)
    (item,) = get_args(typ) if origin is list else (None,)
    return item if isinstance(item, type) and issubclass(item, Config) else None


def _configs(name: str, value: Any, cls: type[Config], optional: bool = False) -> Any:
    """The entries of a ``list[SomeConfig]`` field as configs; a wrong entry names itself
    (``models[2].lr``). None only where the field allows it (``list[X] | None``)."""
    if value is None and optional:
        return None
    if not isinstance(value, list):
        raise FieldError(name, f"must be a list, got {value!r}")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str) and cls.SHORTHAND:
            entry = {cls.SHORTHAND: entry}
        if not isinstance(entry, (dict, cls)):
            kinds = "a string or a mapping" if cls.SHORTHAND else f"a mapping of {cls.__name__} keys"
            raise FieldError(f"{name}[{i}]", f"must be {kinds}, got {entry!r}")
        try:
            out.append(entry if isinstance(entry, cls) else cls.from_dict(entry))
        except FieldError as exc:
            raise exc.under(f"{name}[{i}]") from None
    return out


def duplicate_names(field_name: str, names: list[str], hint: str = "") -> list[str]:
    """One problem line per name that appears more than once in a list of named items."""
    return [f"{field_name}: '{n}' appears twice{hint}" for n in sorted({n for n in names if names.count(n) > 1})]


def _with_default(exc: "FieldError", cls: type, name: str) -> "FieldError":
    """Add the field's default as the fix, unless the message already suggests a value."""
    f = next(f for f in fields(cls) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if "(e.g." in exc.detail or default is dataclasses.MISSING or default is None \
            or isinstance(default, Config):
        return exc
    return FieldError(exc.field, f"{exc.detail} (e.g. {default!r}, the default)")


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def unwrap_optional(typ: Any) -> tuple[Any, Any]:
    """``Optional[X]`` -> (X, origin of X); other hints unchanged."""
    origin = get_origin(typ)
    args = [a for a in get_args(typ) if a is not type(None)]
    if origin is not None and len(args) == 1 and origin is not list:
        typ, origin = args[0], get_origin(args[0])
    return typ, origin


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Type checking for YAML values: whole numbers for ints, finite numbers for floats, lists for
    lists (element by element), text for strings. Lossless conversions are made (3 -> 3.0, 3.0 -> 3,
    a number given for a text field -> its text); anything else is one ``FieldError``."""
    if value is None:
        return None
    typ, origin = unwrap_optional(typ)
    if typ in (int, float) and isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)  # YAML 1.1 reads `2e-4` and `1e12` (no dot) as text
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(name, f"must be a whole number, got {value!r}")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise FieldError(name, f"must be a finite whole number, got {value!r}")
            if not value.is_integer():
                raise FieldError(name, f"must be a whole number, got {value!r} (e.g. {math.floor(value)})")
            return int(value)
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(name, f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise FieldError(name, f"must be a finite number, got {value!r}")
        return value
    if typ is bool and not isinstance(value, bool):
        raise FieldError(name, f"must be true or false, got {value!r}")
    if typ is str and not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `output: 2024`, `label: 7`: the user meant the text
        raise FieldError(name, f"must be text, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):  # made in code: a tuple is as good as a list
            value = list(value)
        if not isinstance(value, list):
            raise FieldError(name, f"must be a list, got {value!r}")
        (item,) = get_args(typ) or (Any,)
        if item in (int, float):
            return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    return value


def type_problems(cfg: "Config", prefix: str = "") -> list[str]:
    """Every field of ``cfg`` (and of the configs inside it) whose value has the wrong type.

    ``from_dict`` refuses such values one at a time; this finds them in a config built or changed in
    code (CLI flags set attributes directly), so NaN, infinity, 2.7 steps or a bool never pass
    ``validate``. The lossless conversions of ``from_dict`` are applied in place (3.0 -> 3), so the
    code after ``validate`` sees the declared types however the config was made."""
    out = _own_type_problems(cfg, prefix)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Config):
            out += type_problems(value, f"{prefix}{f.name}.")
    return out


def _own_type_problems(cfg: "Config", prefix: str = "") -> list[str]:
    out = []
    types = get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Config):
            continue
        if isinstance(value, list) and value and all(isinstance(v, Config) for v in value):
            for i, v in enumerate(value):
                out += type_problems(v, f"{prefix}{f.name}[{i}].")
            continue
        try:
            setattr(cfg, f.name, _coerce(f.name, value, types[f.name]))  # 3.0 -> 3 in place
        except FieldError as exc:
            out.append(f"{prefix}{exc.field} {exc.detail}")
    return out
