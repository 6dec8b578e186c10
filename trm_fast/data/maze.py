"""Maze generator with a unique, long shortest path, in the reference Maze-Hard token scheme.

Tokens (as the reference maze builder maps the CSV characters "# SGo"):
    PAD 0, wall '#' 1, open ' ' 2, start 'S' 3, goal 'G' 4, path 'o' 5; vocabulary 6.
The input grid holds walls, open cells, S and G; the label is the same grid with every cell of the
shortest S->G path other than S and G turned into 'o'. Every cell is supervised.

Path length is counted in MOVES: the number of steps from S to G, which is the number of 'o' cells
plus one. The default difficulty keeps the reference's "shortest path > 110" on 30x30 and scales it
with the grid area for other sizes: ``min_path_length = 110 * size**2 // 900 + 1`` moves
(111 for 30x30, 13 for 10x10, 5 for 6x6).

How a maze is made (everything seeded, one per-maze stream, O(size^2) work per maze):
 1. A perfect maze (spanning tree) on a lattice of cells two apart is carved with a "growing tree"
    walk that mostly extends the newest cell (long corridors, hence long paths). On an even size the
    lattice is shifted by 0 or 1 per axis at random, so the spare row/column sits on either side.
 2. S is the far end of a BFS sweep from a random open cell; G is a random open cell whose distance
    from S is at least the threshold and at least a random fraction (60-100%) of the farthest one.
    In a tree the S->G path is unique.
 3. A few wall cells are opened for variety (dead-end nooks and loops). An opening at wall cell w
    creates no new S->G path of length <= D (the current shortest length) exactly when
    min over distinct open neighbours p, q of w of dist_S(p) + dist_G(q) + 2 > D, because any
    new path must pass w once. Only such openings are kept, so the shortest path stays the same
    and unique; the distances are recomputed after each loop-making opening.
 4. The result is re-checked by BFS path counting (`shortest_path_count`) before it is returned.
Duplicates are removed up to the 8 dihedral symmetries.

Style "random" (as in Lehnert et al. 2024, "Beyond A*", which Maze-Hard follows): every cell is a
wall with a probability drawn per maze from `wall_share` (30-50% by default). S is the far end of a
double BFS sweep from a random open cell, G a random cell a random 60-100% of the farthest distance
away. Random walls alone reach Maze-Hard's > 110 moves on 30x30 in only ~1% of draws (too slow to
sample), so a shorter S->G distance is lengthened by walling random cells of the current shortest
path, one at a time, never one that would cut S from G, within a budget of 1/8 of the open cells:
the grid stays a field of scattered walls (the extra walls are a few % of the cells), only the
shortcuts are gone. The shortest path is then made unique by keeping one shortest path P (walked
back from G with random choices) and walling every other cell that lies on some shortest path: any
competing shortest path used such a cell, and P itself is untouched, so P is the only one left.
Re-checked by BFS path counting like the corridor style.

Style "mixed" draws each maze's style: corridors with probability `MIXED_CORRIDOR_SHARE`, else
random walls with the wall share drawn from `wall_share` as above. A model trained on one style
solves clearly fewer mazes of the other (and of other generators); the mix covers both.
"""
from __future__ import annotations

import random
from collections import deque
from functools import lru_cache

import numpy as np

from trm_fast.data.errors import DataError

PAD, WALL, OPEN, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = 6
CHARSET = "# SGo"  # characters of tokens 1..5, as in the reference CSV files
_RENDER_CHARS = "." + CHARSET  # PAD shown as '.'

MIN_SIZE = 4
STYLES = ("corridors", "random", "mixed")
DEFAULT_WALL_SHARE = (0.3, 0.5)
MIXED_CORRIDOR_SHARE = 0.5  # style "mixed": the share of corridor-style mazes
_MAX_TRIES_PER_MAZE = 500  # attempts in a row before giving up


def default_min_path_length(size: int) -> int:
    """Default minimum shortest-path length in moves: > 110 on 30x30, scaled by area."""
    return 110 * size * size // 900 + 1


# ----------------------------------------------------------------------------------------------
# Grid helpers


@lru_cache(maxsize=16)
def _neighbours(size: int) -> tuple[tuple[int, ...], ...]:
    """4-neighbourhood of every cell of a flat size*size grid."""
    table = []
    for r in range(size):
        for c in range(size):
            cell = r * size + c
            near = []
            if r > 0:
                near.append(cell - size)
            if r + 1 < size:
                near.append(cell + size)
            if c > 0:
                near.append(cell - 1)
            if c + 1 < size:
                near.append(cell + 1)
            table.append(tuple(near))
    return tuple(table)


