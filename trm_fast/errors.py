"""The errors a user can cause, each with a one-line message (bad config, data, checkpoint, backend,
path). The CLI prints them as `trm-fast: error: ...`; a study's worker processes report them the same way."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit (a model, a run); the message
    is one line naming the file. Raised by trm_fast.model.compat and trm_fast.train.run_directory."""


class RunDirectoryError(ValueError):
    """A run directory whose records cannot be read (no metrics.jsonl, no training records yet); the
    message is one line naming the directory or file."""


def first_line(text: str, limit: int = 200) -> str:
    """The first line of a (possibly multi-line) message, cut to `limit` characters: what a one-line
    error quotes of an exception from elsewhere."""
    lines = text.strip().splitlines()
    return lines[0][:limit] if lines else ""


def user_errors() -> tuple[type, ...]:
    from trm_fast.config import ConfigError
    from trm_fast.data.errors import DataError
    from trm_fast.ops._backend import BackendUnavailable

    # OSError: unreadable/unwritable paths, full disks (the message names the path).
    return (ConfigError, DataError, CheckpointError, RunDirectoryError, BackendUnavailable, OSError)
