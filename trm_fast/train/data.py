"""Glue between a training config and the data layer (trm_fast.data): which folder, built by whom,
and the sampler / evaluation batches a run uses. Also opens a folder or maze CSV for `eval`/`solve`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

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
    load_split,
    read_maze_csv,
    render_maze,
)
from trm_fast.data.dataset import grouped_examples
from trm_fast.data.maze import VOCAB_SIZE as MAZE_VOCAB_SIZE
from trm_fast.train import distributed as dist_lib


def dataset_dir(cfg: TrainConfig) -> Path:
    """The dataset folder of a config: the `dataset` path itself, or for the built-in mazes
    `data_dir` if set, else a name that encodes the maze settings (so different settings never
    share a cache)."""
    if cfg.dataset != "maze":
        return Path(cfg.dataset)
    if cfg.data_dir:
        return Path(cfg.data_dir)
    maze = cfg.maze
    name = f"maze-{maze.size}x{maze.size}-train{maze.num_train}-test{maze.num_test}-seed{maze.seed}"
    if maze.style != "corridors":
        name += f"-{maze.style}{maze.wall_share_min:g}-{maze.wall_share_max:g}"
    return Path("data") / (name + ("-aug" if maze.augment else ""))


def prepare_dataset(cfg: TrainConfig, context: dist_lib.DistContext) -> Path:
    """Build (rank 0, cached) the built-in maze data; check that a given folder exists."""
    folder = dataset_dir(cfg)
    if cfg.dataset == "maze":
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


@dataclass
class EvalSource:
    """Examples to evaluate or solve: the test split of a folder, or a maze CSV file."""

    name: str
    split: PuzzleSplit

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

    def render(self, tokens) -> str:
        tokens = np.asarray(tokens)
        side = math.isqrt(tokens.size)
        if self.metadata.vocab_size == MAZE_VOCAB_SIZE and side * side == tokens.size:
            return render_maze(np.clip(tokens, 0, MAZE_VOCAB_SIZE - 1), side)
        width = side if side * side == tokens.size else tokens.size
        rows = [tokens[i : i + width] for i in range(0, tokens.size, width)]
        return "\n".join(" ".join(f"{int(t):2d}" for t in row) for row in rows)


def open_eval_source(path: str | Path) -> EvalSource:
    """A dataset folder (its test split; or a split folder holding dataset.json) or a maze CSV."""
    path = Path(path)
    if path.is_file() or path.suffix.lower() == ".csv":
        records = read_maze_csv(path)
        arrays = grouped_examples(records.inputs, records.labels, augment=False, size=records.size)
        count = len(records)
        metadata = PuzzleMetadata(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=MAZE_VOCAB_SIZE,
            seq_len=records.size * records.size, num_puzzle_identifiers=1, total_groups=count,
            mean_puzzle_examples=1.0, total_puzzles=count,
        )
        split = PuzzleSplit(path=path, split="test", metadata=metadata, sets={"all": PuzzleSet(name="all", **arrays)})
        return EvalSource(str(path), split)
    if (path / "dataset.json").is_file():  # a split folder itself
        return EvalSource(str(path), load_split(path.parent, path.name))
    if not path.exists():
        raise DataError(path, "not found (expected a dataset folder or a maze CSV file)")
    return EvalSource(str(path / "test"), load_split(path, "test"))
