"""How a maze model does on mazes from other generators: `trm-fast eval --checkpoint RUN --maze-styles`.

For a model trained on the built-in maze data (a run directory, a checkpoint file or a shipped model),
`evaluate_maze_styles`:
 1. reads the run's config: the maze size and the generator settings;
 2. opens the run's training and test data (the folder the checkpoint names, else the generator's
    cache folder, rebuilt if missing by the code the trainer uses: trm_fast.train.data.prepare_dataset)
    and collects the canonical key of every maze in them;
 3. makes `count` mazes of each held-out style (trm_fast.data.heldout_mazes, generators written apart
    from the built-in one), none equal to a training or test maze up to symmetry, and `count` more
    from the built-in generator with another seed (the run's maze seed + 1, stream 1) under the same
    exclusion: the run's own style (the in-distribution row to compare with), then its other styles;
 4. evaluates the model on every set as `trm-fast eval --halt` does: all supervision steps (exact and
    token accuracy at the last one), and with halting (exact accuracy and mean supervision steps).

A style that cannot make `count` distinct new mazes of the run's size (few exist on small grids)
is evaluated on those it made, and its row says so in `note`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from trm_fast.data import heldout_mazes
from trm_fast.data import maze as maze_lib
from trm_fast.data.errors import DataError
from trm_fast.puzzles import maze as maze_kind

OWN_PREFIX = "own-"  # the row of the run's own generator: "own-<its style>"


class NotAMazeRun(ValueError):
    """The checkpoint did not train on the built-in maze data (the CLI turns this into a usage error)."""


@dataclass
class MazeSet:
    """Mazes to evaluate on: a held-out style's, or the run's own generator's with another seed."""

    style: str
    description: str
    inputs: np.ndarray
    labels: np.ndarray
    note: Optional[str] = None


@dataclass
class MazeStylesReport:
    checkpoint: str  # the checkpoint's description
    data: str  # the run's data folder whose mazes were excluded
    size: int
    count: int
    seed: int
    excluded: int  # distinct training and test mazes (up to symmetry)
    halt_max_steps: int
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "data": self.data, "size": self.size, "count": self.count,
                "seed": self.seed, "excluded_mazes": self.excluded, "halt_max_steps": self.halt_max_steps,
                "rows": self.rows}


def maze_run_config(found):
    """The TrainConfig of a checkpoint trained on the built-in maze data (a run's checkpoint or a shipped
    model's record of its training); NotAMazeRun otherwise."""
    from trm_fast import config as config_lib

    train = found.meta.get("train_config") or (found.info.get("trained") or {}).get("train_config")
    if not isinstance(train, dict):
        raise NotAMazeRun(f"{found.path}: --maze-styles needs a model trained on the built-in maze data, and this "
                          "checkpoint does not say what it trained on")
    if train.get("dataset") != maze_kind.KIND.name:
        raise NotAMazeRun(f"{found.path}: --maze-styles needs a model trained on the built-in maze data (dataset "
                          f"'maze'); this one trained on {train.get('dataset')!r}")
    return config_lib.from_dict(train)


def run_data_folder(cfg, found, log: Callable[[str], None] = print) -> Path:
    """The run's training and test data: the folder the checkpoint names when it is still there, else
    the generator's cache folder, built if missing (as the trainer does)."""
    from trm_fast.train.data import prepare_dataset
    from trm_fast.train.distributed import DistContext

    recorded = (found.meta.get("data") or {}).get("dir")
    if recorded and all((Path(recorded) / split / "dataset.json").is_file() for split in ("train", "test")):
        return Path(recorded)
    return prepare_dataset(cfg, DistContext(), log=log)


def seen_maze_keys(folder: Path, size: int) -> set[bytes]:
    """Canonical keys (up to the 8 symmetries) of every training and test maze of a dataset folder."""
    from trm_fast.data import load_split

    keys: set[bytes] = set()
    for split in ("train", "test"):
        inputs = np.asarray(load_split(folder, split).inputs)
        if inputs.shape[1] != size * size:
            raise DataError(folder / split, f"mazes have {inputs.shape[1]} cells, expected {size}x{size}")
        keys.update(maze_lib.canonical_key(grid) for grid in inputs.reshape(-1, size, size))
    return keys


