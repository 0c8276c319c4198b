"""YAML read with bounds: what a hostile config file cannot make the loader do.

Aliases may not expand the document beyond :data:`MAX_YAML_VALUES` values (a "billion laughs"
file is a config error, not gigabytes of memory), no alias may refer to a value that contains it,
a key may not appear twice in one mapping (YAML would keep the last silently), and the file itself
is bounded in size. Only safe YAML types are constructed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_YAML_VALUES = 100_000  # values of the YAML document with every alias expanded (a config has ~100)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_document(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand it beyond :data:`MAX_YAML_VALUES` values, that
    contains itself through an alias, or that repeats a key in a mapping (YAML keeps the last
    silently). Each node is visited once: the check costs what the file's size does."""
    expanded: dict[int, int] = {}  # node id -> values it stands for, aliases expanded
    path: set[int] = set()  # the nodes being expanded (an alias back to one is a cycle)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            path.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in _children(node))
            if expanded[key] > MAX_YAML_VALUES:
                raise ConfigError(
                    f"the YAML expands to more than {MAX_YAML_VALUES:,} values through its aliases "
                    f"(line {node.start_mark.line + 1}); a config needs a few hundred",
                    source,
                )
            continue
        if key in expanded:
            continue
        if key in path:
            raise ConfigError(
                f"a YAML alias at line {node.start_mark.line + 1} refers to a value that contains it", source
            )
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        raise ConfigError(
                            f"key '{k.value}' appears twice in one mapping (lines {seen[k.value]} and "
                            f"{k.start_mark.line + 1}); YAML would keep the last silently",
                            source,
                        )
                    seen[k.value] = k.start_mark.line + 1
        path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)


def read_yaml(text: str, source: str) -> Any:
    """One YAML document (safe types only), refused by :func:`_check_document` when it is hostile."""
    loader = yaml.SafeLoader(io.StringIO(text))
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_document(root, source)
        return loader.construct_document(root)
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply", source) from None
    finally:
        loader.dispose()


def read_config_text(path: Path, max_bytes: int) -> str:
    """The text of a config file of at most ``max_bytes``, or a :class:`ConfigError` naming it."""
    if not path.exists():
        raise ConfigError("config file does not exist", path)
    if path.is_dir():
        raise ConfigError("is a folder, not a config file", path)
    try:
        with open(path, "rb") as fh:  # not only regular files: `-c <(...)` is a pipe
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(f"cannot read config file: {err.strerror or err}", path) from None
    if len(data) > max_bytes:
        raise ConfigError(f"config file is larger than {max_bytes // 2**20} MiB; a config is a few kilobytes", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read config file: not UTF-8 text ({err.reason} at byte {err.start})", path) from None
