"""Maze dataset folders in the reference layout: the reference maze builder's grouping (with the
8 dihedral images as augmentation) and the cached generated folder (`build_maze_dataset`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trm_fast.data import maze as maze_gen
from trm_fast.data.dataset import (
    PuzzleMetadata,
    _build_info_matches,
    building_folder,
    write_identifiers,
    write_split,
)

# Bump when the maze generator or the folder contents change, so cached folders are rebuilt.
MAZE_BUILD_VERSION = 1


def grouped_examples(inputs: np.ndarray, labels: np.ndarray, augment: bool, size: int):
    """Arrays for `write_split` from one example per maze, as the reference maze builder lays them
    out: one group per maze, one puzzle per (maze, symmetry), one example per puzzle, identifier 0.
    With `augment` each maze contributes its 8 dihedral images (identity first)."""
    count = len(inputs)
    variants = 8 if augment else 1
    if augment:
        grids_in = np.asarray(inputs).reshape(count, size, size)
        grids_lb = np.asarray(labels).reshape(count, size, size)
        inputs = np.stack([maze_gen.dihedral(grids_in, k) for k in range(8)], axis=1).reshape(count * 8, -1)
        labels = np.stack([maze_gen.dihedral(grids_lb, k) for k in range(8)], axis=1).reshape(count * 8, -1)
    num_puzzles = count * variants
    return dict(
        inputs=inputs, labels=labels,
        puzzle_identifiers=np.zeros(num_puzzles, np.int32),
        puzzle_indices=np.arange(num_puzzles + 1, dtype=np.int32),
        group_indices=np.arange(0, num_puzzles + 1, variants, dtype=np.int32),
    )


def write_maze_split(directory: str | os.PathLike, split: str, inputs: np.ndarray, labels: np.ndarray,
                     size: int, augment: bool = False) -> PuzzleMetadata:
    """Write mazes with the reference maze metadata (vocab 6, pad/ignore/blank 0, one identifier)."""
    return write_split(directory, split, **grouped_examples(inputs, labels, augment, size),
                       vocab_size=maze_gen.VOCAB_SIZE, pad_id=maze_gen.PAD, ignore_label_id=maze_gen.PAD,
                       blank_identifier_id=0, num_puzzle_identifiers=1)


def build_maze_dataset(out_dir: str | os.PathLike, size: int = 30, num_train: int = 1000,
                       num_test: int = 1000, seed: int = 0, augment: bool = False,
                       min_path_length: int | None = None, style: str = "corridors",
                       wall_share: tuple[float, float] = maze_gen.DEFAULT_WALL_SHARE) -> Path:
    """Generate a maze dataset folder in the reference layout, or reuse a matching one.

    Train and test come from different streams of the generator and share no maze, not even up to
    a symmetry (test is drawn first, train skips anything it contains). `style` is the generator's
    ("corridors" or "random", see trm_fast.data.maze), `wall_share` the random style's wall range. Augmentation (8 dihedral
    images per maze, train only) follows the reference maze builder. The build parameters are
    recorded in `trm_fast_build.json`; a folder whose record matches is returned untouched, any
    other content is replaced. The folder is written under a temporary name and renamed into
    place, so readers never see a half-written dataset.
    """
    out = Path(out_dir)
    min_len = maze_gen.default_min_path_length(size) if min_path_length is None else int(min_path_length)
    params = dict(kind="maze", version=MAZE_BUILD_VERSION, size=int(size), num_train=int(num_train),
                  num_test=int(num_test), seed=int(seed), augment=bool(augment), min_path_length=min_len)
    if style != "corridors":  # corridor folders keep the record (and cache) they had before styles existed
        params.update(style=style, wall_share=[float(v) for v in wall_share])
    if _build_info_matches(out, params):
        return out

    seen: set[bytes] = set()
    styled = dict(style=style, wall_share=tuple(wall_share))
    test = maze_gen.generate_mazes(num_test, size, min_len, seed, stream=1, exclude=seen, **styled)
    train = maze_gen.generate_mazes(num_train, size, min_len, seed, stream=0, exclude=seen, **styled)

    with building_folder(out, params) as tmp:
        write_maze_split(tmp, "train", *train, size=size, augment=augment)
        write_maze_split(tmp, "test", *test, size=size, augment=False)
        write_identifiers(tmp, ["<blank>"])
    return out