def _bfs(passable: list[bool], source: int, neighbours) -> list[int]:
    """Distances in moves from `source` over passable cells (-1: unreachable)."""
    dist = [-1] * len(passable)
    dist[source] = 0
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        step = dist[cell] + 1
        for near in neighbours[cell]:
            if passable[near] and dist[near] < 0:
                dist[near] = step
                queue.append(near)
    return dist


def _as_square(tokens: np.ndarray, size: int | None, what: str = "maze") -> np.ndarray:
    grid = np.asarray(tokens)
    if grid.ndim == 1:
        if size is None:
            size = int(round(len(grid) ** 0.5))
        if size * size != grid.size:
            raise DataError(what, f"expected {size}x{size}={size * size} tokens, got {grid.size}")
        grid = grid.reshape(size, size)
    elif grid.ndim != 2 or grid.shape[0] != grid.shape[1]:
        raise DataError(what, f"expected a square grid, got shape {tuple(grid.shape)}")
    return grid


def _single_cell(flat: np.ndarray, token: int, what: str) -> int:
    where = np.flatnonzero(flat == token)
    if len(where) != 1:
        name = CHARSET[token - 1]
        raise DataError(what, f"expected exactly one '{name}' cell, found {len(where)}")
    return int(where[0])


def shortest_path_count(tokens: np.ndarray, size: int | None = None) -> tuple[int, int]:
    """Length (moves) and number of distinct shortest S->G paths of a maze grid.

    `tokens` is an input or label grid, flat (size*size) or 2-D; every token other than a wall or
    PAD is walkable. Returns (-1, 0) when G cannot be reached. Counting is the usual BFS recurrence
    paths(v) = sum of paths(u) over neighbours u one step closer to S.
    """
    grid = _as_square(tokens, size)
    n = grid.shape[0]
    flat = grid.reshape(-1)
    start = _single_cell(flat, START, "maze")
    goal = _single_cell(flat, GOAL, "maze")
    passable = ((flat != WALL) & (flat != PAD)).tolist()
    neighbours = _neighbours(n)
    dist = _bfs(passable, start, neighbours)
    if dist[goal] < 0:
        return -1, 0
    # Count paths in BFS order (cells sorted by distance), only up to the goal's distance.
    reachable = [cell for cell, d in enumerate(dist) if 0 <= d <= dist[goal]]
    reachable.sort(key=dist.__getitem__)
    count = [0] * len(flat)
    count[start] = 1
    for cell in reachable:
        if cell == start:
            continue
        step = dist[cell] - 1
        count[cell] = sum(count[u] for u in neighbours[cell] if dist[u] == step)
    return dist[goal], count[goal]


def render_maze(tokens: np.ndarray, size: int | None = None) -> str:
    """Text picture of one maze grid using the "# SGo" characters (PAD as '.')."""
    grid = _as_square(tokens, size)
    if grid.size and (grid.min() < 0 or grid.max() >= VOCAB_SIZE):
        raise DataError("maze", f"tokens must lie in [0, {VOCAB_SIZE}), got {grid.min()}..{grid.max()}")
    return "\n".join("".join(_RENDER_CHARS[t] for t in row) for row in grid.tolist())


