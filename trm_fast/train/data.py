"""Glue between a training config and the data layer (trm_fast.data): which folder, built by whom,
and the sampler / evaluation batches a run uses. Also opens a folder or a maze / Sudoku CSV for
`eval`/`solve`, and tells which kind of puzzle a folder holds (`data_kind`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from trm_fast.config import TrainConfig
from trm_fast.data import (
    IGNORE_INDEX,
    DataError,
    EvalBatches,
    PuzzleMetadata,
    PuzzleSet,
    PuzzleSplit,
    TrainSampler,
    build_maze_dataset,
    build_sudoku_dataset,
    is_sudoku_csv,
    load_split,
    read_maze_csv,
    read_sudoku_csv,
    render_maze,
    render_sudoku,
)
from trm_fast.data import sudoku as sudoku_lib
from trm_fast.data.dataset import grouped_examples
from trm_fast.data.maze import VOCAB_SIZE as MAZE_VOCAB_SIZE
from trm_fast.train import distributed as dist_lib


def dataset_dir(cfg: TrainConfig) -> Path:
    """The dataset folder of a config: the `dataset` path itself, or for the built-in mazes and
    Sudoku `data_dir` if set, else a name that encodes the generator's settings (so different
    settings never share a cache)."""
    if cfg.dataset not in ("maze", "sudoku"):
        return Path(cfg.dataset)
    if cfg.data_dir:
        return Path(cfg.data_dir)
    if cfg.dataset == "sudoku":
        sudoku = cfg.sudoku
        geom = sudoku_lib.geometry(sudoku.size, sudoku.box_rows, sudoku.box_cols)
        return Path("data") / (f"sudoku-{geom.size}x{geom.size}-box{geom.box_rows}x{geom.box_cols}-train{sudoku.num_train}"
                               f"-test{sudoku.num_test}-aug{sudoku.num_aug}-rating{sudoku.min_rating}-seed{sudoku.seed}")
    maze = cfg.maze
    name = f"maze-{maze.size}x{maze.size}-train{maze.num_train}-test{maze.num_test}-seed{maze.seed}"
    if maze.style != "corridors":
        name += f"-{maze.style}{maze.wall_share_min:g}-{maze.wall_share_max:g}"
    return Path("data") / (name + ("-aug" if maze.augment else ""))


def prepare_dataset(cfg: TrainConfig, context: dist_lib.DistContext,
                    log: Optional[Callable[[str], None]] = print) -> Path:
    """Build (rank 0, cached) the built-in maze or Sudoku data; check that a given folder exists.
    A Sudoku build uses every core when it is large (`sudoku.auto_workers`) and says so in `log`."""
    folder = dataset_dir(cfg)
    if cfg.dataset == "sudoku":
        if context.is_main:
            sudoku = cfg.sudoku
            build_sudoku_dataset(folder, size=sudoku.size, box_rows=sudoku.box_rows, box_cols=sudoku.box_cols,
                                 num_train=sudoku.num_train, num_test=sudoku.num_test, num_aug=sudoku.num_aug,
                                 min_rating=sudoku.min_rating, seed=sudoku.seed, workers=None, log=log)
        dist_lib.barrier(context)
    elif cfg.dataset == "maze":
        if context.is_main:
            maze = cfg.maze
            build_maze_dataset(folder, size=maze.size, num_train=maze.num_train, num_test=maze.num_test,
                               seed=maze.seed, augment=maze.augment, style=maze.style,
                               wall_share=(maze.wall_share_min, maze.wall_share_max))
        dist_lib.barrier(context)
    elif not folder.is_dir():
        raise DataError(folder, "dataset folder not found (expected train/ and test/ in the reference layout)")
    return folder


@dataclass
class RunData:
    folder: Path
    train: PuzzleSplit
    test: PuzzleSplit
    sampler: TrainSampler
    context: dist_lib.DistContext

    @property
    def metadata(self) -> PuzzleMetadata:
        return self.train.metadata

    @property
    def batches_per_epoch(self) -> float:
        return self.sampler.batches_per_epoch

    def eval_batches(self, global_batch_size: int, limit: Optional[int] = None) -> Iterator[dict]:
        """This rank's share of the test split (the first `limit` examples when given)."""
        yield from limited_eval_batches(self.test, global_batch_size, limit, self.context)

    def describe(self) -> dict:
        return {"dir": str(self.folder.resolve()), "seq_len": self.metadata.seq_len,
                "vocab_size": self.metadata.vocab_size, "train_examples": self.train.get_set().num_examples,
                "test_examples": self.test.get_set().num_examples}


