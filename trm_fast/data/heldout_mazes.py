"""Held-out maze styles: mazes from generators written apart from the built-in one.

These generators were written separately from trm_fast.data.maze, without reading its generator
code, to measure how maze models trained on the built-in data do on mazes from elsewhere (the mazes
users bring). Only that module's token constants and checking helpers are used here
(`canonical_key`, `shortest_path_count`); the carving, the BFS and the choice
of S and G are this module's own. Every maze has exactly one shortest S->G path (re-checked with
`shortest_path_count`) at least `min_moves` moves long (default: `size`), and the label is the input
with every cell of that path other than S and G set to 'o'. A set holds no two mazes equal up to the
8 symmetries of the square, and none whose `canonical_key` is in `exclude`.

Styles (`HELD_OUT_STYLES`; one-line descriptions in `STYLE_DESCRIPTIONS`):

``dfs``: a perfect maze carved by the recursive backtracker (an iterative depth-first search with
an explicit stack) on the lattice of cells two apart. On an odd size the lattice spans the whole
grid; on an even size it spans size-1 cells and the spare row and column stay wall, each on a side
drawn at random. S and G are two distinct dead ends drawn at random at least `min_moves` apart
(any open cells when fewer than two dead ends, or no far enough pair of them, exist). In a tree the
S->G path is unique.

``kruskal``: a spanning tree of the same lattice by randomized Kruskal (lattice edges in random
order, union-find joins two components by opening the wall cell between them); S and G are uniform
random open cells at least `min_moves` apart. Then about 10% of the wall cells left between two
lattice cells are opened, in random order, to make loops; an opening is kept only if the S->G
shortest path stays unique and at least `min_moves` long (re-checked by BFS after each one). At
least one opening is tried, also on the smallest grids.

``walls25`` / ``walls45``: every cell is independently a wall with probability 0.25 / 0.45. S is
a uniform random open cell; G is drawn uniformly from the open cells that lie at least `min_moves`
moves from S and are reached by exactly one shortest path (one BFS from S counts the shortest paths
to every cell); a grid with no such cell is rejected and a new one drawn (rejection sampling).
Drawing G first and then rejecting a grid whose S->G path is not unique was measured too: at 30x30
only 0.04% of walls25 grids passed (1.6 s a maze), so G is drawn among the cells that pass instead.
Measured (seed 1, default `min_moves`, one core; `python -m trm_fast.data.heldout_mazes`), grids
kept / drawn and time for 500 mazes: 8x8 walls25 36% (0.2 s), walls45 22% (0.2 s); 30x30 walls25
1.2% (22 s), walls45 1.1% (10 s). An open field rarely has a single shortest path between far
cells, so a kept maze's S->G path must run straight or squeeze through narrow spots, and the paths
are barely longer than `min_moves` (mean 31 moves on 30x30, 9 on 8x8). Their
wall share stays near the drawing probability (measured 0.25 and 0.42-0.45).

Limits: sizes 5..30 are tested (`MIN_SIZE`..`MAX_SIZE`; smaller or larger is a DataError). Small
sizes hold few distinct mazes of a style (dfs on 5x5, a 3x3 lattice: 52 found), so asking for more than exist
ends in a DataError after `MAX_FAILURES` failed attempts in a row, as does a `min_moves` no maze of the
style reaches. Generation is deterministic in (style, size, seed, min_moves): one random stream per
(seed, style index), and excluded or repeated mazes are skipped without changing it.
"""
from __future__ import annotations

import random
from collections import deque
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from trm_fast.data.errors import DataError
from trm_fast.data.maze import GOAL, OPEN, PATH, START, WALL, canonical_key, shortest_path_count

HELD_OUT_STYLES = ("dfs", "kruskal", "walls25", "walls45")
STYLE_DESCRIPTIONS = {
    "dfs": "perfect maze, recursive backtracker; S, G dead ends",
    "kruskal": "corridors with loops (Kruskal tree + ~10% openings)",
    "walls25": "random walls, each cell a wall with p = 0.25",
    "walls45": "random walls, each cell a wall with p = 0.45",
}
WALL_PROBABILITY = {"walls25": 0.25, "walls45": 0.45}
LOOP_SHARE = 0.10  # kruskal: share of the remaining lattice walls tried as loop openings
MIN_SIZE, MAX_SIZE = 5, 30
MAX_FAILURES = 20000  # attempts in a row (no maze, a repeat or an excluded one) before giving up
_ENDPOINT_TRIES = 16  # starts tried per carved maze when looking for a far enough end


