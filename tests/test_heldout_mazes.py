"""Held-out maze styles (trm_fast.data.heldout_mazes): valid, unique-path, deterministic, distinct,
excluding what they are told to, and each style looking the way it should."""
import numpy as np
import pytest

from trm_fast.data import heldout_mazes as heldout
from trm_fast.data.errors import DataError
from trm_fast.data.heldout_mazes import HELD_OUT_STYLES, STYLE_DESCRIPTIONS, generate_held_out
from trm_fast.data.maze import GOAL, OPEN, PATH, START, WALL, canonical_key, check_maze_pair, shortest_path_count


def keys(inputs, size):
    return [canonical_key(row.reshape(size, size)) for row in inputs]


def open_mask(inputs, size):
    return (inputs != WALL).reshape(len(inputs), size, size)


def adjacent_open_pairs(grid):
    return int((grid[1:] & grid[:-1]).sum() + (grid[:, 1:] & grid[:, :-1]).sum())


def test_styles_are_described():
    assert set(STYLE_DESCRIPTIONS) == set(HELD_OUT_STYLES) == {"dfs", "kruskal", "walls25", "walls45"}


@pytest.mark.parametrize("style", HELD_OUT_STYLES)
@pytest.mark.parametrize("size,count", [(5, 12), (8, 40), (11, 15), (30, 3)])
def test_every_maze_is_valid_with_one_shortest_path(style, size, count):
    inputs, labels = generate_held_out(style, count, size, seed=3)
    assert inputs.shape == labels.shape == (count, size * size)
    assert inputs.dtype == labels.dtype == np.uint8
    for question, answer in zip(inputs, labels):
        assert set(np.unique(question)) <= {WALL, OPEN, START, GOAL}
        moves = check_maze_pair(question, answer, size)
        assert shortest_path_count(question, size) == (moves, 1)  # the label's path is the unique shortest one
        assert moves >= size == heldout.default_min_moves(size)
        assert int((answer == PATH).sum()) == moves - 1


@pytest.mark.parametrize("style", HELD_OUT_STYLES)
def test_min_moves_is_honoured(style):
    inputs, _ = generate_held_out(style, 10, 9, seed=2, min_moves=14)
    assert min(shortest_path_count(row, 9)[0] for row in inputs) >= 14