def limited_eval_batches(split: PuzzleSplit, global_batch_size: int, limit: Optional[int],
                         context: Optional[dist_lib.DistContext] = None) -> Iterator[dict]:
    context = context or dist_lib.DistContext()
    if global_batch_size % context.world_size:
        global_batch_size += context.world_size - global_batch_size % context.world_size
    batches = EvalBatches(split, global_batch_size, rank=context.rank, world_size=context.world_size)
    for index, batch in enumerate(batches):
        if limit is not None:
            if index * global_batch_size >= limit:
                break
            batch["valid"] = batch["valid"] & (batch["example_index"] < limit)
        yield batch


def open_run_data(cfg: TrainConfig, context: dist_lib.DistContext, local_batch_size: int) -> RunData:
    folder = prepare_dataset(cfg, context)
    train = load_split(folder, "train")
    test = load_split(folder, "test")
    if test.metadata.seq_len != train.metadata.seq_len or test.metadata.vocab_size != train.metadata.vocab_size:
        raise DataError(folder, "train and test splits differ in seq_len or vocab_size")
    sampler = TrainSampler(train, cfg.global_batch_size, rank=context.rank, world_size=context.world_size,
                           seed=cfg.seed)
    return RunData(folder, train, test, sampler, context)


# ----------------------------------------------------------------------------------------------
# eval / solve sources


def data_kind(folder: str | Path | None, metadata: PuzzleMetadata) -> tuple[str, Optional[sudoku_lib.Geometry]]:
    """("maze" | "sudoku" | "grid", Sudoku geometry or None) of a dataset folder (or split folder):
    from its trm_fast_build.json when it has one, else from the metadata as the reference builders
    write it (mazes: vocabulary 6 on a square grid; Sudoku: vocabulary N + 2 over N*N cells)."""
    info = sudoku_lib.read_build_info(folder) if folder is not None else None
    kind = info.get("kind") if info else None
    if kind == "maze":
        return "maze", None
    geom = sudoku_lib.sudoku_geometry_of(folder, metadata.vocab_size, metadata.seq_len)
    if geom is not None:
        return "sudoku", geom
    side = math.isqrt(metadata.seq_len)
    if kind is None and metadata.vocab_size == MAZE_VOCAB_SIZE and side * side == metadata.seq_len:
        return "maze", None
    return "grid", None


def folder_kind(path: str | Path | None) -> Optional[str]:
    """"maze" or "sudoku" for a dataset folder that holds one (see `data_kind`), else None (also for
    a path that is no readable folder: the trainer reports that one later)."""
    if path is None:
        return None
    folder = Path(path)
    for split in ("train", "test"):
        meta_path = folder / split / "dataset.json"
        try:
            metadata = PuzzleMetadata.from_json(json.loads(meta_path.read_text()), meta_path)
        except (OSError, ValueError):
            continue
        kind, _ = data_kind(folder, metadata)
        return kind if kind in ("maze", "sudoku") else None
    return None


