"""Static checks of the pipeline that the Nextflow language server does not make.

* :func:`check_calls`: every call of an included process or workflow passes as many arguments as it
  declares inputs (``take:``), and every ``X.out.<name>`` (also through a variable holding ``X.out``)
  names one of X's ``emit:`` names (an included function is left to Groovy);
* :func:`check_config`: every setting in a ``.config`` file is a known config scope and option, and
  every setting under ``process`` (selectors included) is a known process directive. The known names
  come from the language server's own jar: its config spec (``spec/definitions.json``) and the
  methods of ``nextflow.script.dsl.ProcessDsl$DirectiveDsl`` (the process directives).

Both parse the subset of the Nextflow syntax this pipeline uses (a hand-written scanner, not Groovy);
a construct they do not understand is reported, never skipped.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------------
# shared scanning


def strip_comments(text: str) -> str:
    """Blank out comments (keeping line numbers and string contents)."""
    out, i, n = [], 0, len(text)
    quote = None
    while i < n:
        c = text[i]
        if quote:
            if text.startswith(quote, i):
                out.append(quote)
                i += len(quote)
                quote = None
                continue
            if c == "\\" and i + 1 < n:
                out.append(text[i : i + 2])
                i += 2
                continue
            out.append(c)
            i += 1
        elif text.startswith('"""', i) or text.startswith("'''", i):
            quote = text[i : i + 3]
            out.append(quote)
            i += 3
        elif c in "\"'":
            quote = c
            out.append(c)
            i += 1
        elif text.startswith("//", i) and not text[i - 1 : i] == "\\":  # not the end of a slashy regex /a\//
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join("\n" if ch == "\n" else " " for ch in text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def blank_strings(text: str) -> str:
    """Replace every string literal's contents by spaces (quotes kept; line breaks kept)."""
    return re.sub(
        r'("""|\'\'\'|"|\')((?:\\.|(?!\1).)*?)\1',
        lambda m: m.group(1) + re.sub(r"[^\n]", " ", m.group(2)) + m.group(1),
        text,
        flags=re.S,
    )


def braced(text: str, open_index: int) -> tuple[str, int]:
    """The text inside the brace at ``open_index`` (strings blanked beforehand) and the closing index."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i], i
    raise ValueError(f"unbalanced brace at offset {open_index}")


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


# --------------------------------------------------------------------------------------------
# processes, workflows and calls


@dataclass
class Callable_:
    name: str
    kind: str  # process | workflow
    inputs: int
    emits: set[str] = field(default_factory=set)
    path: Path | None = None


def _sections(body: str, names: tuple[str, ...]) -> dict[str, str]:
    """Split a process/workflow body into its ``name:`` sections (input:, output:, take:, ...)."""
    marks = [(m.start(), m.group(1)) for m in re.finditer(rf"^\s*({'|'.join(names)}):\s*$", body, flags=re.M)]
    out = {}
    for k, (start, name) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else len(body)
        out[name] = body[body.index(":", start) + 1 : end]
    return out


def declarations(path: Path) -> dict[str, Callable_]:
    """The processes and named workflows a file declares, with their input counts and emit names."""
    raw = strip_comments(path.read_text())
    text = blank_strings(raw)
    found = {}
    for match in re.finditer(r"^(process|workflow)\s+(\w+)\s*\{", text, flags=re.M):
        kind, name = match.groups()
        body, _ = braced(text, match.end() - 1)
        raw_body = raw[match.end() : match.end() + len(body)]
        if kind == "process":
            parts = _sections(raw_body, ("input", "output", "when", "script", "shell", "exec", "stub"))
            inputs = [
                line
                for line in parts.get("input", "").splitlines()
                if re.match(r"\s*(tuple|path|val|env|stdin|each|file)\b", line)
            ]
            emits = set(re.findall(r"\bemit:\s*(\w+)", parts.get("output", "")))
            found[name] = Callable_(name, kind, len(inputs), emits, path)
        else:
            parts = _sections(raw_body, ("take", "main", "emit"))
            takes = [line for line in parts.get("take", "").splitlines() if re.match(r"\s*\w+\s*$", line)]
            emits = set(re.findall(r"^\s*(\w+)\s*=", parts.get("emit", ""), flags=re.M))
            emits |= set(re.findall(r"^\s*(\w+)\s*$", parts.get("emit", ""), flags=re.M))
            found[name] = Callable_(name, kind, len(takes), emits, path)
    return found


def includes(path: Path) -> dict[str, tuple[str, Path]]:
    """``include { A; B as C } from './x'``: local name -> (declared name, file)."""
    text = strip_comments(path.read_text())
    found = {}
    for match in re.finditer(r"include\s*\{([^}]*)\}\s*from\s*['\"]([^'\"]+)['\"]", text):
        names, source = match.groups()
        if source.startswith("plugin/"):
            continue
        target = path.parent / source
        target = target if target.suffix == ".nf" else target.with_suffix(".nf")
        for item in re.split(r"[;\n]", names):
            item = item.strip()
            if not item:
                continue
            declared, _, alias = item.partition(" as ")
            found[(alias or declared).strip()] = (declared.strip(), target)
    return found


def top_level_arguments(args: str) -> int:
    """How many comma-separated arguments a call's argument text has (0 for empty)."""
    if not args.strip():
        return 0
    depth, count = 0, 1
    for c in args:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            count += 1
    return count


def _call_arguments(text: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1 : i]
    raise ValueError(f"unbalanced parenthesis at offset {open_paren}")


def check_calls(files: list[Path]) -> list[str]:
    """Problems in the calls of included processes/workflows of ``files`` (empty when all is well)."""
    problems = []
    for path in files:
        text = blank_strings(strip_comments(path.read_text()))
        known: dict[str, Callable_] = {}
        for local, (declared, target) in includes(path).items():
            if not target.is_file():
                problems.append(f"{path.name}: include of {declared} from a missing file {target}")
                continue
            decl = declarations(target).get(declared)
            if decl is None and re.search(rf"^def\s+{declared}\s*\(", target.read_text(), flags=re.M):
                continue  # a function (workflows/settings.nf): its calls are Groovy's to check
            if decl is None:
                problems.append(f"{path.name}: {target.name} declares no process, workflow or function {declared}")
                continue
            known[local] = decl
        for name, decl in known.items():
            for match in re.finditer(rf"(?<![\w.]){name}\s*\(", text):
                count = top_level_arguments(_call_arguments(text, match.end() - 1))
                if count != decl.inputs:
                    problems.append(
                        f"{path.name}:{line_of(text, match.start())}: {name} called with {count} "
                        f"argument(s), but its {decl.kind} declares {decl.inputs} input(s)"
                    )
            for match in re.finditer(rf"(?<![\w.]){name}\.out\.(\w+)", text):
                if match.group(1) not in decl.emits:
                    problems.append(
                        f"{path.name}:{line_of(text, match.start())}: {name}.out.{match.group(1)}: "
                        f"{name} emits only {sorted(decl.emits)}"
                    )
        # a variable holding X.out (in every branch that assigns it) has X's emits
        aliases: dict[str, list[str]] = {}
        for match in re.finditer(r"^\s*(\w+)\s*=\s*(\w+)\.out\s*$", text, flags=re.M):
            aliases.setdefault(match.group(1), []).append(match.group(2))
        for var, sources in aliases.items():
            for match in re.finditer(rf"(?<![\w.]){var}\.(\w+)\b(?!\s*\()", text):
                for source in sources:
                    if source in known and match.group(1) not in known[source].emits:
                        problems.append(
                            f"{path.name}:{line_of(text, match.start())}: {var}.{match.group(1)}: "
                            f"{var} may be {source}.out, which emits only {sorted(known[source].emits)}"
                        )
    return problems


# --------------------------------------------------------------------------------------------
# config settings


@dataclass(frozen=True)
class Setting:
    path: tuple[str, ...]  # scopes from the file's top, e.g. ('profiles', 'gpu', 'process', 'withLabel:x', 'cpus')
    file: str
    line: int
    value: str = ""  # the value's source text (comments removed)


_TOKEN = re.compile(
    r"""(?P<nl>\n)|(?P<ws>[ \t\r]+)|(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|"""
    r"""(?P<ident>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)|(?P<op>==|!=|<=|>=|&&|\|\||\?:|\S)"""
)


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, line, offset) of every token of ``text`` (comments already removed)."""
    out, line = [], 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            out.append(("nl", "\n", line, m.start()))
            line += 1
        elif kind == "str":
            out.append(("str", m.group(), line, m.start()))
            line += m.group().count("\n")
        elif kind != "ws":
            out.append((kind, m.group(), line, m.start()))
    return out


def config_settings(path: Path) -> list[Setting]:
    """Every ``name = value`` of a config file with the scopes it sits in (block and dotted forms)."""
    text = strip_comments(path.read_text()).replace('"""', '"').replace("'''", "'")
    tokens = _tokens(text)
    settings: list[Setting] = []

    def skip_value(i: int) -> int:
        depth = 0
        while i < len(tokens):
            kind, value, _, _ = tokens[i]
            if value in "([{" and kind == "op":
                depth += 1
            elif value in ")]}" and kind == "op":
                if depth == 0:
                    return i
                depth -= 1
            elif kind == "nl" and depth == 0:
                # a value continues on the next line after an operator or before a leading ?/:
                prev = tokens[i - 1]
                nxt = next((t for t in tokens[i + 1 :] if t[0] != "nl"), None)
                if not (prev[0] == "op" and prev[1] in "+-*/?:,") and not (nxt and nxt[0] == "op" and nxt[1] in "?:"):
                    return i
            i += 1
        return i

    def block(i: int, scope: tuple[str, ...]) -> int:
        while i < len(tokens):
            kind, value, line, _ = tokens[i]
            if kind == "nl":
                i += 1
            elif value == "}":
                return i + 1
            elif kind == "ident" and i + 1 < len(tokens) and tokens[i + 1][1] == "=":
                end = skip_value(i + 2)
                stop = tokens[end][3] if end < len(tokens) else len(text)
                source = text[tokens[i + 1][3] + 1 : stop].strip()
                settings.append(Setting(scope + tuple(value.split(".")), path.name, line, source))
                i = end
            elif kind == "ident" and i + 1 < len(tokens) and tokens[i + 1][1] == "{":
                i = block(i + 2, scope + tuple(value.split(".")))
            elif (
                kind == "ident"
                and value in ("withLabel", "withName")
                and tokens[i + 1][1] == ":"
                and tokens[i + 2][0] == "str"
                and tokens[i + 3][1] == "{"
            ):
                i = block(i + 4, scope + (f"{value}:{tokens[i + 2][1][1:-1]}",))
            elif kind == "ident" and value in ("includeConfig", "id") and tokens[i + 1][0] == "str":
                if value == "includeConfig":
                    settings.append(Setting(scope + ("includeConfig",), path.name, line, tokens[i + 1][1]))
                i += 2
            else:
                raise ValueError(f"{path.name}:{line}: cannot read the config statement at {value!r}")
        return i

    end = block(0, ())
    if end < len(tokens):
        raise ValueError(f"{path.name}:{tokens[end][2]}: unbalanced '}}'")
    return settings


def _jar_spec(jar: Path) -> tuple[dict, set[str]]:
    with zipfile.ZipFile(jar) as z:
        spec = json.loads(z.read("spec/definitions.json"))
        directives = _method_names(z.read("nextflow/script/dsl/ProcessDsl$DirectiveDsl.class"))
    return spec, directives


def _method_names(data: bytes) -> set[str]:
    """The method names of a Java class file (a minimal class-file reader)."""
    pos = 10
    count = struct.unpack_from(">H", data, 8)[0]
    pool: dict[int, str] = {}
    k = 1
    sizes = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2, 17: 4, 18: 4, 19: 2, 20: 2}
    while k < count:
        tag = data[pos]
        if tag == 1:
            length = struct.unpack_from(">H", data, pos + 1)[0]
            pool[k] = data[pos + 3 : pos + 3 + length].decode("utf-8", "replace")
            pos += 3 + length
        else:
            pos += 1 + sizes[tag]
        k += 2 if tag in (5, 6) else 1
    pos += 6
    interfaces = struct.unpack_from(">H", data, pos)[0]
    pos += 2 + 2 * interfaces
    names = []
    for table in ("fields", "methods"):
        n = struct.unpack_from(">H", data, pos)[0]
        pos += 2
        for _ in range(n):
            _, name, _, attrs = struct.unpack_from(">HHHH", data, pos)
            pos += 8
            for _ in range(attrs):
                length = struct.unpack_from(">I", data, pos + 2)[0]
                pos += 6 + length
            if table == "methods":
                names.append(pool[name])
    return {n for n in names if not n.startswith("<")}


FREE_SCOPES = {"params", "env", "plugins"}  # any names below these


class ConfigSpec:
    """The config scopes and options, and the process directives, the language server knows."""

    def __init__(self, jar: Path):
        spec, self.directives = _jar_spec(jar)
        self.tree = {"children": {node["spec"]["name"]: self._node(node) for node in spec}}

    def _node(self, node: dict) -> dict:
        kind = node["type"]
        children = node["spec"].get("children", [])
        return {"kind": kind, "children": {c["spec"]["name"]: self._node(c) for c in children}}

    def problem(self, setting: Setting) -> str | None:
        path = list(setting.path)
        if len(path) >= 2 and path[0] == "profiles":
            path = path[2:]
        if not path or path[0] in FREE_SCOPES or path == ["includeConfig"] or path[-1] == "includeConfig":
            return None
        where = f"{setting.file}:{setting.line}: {'.'.join(setting.path)}"
        if path[0] == "process":
            rest = [p for p in path[1:] if not p.startswith(("withLabel:", "withName:"))]
            if not rest:
                return f"{where}: a process selector with no directive"
            if rest[0] not in self.directives:
                return f"{where}: '{rest[0]}' is not a process directive"
            return None
        node = self.tree
        for k, name in enumerate(path):
            children = node.get("children", {})
            if node.get("kind") == "ConfigPlaceholderScope":
                node = {"kind": "ConfigScope", "children": {}}
                continue
            if name not in children:
                scope = ".".join(path[:k]) or "the top level"
                return f"{where}: '{name}' is not a setting of {scope}"
            node = children[name]
        if node["kind"] not in ("ConfigOption", "ConfigPlaceholderScope") and node["children"]:
            return f"{where}: '{path[-1]}' is a scope, not a setting"
        return None


def check_config(files: list[Path], jar: Path) -> list[str]:
    """Unknown scopes, options and process directives in ``files``."""
    spec = ConfigSpec(jar)
    problems = []
    for path in files:
        for setting in config_settings(path):
            issue = spec.problem(setting)
            if issue:
                problems.append(issue)
    return problems
