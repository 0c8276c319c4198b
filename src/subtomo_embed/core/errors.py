"""Error classes: each kind of failure has its own exit code and a one-line message.

The CLI catches :class:`SubtomoError` and prints ``error: <message>`` without a traceback
(unless ``--debug``), then exits with the class's ``exit_code``.
"""

from __future__ import annotations

from pathlib import Path


class SubtomoError(Exception):
    """Base class for expected failures that the user can fix; a subclass names its exit code and
    kind in its class line (``class ConfigError(SubtomoError, exit_code=3, kind="config error")``)."""

    exit_code = 1
    kind = "error"

    def __init_subclass__(cls, exit_code: int | None = None, kind: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code
        if kind is not None:
            cls.kind = kind

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(" ".join(text.split()))  # always one line


class ConfigError(SubtomoError, exit_code=3, kind="config error"):
    """The YAML config or a command-line option is wrong."""


class InputDataError(SubtomoError, exit_code=4, kind="input error"):
    """A tomogram, mask, table or embeddings file is missing, unreadable or inconsistent."""


class ModelError(SubtomoError, exit_code=5, kind="model error"):
    """A checkpoint is missing, unsafe, or does not fit the network it describes."""


class ResourceError(SubtomoError, exit_code=6, kind="resource error"):
    """The machine cannot do what was asked: no space, not writable, out of memory."""


class DeviceError(SubtomoError, exit_code=7, kind="device error"):
    """A GPU was asked for (``--device cuda``) but CUDA sees none, or not the one asked for."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, ``kill``), raised where a command handles Ctrl-C so it
    stops the same way (training saves its step); the command exits with 143, as a shell reports it."""

    exit_code = 143
    kind = "terminated (SIGTERM)"