@pytest.mark.parametrize("style", HELD_OUT_STYLES)
def test_deterministic_in_style_size_and_seed(style):
    first = generate_held_out(style, 20, 8, seed=5)
    again = generate_held_out(style, 20, 8, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    fewer = generate_held_out(style, 7, 8, seed=5)
    assert np.array_equal(fewer[0], first[0][:7])  # one stream: a shorter set is a prefix
    other_seed = generate_held_out(style, 20, 8, seed=6)
    assert not np.array_equal(other_seed[0], first[0])


def test_styles_draw_from_different_streams():
    sets = {style: generate_held_out(style, 5, 8, seed=1)[0] for style in ("walls25", "walls45")}
    assert not np.array_equal(sets["walls25"], sets["walls45"])


@pytest.mark.parametrize("style", HELD_OUT_STYLES)
def test_exclusion_skips_those_mazes_and_their_symmetric_images(style):
    size = 8
    inputs, labels = generate_held_out(style, 20, size, seed=4)
    # Exclude mazes 0-4 as some symmetric image of them: the key is the same.
    excluded = {canonical_key(np.rot90(row.reshape(size, size), k=index % 4).T) for index, row in enumerate(inputs[:5])}
    kept, kept_labels = generate_held_out(style, 15, size, seed=4, exclude=excluded)
    assert not excluded & set(keys(kept, size))
    # Skipping does not change the stream: what is left is the same mazes in the same order.
    assert np.array_equal(kept, inputs[5:]) and np.array_equal(kept_labels, labels[5:])


@pytest.mark.parametrize("style", HELD_OUT_STYLES)
def test_no_two_mazes_equal_up_to_symmetry(style):
    size = 6  # small: repeats are drawn often (dfs on 6x6 repeats about one draw in three)
    inputs, _ = generate_held_out(style, 90, size, seed=1)
    found = keys(inputs, size)
    assert len(set(found)) == len(found) == 90


def test_random_wall_styles_have_their_wall_share():
    size = 10
    share = {style: float((generate_held_out(style, 150, size, seed=1)[0] == WALL).mean())
             for style in ("walls25", "walls45")}
    assert 0.21 < share["walls25"] < 0.30
    assert 0.38 < share["walls45"] < 0.49
    assert share["walls45"] - share["walls25"] > 0.12


def test_dfs_mazes_are_perfect_trees_over_the_whole_lattice():
    for size in (9, 10):
        inputs, _ = generate_held_out("dfs", 40, size, seed=1)
        side = (size + 1) // 2
        for grid in open_mask(inputs, size):
            cells = int(grid.sum())
            assert cells == 2 * side * side - 1  # every lattice cell plus one opening per tree edge
            assert adjacent_open_pairs(grid) == cells - 1  # a connected graph with cells - 1 edges: a tree
            assert not (grid[1:, 1:] & grid[:-1, 1:] & grid[1:, :-1] & grid[:-1, :-1]).any()


def test_dfs_ends_are_dead_ends():
    size = 9
    inputs, _ = generate_held_out("dfs", 40, size, seed=1)
    grids = inputs.reshape(-1, size, size)
    padded = np.pad(grids != WALL, 1)
    dead = 0
    for grid, walkable in zip(grids, padded):
        for token in (START, GOAL):
            (r, c), = np.argwhere(grid == token)
            dead += int(walkable[r, c + 1] + walkable[r + 2, c + 1] + walkable[r + 1, c] + walkable[r + 1, c + 2]) == 1
    assert dead >= 0.95 * 2 * len(grids)


def test_even_size_lattice_leaves_a_wall_row_and_column_on_random_sides():
    size = 8
    grids = open_mask(generate_held_out("dfs", 60, size, seed=2)[0], size)
    sides = set()
    for grid in grids:
        spare_rows = [r for r in (0, size - 1) if not grid[r].any()]
        spare_cols = [c for c in (0, size - 1) if not grid[:, c].any()]
        assert len(spare_rows) == len(spare_cols) == 1
        sides.add((spare_rows[0], spare_cols[0]))
    assert sides == {(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)}


def test_kruskal_makes_loops_that_dfs_does_not():
    size = 15
    loops = {}
    for style in ("dfs", "kruskal"):
        grids = open_mask(generate_held_out(style, 40, size, seed=1)[0], size)
        loops[style] = [adjacent_open_pairs(grid) - (int(grid.sum()) - 1) for grid in grids]
    assert set(loops["dfs"]) == {0}
    assert min(loops["kruskal"]) >= 0 and np.mean(loops["kruskal"]) >= 1.0


def test_styles_differ_in_path_length_and_walls():
    size = 12
    moves = {}
    for style in HELD_OUT_STYLES:
        inputs, labels = generate_held_out(style, 60, size, seed=1)
        moves[style] = float(((labels == PATH).sum(1) + 1).mean())
    assert moves["dfs"] > moves["kruskal"] > moves["walls25"]  # corridors give the long paths
    assert moves["walls25"] < 1.5 * size and moves["walls45"] < 1.5 * size


@pytest.mark.parametrize("kwargs,expected", [
    (dict(style="prim", count=1, size=8), "unknown style"),
    (dict(style="dfs", count=1, size=4), "size must be 5..30"),
    (dict(style="dfs", count=1, size=31), "size must be 5..30"),
    (dict(style="dfs", count=-1, size=8), "count must be >= 0"),
    (dict(style="dfs", count=1.5, size=8), "count must be an integer"),
    (dict(style="dfs", count=1, size=8, seed=-1), "seed must be >= 0"),
    (dict(style="dfs", count=1, size=8, min_moves=0), "min_moves must be an integer >= 1"),
])
def test_bad_arguments_are_data_errors(kwargs, expected):
    with pytest.raises(DataError, match=expected):
        generate_held_out(**kwargs)


def test_gives_up_after_many_failures_in_a_row(monkeypatch):
    monkeypatch.setattr(heldout, "MAX_FAILURES", 300)
    with pytest.raises(DataError, match=r"gave up after 300 failed attempts in a row with 0 of 3 distinct 5x5"):
        generate_held_out("walls45", 3, 5, min_moves=30)  # no 5x5 maze has a 30-move path
    # dfs on 5x5 has only a few dozen distinct mazes
    with pytest.raises(DataError, match="held-out style 'dfs': gave up"):
        generate_held_out("dfs", 100, 5)
    inputs, labels, counts = heldout.generate_held_out_counted("dfs", 100, 5, partial=True)
    assert 20 < len(inputs) < 100 and len(labels) == len(inputs) and "gave up" in counts["gave_up"]


def test_zero_mazes():
    inputs, labels = generate_held_out("kruskal", 0, 7)
    assert inputs.shape == labels.shape == (0, 49)