def default_min_moves(size: int) -> int:
    """Default least S->G distance in moves (path cells + 1): the grid side."""
    return size


# ----------------------------------------------------------------------------------------------
# Grid search


@lru_cache(maxsize=32)
def _adjacent(size: int) -> tuple[tuple[int, ...], ...]:
    """The up/down/left/right neighbours of each cell of a flat size*size grid."""
    cells = []
    for index in range(size * size):
        row, col = divmod(index, size)
        near = []
        if row:
            near.append(index - size)
        if col:
            near.append(index - 1)
        if col + 1 < size:
            near.append(index + 1)
        if row + 1 < size:
            near.append(index + size)
        cells.append(tuple(near))
    return tuple(cells)


def _search(free: list[bool], source: int, size: int) -> tuple[list[int], list[int]]:
    """Breadth-first search from `source` over free cells: (moves to each cell, -1 where
    unreachable; number of shortest paths to each cell, capped at 2)."""
    adjacent = _adjacent(size)
    moves = [-1] * len(free)
    ways = [0] * len(free)
    moves[source], ways[source] = 0, 1
    frontier = deque((source,))
    while frontier:
        here = frontier.popleft()
        further = moves[here] + 1
        for there in adjacent[here]:
            if not free[there]:
                continue
            if moves[there] < 0:
                moves[there] = further
                ways[there] = ways[here]
                frontier.append(there)
            elif moves[there] == further and ways[there] < 2:
                ways[there] = min(2, ways[there] + ways[here])
    return moves, ways


def _walk_back(moves: list[int], goal: int, size: int) -> list[int]:
    """The cells strictly between S and G on the (unique) shortest path, walked back from G."""
    adjacent = _adjacent(size)
    cells = []
    here = goal
    while moves[here] > 1:
        here = next(there for there in adjacent[here] if moves[there] == moves[here] - 1)
        cells.append(here)
    return cells


def _pair(size: int, free: list[bool], start: int, goal: int, moves: list[int]) -> tuple[np.ndarray, np.ndarray]:
    question = np.where(np.asarray(free), OPEN, WALL).astype(np.uint8)
    question[start], question[goal] = START, GOAL
    answer = question.copy()
    answer[_walk_back(moves, goal, size)] = PATH
    return question, answer


def _far_pair(ends: list[int], free: list[bool], size: int, min_moves: int, rnd: random.Random):
    """(S, G, moves from S) with S, G drawn from `ends` at least `min_moves` apart, or None."""
    for start in rnd.sample(ends, min(len(ends), _ENDPOINT_TRIES)):
        moves, _ = _search(free, start, size)
        far = [cell for cell in ends if moves[cell] >= min_moves]
        if far:
            return start, rnd.choice(far), moves
    return None


# ----------------------------------------------------------------------------------------------
# Lattice mazes (dfs, kruskal)


def _lattice(size: int, rnd: random.Random) -> tuple[int, list[int]]:
    """(cells per side, grid index of each lattice cell): cells two apart, covering the grid on an
    odd size and size-1 rows/columns on an even one (the spare one on a random side per axis)."""
    side = (size + 1) // 2
    row0, col0 = (0, 0) if size % 2 else (rnd.randrange(2), rnd.randrange(2))
    return side, [(row0 + 2 * r) * size + col0 + 2 * c for r in range(side) for c in range(side)]


