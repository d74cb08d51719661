"""Reading a config file safely: the bytes (a regular file, at most 1 MB, never a FIFO), UTF-8, and strict
YAML (no anchors or aliases, refused from the parser's events before any node is built, so an "alias bomb"
costs neither memory nor time; no duplicate keys; bounded values and depth). Every problem is one
`ConfigError` naming the file; `config.py` turns the document into the validated Config."""
from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from .storage.durable_files import read_regular_file

MAX_CONFIG_BYTES = 1_000_000
# A real config has about 30 values and 4 levels; these bound the parser's time and memory on any file.
MAX_YAML_VALUES = 10_000
MAX_YAML_DEPTH = 32


class ConfigError(Exception):
    """A configuration problem a person must fix; the message names the file and the key.

    Always one line (whatever a parser or a file name put in it): the CLI prints it as it is."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# A value quoted in a message stays short whatever its size or nesting (reprlib never builds the whole repr).
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlevel = 40, 40, 40, 3


def shown(value: Any) -> str:
    """`value` as a message may quote it: short whatever its size or nesting."""
    return _SHORT.repr(value)


def read_config_document(path: Path) -> dict:
    """The file's top-level mapping ({} for an empty file); ConfigError for anything else."""
    data = _parse_yaml(path, _decode(path, _read_bytes(path)))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _read_bytes(path: Path) -> bytes:
    try:   # an operator's symlink (a ConfigMap) is followed; a FIFO is refused, never waited on
        return read_regular_file(path, MAX_CONFIG_BYTES, follow_symlinks=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"{path}: cannot read config file: {getattr(exc, 'strerror', None) or exc}") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
                          f"line {line})") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        _refuse_expansion(text)
        return yaml.load(text, Loader=_StrictLoader)
    except _Refused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_where(exc.problem_mark)}: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{path}: not valid YAML: character {exc.character!r} at offset {exc.position} is not "
                          f"allowed") from None
    # PyYAML's scalar constructors fail in their own ways on a tagged or implicit scalar that does not
    # construct: ValueError for `2024-13-45` (read as a date) or an int of over 4300 digits, IndexError for
    # an empty `!!int`, AttributeError for an empty `!!timestamp`... Whatever it is, the file is at fault.
    except Exception as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc)[:200] or type(exc).__name__}") from None


def _refuse_expansion(text: str) -> None:
    """One pass over the parser's events, before any node is built: anchors and aliases (an alias bomb
    expands a few hundred bytes into gigabytes), more values or deeper nesting than a config file has."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(f"YAML anchors and aliases (& and *) are not allowed{_where(event.start_mark)}")
        if isinstance(event, yaml.NodeEvent):
            values += 1
            if values > MAX_YAML_VALUES:
                raise _Refused(f"more than {MAX_YAML_VALUES:,} YAML values{_where(event.start_mark)}")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep{_where(event.start_mark)}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _where(mark: Any) -> str:
    return "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"


class _Refused(Exception):
    """Raised for YAML that is valid but not allowed in a config file."""


# libyaml's parser when PyYAML was built with it (much faster on a large file); the same events either way.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Loader):
    """The safe loader, refusing duplicate keys (plain PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in getattr(node, "value", ()):
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the safe loader refuses it below with its own message
                continue
            if duplicate:
                raise _Refused(f"{key_text(key)}: duplicate key{_where(key_node.start_mark)}")
        return super().construct_mapping(node, deep=deep)


def key_text(key: Any) -> str:
    """A config key as a message names it: plain when it is a plain name, else quoted short."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w.-]{1,64}", key) else shown(key)
