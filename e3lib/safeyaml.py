"""YAML input that cannot hang, lie or crash without naming the file.

Every user-written YAML file (sweeps, run configs) is read through ``load_file``:

- the path must be a regular, readable file of at most ``max_bytes`` (a directory, a missing
  path or an unreadable file is refused by name);
- the bytes must be UTF-8 (the error gives the byte offset);
- a mapping may not repeat a key (plain PyYAML keeps the last value silently);
- aliases are limited in number, and the document, with every alias expanded, may hold at
  most ``max_nodes`` nodes (a "billion laughs" document is refused before anything walks it);
- numbers must be finite (``.nan`` / ``.inf`` are refused with their dotted path).
"""

from __future__ import annotations

import math
import os
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a sweep file is a few KiB; 1 MiB is generous
MAX_ALIASES = 64
MAX_NODES = 100_000  # nodes after expanding every alias


class YamlInputError(ValueError):
    """Unusable YAML input; the message starts with the file (and line or field) it is about."""

    def __init__(self, file: str, where: str, problem: str):
        self.file, self.where, self.problem = file, where, problem
        loc = f"{file}: {where}: " if where else f"{file}: "
        super().__init__(loc + problem)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys and counting aliases."""

    max_aliases = MAX_ALIASES

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > self.max_aliases:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"more than {self.max_aliases} aliases (*name): refused as a "
                    "possible alias bomb",
                    mark,
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first at line {seen[key].line + 1}); "
                    "YAML would silently keep only the last value",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(doc: Any, limit: int) -> int:
    """Number of nodes of ``doc`` with shared (aliased) sub-trees counted at every use."""
    count = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def non_finite_paths(doc: Any, prefix: str = "") -> list[str]:
    """Dotted paths (``axes[2].values[0]``) of every NaN or infinite number in ``doc``."""
    out: list[str] = []
    if isinstance(doc, float) and not math.isfinite(doc):
        out.append(prefix or "<document>")
    elif isinstance(doc, dict):
        for k, v in doc.items():
            out += non_finite_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += non_finite_paths(v, f"{prefix}[{i}]")
    return out


def loads(
    text: str,
    file: str = "<string>",
    *,
    max_aliases: int = MAX_ALIASES,
    max_nodes: int = MAX_NODES,
    finite: bool = True,
) -> Any:
    """Parse YAML ``text`` strictly (see the module docstring); errors name ``file``."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters here
        loader.max_aliases = max_aliases
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise YamlInputError(file, where, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise YamlInputError(file, "", f"invalid YAML: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    size = _expanded_size(doc, max_nodes)
    if size > max_nodes:
        raise YamlInputError(
            file,
            "",
            f"the document expands to more than {max_nodes} nodes "
            "(aliases included): refused as a possible alias bomb",
        )
    if finite:
        bad = non_finite_paths(doc)
        if bad:
            raise YamlInputError(
                file,
                bad[0],
                "numbers must be finite (got NaN or infinity); "
                f"non-finite values at: {', '.join(bad)}",
            )
    return doc


def load_file(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, **kwargs) -> Any:
    """Read and parse the YAML file ``path`` strictly (see the module docstring)."""
    file = os.fspath(path)
    if not os.path.exists(file):
        raise YamlInputError(file, "", "no such file")
    if os.path.isdir(file):
        raise YamlInputError(file, "", "is a directory; expected a YAML file")
    if not os.path.isfile(file):
        raise YamlInputError(file, "", "is not a regular file; expected a YAML file")
    size = os.path.getsize(file)
    if size > max_bytes:
        raise YamlInputError(
            file, "", f"{size} bytes is over the limit of {max_bytes} bytes for a YAML input file"
        )
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise YamlInputError(file, "", f"cannot be read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlInputError(
            file, f"byte {e.start}", "not UTF-8 text; save the file as UTF-8"
        ) from None
    return loads(text, file, **kwargs)


def _no_duplicates(file: str):
    def hook(pairs: list) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise YamlInputError(
                    file,
                    f"key {k!r}",
                    "duplicate key; JSON would silently keep only the last value",
                )
            out[k] = v
        return out

    return hook


def _no_constant(file: str):
    def hook(name: str):
        raise YamlInputError(file, "", f"numbers must be finite (got {name})")

    return hook


def load_config_file(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Any:
    """A run-config file: ``.json`` parsed strictly (no duplicate keys, no NaN/Infinity,
    UTF-8, a regular file of at most ``max_bytes``), anything else as YAML (``load_file``)."""
    file = os.fspath(path)
    if not file.endswith(".json"):
        return load_file(file, max_bytes=max_bytes)
    import json

    if not os.path.exists(file):
        raise YamlInputError(file, "", "no such file")
    if not os.path.isfile(file):
        raise YamlInputError(file, "", "is a directory or not a regular file; expected a JSON file")
    if os.path.getsize(file) > max_bytes:
        raise YamlInputError(file, "", f"over the limit of {max_bytes} bytes")
    try:
        with open(file, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise YamlInputError(file, "", f"cannot be read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise YamlInputError(file, f"byte {e.start}", "not UTF-8 text") from None
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates(file), parse_constant=_no_constant(file)
        )
    except json.JSONDecodeError as e:
        raise YamlInputError(
            file, f"line {e.lineno}, column {e.colno}", f"invalid JSON: {e.msg}"
        ) from None
