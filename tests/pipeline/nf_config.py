"""What a task asks for under a set of profiles, from the .config files, without Nextflow.

:func:`effective` reads nextflow.config top to bottom, following ``includeConfig`` and entering the
blocks of the active profiles (in the order the file declares them, as Nextflow does), and keeps the
last value of every setting. :func:`request` then resolves a process's directive with Nextflow's
precedence (generic ``process`` < ``withLabel`` < ``withName``) and caps it by ``resourceLimits``.
A plain value is evaluated with the params set above it (Nextflow evaluates a config file top to
bottom: a profile's params come too late for base.config's plain values), a closure with the final
params.

:func:`evaluate` is a tiny evaluator for the value forms these configs use: numbers, ``8.GB``,
``4.h``, ``'6.GB'``, ``params.x``, ``task.attempt``, ``* + -``, ``Math.min/max`` and closures
around them. Anything else raises ValueError (the test fails rather than guess); Groovy itself is
not run here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from nf_static import Setting, config_settings

MEMORY = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
DURATION = {"ms": 1 / 3_600_000, "s": 1 / 3600, "m": 1 / 60, "min": 1 / 60, "h": 1, "d": 24}  # in hours


class Memory(float):
    """Bytes."""


class Duration(float):
    """Hours."""


def unit_value(text: str) -> float:
    """``'6.GB'``, ``'6 GB'``, ``'48.h'``, ``'2h'`` as Memory (bytes) or Duration (hours)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*\.?\s*([A-Za-z]+)\s*", text)
    if not m:
        raise ValueError(f"not a memory or duration: {text!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit.upper() in MEMORY:
        return Memory(number * MEMORY[unit.upper()])
    if unit in DURATION:
        return Duration(number * DURATION[unit])
    raise ValueError(f"unknown unit in {text!r}")


def literal(text: str):
    """A param's default: a number, string, boolean or null (anything else stays text)."""
    text = text.strip()
    if text in ("null", "true", "false"):
        return {"null": None, "true": True, "false": False}[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def evaluate(expr: str, params: dict, attempt: int = 1):
    """Evaluate a directive's value (see the module docstring for the forms understood)."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1].strip()
    if expr.startswith("[") and expr.endswith("]"):  # a map [k: v, ...]
        items = [item.split(":", 1) for item in _split_top(expr[1:-1])]
        return {k.strip(): evaluate(v, params, attempt) for k, v in items}
    if re.fullmatch(r"'[^']*'|\"[^\"]*\"", expr):
        text = expr[1:-1]
        try:
            return unit_value(text)
        except ValueError:
            return text

    def param(m: re.Match) -> str:
        value = params.get(m.group(1))
        if isinstance(value, str):
            value = unit_value(value)
        if not isinstance(value, (int, float)):
            raise ValueError(f"params.{m.group(1)} = {value!r} is not a number")
        return repr(value)

    py = re.sub(r"params\.(\w+)(\s+as\s+int)?", param, expr)
    py = re.sub(r"(\d+(?:\.\d+)?)\.(KB|MB|GB|TB|B)\b", lambda m: f"Memory({m.group(1)}*{MEMORY[m.group(2)]})", py)
    py = re.sub(r"(\d+(?:\.\d+)?)\.(ms|min|s|m|h|d)\b", lambda m: f"Duration({m.group(1)}*{DURATION[m.group(2)]})", py)
    py = py.replace("task.attempt", str(attempt)).replace("Math.min", "min").replace("Math.max", "max")
    if re.search(r"[A-Za-z_]\w*", re.sub(r"\b(Memory|Duration|min|max)\b", "", py)):
        raise ValueError(f"cannot evaluate {expr!r} without Groovy")
    names = {"Memory": Memory, "Duration": Duration, "min": min, "max": max}
    value = eval(py, {"__builtins__": {}}, names)  # noqa: S307 (only numbers, units and min/max are left)
    kind = next((t for t in (Memory, Duration) if f"{t.__name__}(" in py), None)
    return kind(value) if kind else value


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def effective(repo: Path, profiles: list[str]) -> list[Setting]:
    """Every setting in force under ``profiles`` (profile prefixes removed), in the order Nextflow
    applies them; later ones win."""
    out: list[Setting] = []

    def read(path: Path, prefix: tuple[str, ...] = ()) -> None:
        for s in config_settings(path):
            full = prefix + s.path
            if full[0] == "profiles":
                if len(full) < 2 or full[1] not in profiles:
                    continue
                full = full[2:]
            if full and full[-1] == "includeConfig":  # relative to the including file, as Nextflow resolves it
                read(path.parent / literal(s.value), full[:-1])
                continue
            out.append(Setting(full, s.file, s.line, s.value))

    read(repo / "nextflow.config")
    return out


def params_of(settings: list[Setting]) -> dict:
    params = {}
    for s in settings:
        if s.path[0] == "params" and len(s.path) == 2:
            params[s.path[1]] = literal(s.value)
    return params


def request(settings: list[Setting], process: str, labels: list[str], directive: str, attempt: int = 1):
    """The value of ``directive`` for a task of ``process`` (its ``labels``), capped by resourceLimits."""
    final = params_of(settings)
    position = {id(s): k for k, s in enumerate(settings)}

    def value_of(s: Setting):
        # a closure runs per task and sees the final params; a plain value took the params of
        # its place in the files when Nextflow read it
        closure = s.value.strip().startswith("{")
        return evaluate(s.value, final if closure else params_of(settings[: position[id(s)]]), attempt)

    def resolve(name: str):
        generic = [s for s in settings if s.path == ("process", name)]
        by_label = [
            s
            for s in settings
            if len(s.path) == 3
            and s.path[0] == "process"
            and s.path[2] == name
            and s.path[1].startswith("withLabel:")
            and any(re.fullmatch(s.path[1][10:], label) for label in labels)
        ]
        by_name = [
            s
            for s in settings
            if len(s.path) == 3
            and s.path[0] == "process"
            and s.path[2] == name
            and s.path[1].startswith("withName:")
            and re.fullmatch(s.path[1][9:], process)
        ]
        chosen = (by_name or by_label or generic or [None])[-1]
        return None if chosen is None else value_of(chosen)

    value = resolve(directive)
    limits = resolve("resourceLimits") or {}
    if value is not None and directive in limits:
        value = type(value)(min(value, limits[directive]))
    return value


def labels_of(module: Path) -> list[str]:
    return re.findall(r"^\s*label\s+'([^']+)'", module.read_text(), flags=re.M)


def groovy_literal(text: str):
    """A Groovy literal of numbers, strings, true/false/null, lists ``[a, b]`` and maps ``[k: v]``."""
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?|\w+|[\[\]:,]", text)
    pos = 0

    def value():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "[":
            is_map = pos + 1 < len(tokens) and tokens[pos + 1] == ":" or tokens[pos] == ":"
            items = {} if is_map else []
            if tokens[pos] == ":":  # [:] the empty map
                pos += 2
                return items
            while tokens[pos] != "]":
                if is_map:
                    key = tokens[pos].strip("'\"")
                    pos += 2
                    items[key] = value()
                else:
                    items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if token[0] in "'\"":
            return token[1:-1]
        if token in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token]
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if re.fullmatch(r"-?\d+\.\d+", token):
            return float(token)
        raise ValueError(f"not a literal: {token!r} in {text!r}")

    result = value()
    if pos != len(tokens):
        raise ValueError(f"trailing text in {text!r}")
    return result
