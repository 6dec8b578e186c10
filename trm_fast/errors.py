"""The errors a user can cause, each with a one-line message (bad config, data, checkpoint, backend,
path). The CLI prints them as `trm-fast: error: ...`; a study's worker processes report them the same way."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit (a model, a run); the message
    is one line naming the file. Raised by trm_fast.model.compat and trm_fast.train.run_directory."""


class RunDirectoryError(ValueError):
    """A run directory whose records cannot be read (no metrics.jsonl, no training records yet); the
    message is one line naming the directory or file."""


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of an error's message, cut to `limit` characters (an exception with an empty
    message gives its type's name): what a one-line error quotes of an exception from elsewhere."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return lines[0][:limit]


def user_errors() -> tuple[type, ...]:
    from trm_fast.config import ConfigError
    from trm_fast.data.errors import DataError
    from trm_fast.ops._backend import BackendUnavailable

    # OSError: unreadable/unwritable paths, full disks (the message names the path).
    return (ConfigError, DataError, CheckpointError, RunDirectoryError, BackendUnavailable, OSError)
