"""Sudoku dataset folders in the reference layout: build, cache, and recognise one."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from trm_fast.data.dataset import _build_info_matches, building_folder, read_build_info, write_identifiers, write_split
from trm_fast.data.errors import DataError
from trm_fast.data.sudoku.generator import augment_sudokus, generate_sudokus
from trm_fast.data.sudoku.geometry import PAD, SUPPORTED_SIZES, Geometry, geometry
from trm_fast.data.sudoku.grids import digits_to_tokens

BUILD_VERSION = 1


def grouped_sudoku_examples(questions: np.ndarray, solutions: np.ndarray, geom: Geometry, num_aug: int = 0,
                            rng: np.random.Generator | None = None) -> dict:
    """Arrays for `write_split` from digit grids, as the reference Sudoku builder lays them out: a
    group per puzzle holding the original then `num_aug` augmented copies, every example its own
    puzzle, identifier 0; tokens blank 1, digit d -> d + 1."""
    count = len(questions)
    if num_aug:
        if rng is None:
            raise DataError("sudoku", "augmentation needs a random generator")
        inputs, labels = augment_sudokus(questions, solutions, num_aug, geom, rng)
    else:
        inputs = np.asarray(questions, np.uint8).reshape(count, -1)
        labels = np.asarray(solutions, np.uint8).reshape(count, -1)
    examples = len(inputs)
    return dict(
        inputs=digits_to_tokens(inputs), labels=digits_to_tokens(labels),
        puzzle_identifiers=np.zeros(examples, np.int32),
        puzzle_indices=np.arange(examples + 1, dtype=np.int32),
        group_indices=np.arange(0, examples + 1, 1 + int(num_aug), dtype=np.int32),
    )


def write_sudoku_split(directory, split: str, questions: np.ndarray, solutions: np.ndarray, geom: Geometry,
                       num_aug: int = 0, rng: np.random.Generator | None = None):
    """Write digit grids as one split with the reference Sudoku metadata (vocab N + 2, PAD 0 also
    the ignore label, one identifier)."""
    return write_split(directory, split, **grouped_sudoku_examples(questions, solutions, geom, num_aug, rng),
                       vocab_size=geom.size + 2, pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0,
                       num_puzzle_identifiers=1)


def auto_workers(total: int) -> int:
    """Processes for building `total` puzzles: 1 for small jobs (process start-up costs ~2 s), else
    every core (at most 16)."""
    return 1 if total < 400 else max(1, min(os.cpu_count() or 1, 16))


def build_sudoku_dataset(out_dir, size: int = 9, num_train: int = 1000, num_test: int = 1000, num_aug: int = 1000,
                         min_rating: int = 0, seed: int = 0, box_rows: int | None = None, box_cols: int | None = None,
                         workers: int | None = 1, log=None) -> Path:
    """Generate a Sudoku dataset folder in the reference layout, or reuse a matching one.

    Test puzzles come first (stream 1), then training puzzles (stream 0) skipping anything equivalent
    to a test puzzle, so no test puzzle is a symmetric image of a training puzzle or of any of its
    augmented copies. Training puzzles get `num_aug` augmented copies each (seeded), the test split
    none. The settings are recorded in `trm_fast_build.json`; a folder whose record matches is
    returned untouched, any other content is replaced; written under a temporary name and renamed
    into place. `workers` (None: `auto_workers`) only changes the speed, never the content."""
    geom = geometry(size, box_rows, box_cols)
    for name, value in (("num_train", num_train), ("num_test", num_test), ("num_aug", num_aug), ("min_rating", min_rating)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DataError("build_sudoku_dataset", f"{name} must be an integer >= 0, got {value!r}")
    out = Path(out_dir)
    params = dict(kind="sudoku", version=BUILD_VERSION, size=geom.size, box_rows=geom.box_rows,
                  box_cols=geom.box_cols, num_train=int(num_train), num_test=int(num_test), num_aug=int(num_aug),
                  min_rating=int(min_rating), seed=int(seed))
    if _build_info_matches(out, params):
        return out
    if workers is None:
        workers = auto_workers(int(num_train) + int(num_test))
    if log is not None:
        log(f"generating {num_test} test + {num_train} train {geom} Sudoku puzzles (min rating {min_rating}) "
            f"into {out} with {workers} process(es)")
    started = time.monotonic()
    seen: set = set()
    common = dict(size=geom.size, box_rows=geom.box_rows, box_cols=geom.box_cols, min_rating=int(min_rating),
                  seed=int(seed), exclude=seen, workers=workers)
    test = generate_sudokus(int(num_test), stream=1, **common)
    train = generate_sudokus(int(num_train), stream=0, **common)
    if log is not None:
        seconds = time.monotonic() - started
        log(f"generated {num_train + num_test} puzzles in {seconds:.1f}s "
            f"({(num_train + num_test) / max(seconds, 1e-9):.0f}/s); writing {num_aug} augmented copies of each training puzzle")

    with building_folder(out, params) as tmp:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
        write_sudoku_split(tmp, "train", *train, geom=geom, num_aug=int(num_aug), rng=rng)
        write_sudoku_split(tmp, "test", *test, geom=geom, num_aug=0)
        write_identifiers(tmp, ["<blank>"])
    return out


def sudoku_geometry_of(folder, vocab_size: int | None = None, seq_len: int | None = None) -> Geometry | None:
    """The Sudoku geometry of a dataset folder: from its build record when it has one (kind
    "sudoku"), else from the metadata as the reference builder writes it (vocabulary N + 2 over
    N*N cells, N in 4, 6, 8, 9, default boxes); None for anything else."""
    info = read_build_info(folder) if folder is not None else None
    if info is not None and "kind" in info:
        if info.get("kind") != "sudoku":
            return None
        try:
            return geometry(int(info["size"]), info.get("box_rows"), info.get("box_cols"))
        except (KeyError, TypeError, ValueError):
            return None
    if vocab_size is None or seq_len is None:
        return None
    side = int(round(seq_len ** 0.5))
    if side * side == seq_len and side in SUPPORTED_SIZES and vocab_size == side + 2:
        return geometry(side)
    return None