def _held_out_set(style: str, count: int, size: int, seed: int, exclude: set[bytes]) -> MazeSet:
    try:
        inputs, labels, counts = heldout_mazes.generate_held_out_counted(style, count, size, seed, exclude, partial=True)
        note = counts["gave_up"] and f"only {len(inputs)} distinct new mazes: {counts['gave_up']}"
    except DataError as error:  # a size the style does not make
        inputs = labels = np.zeros((0, size * size), np.uint8)
        note = str(error)
    return MazeSet(style, heldout_mazes.STYLE_DESCRIPTIONS[style], inputs, labels, note or None)


def _own_set(maze, style: str, count: int, size: int, exclude: set[bytes]) -> MazeSet:
    own_seed = maze.seed + 1
    description = f"the built-in generator ({style}), seed {own_seed}, stream 1"
    try:
        inputs, labels = maze_lib.generate_mazes(count, size, seed=own_seed, stream=1, style=style,
                                                 wall_share=(maze.wall_share_min, maze.wall_share_max),
                                                 exclude=set(exclude))
        note = None
    except DataError as error:
        inputs = labels = np.zeros((0, size * size), np.uint8)
        note = str(error)
    return MazeSet(OWN_PREFIX + style, description, inputs, labels, note)


def _framed(maze_set: MazeSet, size: int, exclude: set[bytes]) -> MazeSet:
    """A set of smaller mazes inside a wall frame of the model's size, less any framed maze equal to a
    training or test maze up to symmetry."""
    small = int(round(maze_set.inputs.shape[1] ** 0.5))
    inputs = maze_lib.frame_mazes(maze_set.inputs, small, size)
    labels = maze_lib.frame_mazes(maze_set.labels, small, size)
    new = np.array([maze_lib.canonical_key(grid) not in exclude for grid in inputs.reshape(-1, size, size)], bool)
    notes = [maze_set.note] if maze_set.note else []
    if not new.all():
        notes.append(f"{int((~new).sum())} framed mazes equal a training or test maze and were left out")
    return MazeSet(f"{maze_set.style}-{small}x{small}", f"{maze_set.description}; {small}x{small} in a wall frame",
                   inputs[new], labels[new], "; ".join(notes) or None)


def maze_sets(maze, count: int, seed: int, exclude: set[bytes]) -> list[MazeSet]:
    """`count` mazes of each held-out style and of the built-in generator (the run's `maze` settings;
    its own style, then each other style) with seed maze.seed + 1 on stream 1, none of them in `exclude`;
    then the held-out styles and the built-in random walls one size smaller, framed with walls to the
    model's size (a smaller maze is the same puzzle inside a wall border)."""
    size = maze.size
    sets = [_held_out_set(style, count, size, seed, exclude) for style in heldout_mazes.HELD_OUT_STYLES]
    # The run's own style first (the in-distribution row), then the built-in generator's other styles.
    own_styles = [maze.style] + [style for style in maze_lib.STYLES if style not in ("mixed", maze.style)]
    sets += [_own_set(maze, style, count, size, exclude) for style in own_styles]
    smaller = size - 1
    if smaller >= heldout_mazes.MIN_SIZE:
        small_sets = [_held_out_set(style, count, smaller, seed, set()) for style in heldout_mazes.HELD_OUT_STYLES]
        small_sets.append(_own_set(maze, "random", count, smaller, set()))
        sets += [_framed(small_set, size, exclude) for small_set in small_sets if len(small_set.inputs)]
    return sets


