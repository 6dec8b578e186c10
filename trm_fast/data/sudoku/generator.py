"""The seeded generator of unique minimal puzzles, the reference augmentation and the symmetry key
(see the package docstring)."""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

from trm_fast.data.errors import DataError
from trm_fast.data.sudoku.geometry import Geometry, _Tables, _tables, geometry, geometry_for_cells
from trm_fast.data.sudoku.solver import _propagate, _search, solve_sudoku

# Consecutive rejected candidates (too easy, or equivalent to one already chosen) before giving up.
MAX_MISSES_IN_A_ROW = 1000


def _random_solution(t: _Tables, cells: int, rnd: random.Random) -> list:
    solutions = []
    _search(t, [t.full] * cells, [0] * len(t.units), 1, [0], solutions, rnd)
    return [t.digit_of[m] for m in solutions[0]]


def _dig(t: _Tables, solution: list, rnd: random.Random) -> list:
    """Remove givens in a random order while the solution stays unique (a minimal puzzle)."""
    puzzle = solution[:]
    bits, cell_units, full = t.bits, t.cell_units, t.full
    placed = [0] * len(t.units)  # digits given in each unit
    for cell, digit in enumerate(puzzle):
        for unit in cell_units[cell]:
            placed[unit] |= bits[digit - 1]
    order = list(range(len(puzzle)))
    rnd.shuffle(order)
    for cell in order:
        digit = puzzle[cell]
        bit = bits[digit - 1]
        a, b, c = cell_units[cell]
        placed[a] ^= bit
        placed[b] ^= bit
        placed[c] ^= bit
        puzzle[cell] = 0
        # Is there a solution with another digit here? Candidates from the givens, `digit` excluded.
        if not full & ~(placed[a] | placed[b] | placed[c]) & ~bit:
            continue  # the peers' givens force `digit`: removal is safe
        cand, queue, possible = [], [], True
        for other, value in enumerate(puzzle):
            if value:
                cand.append(bits[value - 1])
                continue
            x, y, z = cell_units[other]
            mask = full & ~(placed[x] | placed[y] | placed[z])
            if other == cell:
                mask &= ~bit
            if not mask:
                possible = False
                break
            if not mask & (mask - 1):
                queue.append(other)
            cand.append(mask)
        # The givens' digits are already out of their peers' candidates: they start as solved.
        solved = placed[:]
        if possible and _propagate(t, cand, solved, queue) and _search(t, cand, solved, 1, [0], []):
            puzzle[cell] = digit  # another solution exists: keep the given
            placed[a] |= bit
            placed[b] |= bit
            placed[c] |= bit
    return puzzle


def _puzzle_seed(seed: int, stream: int, index: int) -> int:
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def make_puzzle(geom: Geometry, seed: int = 0, stream: int = 0, index: int = 0) -> tuple[list, list, int]:
    """Candidate number `index` of (seed, stream): (puzzle digits, solution digits, rating)."""
    t = _tables(geom)
    rnd = random.Random(_puzzle_seed(seed, stream, index))
    solution = _random_solution(t, geom.cells, rnd)
    puzzle = _dig(t, solution, rnd)
    result = solve_sudoku(puzzle, geom)
    if result.count != 1 or list(result.solution) != solution:  # cannot happen unless the code is broken
        raise AssertionError(f"sudoku generator made a puzzle with {result.count} solutions")
    return puzzle, solution, result.guesses


# ----------------------------------------------------------------------------------------------
# Symmetry: transforms, augmentation, canonical key


@dataclass
class Transforms:
    """A batch of Sudoku symmetries: new[i, j] = old'[rows[i], cols[j]] where old' is the grid,
    transposed first where `transpose`; then digit d becomes digits[d] (digits[0] = 0 keeps blanks)."""

    rows: np.ndarray  # [M, N] int
    cols: np.ndarray  # [M, N] int
    transpose: np.ndarray  # [M] bool
    digits: np.ndarray  # [M, N + 1] int

    def __len__(self) -> int:
        return len(self.rows)


def _grouped_permutations(rng: np.random.Generator, count: int, groups: int, per_group: int) -> np.ndarray:
    """[count, groups*per_group]: the groups in random order, each group's members in random order."""
    order = rng.permuted(np.tile(np.arange(groups), (count, 1)), axis=1)
    inside = rng.permuted(np.tile(np.arange(per_group), (count, groups, 1)), axis=2)
    return (order[:, :, None] * per_group + inside).reshape(count, groups * per_group)


def random_transforms(geom: Geometry, count: int, rng: np.random.Generator) -> Transforms:
    """`count` random symmetries as the reference augmentation draws them: digit relabelling,
    transpose with probability 1/2 (square boxes only), band / row-in-band and stack /
    column-in-stack shuffles."""
    R, C, N = geom.box_rows, geom.box_cols, geom.size
    transpose = rng.random(count) < 0.5
    if R != C:
        transpose[:] = False  # a transpose would turn R x C boxes into C x R ones
    rows = _grouped_permutations(rng, count, C, R)  # C bands of R rows
    cols = _grouped_permutations(rng, count, R, C)  # R stacks of C columns
    relabel = rng.permuted(np.tile(np.arange(1, N + 1), (count, 1)), axis=1)
    digits = np.concatenate([np.zeros((count, 1), np.int64), relabel], axis=1)
    return Transforms(rows, cols, transpose, digits)


