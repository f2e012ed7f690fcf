"""Reading YAML strictly: one home for the loader every config, spec and saved folder goes through.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, so ``lr: 1e-4`` followed
later by ``lr: 1e-3`` trains with 1e-3 and nobody knows. ``StrictLoader`` refuses a repeated key
(merge keys ``<<:`` may still be overridden: that is what they are for), and ``load_yaml_file``
turns every way a file can be unreadable into one ``ConfigError`` line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (raised by ``StrictLoader``)."""

    def __init__(self, key: Any, mark: yaml.Mark | None):
        self.key = key
        super().__init__(None, None, f"key {key!r} appears twice", mark)


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:  # the node's own keys, before merge keys are expanded
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                with contextlib.suppress(TypeError):  # an unhashable key: the base constructor reports it
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}" if mark is not None else ""


def loads(text: str, source: str | Path = "<text>") -> Any:
    """Parse YAML text with ``StrictLoader``; a problem is one ``ConfigError`` naming ``source``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{source}: key {exc.key!r} appears twice{_where(exc)}; keep one of them "
                          "(YAML would silently use the last)") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML ({first}{_where(exc)})") from None


def load_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse one YAML file; a missing, non-regular, unreadable or broken file is one line.

    The file type is checked with ``os.stat`` before opening, so a FIFO or a device never blocks.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"{path} is {kind}; pass a YAML file as the {what}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    return loads(text, path)


__all__ = ["DuplicateKeyError", "StrictLoader", "load_yaml_file", "loads"]
