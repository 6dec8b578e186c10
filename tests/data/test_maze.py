"""Maze generator: determinism, unique shortest path, difficulty, label consistency, symmetries."""
import numpy as np
import pytest

from trm_fast.data import maze as mz
from trm_fast.data.csv_format import maze_string_to_tokens
from trm_fast.data.errors import DataError


def walk_count_reference(tokens, size):
    """Independent shortest-path count: number of S->G walks of the first length that reaches G.

    Every walk whose length equals the S-G distance is a shortest path, so iterating
    v <- A v (A = grid adjacency restricted to walkable cells) from e_S gives (distance, count)."""
    grid = np.asarray(tokens).reshape(size, size)
    walkable = (grid != mz.WALL) & (grid != mz.PAD)
    start = tuple(np.argwhere(grid == mz.START)[0])
    goal = tuple(np.argwhere(grid == mz.GOAL)[0])
    walks = np.zeros((size, size), dtype=object)  # Python ints: no overflow
    walks[start] = 1
    for steps in range(1, size * size + 1):
        nxt = np.zeros_like(walks)
        nxt[1:, :] += walks[:-1, :]
        nxt[:-1, :] += walks[1:, :]
        nxt[:, 1:] += walks[:, :-1]
        nxt[:, :-1] += walks[:, 1:]
        walks = np.where(walkable, nxt, 0)
        if walks[goal] != 0:
            return steps, int(walks[goal])
    return -1, 0


def distances_reference(grid, source):
    """Plain Bellman-Ford style relaxation over the grid (independent of the generator's BFS)."""
    size = grid.shape[0]
    walkable = (grid != mz.WALL) & (grid != mz.PAD)
    inf = 10**9
    dist = np.full((size, size), inf)
    dist[source] = 0
    while True:
        best = dist.copy()
        best[1:, :] = np.minimum(best[1:, :], dist[:-1, :] + 1)
        best[:-1, :] = np.minimum(best[:-1, :], dist[1:, :] + 1)
        best[:, 1:] = np.minimum(best[:, 1:], dist[:, :-1] + 1)
        best[:, :-1] = np.minimum(best[:, :-1], dist[:, 1:] + 1)
        best = np.where(walkable, best, inf)
        if np.array_equal(best, dist):
            return dist
        dist = best


def test_default_threshold_formula():
    assert mz.default_min_path_length(30) == 111  # reference: shortest path > 110
    for size in (6, 10, 17, 24):
        assert mz.default_min_path_length(size) == 110 * size * size // 900 + 1


def test_generation_is_deterministic_and_seed_dependent():
    a_in, a_lb = mz.generate_mazes(12, 10, seed=5)
    b_in, b_lb = mz.generate_mazes(12, 10, seed=5)
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_lb, b_lb)
    c_in, _ = mz.generate_mazes(12, 10, seed=6)
    d_in, _ = mz.generate_mazes(12, 10, seed=5, stream=1)
    assert not np.array_equal(a_in, c_in)
    assert not np.array_equal(a_in, d_in)
    # A prefix of a longer request is the same mazes (maze i depends on seed, stream, i only).
    e_in, _ = mz.generate_mazes(5, 10, seed=5)
    np.testing.assert_array_equal(e_in, a_in[:5])


