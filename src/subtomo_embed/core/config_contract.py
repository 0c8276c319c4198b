"""Everything the pipeline and the docs say about config keys, generated from :class:`.config.Config`.

``Config`` (with :mod:`.config_sections`) is the one place where a key, its default, its bounds, its help
text and the pipeline steps that read it are written. From it this module renders:

- ``nextflow_schema.json``: the key groups (types, bounds, defaults, descriptions); the ``pipeline`` group
  of the pipeline's own params (containers, executors, ``picks``, ``train``) is kept as it stands;
- ``conf/config_params.config``: the params block of every key's default (a key whose meaning depends
  on being given, ``when_given``, has none: the pipeline passes it only when a user sets it);
- ``workflows/settings.nf``: the keys each pipeline step is passed, and the whole-number keys;
- ``docs/config.md``: the key tables, between two marker lines.

``python -m subtomo_embed.core.config_contract --write`` (``make settings``) rewrites them;
``--check`` exits 1 naming each stale file (tests/test_config_contract.py runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import Config
from .config_sections import GROUPS, STEPS

REGENERATE = "make settings  (or: python -m subtomo_embed.core.config_contract --write)"
SCHEMA = Path("nextflow_schema.json")
PARAMS = Path("conf/config_params.config")
STEP_KEYS = Path("workflows/settings.nf")
DOCS = Path("docs/config.md")
DOCS_BEGIN = "<!-- config keys: generated from src/subtomo_embed/core/config.py by `make settings`; do not edit -->"
DOCS_END = "<!-- end of the generated config keys -->"
REQUIRED_BY_PIPELINE = ("data_folder", "prediction_folder", "trained_model")
_GENERATED = "Generated from src/subtomo_embed/core/config.py by `make settings`: do not edit."


@dataclass(frozen=True)
class ConfigKey:
    """One key of the config: a leaf (``visualization.distance``) or a section passed whole (``instances``)."""

    dotted: str
    default: Any  # as JSON
    schema: dict[str, Any]
    help: str
    steps: tuple[str, ...]
    when_given: bool
    group: str


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _name(field: str, info: FieldInfo) -> str:
    return info.alias or field


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model an annotation holds (or None) and whether it may be null."""
    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    nullable = type(None) in args
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return (models[0] if models else None), nullable


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value


_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _value_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a leaf's type: int, float, bool, str, lists of them, Literal, Any, and ``| None``."""
    if annotation is Any:
        return {}
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _value_schema(args[0])
        kind = inner.get("type")
        return {**inner, "type": [kind, "null"]} if isinstance(kind, str) else inner
    if typing.get_origin(annotation) is Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return {"type": "array", "items": _value_schema(item)}
    return {"type": _JSON_TYPES[annotation]}


_BOUNDS: dict[type, tuple[str, str]] = {
    annotated_types.Ge: ("minimum", "ge"),
    annotated_types.Gt: ("exclusiveMinimum", "gt"),
    annotated_types.Le: ("maximum", "le"),
    annotated_types.Lt: ("exclusiveMaximum", "lt"),
}


def _leaf_schema(info: FieldInfo, default: Any, when_given: bool) -> dict[str, Any]:
    schema = _value_schema(info.annotation)
    for bound in info.metadata:
        if type(bound) in _BOUNDS:
            name, attr = _BOUNDS[type(bound)]
            schema[name] = getattr(bound, attr)
    if schema.get("type") == ["integer", "null"] and default is None:
        # Nextflow >= 26.04 leaves a command-line `--key 12` a string when the key's default is null; the
        # workflow makes such digits a number (settings.nf wholeNumberKeys), so the schema takes them too
        schema["type"] = ["integer", "string", "null"]
        schema["pattern"] = "^[0-9]+$"
    if default is not None and not when_given:
        schema["default"] = default
    return schema


def _keys_of(
    model: type[BaseModel], prefix: str, group: str | None, leaves: bool, inherited: tuple[str, ...] = ()
) -> list[ConfigKey]:
    """The keys of a model: every leaf (``leaves``; a section passed whole lends them its steps), or what the
    pipeline passes (leaves, and sections with steps of their own, whole)."""
    found = []
    for field, info in model.model_fields.items():
        extra = _extra(info)
        dotted = prefix + _name(field, info)
        own_group = group or extra.get("group") or ""
        section, _nullable = _section_of(info.annotation)
        steps = tuple(extra.get("steps") or ()) or inherited
        if section is not None and (leaves or not steps):
            found += _keys_of(section, dotted + ".", own_group, leaves, steps)
            continue
        default = _default(info)
        when_given = bool(extra.get("when_given"))
        schema = _leaf_schema(info, default, when_given) if section is None else {"type": ["object", "null"]}
        found.append(ConfigKey(dotted, default, schema, info.description or "", steps, when_given, own_group))
    return found


