"""The errors a user can cause, each with a one-line message (bad config, data, checkpoint, backend,
path). The CLI prints them as `trm-fast: error: ...`; a study's worker processes report them the same way."""


def user_errors() -> tuple[type, ...]:
    from trm_fast.config import ConfigError
    from trm_fast.data.errors import DataError
    from trm_fast.model.compat import CheckpointError
    from trm_fast.ops._backend import BackendUnavailable

    # OSError: unreadable/unwritable paths, full disks (the message names the path).
    return (ConfigError, DataError, CheckpointError, BackendUnavailable, OSError)


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message, at most `limit` characters (the error's type when empty):
    what a one-line report of an error shows."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return lines[0][:limit]
