"""The puzzle kinds, one module each behind `PuzzleKind` (base.py), in one table: `KINDS` (name ->
kind, in the order the CLI lists them). The generic code asks the table instead of comparing names:

    kind = get_kind(cfg.dataset)            # None for a dataset folder
    name, shape = kind_of_data(folder, metadata)
    kind_of_folder("data/some-folder"), kind_of_csv(Path("test.csv"))

docs/layout.md says how to add a kind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from trm_fast.puzzles import arc, maze, sudoku
from trm_fast.puzzles.base import GRID, PuzzleKind

KINDS: dict[str, PuzzleKind] = {kind.name: kind for kind in (maze.KIND, sudoku.KIND, arc.KIND)}
DEFAULT_KIND = "maze"  # TrainConfig's default dataset, and the presets' kind when the data says nothing


def get_kind(name: Optional[str]) -> Optional[PuzzleKind]:
    """The kind of a built-in dataset name, None for anything else (a folder)."""
    return KINDS.get(name) if isinstance(name, str) else None


def kind_named(name: Optional[str]) -> PuzzleKind:
    """The kind of that name, or the generic one (token ids) for data of no known kind."""
    return get_kind(name) or GRID


def _guessing_order() -> list[PuzzleKind]:
    return sorted(KINDS.values(), key=lambda kind: (kind.guess_rank, kind.name))


def guess_kind(vocab_size: int, seq_len: int) -> tuple[str, Any]:
    """(kind name, shape) of data known only by its vocabulary and length ("grid", None: none fits)."""
    for kind in _guessing_order():
        fits, shape = kind.guess_shape(vocab_size, seq_len)
        if fits:
            return kind.name, shape
    return GRID.name, None


def kind_of_data(folder, metadata) -> tuple[str, Any]:
    """(kind name or "grid", shape) of a dataset folder (or split folder): from its trm_fast_build.json
    when that names a kind, else from the folder and metadata as the reference builders write them
    (each kind's `guess_data`, in guess order)."""
    from trm_fast.data.dataset import read_build_info

    record = read_build_info(folder) if folder is not None else None
    if record is not None and "kind" in record:
        kind = get_kind(record.get("kind"))
        readable, shape = kind.shape_from_record(record) if kind is not None else (False, None)
        return (kind.name, shape) if readable else (GRID.name, None)
    if folder is None:
        return guess_kind(metadata.vocab_size, metadata.seq_len)
    for kind in _guessing_order():
        fits, shape = kind.guess_data(Path(folder), metadata)
        if fits:
            return kind.name, shape
    return GRID.name, None


def kind_of_folder(path) -> Optional[PuzzleKind]:
    """The kind of the puzzles a dataset folder holds (see `kind_of_data`), else None (also for a
    path that is no readable folder: the trainer reports that one later)."""
    from trm_fast.data.dataset import PuzzleMetadata

    if path is None:
        return None
    folder = Path(path)
    for split in ("train", "test"):
        meta_path = folder / split / "dataset.json"
        try:
            metadata = PuzzleMetadata.from_json(json.loads(meta_path.read_text()), meta_path)
        except (OSError, ValueError):
            continue
        return get_kind(kind_of_data(folder, metadata)[0])
    return None


def kind_of_dataset(dataset: Optional[str]) -> Optional[PuzzleKind]:
    """The kind of a `--dataset` value: a built-in name's, or the folder's (None when unknown)."""
    return get_kind(dataset) or kind_of_folder(dataset)


def kind_of_csv(path: Path) -> PuzzleKind:
    """The kind whose CSV format a file is in (told apart by its first row); the last kind to ask
    (mazes) takes any file, so that its reader says what is wrong."""
    return next(kind for kind in _guessing_order() if kind.is_csv(path))


__all__ = ["KINDS", "DEFAULT_KIND", "GRID", "PuzzleKind", "get_kind", "kind_named", "guess_kind", "kind_of_data",
           "kind_of_folder", "kind_of_dataset", "kind_of_csv"]