def config_keys() -> list[ConfigKey]:
    """Every leaf key of the config, in the order it is declared."""
    return _keys_of(Config, "", None, leaves=True)


def step_keys() -> dict[str, list[str]]:
    """The keys each pipeline step reads (a section with steps of its own counts as one key)."""
    passed = _keys_of(Config, "", None, leaves=False)
    return {step: [k.dotted for k in passed if step in k.steps] for step in STEPS}


def whole_number_keys() -> list[str]:
    """The integer keys whose default is null: a command-line value of theirs may arrive as digits."""
    return [k.dotted for k in config_keys() if "pattern" in k.schema]


# ------------------------------------------------------------------------------------------
# nextflow_schema.json


def _described(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """``description`` is the help's first sentence; ``help_text`` the whole help when it says more."""
    first = re.split(r"(?<=\.)\s(?=[A-Z(`*])", text, maxsplit=1)[0]
    out = {"description": first, **schema}
    if first != text:
        out["help_text"] = text
    return out


def _schema_properties(model: type[BaseModel]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for field, info in model.model_fields.items():
        extra = _extra(info)
        section, nullable = _section_of(info.annotation)
        if section is not None:
            inner = {
                "type": ["object", "null"] if nullable else "object",
                "additionalProperties": False,
                "properties": _schema_properties(section),
            }
            props[_name(field, info)] = _described(inner, info.description or "")
            continue
        schema = _leaf_schema(info, _default(info), bool(extra.get("when_given")))
        if extra.get("path"):
            schema["format"] = f"{extra['path']}-path"
        props[_name(field, info)] = _described(schema, info.description or "")
    return props


def schema_text(current: dict[str, Any]) -> str:
    """nextflow_schema.json with the config's key groups generated; ``current``'s pipeline group is kept."""
    props = _schema_properties(Config)
    defs: dict[str, Any] = {}
    for group, title in GROUPS.items():
        members = {
            _name(f, info): props[_name(f, info)]
            for f, info in Config.model_fields.items()
            if _extra(info).get("group") == group
        }
        defs[group] = {"title": title, "type": "object", "properties": members}
        required = [k for k in REQUIRED_BY_PIPELINE if k in members]
        if required:
            defs[group]["required"] = required
    defs["pipeline"] = current["$defs"]["pipeline"]
    schema = {k: v for k, v in current.items() if k not in ("$defs", "allOf")}
    schema["$defs"] = defs
    schema["allOf"] = [{"$ref": f"#/$defs/{group}"} for group in defs]
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------
# the params block and the step keys, in Groovy


def groovy(value: Any) -> str:
    """A JSON-like value as a Groovy literal (maps as ``[key: value]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(groovy(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "[:]"
        return "[" + ", ".join(f"{_map_key(k)}: {groovy(v)}" for k, v in value.items()) + "]"
    raise TypeError(f"no Groovy literal for {value!r}")


def _map_key(name: str) -> str:
    """A Groovy map key: bare when it is an identifier, else quoted (``'3d_umap'``)."""
    return name if re.fullmatch(r"[A-Za-z_]\w*", name) else groovy(name)


def _without_when_given(value: Any, prefix: str, absent: set[str]) -> Any:
    if not isinstance(value, dict):
        return value
    return {
        k: _without_when_given(v, f"{prefix}{k}.", absent) for k, v in value.items() if f"{prefix}{k}" not in absent
    }


def params_text() -> str:
    """conf/config_params.config: every config key's default as a param."""
    absent = {k.dotted for k in config_keys() if k.when_given}
    lines = [
        f"// {_GENERATED}",
        "// Every key of the config (docs/config.md) with its default, as the one-machine run has it; a key that",
        "// means something only when given (" + ", ".join(sorted(absent)) + ") has none: the workflow passes it",
        "// to a step only when it is set. A -params-file or --key.sub value merges into these maps.",
        "params {",
    ]
    for field, info in Config.model_fields.items():
        name = _name(field, info)
        value = _without_when_given(_default(info), name + ".", absent)
        one_line = f"    {name:<22} = {groovy(value)}"
        if len(one_line) <= 110 or not isinstance(value, dict):
            lines.append(one_line)
            continue
        lines.append(f"    {name:<22} = [")
        lines += [f"        {_map_key(k)}: {groovy(v)}," for k, v in value.items()]
        lines.append("    ]")
    return "\n".join(lines + ["}", ""])


def step_keys_text() -> str:
    """workflows/settings.nf: the keys each step reads and the whole-number keys, as Groovy functions."""

    def listed(keys: list[str], indent: str) -> str:
        return "[\n" + "".join(f"{indent}    {groovy(k)},\n" for k in keys) + f"{indent}]"

    lines = [
        "/*",
        f" * {_GENERATED}",
        " * The config keys each pipeline step reads (core/config_sections.py names the steps): the workflow",
        " * passes a process exactly these, from params, as --set flags.",
        " */",
        "",
        "def stepKeys() {",
        "    return [",
    ]
    lines += [f"        {step}: {listed(keys, '        ')}," for step, keys in step_keys().items()]
    lines += [
        "    ]",
        "}",
        "",
        "// Integer keys whose default is null: from Nextflow 26.04 a command-line value of theirs stays a string.",
        "def wholeNumberKeys() {",
        f"    return {listed(whole_number_keys(), '    ')}",
        "}",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# docs/config.md


def _type_text(schema: dict[str, Any]) -> str:
    names = {
        "integer": "int",
        "number": "float",
        "boolean": "bool",
        "string": "str",
        "array": "list",
        "object": "map",
        "null": "null",
    }
    if "enum" in schema:
        return ", ".join(str(v) for v in schema["enum"])
    kinds = schema.get("type")
    if kinds is None:
        return "any"
    kinds = [kinds] if isinstance(kinds, str) else [k for k in kinds if k != "string" or "pattern" not in schema]
    text = " or ".join(names[k] for k in kinds)
    if "items" in schema and "type" in schema["items"]:
        text = text.replace("list", f"list of {names[schema['items']['type']]}")
    bounds = [
        f"{sign} {schema[name]:,}".replace(",", " ")
        for name, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if name in schema and abs(schema[name]) < 2**31 - 1
    ]
    return text + (" " + ", ".join(bounds) if bounds else "")


def _default_text(key: ConfigKey) -> str:
    if key.when_given:
        return f"{json.dumps(key.default)} (`train`); else the checkpoint's"
    if isinstance(key.default, str):
        return f"`{key.default}`"
    return json.dumps(key.default, ensure_ascii=False).replace('"', "`")


def docs_tables() -> str:
    """The key tables of docs/config.md: one per group, every leaf with its type, default, meaning and steps."""
    by_group: dict[str, list[ConfigKey]] = {g: [] for g in GROUPS}
    for k in config_keys():
        by_group[k.group].append(k)
    out = [DOCS_BEGIN]
    for group, title in GROUPS.items():
        out += ["", f"### {title}", "", "| Key | Type | Default | Meaning | Pipeline steps |", "|---|---|---|---|---|"]
        for k in by_group[group]:
            meaning = k.help.replace("|", "\\|").replace("\n", " ")
            steps = ", ".join(k.steps) or "—"
            out.append(f"| `{k.dotted}` | {_type_text(k.schema)} | {_default_text(k)} | {meaning} | {steps} |")
    return "\n".join(out + ["", DOCS_END])


def docs_text(current: str) -> str:
    """docs/config.md with its generated tables replaced."""
    if DOCS_BEGIN not in current or DOCS_END not in current:
        raise ValueError(f"{DOCS}: the marker lines of the generated tables are missing")
    head, rest = current.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    return head + docs_tables() + tail


# ------------------------------------------------------------------------------------------
# the files


def generated(root: Path) -> dict[Path, str]:
    """Each generated file (relative to ``root``) and the text it should hold."""
    return {
        SCHEMA: schema_text(json.loads((root / SCHEMA).read_text())),
        PARAMS: params_text(),
        STEP_KEYS: step_keys_text(),
        DOCS: docs_text((root / DOCS).read_text()),
    }


def stale(root: Path) -> list[Path]:
    """The generated files that differ from what ``Config`` makes of them."""
    return [
        path
        for path, text in generated(root).items()
        if not (root / path).exists() or (root / path).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: .)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the generated files")
    action.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in generated(args.root).items():
            (args.root / path).write_text(text)
            print(f"wrote {path}")
        return 0
    old = stale(args.root)
    for path in old:
        print(f"{path} is stale: run {REGENERATE}", file=sys.stderr)
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main())
