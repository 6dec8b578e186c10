"""Files written whole or not at all: a temporary file in the target's folder, flushed and fsync'ed,
then renamed over the target (and the rename made durable). A crash, a full disk or a SIGKILL leaves
the old file or the new one, never half of one. Checkpoints, best.json, ARC results, study files and
pictures are all written through `atomic_write`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call `write(stream)` on a temporary file, then rename it over `path` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, _plain_file_mode())  # mkstemp makes it private (0600); open() would not
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:  # some file systems cannot fsync a folder
        pass
    return path


def _plain_file_mode() -> int:
    """The permissions open() gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text))


def atomic_write_json(path: str | os.PathLike, values: Any, indent: int | None = 2) -> Path:
    """JSON with a final newline."""
    return atomic_write_text(path, json.dumps(values, indent=indent) + "\n")
