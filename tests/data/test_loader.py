"""Training sampler and eval batches: determinism, epoch coverage, sharding, resume, padding."""
import numpy as np
import pytest
import torch

from trm_fast.data import dataset as ds
from trm_fast.data.errors import DataError
from trm_fast.data.loader import IGNORE_INDEX, EvalBatches, TrainSampler


def write_folder(root, puzzle_sizes, group_sizes, ignore_label_id=0, seq_len=3):
    """Synthetic split where example e has inputs [e, e+1, e+2] % 250 + 1 (so rows identify
    themselves), labels with some ignore-id cells, puzzle identifier = puzzle number + 1."""
    puzzle_indices = np.concatenate([[0], np.cumsum(puzzle_sizes)])
    group_indices = np.concatenate([[0], np.cumsum(group_sizes)])
    examples = int(puzzle_indices[-1])
    inputs = (np.arange(examples)[:, None] + np.arange(seq_len)) % 250 + 1
    labels = inputs.copy()
    labels[::2, 0] = 0
    ds.write_split(root, "train", inputs, labels, np.arange(len(puzzle_sizes)) + 1, puzzle_indices,
                   group_indices, vocab_size=256, ignore_label_id=ignore_label_id,
                   num_puzzle_identifiers=len(puzzle_sizes) + 1)
    return ds.load_split(root, "train")


def example_ids(batch):
    return (batch["inputs"][:, 0].numpy().astype(np.int64) - 1)  # valid while examples < 250


def take(sampler, count):
    return [next(sampler) for _ in range(count)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


@pytest.fixture
def flat_split(tmp_path):  # 23 groups of one single-example puzzle (like plain Maze / Sudoku)
    return write_folder(tmp_path, [1] * 23, [1] * 23)


@pytest.fixture
def arc_split(tmp_path):  # groups of several puzzles with several examples each (like ARC)
    rng = np.random.default_rng(1)
    group_sizes = rng.integers(1, 4, 9)
    puzzle_sizes = rng.integers(1, 5, int(group_sizes.sum()))
    return write_folder(tmp_path, puzzle_sizes, group_sizes)


def test_batch_types_and_values(flat_split):
    batch = next(TrainSampler(flat_split, 8, seed=0))
    assert batch["inputs"].dtype == torch.int32 and batch["inputs"].shape == (8, 3)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (8, 3)
    assert batch["puzzle_identifiers"].dtype == torch.int32 and batch["puzzle_identifiers"].shape == (8,)
    rows = example_ids(batch)
    np.testing.assert_array_equal(batch["inputs"].numpy(), np.asarray(flat_split.inputs)[rows])
    expected_labels = np.asarray(flat_split.labels)[rows].astype(np.int64)
    expected_labels[expected_labels == 0] = IGNORE_INDEX
    np.testing.assert_array_equal(batch["labels"].numpy(), expected_labels)
    assert (batch["labels"] == IGNORE_INDEX).any()
    np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy(), rows + 1)


def test_no_ignore_id_means_labels_unchanged(tmp_path):
    split = write_folder(tmp_path, [1] * 5, [1] * 5, ignore_label_id=None)
    batch = next(TrainSampler(split, 5, seed=0))
    np.testing.assert_array_equal(batch["labels"].numpy(), np.asarray(split.labels)[example_ids(batch)])
    assert not (batch["labels"] == IGNORE_INDEX).any()


def test_deterministic_and_seed_dependent(arc_split):
    assert_same_batches(take(TrainSampler(arc_split, 6, seed=3), 7), take(TrainSampler(arc_split, 6, seed=3), 7))
    a = np.concatenate([example_ids(b) for b in take(TrainSampler(arc_split, 6, seed=3), 7)])
    b = np.concatenate([example_ids(b) for b in take(TrainSampler(arc_split, 6, seed=4), 7)])
    assert not np.array_equal(a, b)


def test_every_example_once_per_epoch_across_batch_boundaries(flat_split):
    sampler = TrainSampler(flat_split, 5, seed=0)
    stream = np.concatenate([example_ids(b) for b in take(sampler, 23)])  # 115 rows = 5 epochs
    epochs = stream.reshape(5, 23)
    for epoch in epochs:
        assert sorted(epoch) == list(range(23))
    assert len({tuple(e) for e in epochs}) == 5  # reshuffled every epoch


def test_one_puzzle_per_group_per_epoch(arc_split):
    """Packing rule: groups in a shuffled order, one puzzle each, all of its examples back to back
    (in some order, no repeats), cut where a batch fills up."""
    puzzle_starts = np.asarray(arc_split.puzzle_indices)
    group_starts = np.asarray(arc_split.group_indices)
    batch_size = 5
    sampler = TrainSampler(arc_split, batch_size, seed=11)
    batches = take(sampler, 40)
    rows = [example_ids(b) for b in batches]
    puzzles_seen = [np.searchsorted(puzzle_starts, r, side="right") - 1 for r in rows]
    for r, p, b in zip(rows, puzzles_seen, batches):
        np.testing.assert_array_equal(b["puzzle_identifiers"].numpy(), p + 1)
    # Split the row stream into runs of one puzzle; a run never crosses a batch boundary mid-way
    # unless the batch was full, and never repeats an example.
    runs = []
    for r, p in zip(rows, puzzles_seen):
        assert len(r) == batch_size
        start = 0
        for i in range(1, len(p) + 1):
            if i == len(p) or p[i] != p[start]:
                runs.append((int(p[start]), r[start:i], i == len(p)))
                start = i
    cut_runs = 0
    for puzzle, examples, ends_batch in runs:
        size = puzzle_starts[puzzle + 1] - puzzle_starts[puzzle]
        assert len(set(examples)) == len(examples) <= size
        assert all(puzzle_starts[puzzle] <= e < puzzle_starts[puzzle + 1] for e in examples)
        if len(examples) < size:  # a puzzle is only cut short where its batch is full
            assert ends_batch
            cut_runs += 1
    assert cut_runs > 0  # the fixture does exercise the cut
    # Consecutive epochs: each group appears once per epoch, in the run order.
    groups_in_order = [int(np.searchsorted(group_starts, puzzle, side="right") - 1) for puzzle, _, _ in runs]
    num_groups = len(group_starts) - 1
    whole_epochs = len(groups_in_order) // num_groups
    assert whole_epochs >= 3
    for e in range(whole_epochs):
        assert sorted(groups_in_order[e * num_groups:(e + 1) * num_groups]) == list(range(num_groups))


