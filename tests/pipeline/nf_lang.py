"""A minimal LSP client for the official Nextflow language server (nf-lang), used by the tests.

Starts ``java -jar language-server-all.jar`` over stdio, opens each file, and collects the
``textDocument/publishDiagnostics`` the server sends back (severity 1 = error).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path


class LanguageServer:
    def __init__(self, jar: Path, root: Path):
        self.root = root
        self.proc = subprocess.Popen(
            ["java", "-jar", str(jar)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.messages: queue.Queue = queue.Queue()
        self._id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
                "capabilities": {},
            },
        )
        self.notify("initialized", {})
        self.notify(
            "workspace/didChangeConfiguration",
            {"settings": {"nextflow": {"files": {"exclude": [".git", ".nf-test", "work", ".venv"]}, "debug": False}}},
        )

    def _read(self) -> None:
        stream = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = stream.readline()
                if not line:
                    return
                line = line.decode().strip()
                if not line:
                    break
                key, _, value = line.partition(":")
                headers[key.lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            self.messages.put(json.loads(body))

    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.proc.stdin.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict, timeout: float = 120) -> dict:
        self._id += 1
        wanted = self._id
        self._send({"jsonrpc": "2.0", "id": wanted, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            if msg.get("id") == wanted:
                return msg
            self._pending.append(msg)
        raise TimeoutError(method)

    _pending: list = []

    def diagnostics(self, files: list[Path], settle: float = 4.0, timeout: float = 180) -> dict[Path, list[dict]]:
        """Open ``files`` and return the latest diagnostics of each (waits until the server is quiet)."""
        result: dict[str, list] = {}
        for msg in self._pending:
            self._collect(msg, result)
        for f in files:
            self.notify(
                "textDocument/didOpen",
                {
                    "textDocument": {
                        "uri": f.as_uri(),
                        "languageId": "nextflow" if f.suffix == ".nf" else "nextflow-config",
                        "version": 1,
                        "text": f.read_text(),
                    }
                },
            )
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.5)
            except queue.Empty:
                if all(f.as_uri() in result for f in files) and time.monotonic() - last > settle:
                    break
                continue
            if self._collect(msg, result):
                last = time.monotonic()
        return {f: result.get(f.as_uri(), []) for f in files}

    @staticmethod
    def _collect(msg: dict, result: dict) -> bool:
        if msg.get("method") == "textDocument/publishDiagnostics":
            result[msg["params"]["uri"]] = msg["params"]["diagnostics"]
            return True
        return False

    def close(self) -> None:
        try:
            self.request("shutdown", {}, timeout=10)
            self.notify("exit", {})
        except Exception:
            pass
        self.proc.kill()


def errors(diags: dict[Path, list[dict]]) -> list[str]:
    return [
        f"{path.name}:{d['range']['start']['line'] + 1}: {d['message']}"
        for path, items in diags.items()
        for d in items
        if d.get("severity", 1) == 1
    ]
