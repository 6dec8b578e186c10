"""The one exception type the data layer raises for bad files and bad inputs."""
from __future__ import annotations

import os


class DataError(ValueError):
    """A dataset file, row or field does not hold what was expected.

    The message is always one line that names the place (file, row, field) first, then what was
    expected and what was found, e.g. ``"data/maze/train/dataset.json: field 'seq_len' is 800 but
    all__inputs.npy rows have 900 tokens"``.
    """

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        text = problem if where is None else f"{where}: {problem}"
        # One line, whatever the caller interpolated.
        super().__init__(" ".join(text.split()))