@pytest.mark.parametrize("size,count", [(5, 20), (6, 30), (9, 20), (12, 15), (30, 6)])
def test_unique_long_shortest_path_and_consistent_labels(size, count):
    inputs, labels, lengths = mz.generate_mazes(count, size, seed=size, return_lengths=True)
    assert inputs.dtype == np.uint8 and labels.dtype == np.uint8
    assert inputs.shape == labels.shape == (count, size * size)
    threshold = mz.default_min_path_length(size)
    for q, a, length in zip(inputs, labels, lengths):
        assert set(np.unique(q)) <= {mz.WALL, mz.OPEN, mz.START, mz.GOAL}
        assert (q == mz.START).sum() == 1 and (q == mz.GOAL).sum() == 1
        ref_length, ref_count = walk_count_reference(q, size)
        assert ref_count == 1, "shortest path must be unique"
        assert ref_length == length >= threshold
        # Labels: same grid, exactly the cells on the shortest path (other than S, G) are 'o'.
        grid = q.reshape(size, size)
        d_s = distances_reference(grid, tuple(np.argwhere(grid == mz.START)[0]))
        d_g = distances_reference(grid, tuple(np.argwhere(grid == mz.GOAL)[0]))
        on_path = (d_s + d_g == ref_length) & (grid == mz.OPEN)
        expected = np.where(on_path, mz.PATH, grid).reshape(-1)
        np.testing.assert_array_equal(a, expected)
        assert (a == mz.PATH).sum() == ref_length - 1
        assert mz.shortest_path_count(q, size) == (ref_length, 1)
        assert mz.check_maze_pair(q, a, size) == ref_length


def test_custom_min_path_length_and_no_duplicates_up_to_symmetry():
    inputs, _, lengths = mz.generate_mazes(40, 8, min_path_length=20, seed=2, return_lengths=True)
    assert lengths.min() >= 20
    keys = {min(mz.dihedral(q.reshape(8, 8), k).tobytes() for k in range(8)) for q in inputs}
    assert len(keys) == len(inputs)


def test_exclude_set_skips_known_mazes():
    first, _ = mz.generate_mazes(10, 7, seed=0)
    seen = {mz.canonical_key(q.reshape(7, 7)) for q in first}
    again, _ = mz.generate_mazes(10, 7, seed=0, exclude=seen)
    assert not ({q.tobytes() for q in first} & {q.tobytes() for q in again})


def test_shortest_path_count_on_hand_made_grids():
    # Open 3x3 room: 6 monotone paths corner to corner, 4 moves.
    room = np.full((3, 3), mz.OPEN, np.uint8)
    room[0, 0], room[2, 2] = mz.START, mz.GOAL
    assert mz.shortest_path_count(room) == walk_count_reference(room, 3) == (4, 6)
    # 4x4 ring around a wall block: two equal ways round.
    ring = np.full((4, 4), mz.OPEN, np.uint8)
    ring[1:3, 1:3] = mz.WALL
    ring[0, 0], ring[3, 3] = mz.START, mz.GOAL
    assert mz.shortest_path_count(ring.reshape(-1), 4) == walk_count_reference(ring, 4) == (6, 2)
    # Walled off goal.
    blocked = room.copy()
    blocked[1, :] = mz.WALL
    assert mz.shortest_path_count(blocked) == walk_count_reference(blocked, 3) == (-1, 0)


def test_dihedral_matches_explicit_index_maps_and_inverts():
    n = 5
    grid = np.arange(n * n).reshape(n, n)
    r, c = np.indices((n, n))
    last = n - 1
    # out[r, c] = grid[source_row, source_col] for each symmetry, written out by hand.
    sources = {
        0: (r, c), 1: (c, last - r), 2: (last - r, last - c), 3: (last - c, r),
        4: (r, last - c), 5: (last - r, c), 6: (c, r), 7: (last - c, last - r),
    }
    images = set()
    for k, (sr, sc) in sources.items():
        out = mz.dihedral(grid, k)
        np.testing.assert_array_equal(out, grid[sr, sc])
        np.testing.assert_array_equal(mz.dihedral(out, mz.DIHEDRAL_INVERSE[k]), grid)
        images.add(out.tobytes())
        batch = np.stack([grid, grid + 100])
        np.testing.assert_array_equal(mz.dihedral(batch, k)[1], out + 100)
    assert len(images) == 8
    with pytest.raises(DataError, match="0..7"):
        mz.dihedral(grid, 8)


