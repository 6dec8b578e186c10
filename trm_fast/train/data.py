"""Glue between a training config and the data layer (trm_fast.data): which folder, built by whom
(the puzzle kind of trm_fast.puzzles), and the sampler / evaluation batches a run uses. Also opens a
folder or a kind's CSV file for `eval`/`solve`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from trm_fast.config import TrainConfig
from trm_fast.data import IGNORE_INDEX, DataError, EvalBatches, PuzzleMetadata, PuzzleSet, PuzzleSplit, TrainSampler, load_split
from trm_fast.puzzles import PuzzleKind, get_kind, kind_named, kind_of_csv, kind_of_data, kind_of_folder
from trm_fast.train import distributed as dist_lib


def dataset_dir(cfg: TrainConfig) -> Path:
    """The dataset folder of a config: the `dataset` path itself, or for a built-in kind `data_dir`
    if set, else the kind's cache name under data/ (so different settings never share a cache)."""
    kind = get_kind(cfg.dataset)
    if kind is None:
        return Path(cfg.dataset)
    if cfg.data_dir:
        return Path(cfg.data_dir)
    return Path("data") / kind.cache_name(kind.settings(cfg))


def prepare_dataset(cfg: TrainConfig, context: dist_lib.DistContext,
                    log: Optional[Callable[[str], None]] = print) -> Path:
    """Build (rank 0, cached) a built-in kind's data, saying what takes long in `log`; check that a
    given folder exists."""
    folder = dataset_dir(cfg)
    kind = get_kind(cfg.dataset)
    if kind is not None:
        if context.is_main:
            kind.build(folder, kind.settings(cfg), log=log)
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


def data_kind(folder: str | Path | None, metadata: PuzzleMetadata) -> tuple[str, Any]:
    """(kind name or "grid", its shape) of a dataset folder (or split folder): trm_fast.puzzles.kind_of_data."""
    return kind_of_data(folder, metadata)


def folder_kind(path: str | Path | None) -> Optional[str]:
    """The kind name of a dataset folder's puzzles, else None (trm_fast.puzzles.kind_of_folder)."""
    kind = kind_of_folder(path)
    return kind.name if kind is not None else None


@dataclass
class EvalSource:
    """Examples to evaluate or solve: the test split of a folder, or a maze / Sudoku CSV file."""

    name: str
    split: PuzzleSplit
    kind: str = "grid"  # a name in trm_fast.puzzles.KINDS, or "grid" (anything else: token ids)
    geometry: Any = None  # the kind's shape (Sudoku: its Geometry)
    # True for data whose answers are voted over every supervision step (ARC): evaluation then
    # runs all steps even when asked to halt early. The kind's own flag (PuzzleKind.needs_all_steps)
    # sets it.
    needs_all_steps: bool = False

    def __post_init__(self):
        self.needs_all_steps = bool(self.needs_all_steps or self.puzzle_kind.needs_all_steps)

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

    @property
    def puzzle_kind(self) -> PuzzleKind:
        return kind_named(self.kind)

    def render(self, tokens, marks=None) -> str:
        """Text picture of a grid of tokens; `marks` (Sudoku) puts a '*' after marked cells."""
        return self.puzzle_kind.render(np.asarray(tokens), self.geometry, marks)


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
    """A dataset folder (its test split; or a split folder holding dataset.json) or a CSV file of a
    puzzle kind (told apart by the first row's characters: trm_fast.puzzles.kind_of_csv)."""
    path = Path(path)
    if path.is_file() or path.suffix.lower() == ".csv":
        kind = kind_of_csv(path)
        inputs, labels, arrays, vocab_size, shape = kind.read_csv(path)
        return _single_split_source(path, len(inputs), inputs, labels, arrays, vocab_size, kind.name, shape)
    if (path / "dataset.json").is_file():  # a split folder itself
        split = load_split(path.parent, path.name)
        return EvalSource(str(path), split, *data_kind(path.parent, split.metadata))
    if not path.exists():
        raise DataError(path, "not found (expected a dataset folder or a maze / Sudoku CSV file)")
    split = load_split(path, "test")
    return EvalSource(str(path / "test"), split, *data_kind(path, split.metadata))