@dataclass
class EvalSource:
    """Examples to evaluate or solve: the test split of a folder, or a maze / Sudoku CSV file."""

    name: str
    split: PuzzleSplit
    kind: str = "grid"  # "maze" | "sudoku" | "grid" (anything else: token ids)
    geometry: Optional[sudoku_lib.Geometry] = None  # Sudoku only
    # True for data whose answers are voted over every supervision step (ARC): evaluation then
    # runs all steps even when asked to halt early.
    needs_all_steps: bool = False

    @property
    def metadata(self) -> PuzzleMetadata:
        return self.split.metadata

    @property
    def num_examples(self) -> int:
        return self.split.get_set().num_examples

    def batches(self, batch_size: int, limit: Optional[int] = None) -> Iterator[dict]:
        return limited_eval_batches(self.split, batch_size, limit)

    def example(self, index: int) -> dict:
        """One example as numpy arrays (labels with the ignore id mapped to -100)."""
        data = self.split.get_set()
        labels = np.asarray(data.labels[index], dtype=np.int64)
        if self.metadata.ignore_label_id is not None:
            labels = np.where(labels == self.metadata.ignore_label_id, IGNORE_INDEX, labels)
        puzzle = int(np.searchsorted(data.puzzle_indices, index, side="right") - 1)
        return {
            "inputs": np.asarray(data.inputs[index], dtype=np.int32),
            "labels": labels,
            "puzzle_identifiers": np.asarray(data.puzzle_identifiers[puzzle], dtype=np.int32),
        }

    def render(self, tokens, marks=None) -> str:
        """Text picture of a grid of tokens; `marks` (Sudoku) puts a '*' after marked cells."""
        tokens = np.asarray(tokens)
        side = math.isqrt(tokens.size)
        if self.kind == "sudoku" and self.geometry is not None and tokens.size == self.geometry.cells:
            return render_sudoku(np.clip(tokens, 0, self.geometry.size + 1), geom=self.geometry, marks=marks)
        if self.kind == "maze" and side * side == tokens.size:
            return render_maze(np.clip(tokens, 0, MAZE_VOCAB_SIZE - 1), side)
        width = side if side * side == tokens.size else tokens.size
        rows = [tokens[i : i + width] for i in range(0, tokens.size, width)]
        return "\n".join(" ".join(f"{int(t):2d}" for t in row) for row in rows)


def _single_split_source(path: Path, count: int, inputs, labels, arrays: dict, vocab_size: int, kind: str,
                         geometry=None) -> EvalSource:
    metadata = PuzzleMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
        seq_len=int(inputs.shape[1]), num_puzzle_identifiers=1, total_groups=count,
        mean_puzzle_examples=1.0, total_puzzles=count,
    )
    split = PuzzleSplit(path=path, split="test", metadata=metadata, sets={"all": PuzzleSet(name="all", **arrays)})
    return EvalSource(str(path), split, kind, geometry)


def open_eval_source(path: str | Path) -> EvalSource:
    """A dataset folder (its test split; or a split folder holding dataset.json) or a maze or
    Sudoku CSV file (told apart by the first row's characters)."""
    path = Path(path)
    if path.is_file() or path.suffix.lower() == ".csv":
        if path.is_file() and is_sudoku_csv(path):
            records = read_sudoku_csv(path)
            geom = records.geometry
            arrays = sudoku_lib.grouped_sudoku_examples(records.questions, records.solutions, geom)
            return _single_split_source(path, len(records), records.inputs, records.labels, arrays,
                                        geom.size + 2, "sudoku", geom)
        records = read_maze_csv(path)
        arrays = grouped_examples(records.inputs, records.labels, augment=False, size=records.size)
        return _single_split_source(path, len(records), records.inputs, records.labels, arrays, MAZE_VOCAB_SIZE, "maze")
    if (path / "dataset.json").is_file():  # a split folder itself
        split = load_split(path.parent, path.name)
        return EvalSource(str(path), split, *data_kind(path.parent, split.metadata))
    if not path.exists():
        raise DataError(path, "not found (expected a dataset folder or a maze / Sudoku CSV file)")
    split = load_split(path, "test")
    return EvalSource(str(path / "test"), split, *data_kind(path, split.metadata))