def test_symmetry_keeps_a_maze_valid():
    inputs, labels = mz.generate_mazes(3, 8, seed=4)
    for q, a in zip(inputs, labels):
        for k in range(8):
            qk = mz.dihedral(q.reshape(8, 8), k)
            ak = mz.dihedral(a.reshape(8, 8), k)
            length, count = walk_count_reference(qk, 8)
            assert count == 1 and mz.check_maze_pair(qk, ak) == length


def test_render_maze_uses_the_csv_characters():
    inputs, labels = mz.generate_mazes(2, 6, seed=1)
    text = mz.render_maze(labels[0], 6)
    rows = text.split("\n")
    assert len(rows) == 6 and all(len(row) == 6 for row in rows)
    np.testing.assert_array_equal(maze_string_to_tokens("".join(rows)), labels[0])
    assert "." == mz.render_maze(np.zeros(1, np.uint8))
    with pytest.raises(DataError, match="tokens must lie"):
        mz.render_maze(np.full(4, 9, np.uint8))


def test_bad_requests_raise_data_error():
    with pytest.raises(DataError, match="size"):
        mz.generate_mazes(1, 3)
    with pytest.raises(DataError, match="min_path_length"):
        mz.generate_mazes(1, 6, min_path_length=0)
    with pytest.raises(DataError, match="no new 6x6 maze"):
        mz.generate_mazes(1, 6, min_path_length=500)
    with pytest.raises(DataError, match="exactly one 'S'"):
        mz.shortest_path_count(np.full((3, 3), mz.OPEN, np.uint8))
    with pytest.raises(DataError, match="square"):
        mz.shortest_path_count(np.full((2, 3), mz.OPEN, np.uint8))


# ----------------------------------------------------------------------------------------------
# Random-wall style (Maze-Hard's): walls cell by cell, unique shortest path made by walling.


@pytest.mark.parametrize("size, count", [(8, 40), (12, 20)])
def test_random_style_has_a_unique_long_shortest_path_by_independent_count(size, count):
    inputs, labels, lengths = mz.generate_mazes(count, size, seed=3, style="random", return_lengths=True)
    threshold = mz.default_min_path_length(size)
    for question, answer, length in zip(inputs, labels, lengths):
        assert walk_count_reference(question, size) == (length, 1)  # unique shortest path, by walk counting
        assert length >= threshold
        assert mz.check_maze_pair(question, answer, size) == length  # the label is that path


def test_random_style_looks_like_random_walls_not_corridors():
    inputs, _ = mz.generate_mazes(30, 10, seed=0, style="random", wall_share=(0.3, 0.5))
    grids = inputs.reshape(-1, 10, 10)
    walls = (grids == mz.WALL).mean(axis=(1, 2))
    # the drawn share plus the cells walled to make the path unique; never the lattice's ~50%+ regularity
    assert 0.25 < walls.mean() < 0.6
    corridors, _ = mz.generate_mazes(30, 10, seed=0)
    # corridor mazes open cells on the two-apart lattice and its links (plus a few openings), so an
    # all-open 2x2 block is rare there and common with random walls
    def open_2x2_blocks(batch):
        g = batch.reshape(-1, 10, 10) != mz.WALL
        return int((g[:, :-1, :-1] & g[:, 1:, :-1] & g[:, :-1, 1:] & g[:, 1:, 1:]).sum())
    assert open_2x2_blocks(inputs) > 10 * max(1, open_2x2_blocks(corridors))


def test_random_style_is_deterministic_and_differs_from_corridors():
    first = mz.generate_mazes(5, 8, seed=7, style="random")
    again = mz.generate_mazes(5, 8, seed=7, style="random")
    other = mz.generate_mazes(5, 8, seed=8, style="random")
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], mz.generate_mazes(5, 8, seed=7)[0])


def test_random_style_dataset_keeps_train_and_test_disjoint_up_to_symmetry(tmp_path):
    from trm_fast.data import build_maze_dataset, load_split

    folder = build_maze_dataset(tmp_path / "random", size=8, num_train=60, num_test=30, seed=2, style="random")
    train, test = load_split(folder, "train"), load_split(folder, "test")
    train_keys = {mz.canonical_key(np.asarray(g).reshape(8, 8)) for g in train.inputs}
    test_keys = {mz.canonical_key(np.asarray(g).reshape(8, 8)) for g in test.inputs}
    assert len(train_keys) == 60 and len(test_keys) == 30 and not train_keys & test_keys


