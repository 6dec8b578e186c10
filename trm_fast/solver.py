"""Trained models for use: `trm_fast.load(path_or_name)` returns a `Solver`, and the checkpoint
loading behind `trm-fast eval` / `solve` (`load_for_eval`).

    solver = trm_fast.load("maze-cpu")          # a shipped model, a run directory or a checkpoint file
    answer = solver.solve(["S# G #", ...])      # one maze as text rows -> Solution (text, steps, q_halt, halted)
    answers = solver.solve(grids)               # a batch: [B, N, N] integers or a list of puzzles -> [Solution]
    for step in solver.steps(puzzle): ...       # the answer after each supervision step

What a checkpoint can be:
- the name of a shipped model (`trm_fast.pretrained.names()`) or an exported model folder
  (model.json + model.safetensors);
- a run directory (its newest checkpoint; `which="best"` or the path RUN_DIR/best: the checkpoint of
  its best periodic evaluation, best.json) or a trm-fast checkpoint file: EMA or raw weights;
- a reference-project state dict (EMA weights); what its shapes cannot tell (recursion depth, ...)
  comes from `settings`, the sequence length from the data.

Puzzles are given as the user has them: a maze as text rows over "# SG" (or one string of N*N
characters, or integers in the token scheme: 1 wall, 2 open, 3 S, 4 G), a Sudoku as rows of digits
('.' or '0' blank; the box separators `trm-fast solve` prints are ignored) or integer digits (0
blank), other data as token ids; a 2-D grid (or a flat one) is one puzzle, a 3-D array (or a list
of puzzles) a batch. A puzzle of the wrong size or with unknown characters is a DataError naming it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from trm_fast import pretrained
from trm_fast.data import DataError, PuzzleMetadata
from trm_fast.model import TRM, TRMConfig, make_model
from trm_fast.model.compat import CheckpointError, infer_config, load_any_state_dict, load_model_weights
from trm_fast.puzzles import PuzzleKind, get_kind, guess_kind, kind_named

WEIGHTS = ("ema", "raw")
DEFAULT_BATCH_SIZE = 256


# ----------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    """What a checkpoint holds before a model is built: weights and what it says about itself."""

    path: Path  # the file (or exported model folder) read
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]  # "format": "trm-fast" | "reference" | pretrained.FORMAT; trm-fast: the checkpoint's metadata
    weights: str  # "ema" | "raw"
    info: dict[str, Any] = field(default_factory=dict)  # an exported model's model.json
    chosen: Optional[str] = None  # picked in a run directory: "newest" | "best: eval/exact_accuracy 0.6000 in training"

    @property
    def data_path(self) -> Optional[str]:
        """The data the checkpoint names: an exported model's test CSV, a run's dataset folder."""
        if self.info.get("test_data"):
            return str(self.path / self.info["test_data"])
        data = self.meta.get("data")
        return data.get("dir") if isinstance(data, dict) else None

    @property
    def saved_model_config(self) -> Optional[dict]:
        return self.info.get("model_config") or self.meta.get("model_config")

    def describe(self, engine: str) -> str:
        step = self.meta.get("step", self.info.get("trained", {}).get("steps"))
        weights = "EMA" if self.weights == "ema" else "raw"
        details = [f"step {step}"] if step is not None else []
        details += [f"the run's {self.chosen}"] if self.chosen else []
        return (f"{self.path}" + (f" ({', '.join(details)})" if details else "")
                + f", {self.meta.get('format', '?')} format, {weights} weights, engine {engine}")


def find_checkpoint(path_or_name: str | Path, which: str = "newest") -> Path:
    """The file or exported model folder that `path_or_name` names (a shipped model's name, a run
    directory: its newest checkpoint, or with which="best" (or RUN_DIR/best) its best one)."""
    return _locate(path_or_name, which)[0]


def _locate(path_or_name: str | Path, which: str = "newest") -> tuple[Path, Optional[str]]:
    """(find_checkpoint's path, what was chosen in a run directory: "newest", "best (...)" or None)."""
    from trm_fast.train import run_directory

    if which not in run_directory.WHICH:
        raise CheckpointError(f"which must be one of {', '.join(run_directory.WHICH)}, got {which!r}")
    path = Path(path_or_name)
    if not path.exists() and path.name == "best" and run_directory.checkpoint_dir(path.parent).is_dir():
        path, which = path.parent, "best"  # RUN_DIR/best
    if path.is_dir() and not pretrained.is_model_folder(path):
        found = run_directory.select_checkpoint(path, which)
        if found is None and which == "best":
            raise CheckpointError(f"{path}: no {run_directory.BEST_FILE} (the run has had no periodic evaluation: "
                                  "eval_interval); its newest checkpoint is the default")
        if found is None:
            raise CheckpointError(f"{path}: no checkpoints/step_*.pt in this run directory (and no {pretrained.CONFIG_FILE})")
        if which == "best":
            best = run_directory.read_best(path)
            return found, f"best: {best.get('metric', '?')} {best.get('value', float('nan')):.4f} in training"
        return found, "newest"
    if which == "best":
        raise CheckpointError(f"{path}: the best checkpoint is chosen in a run directory; this is not one")
    return _locate_plain(path, path_or_name), None


def _locate_plain(path: Path, path_or_name: str | Path) -> Path:
    if not path.exists():
        shipped = pretrained.folder(str(path_or_name))
        if shipped is not None:
            return shipped
        raise CheckpointError(f"{path}: checkpoint not found (nor a shipped model: {', '.join(pretrained.names()) or 'none'})")
    return path


def _read_exported(folder: Path) -> tuple[dict, dict]:
    config_path = folder / pretrained.CONFIG_FILE
    try:
        info = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path}: cannot read ({error})") from None
    if not isinstance(info, dict) or info.get("format") != pretrained.FORMAT or "model_config" not in info:
        raise CheckpointError(f"{config_path}: not a {pretrained.FORMAT} file (expected 'format' and 'model_config')")
    state_dict, _meta = load_any_state_dict(folder / pretrained.WEIGHTS_FILE)
    return state_dict, info


