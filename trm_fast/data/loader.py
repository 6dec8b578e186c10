"""Batches from a loaded split: an endless, resumable training sampler and a sharded eval pass.

Training order (follows the reference `PuzzleDataset` training iterator, made exactly resumable):
  * Epoch e shuffles the groups with a generator seeded by (seed, e), and picks ONE puzzle per
    group uniformly at random; with the 8-fold augmented maze folder that is one random symmetry of
    each maze per epoch, and with one puzzle per group (plain maze, Sudoku) every example once.
  * The picked puzzles, in group order, are packed into global batches of B rows; a puzzle brings
    all its examples in a random order, cut off where the batch is full (the rest of that puzzle is
    skipped, as in the reference). Epochs follow each other without a gap: a batch may end one
    epoch and start the next. (The reference concatenates `epochs_per_iter` epochs the same way
    and drops only the last partial batch of each such block.)
  * The global batch depends only on (seed, position), never on the world size; rank r takes rows
    [r*B/W, (r+1)*B/W). `state_dict()` records the position (epoch, next group), so a resumed run,
    even one with a different world size, continues with the same global batches.
Batches are dicts of CPU tensors: inputs int32 [b, L], labels int64 [b, L] (the metadata's
ignore_label_id, if any, becomes -100), puzzle_identifiers int32 [b].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trm_fast.data.dataset import PuzzleSet, PuzzleSplit
from trm_fast.data.errors import DataError
from trm_fast.ops.loss_head import IGNORE_INDEX

_STATE_VERSION = 1
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _local_rows(global_batch_size: int, rank: int, world_size: int, who: str) -> int:
    if global_batch_size < 1:
        raise DataError(who, f"global_batch_size must be >= 1, got {global_batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(who, f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    if global_batch_size % world_size:
        raise DataError(who, f"global_batch_size {global_batch_size} is not divisible by world_size {world_size}")
    return global_batch_size // world_size


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap, well-spread hash used to order examples inside a puzzle."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def _collate(data: PuzzleSet, rows: np.ndarray, puzzles: np.ndarray, ignore_label_id: int | None) -> dict:
    order = np.argsort(rows, kind="stable")  # sorted reads are kinder to a memory map
    inputs = np.empty((len(rows), data.inputs.shape[1]), np.int32)
    labels = np.empty((len(rows), data.labels.shape[1]), np.int64)
    inputs[order] = data.inputs[rows[order]]
    labels[order] = data.labels[rows[order]]
    if ignore_label_id is not None:
        labels[labels == ignore_label_id] = IGNORE_INDEX
    return {
        "inputs": torch.from_numpy(inputs),
        "labels": torch.from_numpy(labels),
        "puzzle_identifiers": torch.from_numpy(data.puzzle_identifiers[puzzles].astype(np.int32)),
    }


@dataclass
class _EpochPlan:
    epoch: int
    group_order: np.ndarray   # groups in the order this epoch visits them
    puzzle_of_group: np.ndarray  # the puzzle picked for each group (indexed by group id)
    salt_of_group: np.ndarray    # seeds the example order inside the picked puzzle


class TrainSampler:
    """Endless training batches over one set of a split (see the module docstring for the order)."""

    def __init__(self, split: PuzzleSplit, global_batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, set_name: str | None = None):
        self.local_batch_size = _local_rows(global_batch_size, rank, world_size, "TrainSampler")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError("TrainSampler", f"seed must be a non-negative integer, got {seed!r}")
        self.split = split
        self.data = split.get_set(set_name)
        if self.data.num_groups < 1:
            raise DataError(split.path, "the split has no groups to sample from")
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.epoch = 0
        self.cursor = 0  # next position in this epoch's group order
        self._plan: _EpochPlan | None = None
        sizes = np.diff(self.data.puzzle_indices.astype(np.int64))
        self._one_example_per_puzzle = bool(np.all(sizes == 1))

    # -- order ------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> _EpochPlan:
        if self._plan is None or self._plan.epoch != epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            groups = self.data.group_indices.astype(np.int64)
            group_order = rng.permutation(self.data.num_groups)
            puzzle_of_group = groups[:-1] + rng.integers(0, groups[1:] - groups[:-1])
            salt = rng.integers(0, 2**63 - 1, size=self.data.num_groups, dtype=np.int64)
            self._plan = _EpochPlan(epoch, group_order, puzzle_of_group, salt)
        return self._plan

    def _next_global_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Example rows and their puzzles for the next global batch; advances the position."""
        starts = self.data.puzzle_indices.astype(np.int64)
        rows, puzzles = [], []
        filled = 0
        while filled < self.global_batch_size:
            if self.cursor >= self.data.num_groups:
                self.epoch, self.cursor = self.epoch + 1, 0
            plan = self._epoch_plan(self.epoch)
            if self._one_example_per_puzzle:  # whole run of groups at once
                take = min(self.global_batch_size - filled, self.data.num_groups - self.cursor)
                picked = plan.puzzle_of_group[plan.group_order[self.cursor:self.cursor + take]]
                rows.append(starts[picked])
                puzzles.append(picked)
                self.cursor += take
                filled += take
                continue
            group = plan.group_order[self.cursor]
            puzzle = plan.puzzle_of_group[group]
            size = int(starts[puzzle + 1] - starts[puzzle])
            take = min(size, self.global_batch_size - filled)
            keys = _mix64(np.uint64(plan.salt_of_group[group]) ^ np.arange(size, dtype=np.uint64))
            rows.append(starts[puzzle] + np.argsort(keys, kind="stable")[:take])
            puzzles.append(np.full(take, puzzle, np.int64))
            self.cursor += 1
            filled += take
        return np.concatenate(rows), np.concatenate(puzzles)

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows, puzzles = self._next_global_batch()
        mine = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        return _collate(self.data, rows[mine], puzzles[mine], self.split.metadata.ignore_label_id)

    @property
    def batches_per_epoch(self) -> float:
        """Average number of global batches per epoch (mean examples of a picked puzzle per group)."""
        return self.data.num_groups * self.split.metadata.mean_puzzle_examples / self.global_batch_size

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": _STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor,
                "global_batch_size": self.global_batch_size, "num_groups": self.data.num_groups}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position. The world size may differ from the saving run."""
        for key in ("version", "seed", "global_batch_size", "num_groups"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise DataError("TrainSampler.load_state_dict", f"state has {key}={state.get(key)!r} but this "
                                f"sampler has {mine!r}")
        epoch, cursor = state.get("epoch"), state.get("cursor")
        if not isinstance(epoch, int) or not isinstance(cursor, int) or epoch < 0 \
                or not 0 <= cursor <= self.data.num_groups:
            raise DataError("TrainSampler.load_state_dict", f"bad position epoch={epoch!r} cursor={cursor!r}")
        self.epoch, self.cursor = epoch, cursor


class EvalBatches:
    """One pass over every example of a split in order, in global batches of B rows.

    Rank r gets rows [r*B/W, (r+1)*B/W) of each global batch. Rows past the end of the split are
    padding: inputs pad_id, labels -100, puzzle_identifiers blank_identifier_id, `valid` False and
    `example_index` -1. All ranks see the same number of batches (len()).
    """

    def __init__(self, split: PuzzleSplit, global_batch_size: int, *, rank: int = 0, world_size: int = 1,
                 set_name: str | None = None):
        self.local_batch_size = _local_rows(global_batch_size, rank, world_size, "EvalBatches")
        self.split = split
        self.data = split.get_set(set_name)
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return -(-self.data.num_examples // self.global_batch_size)

    def __iter__(self):
        meta = self.split.metadata
        total = self.data.num_examples
        starts = self.data.puzzle_indices.astype(np.int64)
        for batch_start in range(0, total, self.global_batch_size):
            index = batch_start + self.rank * self.local_batch_size + np.arange(self.local_batch_size)
            valid = index < total
            rows = index[valid]
            puzzles = np.searchsorted(starts, rows, side="right") - 1
            real = _collate(self.data, rows, puzzles, meta.ignore_label_id)
            pad = self.local_batch_size - len(rows)
            batch = {
                "inputs": torch.nn.functional.pad(real["inputs"], (0, 0, 0, pad), value=meta.pad_id),
                "labels": torch.nn.functional.pad(real["labels"], (0, 0, 0, pad), value=IGNORE_INDEX),
                "puzzle_identifiers": torch.nn.functional.pad(real["puzzle_identifiers"], (0, pad),
                                                              value=meta.blank_identifier_id),
                "valid": torch.from_numpy(valid),
                "example_index": torch.from_numpy(np.where(valid, index, -1)),
            }
            yield batch