def _lattice_edges(side: int, where: list[int]) -> list[tuple[int, int, int]]:
    """(lattice cell a, lattice cell b, grid cell between them) for every pair of lattice neighbours."""
    edges = []
    for r in range(side):
        for c in range(side):
            a = r * side + c
            if c + 1 < side:
                edges.append((a, a + 1, (where[a] + where[a + 1]) // 2))
            if r + 1 < side:
                edges.append((a, a + side, (where[a] + where[a + side]) // 2))
    return edges


def _make_dfs(size: int, min_moves: int, rnd: random.Random):
    side, where = _lattice(size, rnd)
    free = [False] * (size * size)
    links: dict[int, list[tuple[int, int]]] = {}
    for a, b, between in _lattice_edges(side, where):
        links.setdefault(a, []).append((b, between))
        links.setdefault(b, []).append((a, between))
    first = rnd.randrange(side * side)
    seen = {first}
    free[where[first]] = True
    stack = [first]
    while stack:
        options = [(cell, between) for cell, between in links[stack[-1]] if cell not in seen]
        if not options:
            stack.pop()
            continue
        cell, between = rnd.choice(options)
        seen.add(cell)
        free[between] = free[where[cell]] = True
        stack.append(cell)
    adjacent = _adjacent(size)
    dead_ends = [cell for cell in where if sum(free[near] for near in adjacent[cell]) == 1]
    found = _far_pair(dead_ends, free, size, min_moves, rnd) if len(dead_ends) >= 2 else None
    if found is None:
        found = _far_pair([cell for cell in range(size * size) if free[cell]], free, size, min_moves, rnd)
    if found is None:
        return None
    start, goal, moves = found
    return _pair(size, free, start, goal, moves)


def _make_kruskal(size: int, min_moves: int, rnd: random.Random):
    side, where = _lattice(size, rnd)
    free = [False] * (size * size)
    for cell in where:
        free[cell] = True
    parent = list(range(side * side))

    def root(cell: int) -> int:
        while parent[cell] != cell:
            parent[cell] = parent[parent[cell]]
            cell = parent[cell]
        return cell

    edges = _lattice_edges(side, where)
    rnd.shuffle(edges)
    closed = []
    for a, b, between in edges:
        ra, rb = root(a), root(b)
        if ra == rb:
            closed.append(between)
        else:
            parent[ra] = rb
            free[between] = True
    found = _far_pair([cell for cell in range(size * size) if free[cell]], free, size, min_moves, rnd)
    if found is None:
        return None
    start, goal, moves = found
    for between in rnd.sample(closed, max(1, round(LOOP_SHARE * len(closed))) if closed else 0):
        free[between] = True
        after, ways = _search(free, start, size)
        if ways[goal] == 1 and after[goal] >= min_moves:
            moves = after
        else:
            free[between] = False
    return _pair(size, free, start, goal, moves)


# ----------------------------------------------------------------------------------------------
# Random walls (walls25, walls45)


def _make_walls(probability: float) -> Callable:
    def make(size: int, min_moves: int, rnd: random.Random):
        draw = rnd.random
        free = [draw() >= probability for _ in range(size * size)]
        open_cells = [cell for cell in range(size * size) if free[cell]]
        if len(open_cells) < 2:
            return None
        start = rnd.choice(open_cells)
        moves, ways = _search(free, start, size)
        ends = [cell for cell in open_cells if moves[cell] >= min_moves and ways[cell] == 1]
        if not ends:
            return None
        return _pair(size, free, start, rnd.choice(ends), moves)

    return make


_MAKERS = {"dfs": _make_dfs, "kruskal": _make_kruskal,
           **{style: _make_walls(p) for style, p in WALL_PROBABILITY.items()}}


# ----------------------------------------------------------------------------------------------
# Sets


def _check_request(style, count, size, seed, min_moves) -> int:
    where = "held-out mazes"
    if style not in HELD_OUT_STYLES:
        raise DataError(where, f"unknown style {style!r}; expected one of {', '.join(HELD_OUT_STYLES)}")
    for name, value in (("count", count), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(where, f"{name} must be an integer, got {value!r}")
    if count < 0:
        raise DataError(where, f"count must be >= 0, got {count}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(where, f"size must be {MIN_SIZE}..{MAX_SIZE}, got {size}")
    if seed < 0:
        raise DataError(where, f"seed must be >= 0, got {seed}")
    if min_moves is None:
        return default_min_moves(size)
    if isinstance(min_moves, bool) or not isinstance(min_moves, (int, np.integer)) or min_moves < 1:
        raise DataError(where, f"min_moves must be an integer >= 1, got {min_moves!r}")
    return int(min_moves)


def _stream(seed: int, style: str) -> random.Random:
    state = np.random.SeedSequence([int(seed), HELD_OUT_STYLES.index(style)]).generate_state(2, np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


def generate_held_out_counted(style: str, count: int, size: int, seed: int = 1, exclude: Optional[set] = None,
                              *, min_moves: Optional[int] = None,
                              partial: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """`generate_held_out` plus what it took: {"attempts": mazes drawn, "made": draws that gave a
    maze, "repeats": made but a repeat or excluded, "gave_up": the message when it stopped short}.
    With `partial`, giving up returns the mazes made so far (fewer than `count`) instead of raising."""
    min_moves = _check_request(style, count, size, seed, min_moves)
    rnd = _stream(seed, style)
    make = _MAKERS[style]
    seen: set[bytes] = set()
    exclude = exclude or set()
    inputs, labels = [], []
    attempts = made = repeats = failures = 0
    gave_up = None
    while len(inputs) < count:
        if failures >= MAX_FAILURES:
            error = DataError(f"held-out style {style!r}",
                              f"gave up after {MAX_FAILURES} failed attempts in a row with {len(inputs)} of {count} "
                              f"distinct {size}x{size} mazes made (seed {seed}, at least {min_moves} moves); ask "
                              f"for fewer mazes, a larger size or a smaller min_moves")
            if not partial:
                raise error
            gave_up = str(error)
            break
        attempts += 1
        failures += 1
        pair = make(size, min_moves, rnd)
        if pair is None:
            continue
        made += 1
        question, answer = pair
        key = canonical_key(question.reshape(size, size))
        if key in seen or key in exclude:
            repeats += 1
            continue
        moves, paths = shortest_path_count(question, size)
        if paths != 1 or moves < min_moves:  # never expected: every maker checks this itself
            continue
        seen.add(key)
        inputs.append(question)
        labels.append(answer)
        failures = 0
    shape = (len(inputs), size * size)
    stacked = (np.stack(inputs) if inputs else np.zeros(shape, np.uint8),
               np.stack(labels) if labels else np.zeros(shape, np.uint8))
    return (*stacked, {"attempts": attempts, "made": made, "repeats": repeats, "gave_up": gave_up})


def generate_held_out(style: str, count: int, size: int, seed: int = 1, exclude: Optional[set] = None,
                      *, min_moves: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct size x size mazes of a held-out style: (inputs uint8 [count, size*size],
    labels uint8 [count, size*size]). Deterministic in (style, size, seed, min_moves); no two equal up
    to symmetry and none whose `canonical_key` is in `exclude` (a set of bytes). `min_moves`: least
    S->G distance in moves, default `size`. DataError for bad arguments or when `MAX_FAILURES`
    attempts in a row give no new maze."""
    inputs, labels, _ = generate_held_out_counted(style, count, size, seed, exclude, min_moves=min_moves)
    return inputs, labels


def _report(sizes=(8, 30), count: int = 500) -> None:
    """Acceptance and time per style (single-threaded): `python -m trm_fast.data.heldout_mazes`."""
    import time

    for size in sizes:
        for style in HELD_OUT_STYLES:
            started = time.perf_counter()
            inputs, labels, counts = generate_held_out_counted(style, count, size, seed=1, partial=True)
            seconds = time.perf_counter() - started
            walls = float((inputs == WALL).mean())
            moves = float(((labels == PATH).sum(1) + 1).mean())
            print(f"{size}x{size} {style:8s} {len(inputs)} mazes in {seconds:6.2f}s: {counts['attempts']} draws, "
                  f"acceptance {counts['made'] / counts['attempts']:.1%}, {counts['repeats']} repeats; "
                  f"wall share {walls:.3f}, mean path {moves:.1f} moves" + (" (gave up)" if counts["gave_up"] else ""))


if __name__ == "__main__":
    _report()