def read_checkpoint(path_or_name: str | Path, weights: Optional[str] = None, which: str = "newest") -> Checkpoint:
    """Read a checkpoint's weights: `weights` "ema" or "raw" for a run that has both, None for
    what evaluation uses (EMA when the run has it). A file that holds only one kind (a run without
    EMA, a reference-project file, an exported model) refuses the other in one line. `which`: a run
    directory's "newest" checkpoint or its "best" (best.json)."""
    if weights is not None and weights not in WEIGHTS:
        raise CheckpointError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path, chosen = _locate(path_or_name, which)
    found = _read_located(path, weights)
    found.chosen = chosen
    return found


def _read_located(path: Path, weights: Optional[str]) -> Checkpoint:
    if path.is_dir():
        state_dict, info = _read_exported(path)
        stored = info.get("weights", "ema")
        if weights not in (None, stored):
            raise CheckpointError(f"{path}: an exported model holds its {stored} weights only, not {weights}")
        return Checkpoint(path, state_dict, {"format": pretrained.FORMAT}, stored, info)
    state_dict, meta = load_any_state_dict(path)
    if meta.get("format") != "trm-fast":
        if weights == "raw":
            raise CheckpointError(f"{path}: a reference-project file holds EMA weights only (--weights ema)")
        return Checkpoint(path, state_dict, meta, "ema")
    has_ema = bool((meta.get("train_config") or {}).get("ema", True))
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{path}: this run trained without EMA, so it has raw weights only (--weights raw)")
    if weights == "raw" and has_ema:
        from trm_fast.train.run_directory import load_checkpoint

        return Checkpoint(path, dict(load_checkpoint(path)["model"]), meta, "raw")
    return Checkpoint(path, state_dict, meta, "ema" if has_ema else "raw")


