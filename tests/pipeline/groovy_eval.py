"""Run the workflow's own helper functions in real Groovy, without Nextflow.

The language server's jar carries Groovy 4 (``groovy.ui.GroovyMain``). The top-level ``def``
functions of a ``.nf`` file (how the head node finds tomograms, masks and picks, and writes the
``--set`` flags) are cut out of the file unchanged and run after a prelude that provides what
Nextflow would: ``file()``, ``files(glob)``, ``error()`` and Nextflow's Path extensions
(``name``, ``exists()``, ``isDirectory()``) for local paths, and ``params``. What this cannot show:
Nextflow's object-storage file systems (s3://, gs://) behind the same calls, and channel operators.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

PRELUDE = r"""
import java.nio.file.*
ExpandoMetaClass.enableGlobally()
Path.metaClass.getName = { -> delegate.fileName.toString() }
Path.metaClass.exists = { -> Files.exists(delegate) }
Path.metaClass.isDirectory = { -> Files.isDirectory(delegate) }

class PipelineError extends RuntimeException {
    PipelineError(String message) { super(message) }
}

def error(String message) {
    throw new PipelineError(message)
}

def file(String location, Map options = [:]) {
    def path = Paths.get(location)
    if (options.checkIfExists && !Files.exists(path)) {
        throw new PipelineError("No such file or directory: ${location}")
    }
    return path
}

def files(String pattern) {
    def path = Paths.get(pattern)
    def matcher = FileSystems.getDefault().getPathMatcher("glob:" + path.fileName.toString())
    if (!Files.isDirectory(path.parent)) {
        return []
    }
    def found = []
    Files.list(path.parent).withCloseable { stream ->
        stream.forEach { f -> if (matcher.matches(f.fileName) && !f.fileName.toString().startsWith('.')) found << f }
    }
    return found
}

def answer(Closure body) {
    try {
        def value = body()
        println(groovy.json.JsonOutput.toJson([value: value instanceof Path ? value.toString()
            : value instanceof List ? value.collect { v -> v instanceof Path ? v.toString() : v } : value]))
    } catch (PipelineError err) {
        println(groovy.json.JsonOutput.toJson([error: err.message]))
    }
}
"""


def functions(nf_file: Path) -> str:
    """The top-level ``def`` functions of a .nf file, as written there."""
    text = nf_file.read_text()
    out = []
    for match in re.finditer(r"^def \w+\([^)]*\)\s*\{", text, flags=re.M):
        depth, i = 0, match.end() - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(text[match.start() : i + 1])
    return "\n\n".join(out)


def groovy(jar: Path, nf_file: Path, calls: list[str], params: dict | None = None) -> list[dict]:
    """Evaluate each Groovy expression in ``calls`` with ``nf_file``'s functions; one
    ``{"value": ...}`` or ``{"error": message}`` per call (values as JSON)."""
    script = (
        PRELUDE
        + "\n"
        + f"params = new groovy.json.JsonSlurper().parseText('''{json.dumps(params or {})}''')\n"
        + functions(nf_file)
        + "\n"
        + "\n".join(f"answer {{ {call} }}" for call in calls)
        + "\n"
    )
    proc = subprocess.run(
        ["java", "-cp", str(jar), "groovy.ui.GroovyMain", "-e", script], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"groovy failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(calls), proc.stdout
    return lines
