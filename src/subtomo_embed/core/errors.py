"""Error classes: each kind of failure has its own exit code and a one-line message.

The CLI catches :class:`SubtomoError` and prints ``error: <message>`` without a traceback
(unless ``--debug``), then exits with the class's ``exit_code``.
"""

from __future__ import annotations

from pathlib import Path


class SubtomoError(Exception):
    """Base class for expected failures that the user can fix."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(" ".join(text.split()))  # always one line


class ConfigError(SubtomoError):
    """The YAML config or a command-line option is wrong."""

    exit_code = 3
    kind = "config error"


class InputDataError(SubtomoError):
    """A tomogram, mask, table or embeddings file is missing, unreadable or inconsistent."""

    exit_code = 4
    kind = "input error"


class ModelError(SubtomoError):
    """A checkpoint is missing, unsafe, or does not fit the network it describes."""

    exit_code = 5
    kind = "model error"


class ResourceError(SubtomoError):
    """The machine cannot do what was asked: no space, not writable, out of memory."""

    exit_code = 6
    kind = "resource error"


class DeviceError(SubtomoError):
    """A GPU was asked for (``--device cuda``) but CUDA sees none, or not the one asked for."""

    exit_code = 7
    kind = "device error"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, ``kill``), raised where a command handles Ctrl-C so it
    stops the same way (training saves its step); the command exits with 143, as a shell reports it."""

    exit_code = 143
    kind = "terminated (SIGTERM)"