def model_config(checkpoint: Checkpoint, settings: Optional[dict] = None, data: Optional[PuzzleMetadata] = None,
                 data_name: str = "data") -> TRMConfig:
    """The checkpoint's model config: saved (trm-fast, exported) or inferred from the weights
    (reference files), with `settings` (TRMConfig fields) on top; checked against `data` (the
    metadata of the file or folder `data_name`) when given."""
    settings = dict(settings or {})
    saved = checkpoint.saved_model_config
    if saved is not None:
        try:
            config = TRMConfig.from_dict({**saved, **settings})
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{checkpoint.path}: bad model config ({error})") from None
    else:
        if data is not None:
            settings.setdefault("seq_len", data.seq_len)
        try:
            config = infer_config(checkpoint.state_dict, **settings)
        except ValueError as error:  # shapes that do not fit, or TRMConfig's checks on the settings
            raise CheckpointError(f"{checkpoint.path}: {error}") from None
    if data is not None and (config.vocab_size != data.vocab_size or config.seq_len != data.seq_len):
        raise DataError(data_name, f"vocabulary {data.vocab_size} / sequence length {data.seq_len} do not match "
                                   f"the model's {config.vocab_size} / {config.seq_len}")
    return config


def build_model(checkpoint: Checkpoint, config: TRMConfig, device: torch.device, engine: str = "fast",
                backend: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> TRM:
    """The model on `engine` with the checkpoint's weights, in eval mode on `device`; a bf16
    forward on a CPU without native bf16 runs in float32 (as the trainer does; `log` says so)."""
    from trm_fast.train.step import runnable_model_config

    config = runnable_model_config(config, device, log=log or (lambda _line: None))
    model = make_model(config, engine, backend)
    load_model_weights(model, checkpoint.state_dict, source=str(checkpoint.path))
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# Puzzle formats


@dataclass(frozen=True)
class PuzzleFormat:
    """How a model's puzzles look: `kind` names a puzzle kind of trm_fast.puzzles (a maze: side x side,
    tokens 1..5 = "# SGo"; a Sudoku: digits in `geometry`, tokens digit + 1), or "grid" (any
    `seq_len` token ids below `vocab_size`). The kind reads and writes the cells; this class the
    shapes, rows and batches every kind shares."""

    kind: str
    seq_len: int
    vocab_size: int
    geometry: Any = None  # the kind's shape (Sudoku: its Geometry)

    @property
    def puzzle_kind(self) -> PuzzleKind:
        return kind_named(self.kind)

    @property
    def side(self) -> int:
        side = math.isqrt(self.seq_len)
        return side if side * side == self.seq_len else self.seq_len

    @classmethod
    def of(cls, config: TRMConfig, kind: Optional[str] = None, geometry=None) -> "PuzzleFormat":
        """The format of a model's puzzles: `kind` when known (the data or the checkpoint says it),
        else guessed from the vocabulary and sequence length as the data layer does."""
        if kind is None:
            kind, geometry = guess_kind(config.vocab_size, config.seq_len)
        return cls(kind, config.seq_len, config.vocab_size, kind_named(kind).shape_for_model(config.seq_len, geometry))

    def describe(self) -> str:
        return self.puzzle_kind.describe_format(self)

    # -- user input -> tokens

    def are_rows(self, texts: Sequence[str]) -> bool:
        """Whether strings are the rows of one puzzle (rather than whole puzzles): none spans lines
        or holds a whole grid."""
        return self.side != self.seq_len and not any(
            "\n" in text.strip("\n") or len(self.puzzle_kind.text_cells(text)) == self.seq_len for text in texts)

    def encode_text(self, text: str, where: str) -> np.ndarray:
        rows = [row for row in text.split("\n") if row.strip("\r")] if "\n" in text.strip("\n") else [text]
        return self.encode_rows(rows, where)

    def encode_rows(self, rows: Sequence[str], where: str) -> np.ndarray:
        """Text rows (or one string holding the whole grid) -> tokens [seq_len] (as the kind reads them)."""
        return self.puzzle_kind.encode_rows(self, rows, where)

    def encode_grid_rows(self, rows: Sequence[str], where: str) -> np.ndarray:
        """Text rows of side x side cells (or one string of them all) -> tokens [seq_len]."""
        cells = self.puzzle_kind.text_rows(rows)
        if len(cells) > 1:
            for number, row in enumerate(cells, 1):
                if len(row) != self.side:
                    raise DataError(where, f"row {number} has {len(row)} cells; expected {self.side} ({self.describe()})")
            if len(cells) != self.side:
                raise DataError(where, f"has {len(cells)} rows; expected {self.side} ({self.describe()})")
        flat = [cell for row in cells for cell in row]
        if len(flat) != self.seq_len:
            raise DataError(where, f"has {len(flat)} cells; expected {self.seq_len} ({self.describe()})")
        return self.encode_values(self.puzzle_kind.values_from_cells(self, flat, where), where)

    def encode_values(self, values: np.ndarray, where: str) -> np.ndarray:
        """Integers as the user has them (maze tokens, Sudoku digits, ARC colours, token ids) -> checked tokens."""
        return self.puzzle_kind.encode_values(self, values, where)

    def check_values(self, values: np.ndarray, where: str) -> np.ndarray:
        """Integers (any shape) checked against the kind's `value_range`, as int64."""
        values = np.asarray(values).astype(np.int64)
        low, high, what = self.puzzle_kind.value_range(self)
        outside = np.flatnonzero((values.reshape(-1) < low) | (values.reshape(-1) > high))
        if len(outside):
            position = int(outside[0])
            raise DataError(where, f"value {int(values.reshape(-1)[position])} at cell {position} is not one of the {what} "
                                   f"{low}..{high}")
        return values

    def encode_flat_values(self, values: np.ndarray, where: str) -> np.ndarray:
        """seq_len integers (any shape) -> checked tokens."""
        values = self.check_values(np.asarray(values).reshape(-1), where)
        return self.puzzle_kind.tokens_from_values(self, values, where)

    def encode_array(self, array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
        """An integer array: (tokens [B, seq_len], whether it was one puzzle)."""
        if array.dtype.kind not in "iu":
            raise DataError(where, f"expected integers, got an array of {array.dtype}")
        return self.puzzle_kind.encode_array(self, array, where)

    def encode_grid_array(self, array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
        """An integer array of side x side (or seq_len) puzzles, one or a batch."""
        side = self.side
        single_shapes = {(self.seq_len,), (side, side)} if side != self.seq_len else {(self.seq_len,)}
        if array.shape in single_shapes:
            return self.encode_values(array, where)[None], True
        if array.ndim >= 2 and array.shape[1:] in single_shapes and array.shape[0] > 0:
            return np.stack([self.encode_values(grid, f"{where} {index}") for index, grid in enumerate(array)]), False
        grid = f"{side}x{side} grid" if side != self.seq_len else f"{self.seq_len} tokens"
        raise DataError(where, f"has shape {tuple(array.shape)}; expected a {grid} ({self.describe()}) or a batch of them")

    def encode(self, puzzles: Any, where: str = "puzzle") -> tuple[np.ndarray, bool]:
        """Puzzles in any accepted form -> (tokens [B, seq_len], whether one puzzle was given)."""
        if isinstance(puzzles, str):
            return self.encode_text(puzzles, where)[None], True
        if torch.is_tensor(puzzles):
            puzzles = puzzles.detach().cpu().numpy()
        if isinstance(puzzles, np.ndarray):
            return self.encode_array(puzzles, where)
        if not isinstance(puzzles, (list, tuple)) or not puzzles:
            raise DataError(where, f"expected a puzzle or a non-empty list of them, got {type(puzzles).__name__}"
                                   + (" (empty)" if isinstance(puzzles, (list, tuple)) else ""))
        if all(isinstance(item, str) for item in puzzles) and self.are_rows(puzzles):
            return self.encode_rows(puzzles, where)[None], True  # one puzzle as a list of rows
        if all(isinstance(item, (int, np.integer)) for item in puzzles) or all(
                isinstance(item, (list, tuple)) and item and all(isinstance(v, (int, np.integer)) for v in item)
                for item in puzzles):
            try:
                return self.encode_array(np.asarray(puzzles), where)  # nested lists of integers
            except ValueError:
                pass  # ragged: read puzzle by puzzle below
        tokens = [self.encode(item, f"{where} {index}") for index, item in enumerate(puzzles)]
        for index, (_grid, single) in enumerate(tokens):
            if not single:
                raise DataError(f"{where} {index}", "is a batch inside a batch; expected one puzzle")
        return np.concatenate([grid for grid, _single in tokens]), False

    # -- tokens -> what the user reads

    def grid(self, tokens: np.ndarray) -> np.ndarray:
        """An answer as integers: maze tokens (5 = path), Sudoku digits, or token ids; 2-D when square."""
        return self.puzzle_kind.answer_grid(self, np.asarray(tokens).astype(np.int64))

    def text(self, tokens: np.ndarray) -> str:
        """An answer as text rows: a maze over "# SGo", a Sudoku's digits ('.' where it left a blank)."""
        return self.puzzle_kind.answer_text(self, np.asarray(tokens))


def _checkpoint_kind(checkpoint: Checkpoint) -> tuple[Optional[str], Any]:
    """The puzzle kind (and its shape) a checkpoint declares: an exported model's "puzzle", a run's
    built-in dataset."""
    puzzle = checkpoint.info.get("puzzle")
    if isinstance(puzzle, dict):
        name = puzzle.get("kind")
        kind = get_kind(name)
        return name, kind.shape_from_puzzle_info(puzzle) if kind is not None else None
    train = checkpoint.meta.get("train_config") or {}
    kind = get_kind(train.get("dataset"))
    if kind is not None:
        return kind.name, kind.shape_from_settings(train.get(kind.settings_field) or {})
    return None, None


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    model: TRM
    checkpoint: Checkpoint
    puzzle: PuzzleFormat
    engine: str

    @property
    def description(self) -> str:
        return self.checkpoint.describe(self.engine)

    @property
    def info(self) -> dict:
        """An exported model's model.json (how it was trained, held-out figures); {} otherwise."""
        return self.checkpoint.info


def _settings(settings) -> dict:
    """TRMConfig fields from a dict or FIELD=VALUE strings (ConfigError for unknown fields)."""
    if settings is None:
        return {}
    if isinstance(settings, dict):
        return dict(settings)
    from trm_fast import config as config_lib

    return config_lib.parse_fields(TRMConfig, list(settings))


def _builtin_data_path(kind: PuzzleKind, found: Checkpoint) -> str:
    """The folder of a built-in dataset name given as the data (`--dataset arc`): the checkpoint's own
    data when it trained on that kind, else the cache folder of the kind's default settings."""
    from trm_fast.config import TrainConfig
    from trm_fast.train.data import dataset_dir

    train = found.meta.get("train_config") or {}
    if get_kind(train.get("dataset")) is kind and found.data_path is not None:
        return found.data_path
    cfg = TrainConfig()
    cfg.dataset = kind.name
    folder = dataset_dir(cfg)
    if not folder.is_dir():
        raise DataError(folder, f"the checkpoint did not train on the built-in {kind.name} data and its default "
                                f"folder is not built; give the dataset folder (--dataset DIR)")
    return str(folder)


def load_for_eval(checkpoint: str | Path, dataset: Optional[str | Path] = None, *, settings=None, engine: str = "fast",
                  backend: Optional[str] = None, weights: Optional[str] = None,
                  device: Optional[torch.device] = None, log: Optional[Callable[[str], None]] = None,
                  which: str = "newest"):
    """(LoadedModel, EvalSource): a checkpoint's model and the data to evaluate it on (`dataset`, a
    folder or CSV, else the data the checkpoint names), checked to fit each other. `which`: a run
    directory's "newest" or "best" checkpoint."""
    from trm_fast.train.data import open_eval_source
    from trm_fast.train.distributed import pick_device

    known = _settings(settings)
    found = read_checkpoint(checkpoint, weights, which)
    data_path = dataset if dataset is not None else found.data_path
    if dataset is not None and get_kind(str(dataset)) is not None and not Path(dataset).exists():
        data_path = _builtin_data_path(get_kind(str(dataset)), found)
    if data_path is None:
        raise DataError(found.path, "does not say which data it was trained on: give a dataset folder or CSV (--dataset)")
    source = open_eval_source(data_path)
    config = model_config(found, known, source.metadata, source.name)
    device = device if device is not None else pick_device("auto")
    model = build_model(found, config, device, engine, backend, log)
    kind, geometry = _checkpoint_kind(found)
    if get_kind(source.kind) is not None:
        kind, geometry = source.kind, source.geometry
    return LoadedModel(model, found, PuzzleFormat.of(config, kind, geometry), engine), source


def load(path_or_name: str | Path, *, device: Optional[str | torch.device] = None, engine: str = "fast",
         backend: Optional[str] = None, weights: Optional[str] = None, settings=None,
         batch_size: int = DEFAULT_BATCH_SIZE, which: str = "newest") -> "Solver":
    """A `Solver` for a shipped model's name, an exported model folder, a run directory or a
    checkpoint file (reference-project files: `settings` gives what the weights cannot tell, e.g.
    {"seq_len": 900, "l_cycles": 4}). Runs on `device` (default: the GPU when there is one) with
    the fast engine, `batch_size` puzzles at a time; `weights` "ema" or "raw" for a run with both;
    `which` "newest" (default) or "best" (the best periodic evaluation's, best.json) for a run
    directory (RUN_DIR/best also names the best). repr(solver) names the file read."""
    from trm_fast.train.distributed import pick_device

    found = read_checkpoint(path_or_name, weights, which)
    config = model_config(found, _settings(settings))
    device = torch.device(device) if device is not None else pick_device("auto")
    model = build_model(found, config, device, engine, backend)
    kind, geometry = _checkpoint_kind(found)
    return Solver(LoadedModel(model, found, PuzzleFormat.of(config, kind, geometry), engine), batch_size)


# ----------------------------------------------------------------------------------------------
# Solving


@dataclass
class Solution:
    """The model's answer to one puzzle: as text rows (a maze with its path 'o', a Sudoku's digits),
    as integers (`grid`: maze tokens, Sudoku digits), as raw token ids; after how many supervision
    steps, the Q head's q_halt there, and whether the Q head said halt (False: the step limit or
    `halt=False` stopped it)."""

    text: str
    grid: np.ndarray
    tokens: np.ndarray
    steps: int
    q_halt: float
    halted: bool

    def __str__(self) -> str:
        return self.text


class Solver:
    """A trained model ready to solve puzzles (see the module docstring for the accepted forms)."""

    def __init__(self, loaded: LoadedModel, batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.model = loaded.model
        self.puzzle = loaded.puzzle
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.inner.H_init.device

    @property
    def max_steps(self) -> int:
        return self.model.config.halt_max_steps

    @property
    def info(self) -> dict:
        return self.loaded.info

    def __repr__(self) -> str:
        return f"Solver({self.loaded.description}; {self.puzzle.describe()}, up to {self.max_steps} supervision steps)"

    def _examples(self, tokens: np.ndarray) -> dict[str, torch.Tensor]:
        inputs = torch.as_tensor(tokens, dtype=torch.int32, device=self.device)
        return {"inputs": inputs, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32, device=self.device)}

    def _solution(self, tokens, steps: int, q_halt: float, halted: bool) -> Solution:
        tokens = np.asarray(tokens)
        return Solution(self.puzzle.text(tokens), self.puzzle.grid(tokens), tokens, int(steps), float(q_halt), bool(halted))

    def solve(self, puzzles, halt: bool = True):
        """The answers to one puzzle (-> a Solution) or a batch (-> a list of them). With `halt`,
        each puzzle stops at its own Q-halt decision (or the step limit), as in training without
        exploration; without, every puzzle runs all supervision steps."""
        from trm_fast.train.evaluate import run_with_halting

        tokens, single = self.puzzle.encode(puzzles)
        run = run_with_halting(self.model, self._examples(tokens), self.batch_size, use_q_head=halt)
        answers, steps, q_halt, halted = (t.cpu().numpy() for t in (run.answers, run.steps, run.q_halt, run.halted))
        solutions = [self._solution(*row) for row in zip(answers, steps, q_halt, halted)]
        return solutions[0] if single else solutions

    def steps(self, puzzle) -> Iterator[Solution]:
        """The answer to one puzzle after each supervision step (all of them; `halted` tells where
        the Q head would stop)."""
        from trm_fast.train.evaluate import q_says_halt

        tokens, single = self.puzzle.encode(puzzle)
        if not single:
            raise DataError("puzzle", f"steps() takes one puzzle, got a batch of {len(tokens)}")
        batch = self._examples(tokens)
        with torch.no_grad():
            carry = self.model.initial_carry(batch)
        for _step in range(self.max_steps):
            with torch.no_grad():  # per call: a generator must not leave grad mode off for its caller
                carry, outputs = self.model(carry, batch)
            halted = bool(q_says_halt(self.model.config, outputs)[0])
            yield self._solution(outputs["logits"][0].argmax(-1).cpu().numpy(), int(carry.steps[0]),
                                 float(outputs["q_halt_logits"][0]), halted)