# The 8 symmetries of the square, numbered as the reference's dihedral_transform.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Symmetry `k` (0..7) of the last two axes: 0 identity, 1-3 rot90 k times, 4 left-right flip,
    5 up-down flip, 6 transpose, 7 anti-transpose (same numbering as the reference project)."""
    arr = np.asarray(grid)
    if arr.ndim < 2:
        raise DataError("dihedral", f"expected a grid with at least 2 dims, got shape {arr.shape}")
    axes = (arr.ndim - 2, arr.ndim - 1)
    if k == 0:
        return arr
    if k in (1, 2, 3):
        return np.rot90(arr, k=k, axes=axes)
    if k == 4:
        return np.flip(arr, axis=axes[1])
    if k == 5:
        return np.flip(arr, axis=axes[0])
    if k == 6:
        return np.swapaxes(arr, *axes)
    if k == 7:
        return np.flip(np.rot90(arr, k=1, axes=axes), axis=axes[1])
    raise DataError("dihedral", f"symmetry index must be 0..7, got {k}")


def canonical_key(grid: np.ndarray) -> bytes:
    """A key equal for two square grids exactly when one is a dihedral image of the other."""
    arr = np.ascontiguousarray(grid, dtype=np.uint8)
    return min(np.ascontiguousarray(dihedral(arr, k)).tobytes() for k in range(8))


# ----------------------------------------------------------------------------------------------
# Generation


def _carve_tree(size: int, rnd: random.Random) -> list[bool]:
    """Open cells of a perfect maze carved on the two-apart lattice (growing-tree walk)."""
    lattice = (size + 1) // 2
    row0 = col0 = 0
    if size % 2 == 0:  # one spare row/column: put it on a random side
        row0, col0 = rnd.randrange(2), rnd.randrange(2)
    newest_bias = 0.75 + 0.25 * rnd.random()  # 1.0 = pure depth-first (longest corridors)

    open_cells = [False] * (size * size)

    def grid_index(i: int, j: int) -> int:
        return (row0 + 2 * i) * size + (col0 + 2 * j)

    visited = [[False] * lattice for _ in range(lattice)]
    first = (rnd.randrange(lattice), rnd.randrange(lattice))
    visited[first[0]][first[1]] = True
    open_cells[grid_index(*first)] = True
    active = [first]
    while active:
        slot = len(active) - 1 if rnd.random() < newest_bias else rnd.randrange(len(active))
        i, j = active[slot]
        options = [
            (i + di, j + dj)
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= i + di < lattice and 0 <= j + dj < lattice and not visited[i + di][j + dj]
        ]
        if not options:
            active[slot] = active[-1]
            active.pop()
            continue
        ni, nj = options[rnd.randrange(len(options))]
        visited[ni][nj] = True
        open_cells[grid_index(ni, nj)] = True
        # The wall cell between the two lattice cells becomes a corridor.
        open_cells[(row0 + i + ni) * size + (col0 + j + nj)] = True
        active.append((ni, nj))
    return open_cells


def _make_one(size: int, min_len: int, rnd: random.Random) -> tuple[np.ndarray, np.ndarray, int] | None:
    """One maze (inputs, labels, path length) or None when this attempt was too short."""
    neighbours = _neighbours(size)
    passable = _carve_tree(size, rnd)
    open_list = [c for c, ok in enumerate(passable) if ok]

    # S: far end of a sweep from a random cell. G: random, far enough from S.
    sweep = _bfs(passable, open_list[rnd.randrange(len(open_list))], neighbours)
    start = max(range(len(sweep)), key=sweep.__getitem__)
    dist_s = _bfs(passable, start, neighbours)
    farthest = max(dist_s)
    need = max(min_len, int(np.ceil((0.6 + 0.4 * rnd.random()) * farthest)))
    if farthest < min_len:
        return None
    candidates = [c for c, d in enumerate(dist_s) if d >= need]
    goal = candidates[rnd.randrange(len(candidates))]
    dist_g = _bfs(passable, goal, neighbours)
    length = dist_s[goal]

    # Openings for variety, each kept only if it cannot make a competing S->G path.
    for _ in range(rnd.randrange(len(open_list) // 10 + 1)):
        cell = rnd.randrange(size * size)
        if passable[cell]:
            continue
        near = [u for u in neighbours[cell] if passable[u]]
        if not near:
            continue
        if len(near) == 1:  # a dead-end nook: distances only grow by one step
            passable[cell] = True
            dist_s[cell] = dist_s[near[0]] + 1
            dist_g[cell] = dist_g[near[0]] + 1
            continue
        through = min(dist_s[p] + dist_g[q] for p in near for q in near if p != q) + 2
        if through <= length:
            continue
        passable[cell] = True
        dist_s = _bfs(passable, start, neighbours)
        dist_g = _bfs(passable, goal, neighbours)

    # Walk back from G along strictly decreasing distance to S (unique by construction).
    path_cells = []
    cell = goal
    while dist_s[cell] > 1:
        cell = next(u for u in neighbours[cell] if dist_s[u] == dist_s[cell] - 1)
        path_cells.append(cell)
    return _finish(size, passable, start, goal, path_cells, length)


def _shortest_path(dist_s: list[int], goal: int, neighbours, rnd: random.Random, dist_g=None) -> list[int]:
    """One shortest path G -> S (cells in that order), each step back chosen at random among the
    neighbours one move closer to S (and, with `dist_g`, one move farther from G)."""
    path = [goal]
    while dist_s[path[-1]] > 0:
        cell = path[-1]
        steps_back = [u for u in neighbours[cell] if dist_s[u] == dist_s[cell] - 1
                      and (dist_g is None or dist_g[u] == dist_g[cell] + 1)]
        path.append(steps_back[rnd.randrange(len(steps_back))])
    return path


def _make_random(size: int, min_len: int, rnd: random.Random, wall_share: tuple[float, float]):
    """One random-wall maze (inputs, labels, path length), or None when this attempt failed."""
    neighbours = _neighbours(size)
    share = wall_share[0] + (wall_share[1] - wall_share[0]) * rnd.random()
    passable = (np.random.default_rng(rnd.getrandbits(64)).random(size * size) >= share).tolist()
    open_list = [c for c, ok in enumerate(passable) if ok]
    if len(open_list) <= min_len:
        return None
    sweep = _bfs(passable, open_list[rnd.randrange(len(open_list))], neighbours)
    start = max(range(len(sweep)), key=sweep.__getitem__)
    dist_s = _bfs(passable, start, neighbours)
    farthest = max(dist_s)
    if farthest < 2:
        return None
    need = int(np.ceil((0.6 + 0.4 * rnd.random()) * farthest))
    candidates = [c for c, d in enumerate(dist_s) if d >= need]
    goal = candidates[rnd.randrange(len(candidates))]

    # Too short: wall random cells of the current shortest path (never one whose wall would cut S
    # from G) until the threshold is reached, within a budget of extra walls.
    budget = max(4, len(open_list) // 8)
    bridges: set[int] = set()
    while dist_s[goal] < min_len:
        inner = [c for c in _shortest_path(dist_s, goal, neighbours, rnd)[1:-1] if c not in bridges]
        if not inner or budget == 0:
            return None
        cell = inner[rnd.randrange(len(inner))]
        passable[cell] = False
        trial = _bfs(passable, start, neighbours)
        if trial[goal] < 0:
            passable[cell] = True
            bridges.add(cell)
            continue
        dist_s = trial
        budget -= 1
    dist_g = _bfs(passable, goal, neighbours)
    length = dist_s[goal]

    # Keep one shortest path, wall the other cells of every shortest path.
    path = _shortest_path(dist_s, goal, neighbours, rnd, dist_g)
    kept = set(path)
    for cell in range(size * size):
        if passable[cell] and dist_s[cell] >= 0 and dist_g[cell] >= 0 and dist_s[cell] + dist_g[cell] == length and cell not in kept:
            passable[cell] = False
    return _finish(size, passable, start, goal, path[1:-1], length)


def _finish(size: int, passable: list[bool], start: int, goal: int, path_cells, length: int):
    """Token grids of a maze whose unique shortest path is `path_cells` (S and G excluded), re-checked."""
    inputs = np.where(np.array(passable), OPEN, WALL).astype(np.uint8)
    inputs[start] = START
    inputs[goal] = GOAL
    labels = inputs.copy()
    labels[list(path_cells)] = PATH
    checked_length, paths = shortest_path_count(inputs, size)
    if checked_length != length or paths != 1:  # cannot happen unless the logic above is broken
        raise AssertionError(f"maze generator produced length {checked_length} with {paths} shortest paths")
    return inputs, labels, length


def _maze_seed(seed: int, stream: int, index: int) -> int:
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def _check_request(count: int, size: int, min_path_length: int | None, style: str = "corridors",
                   wall_share: tuple[float, float] = DEFAULT_WALL_SHARE) -> int:
    if style not in STYLES:
        raise DataError("generate_mazes", f"style must be one of {', '.join(STYLES)}, got {style!r}")
    low, high = wall_share
    if not 0.0 <= low <= high < 1.0:
        raise DataError("generate_mazes", f"wall_share must be a range within [0, 1), got {wall_share!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise DataError("generate_mazes", f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if count < 0:
        raise DataError("generate_mazes", f"count must be >= 0, got {count}")
    min_len = default_min_path_length(size) if min_path_length is None else int(min_path_length)
    if min_len < 1:
        raise DataError("generate_mazes", f"min_path_length must be >= 1, got {min_len}")
    return min_len


def iter_mazes(size: int = 30, min_path_length: int | None = None, seed: int = 0, stream: int = 0,
               exclude: set[bytes] | None = None, style: str = "corridors",
               wall_share: tuple[float, float] = DEFAULT_WALL_SHARE):
    """Endless deterministic stream of (inputs, labels, path_length) with distinct mazes.

    Maze number i of (seed, stream, style) only depends on those; mazes whose dihedral
    `canonical_key` is in `exclude` (or already produced) are skipped, and `exclude` is extended.
    """
    min_len = _check_request(0, size, min_path_length, style, wall_share)
    seen = exclude if exclude is not None else set()
    index = 0
    misses = 0
    while True:
        rnd = random.Random(_maze_seed(seed, stream, index))
        index += 1
        if style == "corridors" or (style == "mixed" and rnd.random() < MIXED_CORRIDOR_SHARE):
            maze = _make_one(size, min_len, rnd)
        else:
            maze = _make_random(size, min_len, rnd, wall_share)
        key = None if maze is None else canonical_key(maze[0].reshape(size, size))
        if maze is None or key in seen:
            misses += 1
            if misses >= _MAX_TRIES_PER_MAZE:
                raise DataError("generate_mazes", f"no new {size}x{size} maze with a path of "
                                f">= {min_len} moves in {misses} attempts in a row (too few "
                                f"distinct mazes of that size, or the length is out of reach)")
            continue
        misses = 0
        seen.add(key)
        yield maze


def generate_mazes(count: int, size: int = 30, min_path_length: int | None = None, seed: int = 0,
                   *, stream: int = 0, exclude: set[bytes] | None = None,
                   return_lengths: bool = False, style: str = "corridors",
                   wall_share: tuple[float, float] = DEFAULT_WALL_SHARE):
    """`count` distinct mazes: (inputs uint8 [count, size*size], labels uint8 [count, size*size]).

    Deterministic in (seed, stream). Every maze has a unique shortest S->G path of at least
    `min_path_length` moves (default `default_min_path_length(size)`). With `return_lengths` a
    third int32 array holds each path length.
    """
    min_len = _check_request(count, size, min_path_length, style, wall_share)
    inputs = np.empty((count, size * size), np.uint8)
    labels = np.empty((count, size * size), np.uint8)
    lengths = np.empty(count, np.int32)
    stream_of_mazes = iter_mazes(size, min_len, seed, stream, exclude, style, wall_share)
    for row in range(count):
        inputs[row], labels[row], lengths[row] = next(stream_of_mazes)
    return (inputs, labels, lengths) if return_lengths else (inputs, labels)


def frame_mazes(grids: np.ndarray, size: int, new_size: int) -> np.ndarray:
    """Mazes of side `size` (rows of size*size tokens) inside a wall frame of side `new_size`: the walls
    are added below and to the right, so S, G and the unique shortest path stay as they were."""
    count = len(grids)
    framed = np.full((count, new_size, new_size), WALL, np.uint8)
    framed[:, :size, :size] = np.asarray(grids).reshape(count, size, size)
    return framed.reshape(count, new_size * new_size)


def check_maze_pair(question: np.ndarray, answer: np.ndarray, size: int | None = None,
                    where: str = "maze") -> int:
    """Check that `answer` solves `question`; return the path length in moves.

    Rules: tokens are walls/open/S/G in the question (plus 'o' in the answer); exactly one S and
    one G, at the same places in both; the answer equals the question except on open cells turned
    into 'o'; the 'o' cells form one simple path joining S to G with nothing left over. The path
    need not be the shortest one (external data is not required to be optimal).
    """
    q = _as_square(question, size, where).reshape(-1)
    a = _as_square(answer, size, where).reshape(-1)
    n = int(round(len(q) ** 0.5))
    if a.shape != q.shape:
        raise DataError(where, f"question has {q.size} cells but answer has {a.size}")
    bad_q = np.flatnonzero((q < WALL) | (q > GOAL))
    if len(bad_q):
        raise DataError(where, f"question cell {int(bad_q[0])} holds token {int(q[bad_q[0]])}, "
                        f"expected one of '#', ' ', 'S', 'G'")
    bad_a = np.flatnonzero((a < WALL) | (a > PATH))
    if len(bad_a):
        raise DataError(where, f"answer cell {int(bad_a[0])} holds token {int(a[bad_a[0]])}, "
                        f"expected one of '{CHARSET}'")
    start = _single_cell(q, START, f"{where} field 'question'")
    goal = _single_cell(q, GOAL, f"{where} field 'question'")
    if _single_cell(a, START, f"{where} field 'answer'") != start or _single_cell(a, GOAL, f"{where} field 'answer'") != goal:
        raise DataError(where, "answer moves S or G away from where the question has them")
    changed = np.flatnonzero((a != q) & ~((a == PATH) & (q == OPEN)))
    if len(changed):
        cell = int(changed[0])
        raise DataError(where, f"answer cell (row {cell // n}, col {cell % n}) is "
                        f"'{CHARSET[a[cell] - 1]}' but the question has '{CHARSET[q[cell] - 1]}' "
                        f"(only open cells may become 'o')")
    on_path = (a == PATH) | (a == START) | (a == GOAL)
    dist = _bfs(on_path.tolist(), start, _neighbours(n))
    path_cells = int((a == PATH).sum())
    if dist[goal] < 0:
        raise DataError(where, "the answer's 'o' cells do not connect S to G")
    if dist[goal] != path_cells + 1:
        raise DataError(where, f"the answer marks {path_cells} 'o' cells but its S->G path uses "
                        f"{dist[goal] - 1}; extra 'o' cells lie off the path")
    return dist[goal]