def apply_transforms(grids: np.ndarray, transforms: Transforms, geom: Geometry) -> np.ndarray:
    """Transform k applied to grid k (digits, [M, N*N] -> [M, N*N] uint8)."""
    N = geom.size
    grids = np.asarray(grids).reshape(len(transforms), N * N)
    rows, cols = transforms.rows[:, :, None], transforms.cols[:, None, :]
    source = np.where(transforms.transpose[:, None, None], cols * N + rows, rows * N + cols).reshape(len(grids), -1)
    moved = np.take_along_axis(grids.astype(np.int64), source, axis=1)
    return np.take_along_axis(transforms.digits, moved, axis=1).astype(np.uint8)


def augment_sudokus(questions: np.ndarray, solutions: np.ndarray, num_aug: int, geom: Geometry,
                    rng: np.random.Generator, chunk: int = 1 << 16):
    """(inputs, labels) digits [P*(1+num_aug), N*N]: each puzzle followed by `num_aug` random images
    of it; one transform per copy, applied to question and answer alike."""
    questions = np.asarray(questions, np.uint8).reshape(len(questions), -1)
    solutions = np.asarray(solutions, np.uint8).reshape(len(solutions), -1)
    copies = 1 + int(num_aug)
    total = len(questions) * copies
    inputs = np.empty((total, geom.cells), np.uint8)
    labels = np.empty((total, geom.cells), np.uint8)
    per_chunk = max(1, chunk // copies)
    for begin in range(0, len(questions), per_chunk):
        q = questions[begin:begin + per_chunk]
        a = solutions[begin:begin + per_chunk]
        rows = slice(begin * copies, (begin + len(q)) * copies)
        block_in = np.repeat(q, copies, axis=0)
        block_lb = np.repeat(a, copies, axis=0)
        if num_aug:
            moved = np.ones(len(block_in), bool)
            moved[::copies] = False  # the original stays first, untouched
            transforms = random_transforms(geom, int(moved.sum()), rng)
            block_in[moved] = apply_transforms(block_in[moved], transforms, geom)
            block_lb[moved] = apply_transforms(block_lb[moved], transforms, geom)
        inputs[rows] = block_in
        labels[rows] = block_lb
    return inputs, labels


def canonical_key(digits, geom: Geometry | None = None) -> int:
    """A key that is equal for two puzzles whenever one is an image of the other under the Sudoku
    symmetries (any digit relabelling, band and row-in-band, stack and column-in-stack
    permutations, and the transpose when the boxes are square).

    How: the puzzle as a typed graph (given cells linked to their row, column and digit; rows to
    their band, columns to their stack), coloured by Weisfeiler-Lehman refinement until the colour
    classes stop splitting; the key hashes the final multiset of colours, the smaller of the
    puzzle's and its transpose's when R == C. A symmetry is exactly a type-preserving isomorphism
    of that graph, so equivalent puzzles always get the same key: de-duplication and the train/test
    check miss no equivalent pair. The converse is not guaranteed (refinement is not a complete
    isomorphism test); a collision between inequivalent puzzles only drops a puzzle that could
    have been kept."""
    grid = np.asarray(digits).reshape(-1)
    if geom is None:
        geom = geometry_for_cells(grid.size)
    N = geom.size
    grid = grid.reshape(N, N)
    key = _refined_key(grid, geom.box_rows, geom.box_cols)
    if geom.box_rows == geom.box_cols:
        key = min(key, _refined_key(grid.T, geom.box_rows, geom.box_cols))
    return key


def _refined_key(grid: np.ndarray, R: int, C: int) -> int:
    N = R * C
    givens = [(int(r), int(c), int(grid[r, c])) for r, c in zip(*np.nonzero(grid))]
    row_cells = [[] for _ in range(N)]
    col_cells = [[] for _ in range(N)]
    digit_cells = [[] for _ in range(N + 1)]
    for i, (r, c, d) in enumerate(givens):
        row_cells[r].append(i)
        col_cells[c].append(i)
        digit_cells[d].append(i)
    # Initial colours by node type; the same constants for every puzzle.
    cell_col = [11] * len(givens)
    row_col, col_col = [12] * N, [13] * N
    band_col, stack_col = [14] * C, [15] * R
    digit_col = [16] * (N + 1)
    classes = -1
    for _ in range(N * N + 4):
        new_cell = [hash((cell_col[i], row_col[r], col_col[c], digit_col[d])) for i, (r, c, d) in enumerate(givens)]
        new_row = [hash((row_col[r], band_col[r // R], tuple(sorted(cell_col[i] for i in row_cells[r]))))
                   for r in range(N)]
        new_col = [hash((col_col[c], stack_col[c // C], tuple(sorted(cell_col[i] for i in col_cells[c]))))
                   for c in range(N)]
        new_band = [hash((band_col[b], tuple(sorted(row_col[b * R:(b + 1) * R])))) for b in range(C)]
        new_stack = [hash((stack_col[s], tuple(sorted(col_col[s * C:(s + 1) * C])))) for s in range(R)]
        new_digit = [hash((digit_col[d], tuple(sorted(cell_col[i] for i in digit_cells[d])))) for d in range(N + 1)]
        cell_col, row_col, col_col = new_cell, new_row, new_col
        band_col, stack_col, digit_col = new_band, new_stack, new_digit
        count = len(set(cell_col)) + len(set(row_col)) + len(set(col_col)) + len(set(band_col)) + \
            len(set(stack_col)) + len(set(digit_col[1:]))
        if count == classes:
            break
        classes = count
    return hash(tuple(sorted(cell_col)) + tuple(sorted(row_col)) + tuple(sorted(col_col)) + tuple(sorted(band_col))
                + tuple(sorted(stack_col)) + tuple(sorted(digit_col[1:])))


# ----------------------------------------------------------------------------------------------
# The generator's stream of distinct puzzles


def _candidates(box_rows: int, box_cols: int, seed: int, stream: int, start: int, stop: int, min_rating: int):
    """Candidates start..stop-1: (puzzle bytes, solution bytes, rating, key or None when too easy)."""
    geom = Geometry(box_rows, box_cols)
    out = []
    for index in range(start, stop):
        puzzle, solution, rating = make_puzzle(geom, seed, stream, index)
        key = canonical_key(np.array(puzzle, np.uint8), geom) if rating >= min_rating else None
        out.append((bytes(puzzle), bytes(solution), rating, key))
    return out


def _candidate_chunks(geom: Geometry, seed: int, stream: int, min_rating: int, workers: int, chunk: int):
    """Candidates in index order, computed `workers` processes at a time (the order and content do
    not depend on `workers`)."""
    args = (geom.box_rows, geom.box_cols, int(seed), int(stream))
    if workers <= 1:
        start = 0
        while True:
            yield from _candidates(*args, start, start + chunk, min_rating)
            start += chunk
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        pending = deque()
        start = 0
        while True:
            while len(pending) < 2 * workers:
                pending.append(pool.apply_async(_candidates, (*args, start, start + chunk, min_rating)))
                start += chunk
            yield from pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


def iter_sudokus(geom: Geometry, min_rating: int = 0, seed: int = 0, stream: int = 0,
                 exclude: set | None = None, workers: int = 1):
    """Endless deterministic stream of distinct (puzzle digits, solution digits, rating).

    Candidate i of (seed, stream) depends on those only; candidates rated below `min_rating` or
    whose `canonical_key` is in `exclude` (or already produced) are skipped; `exclude` is extended."""
    seen = exclude if exclude is not None else set()
    chunk = 16 if geom.size >= 8 else 64
    misses = 0
    for puzzle, solution, rating, key in _candidate_chunks(geom, seed, stream, min_rating, workers, chunk):
        if key is None or key in seen:
            misses += 1
            if misses >= MAX_MISSES_IN_A_ROW:
                raise DataError("generate_sudokus", f"no new {geom} Sudoku rated >= {min_rating} in {misses} "
                                "candidates in a row (too few distinct puzzles of that size, or the rating is out of reach)")
            continue
        misses = 0
        seen.add(key)
        yield np.frombuffer(puzzle, np.uint8), np.frombuffer(solution, np.uint8), rating


def generate_sudokus(count: int, size: int = 9, box_rows: int | None = None, box_cols: int | None = None,
                     min_rating: int = 0, seed: int = 0, *, stream: int = 0, exclude: set | None = None,
                     workers: int = 1, return_ratings: bool = False):
    """`count` distinct puzzles with a unique solution: (questions, solutions) as digits, uint8
    [count, N*N] (0 = blank), plus int32 ratings with `return_ratings`. Deterministic in (seed,
    stream, size, boxes, min_rating, exclude); `workers` processes only change the speed."""
    geom = geometry(size, box_rows, box_cols)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise DataError("generate_sudokus", f"count must be an integer >= 0, got {count!r}")
    if min_rating < 0:
        raise DataError("generate_sudokus", f"min_rating must be >= 0, got {min_rating}")
    if workers < 1:
        raise DataError("generate_sudokus", f"workers must be >= 1, got {workers}")
    questions = np.zeros((count, geom.cells), np.uint8)
    solutions = np.zeros((count, geom.cells), np.uint8)
    ratings = np.zeros(count, np.int32)
    if count:
        stream_of_puzzles = iter_sudokus(geom, min_rating, seed, stream, exclude, workers if count > 32 else 1)
        for row in range(count):
            questions[row], solutions[row], ratings[row] = next(stream_of_puzzles)
        stream_of_puzzles.close()
    return (questions, solutions, ratings) if return_ratings else (questions, solutions)
