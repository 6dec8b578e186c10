"""The interface every puzzle kind implements (`PuzzleKind`), so that the generic code (the trainer's
data glue, the CLI, the solver, budgets, studies, presets, the pretrained build) asks the kind
instead of comparing names. The base class is also the kind of data no kind recognises ("grid":
any token ids), so its methods hold the generic behaviour a kind overrides.

A kind's *shape* is what a kind needs beyond the vocabulary and sequence length to read its tokens
(Sudoku: its `Geometry`); None for kinds that need nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from trm_fast.data.errors import DataError


class PuzzleKind:
    """One kind of puzzle: its generator settings, its cached dataset folders, how its data is
    recognised and read, and how its puzzles look as text."""

    name: str = "grid"
    # The TrainConfig field holding the generator's settings (a dataclass in trm_fast.config).
    settings_field: Optional[str] = None
    # The presets a run on this data starts from without --preset: (with CUDA, without).
    default_presets: tuple[str, str] = ("", "")
    # Order in which kinds guess from metadata alone (lower first): the more specific kind goes
    # first where two look alike (a 4x4 Sudoku has the vocabulary and length of a 4x4 maze).
    guess_rank: int = 100
    # What `trm-fast solve` prints under the question when its pictures mark wrong cells with '*'.
    marks_note: Optional[str] = None
    # Whether its answers are voted over every supervision step (ARC): evaluation then runs all
    # steps, also when asked to halt early (trm_fast.train.data.EvalSource.needs_all_steps).
    needs_all_steps: bool = False

    def __repr__(self) -> str:
        return f"<puzzle kind {self.name}>"

    # -- the built-in generator: settings, cache folder, build

    def settings(self, cfg) -> Any:
        """This kind's generator settings in a TrainConfig."""
        return getattr(cfg, self.settings_field)

    def settings_problem(self, settings) -> Optional[str]:
        """What is wrong with the settings (one line for ConfigError), None when they are fine."""
        return None

    def cache_name(self, settings) -> str:
        """The folder name under data/ of the generated data: it encodes every setting, so different
        settings never share a cache."""
        raise NotImplementedError

    def build(self, folder: Path, settings, log: Optional[Callable[[str], None]] = print) -> Path:
        """Generate the dataset folder (or reuse a matching cached one)."""
        raise NotImplementedError

    def small_settings(self) -> Any:
        """Settings of a tiny dataset that builds in about a second (tests, examples)."""
        raise NotImplementedError

    def data_shape(self, settings) -> tuple[int, int, float]:
        """(vocabulary, sequence length, examples per epoch) of the generated training data,
        without building it (run-time estimates)."""
        raise NotImplementedError

    def puzzle_identifiers(self, settings) -> int:
        """Rows of the puzzle-embedding table the generated data needs, without building it (memory
        estimates): one shared identifier by default."""
        return 1

    def describe_settings(self, settings) -> str:
        """The data of a preset in a few words (`trm-fast presets`)."""
        raise NotImplementedError

    def study_data_summary(self, settings) -> str:
        """What a study's runs train on, for its report."""
        raise NotImplementedError

    def study_held_out_text(self, settings) -> str:
        """The held-out data of a study's runs (the generated test split), for its report."""
        raise NotImplementedError

    def study_variants(self):
        """A study's default variants on this data; None: the tutorial's (trm_fast.study.spec)."""
        return None

    # -- recognising and reading data

    def shape_from_record(self, record: dict) -> tuple[bool, Any]:
        """(whether the folder's trm_fast_build.json record is readable as this kind, its shape)."""
        return True, None

    def guess_shape(self, vocab_size: int, seq_len: int) -> tuple[bool, Any]:
        """(whether data of this vocabulary and length, with no record, is this kind, its shape)."""
        return False, None

    def guess_data(self, folder: Optional[Path], metadata) -> tuple[bool, Any]:
        """(whether a dataset folder with no record, of this metadata, is this kind, its shape):
        by default what `guess_shape` says of its vocabulary and length."""
        return self.guess_shape(metadata.vocab_size, metadata.seq_len)

    def is_csv(self, path: Path) -> bool:
        """Whether a CSV file holds this kind's puzzles."""
        return False

    def read_csv(self, path: Path) -> tuple[np.ndarray, np.ndarray, dict, int, Any]:
        """A CSV file as (inputs, labels, arrays for a PuzzleSet, vocabulary, shape)."""
        raise NotImplementedError

    # -- the command line: `trm-fast data <kind>` and `data convert`

    def add_data_command(self, kinds) -> None:
        """Add `trm-fast data <name>` to the `data` subparsers (its handler builds a folder)."""
        raise NotImplementedError

    def convert_csv(self, args) -> tuple[Path, str]:
        """`trm-fast data convert` of this kind's CSV files: (folder written, what its examples are)."""
        raise NotImplementedError

    # -- checkpoints and shipped models

    def puzzle_info(self, settings: dict) -> dict:
        """The "puzzle" entry of an exported model's model.json, from the run's settings (as saved
        in its config)."""
        return {"kind": self.name}

    def shape_from_puzzle_info(self, puzzle: dict) -> Any:
        """The shape an exported model's "puzzle" entry declares."""
        return None

    def shape_from_settings(self, settings: dict) -> Any:
        """The shape of the data a run's saved settings generate."""
        return None

    def shape_for_model(self, seq_len: int, shape) -> Any:
        """The shape of a model's puzzles when the data did not say it."""
        return shape

    def write_held_out_sets(self, folder: Path, train, test, run_data_dir: Path, test_file: str,
                            log: Callable[[str], None]) -> None:
        """The CSV files a shipped model is measured on (trm_fast.pretrained.build.HELD_OUT): the
        run's test split as `test_file`, and sets it never saw."""
        raise NotImplementedError(f"no held-out sets for {self.name} data")

    # -- evaluation

    def vote(self, model, source, device, batch_size: int, limit: Optional[int], out_dir: Optional[Path]):
        """The kind's own scoring of a test split beyond exact accuracy (ARC: votes over augmented
        copies, pass@k, a submission written to `out_dir`); None for kinds scored by exact accuracy."""
        return None

    def vote_out_dir(self, checkpoint_path: Path) -> Optional[Path]:
        """Where `vote` writes its files by default for a checkpoint (None: nothing written)."""
        return None

    # -- puzzles as text and integers (trm_fast.solver.PuzzleFormat calls these with itself)

    def describe_format(self, fmt) -> str:
        return f"grids of {fmt.seq_len} tokens below {fmt.vocab_size}"

    def text_cells(self, text: str) -> list[str]:
        """The cells of one row (or of a whole grid written on one line)."""
        return text.split()

    def text_rows(self, rows: Sequence[str]) -> list[list[str]]:
        """The cells of each text row."""
        return [self.text_cells(row) for row in rows]

    def encode_rows(self, fmt, rows: Sequence[str], where: str) -> np.ndarray:
        """Text rows (or one string holding the whole grid) -> tokens [seq_len]: a grid of
        fmt.side x fmt.side cells (fmt.encode_grid_rows)."""
        return fmt.encode_grid_rows(rows, where)

    def encode_values(self, fmt, values: np.ndarray, where: str) -> np.ndarray:
        """Integers as the user has them -> checked tokens [seq_len] (fmt.encode_flat_values)."""
        return fmt.encode_flat_values(values, where)

    def encode_array(self, fmt, array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
        """An integer array -> (tokens [B, seq_len], whether it was one puzzle) (fmt.encode_grid_array)."""
        return fmt.encode_grid_array(array, where)

    def answer_grid(self, fmt, tokens: np.ndarray) -> np.ndarray:
        """An answer as integers (`answer_values`), 2-D when the canvas is square."""
        values = self.answer_values(fmt, tokens)
        return values.reshape(fmt.side, fmt.side) if fmt.side != fmt.seq_len else values

    def values_from_cells(self, fmt, cells: list[str], where: str) -> np.ndarray:
        """Text cells -> the integers a user would type for them (see `value_range`)."""
        try:
            return np.array([int(cell) for cell in cells])
        except ValueError:
            raise DataError(where, "expected token ids (integers) separated by spaces") from None

    def value_range(self, fmt) -> tuple[int, int, str]:
        """(lowest, highest, what they are) of the integers a user gives for a cell."""
        return 0, fmt.vocab_size - 1, "token ids"

    def tokens_from_values(self, fmt, values: np.ndarray, where: str) -> np.ndarray:
        """Checked integers within `value_range` -> the model's tokens (DataError for a broken puzzle)."""
        return values

    def answer_values(self, fmt, tokens: np.ndarray) -> np.ndarray:
        """The model's tokens -> the integers a user reads (the inverse of `tokens_from_values`)."""
        return tokens

    def answer_text(self, fmt, tokens: np.ndarray) -> str:
        """The model's tokens as text rows that `text_cells` reads back."""
        width = fmt.side if fmt.side != fmt.seq_len else fmt.seq_len
        return "\n".join(" ".join(str(int(t)) for t in tokens[i:i + width]) for i in range(0, tokens.size, width))

    def render(self, tokens: np.ndarray, shape, marks=None) -> str:
        """The picture `trm-fast solve` prints of a grid of tokens (a square grid when it is one)."""
        side = int(np.sqrt(tokens.size) + 0.5)
        width = side if side * side == tokens.size else tokens.size
        rows = [tokens[i : i + width] for i in range(0, tokens.size, width)]
        return "\n".join(" ".join(f"{int(t):2d}" for t in row) for row in rows)


    # -- pictures (trm_fast.plots.solve_figure: the question, each step's answer, the expected one)

    # Height in inches below the panels (a legend's room).
    legend_inches: float = 0.05
    # Whether wrong cells are crossed out in red (else the panel marks them itself).
    crosses_wrong_cells: bool = True

    def figure_problem(self, shape, cells: int) -> Optional[str]:
        """Why a grid of `cells` tokens cannot be drawn as this kind, None when it can."""
        return None

    def panel_cell_inches(self, side: int) -> float:
        """The smallest readable cell: 0.14 in for written token ids (small grids), else 0.045 in."""
        return 0.14 if side <= 16 else 0.045

    def draw_panel(self, axes, tokens, question, wrong, shape, grid_shape: tuple[int, int], vocab_size: int) -> None:
        """One panel: the tokens in colour, with their ids written on small grids."""
        from matplotlib.colors import ListedColormap

        from trm_fast.plots import _as_grid, _token_colours

        colour_map = ListedColormap([tuple(c) for c in _token_colours(vocab_size)])
        grid = _as_grid(np.clip(tokens, 0, vocab_size - 1), grid_shape, 0)
        axes.imshow(grid, cmap=colour_map, interpolation="nearest", vmin=-0.5, vmax=vocab_size - 0.5)
        if max(grid_shape) <= 16:
            for (r, c), value in np.ndenumerate(grid):
                axes.text(c, r, str(value), ha="center", va="center", fontsize=7, color="black")

    def draw_legend(self, figure) -> None:
        """What the colours mean, below the panels (none here)."""


def lookup_cells(cells: list[str], alphabet: str, side: int, where: str, offset: int) -> np.ndarray:
    """Characters -> their index in `alphabet` plus `offset`; DataError naming the first unknown one."""
    values = np.array([alphabet.find(ch) for ch in cells])
    bad = np.flatnonzero(values < 0)
    if len(bad):
        position = int(bad[0])
        row, column = divmod(position, side)
        raise DataError(where, f"character {cells[position]!r} at row {row + 1} column {column + 1} is not one "
                               f"of {alphabet!r}")
    return values + offset


GRID = PuzzleKind()  # data of no known kind: token ids