def _open_2x2_blocks(inputs, size):
    g = inputs.reshape(-1, size, size) != mz.WALL
    return (g[:, :-1, :-1] & g[:, 1:, :-1] & g[:, :-1, 1:] & g[:, 1:, 1:]).sum(axis=(1, 2))


def test_mixed_style_draws_corridor_and_random_wall_mazes(monkeypatch):
    size = 10
    corridors, _ = mz.generate_mazes(60, size, seed=3, style="corridors")
    random_walls, _ = mz.generate_mazes(60, size, seed=3, style="random")
    mixed, labels = mz.generate_mazes(200, size, seed=3, style="mixed")
    for question, answer in zip(mixed, labels):
        assert mz.shortest_path_count(question, size)[1] == 1
        mz.check_maze_pair(question, answer, size)
    # Open 2x2 blocks tell the styles apart: a few in a corridor maze, many with random walls.
    cut = (np.percentile(_open_2x2_blocks(corridors, size), 90) + np.percentile(_open_2x2_blocks(random_walls, size), 10)) / 2
    assert (_open_2x2_blocks(corridors, size) <= cut).mean() > 0.8 and (_open_2x2_blocks(random_walls, size) > cut).mean() > 0.8
    corridor_like = (_open_2x2_blocks(mixed, size) <= cut).mean()
    assert 0.3 < corridor_like < 0.7  # MIXED_CORRIDOR_SHARE = 0.5
    monkeypatch.setattr(mz, "MIXED_CORRIDOR_SHARE", 1.0)
    all_corridors, _ = mz.generate_mazes(60, size, seed=3, style="mixed")
    assert (_open_2x2_blocks(all_corridors, size) <= cut).mean() > 0.8
    again, _ = mz.generate_mazes(60, size, seed=3, style="mixed")
    assert np.array_equal(all_corridors, again)


def test_bad_style_or_wall_share_is_a_data_error():
    with pytest.raises(DataError, match="style must be one of corridors, random, mixed"):
        mz.generate_mazes(1, 8, style="spiral")
    with pytest.raises(DataError, match="wall_share"):
        mz.generate_mazes(1, 8, style="random", wall_share=(0.6, 0.4))


def test_random_style_reaches_maze_hard_lengths_on_30x30():
    inputs, labels, lengths = mz.generate_mazes(3, 30, seed=0, style="random", return_lengths=True)
    for question, length in zip(inputs, lengths):
        assert length > 110 and walk_count_reference(question, 30) == (length, 1)
        assert 0.3 <= (question == mz.WALL).mean() <= 0.6  # still a field of scattered walls


def test_random_style_wall_share_follows_the_configured_range():
    """Each maze draws its wall share from the range; walls are only ever added after that (to lengthen
    or to make the path unique), so the share of walls sits at or above the range, never below it."""
    def wall_shares(share_range):
        inputs, _ = mz.generate_mazes(20, 12, seed=4, style="random", wall_share=share_range)
        return (inputs.reshape(-1, 144) == mz.WALL).mean(axis=1)

    sparse, dense = wall_shares((0.2, 0.25)), wall_shares((0.45, 0.5))
    binomial_slack = 0.1  # ~3 standard deviations of a Bernoulli(0.25) share over 144 cells
    assert sparse.min() >= 0.2 - binomial_slack and dense.min() >= 0.45 - binomial_slack
    assert 0.2 - 0.03 <= sparse.mean() and 0.45 - 0.03 <= dense.mean() <= 0.5 + 0.1
    # sparse fields get the most walls added (many competing shortest paths), yet stay sparser
    assert dense.mean() > sparse.mean() + 0.05