def test_sharding_reassembles_the_world_size_one_batch(arc_split):
    reference = take(TrainSampler(arc_split, 8, seed=5), 6)
    for world in (2, 4, 8):
        shards = [take(TrainSampler(arc_split, 8, seed=5, rank=r, world_size=world), 6) for r in range(world)]
        for step in range(6):
            for key in reference[step]:
                joined = torch.cat([shards[r][step][key] for r in range(world)])
                torch.testing.assert_close(joined, reference[step][key], rtol=0, atol=0)
            assert shards[0][step]["inputs"].shape[0] == 8 // world


def test_resume_gives_the_same_batches(arc_split):
    full = take(TrainSampler(arc_split, 7, seed=2), 12)
    first = TrainSampler(arc_split, 7, seed=2)
    take(first, 5)
    state = first.state_dict()
    resumed = TrainSampler(arc_split, 7, seed=2)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 7), full[5:])
    # Resuming on two ranks (the saving run had one) continues the same global batches.
    even_full = take(TrainSampler(arc_split, 6, seed=2), 9)
    saver = TrainSampler(arc_split, 6, seed=2)
    take(saver, 4)
    state = saver.state_dict()
    parts = []
    for rank in range(2):
        s = TrainSampler(arc_split, 6, seed=2, rank=rank, world_size=2)
        s.load_state_dict(state)
        parts.append(take(s, 5))
    for step in range(5):
        torch.testing.assert_close(torch.cat([parts[0][step]["inputs"], parts[1][step]["inputs"]]),
                                   even_full[4 + step]["inputs"], rtol=0, atol=0)


def test_load_state_dict_refuses_a_different_run(flat_split):
    state = TrainSampler(flat_split, 4, seed=1).state_dict()
    with pytest.raises(DataError, match="seed"):
        TrainSampler(flat_split, 4, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="global_batch_size"):
        TrainSampler(flat_split, 8, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="bad position"):
        TrainSampler(flat_split, 4, seed=1).load_state_dict({**state, "cursor": 99})


def test_bad_sampler_arguments(flat_split):
    with pytest.raises(DataError, match="not divisible by world_size 3"):
        TrainSampler(flat_split, 8, world_size=3)
    with pytest.raises(DataError, match="rank"):
        EvalBatches(flat_split, 8, rank=2, world_size=2)
    with pytest.raises(DataError, match="seed"):
        TrainSampler(flat_split, 8, seed=-1)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_eval_covers_every_example_once_with_padding(arc_split, world):
    total = arc_split.get_set().num_examples
    batch_size = 8
    per_rank = [list(EvalBatches(arc_split, batch_size, rank=r, world_size=world)) for r in range(world)]
    assert all(len(b) == -(-total // batch_size) for b in per_rank)
    meta = arc_split.metadata
    seen = []
    for step in range(len(per_rank[0])):
        for rank in range(world):
            batch = per_rank[rank][step]
            assert batch["inputs"].shape == (batch_size // world, 3)
            valid = batch["valid"].numpy()
            index = batch["example_index"].numpy()
            np.testing.assert_array_equal(valid, index >= 0)
            rows = index[valid]
            np.testing.assert_array_equal(batch["inputs"].numpy()[valid], np.asarray(arc_split.inputs)[rows])
            puzzles = np.searchsorted(np.asarray(arc_split.puzzle_indices), rows, side="right") - 1
            np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy()[valid], puzzles + 1)
            assert (batch["inputs"].numpy()[~valid] == meta.pad_id).all()
            assert (batch["labels"].numpy()[~valid] == IGNORE_INDEX).all()
            assert (batch["puzzle_identifiers"].numpy()[~valid] == meta.blank_identifier_id).all()
            seen.extend(rows.tolist())
    assert seen == list(range(total))


def test_works_on_a_generated_maze_folder(tmp_path):
    folder = ds.build_maze_dataset(tmp_path / "m", size=6, num_train=10, num_test=3, seed=0, augment=True)
    sampler = TrainSampler(ds.load_split(folder, "train"), 10, seed=0)
    batch = next(sampler)
    assert batch["inputs"].shape == (10, 36) and (batch["labels"] != IGNORE_INDEX).all()
    assert sampler.state_dict()["epoch"] == 0 and sampler.state_dict()["cursor"] == 10
    # One symmetry of each of the 10 mazes in the first epoch.
    groups = np.asarray(ds.load_split(folder, "train").group_indices)
    rows = []
    for b in [batch]:
        for row in b["inputs"].numpy():
            match = np.flatnonzero((np.asarray(sampler.data.inputs) == row).all(axis=1))
            rows.append(int(match[0]))
    assert sorted(np.searchsorted(groups, rows, side="right") - 1) == list(range(10))