def evaluate_set(model, maze_set: MazeSet, device, batch_size: int, loss_type: str = "stablemax",
                 backend: Optional[str] = None) -> dict:
    """One table row: the set's figures, and the model's accuracy on it with all steps and with halting."""
    from trm_fast.data.maze_folders import grouped_examples
    from trm_fast.train.data import _single_split_source
    from trm_fast.train.evaluate import evaluate_each_step, evaluate_with_halting

    inputs, labels = maze_set.inputs, maze_set.labels
    size = int(round(inputs.shape[1] ** 0.5))
    row = {"style": maze_set.style, "description": maze_set.description, "mazes": len(inputs),
           "exact": None, "token": None, "exact_halting": None, "mean_steps": None,
           "mean_moves": float(((labels == maze_lib.PATH).sum(1) + 1).mean()) if len(labels) else None,
           "wall_share": float((inputs == maze_lib.WALL).mean()) if len(inputs) else None,
           "note": maze_set.note}
    if not len(inputs):
        return row
    batch_size = min(batch_size, len(inputs))  # a small set is not padded to a large batch
    arrays = grouped_examples(inputs, labels, augment=False, size=size)
    source = _single_split_source(Path(maze_set.style), len(inputs), inputs, labels, arrays, maze_lib.VOCAB_SIZE, "maze")
    curve = evaluate_each_step(model, source.batches(batch_size), device, loss_type=loss_type, backend=backend)
    halting = evaluate_with_halting(model, source.batches(batch_size), device, batch_size, loss_type=loss_type,
                                    backend=backend)
    row.update(exact=curve.final["exact_accuracy"], token=curve.final["accuracy"],
               exact_halting=halting.metrics["exact_accuracy"], mean_steps=halting.metrics["steps"])
    return row


def evaluate_maze_styles(checkpoint, *, count: int = 500, seed: int = 1, device: Optional[torch.device] = None,
                         engine: str = "fast", backend: Optional[str] = None, weights: Optional[str] = None,
                         which: str = "newest", settings=None, batch_size: int = 256, loss_type: str = "stablemax",
                         save_sets: Optional[str | Path] = None,
                         log: Callable[[str], None] = print) -> MazeStylesReport:
    """The model of `checkpoint` on `count` new mazes of every held-out style and of its own generator
    (module docstring); `save_sets`: a folder to write each set into as a Maze-Hard CSV (<style>.csv).
    NotAMazeRun when the checkpoint did not train on the built-in maze data."""
    from trm_fast.solver import _settings, build_model, model_config, read_checkpoint
    from trm_fast.train.distributed import pick_device

    for name, value, least in (("count", count, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DataError("--maze-styles", f"{name} must be an integer >= {least}, got {value!r}")
    found = read_checkpoint(checkpoint, weights, which)
    cfg = maze_run_config(found)
    size = cfg.maze.size
    config = model_config(found, _settings(settings))
    if config.seq_len != size * size or config.vocab_size != maze_lib.VOCAB_SIZE:
        raise DataError(found.path, f"the model reads {config.seq_len} tokens over a vocabulary of {config.vocab_size}, "
                                    f"not {size}x{size} mazes")
    device = device if device is not None else pick_device("auto")
    model = build_model(found, config, device, engine, backend, log)
    folder = run_data_folder(cfg, found, log)
    exclude = seen_maze_keys(folder, size)
    report = MazeStylesReport(found.describe(engine), str(folder), size, count, seed, len(exclude),
                              config.halt_max_steps)
    out = Path(save_sets) if save_sets is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for maze_set in maze_sets(cfg.maze, count, seed, exclude):
        row = evaluate_set(model, maze_set, device, batch_size, loss_type, backend)
        if out is not None and row["mazes"]:
            from trm_fast.data.csv_format import write_maze_csv

            row["file"] = str(write_maze_csv(out / f"{maze_set.style}.csv", maze_set.inputs, maze_set.labels,
                                             sources=f"trm-fast {maze_set.style}"))
        report.rows.append(row)
    return report


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table: style | description | mazes | exact | token | exact (halting) |
    mean steps | mean moves (the S->G path)."""

    def percent(value):
        return "-" if value is None else f"{value:.2%}"

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| style | description | mazes | exact | token | exact (halting) | mean steps | mean moves |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['style']} | {row['description']} | {row['mazes']} | {percent(row['exact'])} | "
                     f"{percent(row['token'])} | {percent(row['exact_halting'])} | {number(row['mean_steps'], 2)} | "
                     f"{number(row['mean_moves'], 1)} |")
    return "\n".join(lines)
