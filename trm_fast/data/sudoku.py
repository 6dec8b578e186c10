"""Sudoku: an exact bit-mask solver, a seeded generator of unique puzzles, the reference augmentation,
and dataset folders in the reference Sudoku-Extreme layout.

Grids are N x N with boxes of R rows x C columns (N = R*C <= 9; 9x9 with 3x3 boxes, 6x6 with 2x3
boxes, 4x4 with 2x2 boxes, also 8x8 with 2x4 boxes). The rows fall into C *bands* of R rows, the
columns into R *stacks* of C columns. Puzzles and solutions are held as DIGITS (uint8, 0 = blank,
1..N) in row-major order; the dataset folders hold TOKENS as the reference builder writes them:
PAD 0, blank 1, digit d -> d + 1 (vocabulary N + 2: 11 for 9x9), every cell supervised.

Solver (`solve_sudoku`, `count_solutions`). Candidates of a cell are an int bit mask (digit d at
bit 5*(d-1), so that summing the masks of a unit counts how many cells still allow each digit, in
one C-level `sum`). Constraint propagation applies naked singles (a cell with one candidate: its
digit is removed from its peers) and hidden singles (a digit with one place left in a row, column or
box goes there) to a fixed point; then the solver branches on the unsolved cell with the fewest
candidates (lowest index on ties), trying its digits in increasing order, depth first, and stops at
`limit` solutions. Its *rating* of a puzzle is the number of guesses (trial assignments at branch
points) of the complete search that counts up to 2 solutions, i.e. the whole search tree that
proves uniqueness: 0 = solved by singles alone; each branch point adds its number of candidates.
The rating depends on the cell order (the tie-break), so a symmetric image of a puzzle may rate a
little differently.

Generator (`generate_sudokus`). Puzzle i of (seed, stream) depends on those only: a random full
grid (the search above from the empty grid, digit order shuffled at every branch), then the givens
are removed one by one in a random order, each removal kept only when the puzzle stays uniquely
solvable (the removed digit v of cell c leaves the solution unique exactly when no solution has
c != v: one search, usually settled by propagation alone), so every puzzle is minimal. Puzzles
rated below `min_rating` are dropped (a "hard" set: `min_rating=10` keeps about the hardest 15% of
such minimal 9x9 puzzles, which need several levels of guessing; 40% of them need no guess).
Puzzles equivalent to an earlier one (or to one in `exclude`) under the Sudoku symmetries are
dropped: see `canonical_key`.

Speed (one process, pure Python; this project's 2-core AMD EPYC machine, `nice`d beside a training
run on the other core, so a lower bound), puzzles kept per second including de-duplication:
    9x9, min_rating 0:   ~67/s   (mean 24.4 givens, mean rating 4.0)
    9x9, min_rating 10:  ~11/s   (mean rating 16; 15% of candidates pass)
    6x6, min_rating 0:   ~480/s  (mean 10.1 givens; 95% rate 0)
(`trm-fast data sudoku --out DIR --num-train 1000 --num-test 1000 --num-aug 0 --workers 1
[--min-rating 10]` prints the rate.) Generation is deterministic per candidate index, so it runs in
`workers` processes (spawned) with the same result; `auto_workers` uses every core for large sets:
one core makes 1000 + 1000 hard 9x9 puzzles in about 3 minutes, so N cores in about 3/N minutes
plus ~3 s of process start-up (an estimate from the per-core rate; multi-process runs were only
checked for identical output, not timed, here). Profiling: ~80% of the time is the removal checks
of the digging step, nearly all of it in the propagation. Tried and dropped for being no faster:
removing blocks of givens at once (galloping), naked singles only, MRV by C-level byte scans,
solution-guided value order. A numpy propagation over many puzzles was not tried: it would revisit
all N x N x N candidates per pass where the scalar loop touches only the changed cells.

Augmentation (`augment_sudokus`, as the reference builder): every copy relabels the digits at
random, transposes with probability 1/2 (only when R == C), shuffles the bands and the rows within
each band, and the stacks and the columns within each stack; the same transform maps the question
and its answer. `num_aug` copies per puzzle follow the original.

Folders (`build_sudoku_dataset`): one puzzle identifier (0); every example its own puzzle; a group
per generated puzzle holding the original and its augmented copies (train) or the original only
(test), exactly the reference `build_sudoku_dataset.py` layout; `trm_fast_build.json` records the
settings (kind "sudoku" and the box shape, which `sudoku_geometry_of` reads back).
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path

import numpy as np

from trm_fast.data.errors import DataError

PAD, BLANK = 0, 1  # tokens; digit d is token d + 1
DIGIT_OFFSET = 1
MAX_SIZE = 9
SUPPORTED_SIZES = (4, 6, 8, 9)
BUILD_VERSION = 1
# Consecutive rejected candidates (too easy, or equivalent to one already chosen) before giving up.
MAX_MISSES_IN_A_ROW = 1000

_FIELD = 5  # bits per digit in a candidate mask (counts up to 15 fit in a field)


# ----------------------------------------------------------------------------------------------
# Geometry


def default_box(size: int) -> tuple[int, int]:
    """(box rows, box cols) for an N x N grid: the most square R x C with R <= C (9: 3x3, 6: 2x3)."""
    rows = max(r for r in range(1, int(size ** 0.5) + 1) if size % r == 0)
    return rows, size // rows


@dataclass(frozen=True)
class Geometry:
    """A grid shape: N x N cells (N = box_rows * box_cols) in boxes of box_rows x box_cols."""

    box_rows: int
    box_cols: int

    @property
    def size(self) -> int:
        return self.box_rows * self.box_cols

    @property
    def cells(self) -> int:
        return self.size * self.size

    def __str__(self) -> str:
        return f"{self.size}x{self.size} (boxes {self.box_rows}x{self.box_cols})"


@lru_cache(maxsize=None)
def _tables(geom: Geometry):
    """Everything the solver needs for a geometry, computed once."""
    R, C, N = geom.box_rows, geom.box_cols, geom.size
    rows = [tuple(r * N + c for c in range(N)) for r in range(N)]
    cols = [tuple(r * N + c for r in range(N)) for c in range(N)]
    boxes = [tuple((band * R + i) * N + stack * C + j for i in range(R) for j in range(C))
             for band in range(C) for stack in range(R)]
    units = tuple(rows + cols + boxes)
    cell_units = tuple(tuple(k for k, unit in enumerate(units) if cell in unit) for cell in range(N * N))
    peers = tuple(tuple(sorted(set().union(*(units[k] for k in cell_units[cell])) - {cell}))
                  for cell in range(N * N))
    bits = tuple(1 << (_FIELD * d) for d in range(N))
    ones = sum(bits)
    return _Tables(units, tuple(itemgetter(*u) for u in units), cell_units, peers, bits, ones,
                   ones << (_FIELD - 1), {b: d + 1 for d, b in enumerate(bits)})


@dataclass(frozen=True)
class _Tables:
    units: tuple
    getters: tuple
    cell_units: tuple
    peers: tuple
    bits: tuple  # candidate bit of digit d + 1
    full: int  # all digits allowed (also the "one of each" constant of the counting trick)
    high: int  # the top bit of every field
    digit_of: dict  # single-candidate mask -> digit


def geometry(size: int = 9, box_rows: int | None = None, box_cols: int | None = None) -> Geometry:
    """Check a grid shape: N <= 9, boxes of R x C with R*C = N and R, C >= 2 (default `default_box`)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 4 <= size <= MAX_SIZE:
        raise DataError("sudoku", f"size must be an integer from 4 to {MAX_SIZE}, got {size!r}")
    size = int(size)
    if box_rows is None and box_cols is None:
        box_rows, box_cols = default_box(size)
    elif box_rows is None:
        box_rows = size // box_cols if box_cols and size % box_cols == 0 else 0
    elif box_cols is None:
        box_cols = size // box_rows if box_rows and size % box_rows == 0 else 0
    if not box_rows or not box_cols or box_rows * box_cols != size or min(box_rows, box_cols) < 2:
        raise DataError("sudoku", f"boxes of {box_rows}x{box_cols} do not tile a {size}x{size} grid "
                        "(need rows x cols = size, both >= 2)")
    return Geometry(int(box_rows), int(box_cols))


def geometry_for_cells(cells: int, box_rows: int | None = None, box_cols: int | None = None,
                       where: str = "sudoku") -> Geometry:
    """The geometry of a flat grid of `cells` = N*N cells."""
    side = int(round(cells ** 0.5))
    if side * side != cells or not 4 <= side <= MAX_SIZE:
        raise DataError(where, f"has {cells} cells, expected N*N for a Sudoku with N from 4 to {MAX_SIZE} (81 for 9x9)")
    try:
        return geometry(side, box_rows, box_cols)
    except DataError as error:
        raise DataError(where, error.problem) from None


# ----------------------------------------------------------------------------------------------
# Solver


def _propagate(t: _Tables, cand: list, solved: list, queue: list) -> bool:
    """Naked and hidden singles to a fixed point. `cand[cell]` are candidate masks, `solved[unit]`
    the digits already placed (and removed from the peers) in each unit, `queue` the cells that
    became single and still need their digit removed from their peers. False on a contradiction."""
    peers, cell_units, high, full = t.peers, t.cell_units, t.high, t.full
    while True:
        while queue:
            cell = queue.pop()
            bit = cand[cell]
            a, b, c = cell_units[cell]
            solved[a] |= bit
            solved[b] |= bit
            solved[c] |= bit
            for peer in peers[cell]:
                mask = cand[peer]
                if mask & bit:
                    mask ^= bit
                    if not mask:
                        return False
                    cand[peer] = mask
                    if not mask & (mask - 1):
                        queue.append(peer)
        # Hidden singles: the per-digit counts of a unit in one sum; a field of 0 means a digit has
        # no place left (contradiction), a field of 1 a digit with exactly one place.
        for k, (unit, get) in enumerate(zip(t.units, t.getters)):
            counts = sum(get(cand))
            if ((counts | high) - full) & high != high:
                return False
            others = counts ^ full  # fields equal to 1 become 0
            single = ((high & ~((others | high) - full)) >> (_FIELD - 1)) & ~solved[k]
            if single:
                for cell in unit:
                    found = cand[cell] & single
                    if found:
                        if found & (found - 1):
                            return False  # two digits need this cell
                        cand[cell] = found
                        queue.append(cell)
                        single ^= found
                        if not single:
                            break
        if not queue:
            return True


def _search(t: _Tables, cand: list, solved: list, limit: int, stats: list, solutions: list,
            rnd: random.Random | None = None) -> int:
    """Depth-first search below a propagated state; returns the number of solutions found (<= limit)."""
    best, best_count = -1, 99
    for cell, mask in enumerate(cand):
        if mask & (mask - 1):
            count = mask.bit_count()
            if count < best_count:
                best, best_count = cell, count
                if count == 2:
                    break
    if best < 0:
        solutions.append(cand)
        return 1
    mask = cand[best]
    options = []
    while mask:
        bit = mask & -mask
        options.append(bit)
        mask ^= bit
    if rnd is not None:
        rnd.shuffle(options)
    found = 0
    for bit in options:
        stats[0] += 1
        child, child_solved = cand[:], solved[:]
        child[best] = bit
        if _propagate(t, child, child_solved, [best]):
            found += _search(t, child, child_solved, limit - found, stats, solutions, rnd)
            if found >= limit:
                break
    return found


def _start(t: _Tables, digits) -> tuple[list, list, list]:
    cand = [t.full] * len(digits)
    queue = []
    for cell, digit in enumerate(digits):
        if digit:
            cand[cell] = t.bits[digit - 1]
            queue.append(cell)
    return cand, [0] * len(t.units), queue


@dataclass
class SolveResult:
    count: int  # solutions found, at most the limit
    guesses: int  # trial assignments made by the search (the rating when limit >= 2 and count == 1)
    solution: np.ndarray | None  # digits of the first solution found


def _as_digits(grid, geom: Geometry | None, where: str) -> tuple[list, Geometry]:
    flat = np.asarray(grid).reshape(-1)
    if geom is None:
        geom = geometry_for_cells(flat.size, where=where)
    if flat.size != geom.cells:
        raise DataError(where, f"expected {geom.cells} cells for a {geom}, got {flat.size}")
    if flat.size and (flat.min() < 0 or flat.max() > geom.size):
        raise DataError(where, f"digits must lie in 0..{geom.size} (0 = blank), got {flat.min()}..{flat.max()}")
    return [int(v) for v in flat], geom


def solve_sudoku(digits, geom: Geometry | None = None, limit: int = 2) -> SolveResult:
    """Solve a puzzle given as digits (flat or 2-D, 0 = blank); count solutions up to `limit`.

    Givens that break a rule give count 0. With the default limit 2, `count == 1` means the
    solution is unique and `guesses` is the puzzle's rating."""
    values, geom = _as_digits(digits, geom, "sudoku")
    t = _tables(geom)
    cand, solved, queue = _start(t, values)
    stats, solutions = [0], []
    if not _propagate(t, cand, solved, queue):
        return SolveResult(0, 0, None)
    count = _search(t, cand, solved, limit, stats, solutions)
    solution = None
    if solutions:
        solution = np.array([t.digit_of[m] for m in solutions[0]], np.uint8)
    return SolveResult(count, stats[0], solution)


def count_solutions(digits, geom: Geometry | None = None, limit: int = 2) -> int:
    return solve_sudoku(digits, geom, limit).count


def sudoku_rating(digits, geom: Geometry | None = None) -> int:
    """Guesses the solver needs to prove the puzzle's solution unique (0: singles suffice).
    DataError when the puzzle does not have exactly one solution."""
    result = solve_sudoku(digits, geom, limit=2)
    if result.count != 1:
        raise DataError("sudoku", f"the puzzle has {'no' if result.count == 0 else 'more than one'} solution")
    return result.guesses


# ----------------------------------------------------------------------------------------------
# Generation


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


# ----------------------------------------------------------------------------------------------
# Tokens, checks and pictures


def digits_to_tokens(digits) -> np.ndarray:
    """Digits (0 = blank) -> tokens (blank 1, digit d -> d + 1), uint8."""
    return np.asarray(digits).astype(np.uint8) + np.uint8(DIGIT_OFFSET)


def tokens_to_digits(tokens, where: str = "sudoku tokens") -> np.ndarray:
    """Tokens -> digits (0 = blank); PAD is an error."""
    tokens = np.asarray(tokens)
    if tokens.size and tokens.min() < BLANK:
        raise DataError(where, "holds PAD tokens (0) where a blank (1) or a digit (d + 1) was expected")
    return tokens.astype(np.uint8) - np.uint8(DIGIT_OFFSET)


def rule_violation(digits, geom: Geometry, complete: bool = False) -> str | None:
    """The first broken Sudoku rule of one grid of digits (a digit twice in a row, column or box;
    with `complete`, also a blank), as text, or None. Rows, columns and boxes are numbered from 1
    (boxes row by row)."""
    return _rule_violations(np.asarray(digits).reshape(1, -1), geom, complete).get(0)


def _rule_violations(grids: np.ndarray, geom: Geometry, complete: bool) -> dict:
    """{row: first broken rule as text} for the grids of [M, N*N] digits that break one (vectorised)."""
    t = _tables(geom)
    N = geom.size
    units = np.array(t.units)  # [3N, N]
    kinds = ("row", "column", "box")
    problems: dict = {}
    for begin in range(0, len(grids), 1 << 14):
        chunk = np.asarray(grids[begin:begin + (1 << 14)])
        ordered = np.sort(chunk[:, units], axis=2)  # [M, 3N, N]
        repeated = (ordered[:, :, 1:] == ordered[:, :, :-1]) & (ordered[:, :, 1:] > 0)
        blank = chunk == 0 if complete else np.zeros(chunk.shape, bool)
        for m in np.flatnonzero(repeated.any(axis=(1, 2)) | blank.any(axis=1)):
            if blank[m].any():
                cell = int(np.flatnonzero(blank[m])[0])
                problems[begin + int(m)] = f"leaves row {cell // N + 1} column {cell % N + 1} blank"
                continue
            unit, pos = (int(v) for v in np.argwhere(repeated[m])[0])
            digit = int(ordered[m, unit, pos + 1])
            problems[begin + int(m)] = f"repeats digit {digit} in {kinds[unit // N]} {unit % N + 1}"
    return problems


def check_sudoku_pair(question, answer, geom: Geometry | None = None, where: str = "sudoku") -> None:
    """Digits: the question breaks no rule, the answer is a complete valid grid that keeps every
    given. DataError naming `where` otherwise."""
    q = np.asarray(question).reshape(1, -1)
    a = np.asarray(answer).reshape(1, -1)
    if geom is None:
        geom = geometry_for_cells(q.size, where=where)
    if a.shape != q.shape:
        raise DataError(where, f"question has {q.shape[1]} cells but answer has {a.shape[1]}")
    found = first_bad_pair(q, a, geom)
    if found is not None:
        _row, field, problem = found
        raise DataError(f"{where} field '{field}'", problem)


def first_bad_pair(questions: np.ndarray, answers: np.ndarray | None, geom: Geometry):
    """(row, field, problem) of the first pair of digit grids [M, N*N] that breaks a rule (givens
    repeating a digit in a row, column or box; an answer that changes a given, repeats a digit or
    leaves a blank), or None. With `answers` None only the questions are checked."""
    N = geom.size
    q_problems = _rule_violations(questions, geom, complete=False)
    if answers is None:
        answers = questions  # no answer problems: the givens unchanged, and blanks allowed below
        a_problems = {}
    else:
        a_problems = _rule_violations(answers, geom, complete=True)
    changed = (questions != 0) & (answers != questions)
    changed_rows = np.flatnonzero(changed.any(axis=1))
    rows = sorted(set(q_problems) | set(a_problems) | {int(m) for m in changed_rows[:1]})
    if rows:
        m = rows[0]
        if m in q_problems:
            return m, "question", f"the givens break a Sudoku rule: {q_problems[m]}"
        if changed[m].any():
            cell = int(np.flatnonzero(changed[m])[0])
            return m, "answer", (f"changes the given {int(questions[m, cell])} at row {cell // N + 1} column "
                                 f"{cell % N + 1} to {int(answers[m, cell])}")
        return m, "answer", f"is not a solved Sudoku: it {a_problems[m]}"
    return None


def render_sudoku(tokens_or_digits, size: int | None = None, marks=None, *, digits: bool = False,
                  geom: Geometry | None = None) -> str:
    """Text grid with box separators; blanks as '.', PAD as '?'.

    `tokens_or_digits`: a string of digit characters ('.' or '0' blank), or an integer array of
    TOKENS (blank 1, digit d -> d + 1), or of digits (0 = blank) with `digits=True`; flat or 2-D.
    `marks` (same number of cells, truthy = marked) puts a '*' after a cell, e.g. a wrong answer."""
    if isinstance(tokens_or_digits, str):
        text = tokens_or_digits
        chars = ["." if ch in ".0" else ch for ch in text]
    else:
        values = np.asarray(tokens_or_digits).reshape(-1).astype(np.int64)
        cells = values.size
        side = size or int(round(cells ** 0.5))
        top = side if digits else side + DIGIT_OFFSET
        if values.size and (values.min() < 0 or values.max() > top):
            kind = "digits" if digits else "tokens"
            raise DataError("sudoku", f"{kind} must lie in [0, {top}], got {values.min()}..{values.max()}")
        if digits:
            chars = ["." if v == 0 else str(v) for v in values]
        else:
            chars = ["?" if v == PAD else "." if v == BLANK else str(v - DIGIT_OFFSET) for v in values]
    if geom is None:
        geom = geometry(size) if size else geometry_for_cells(len(chars))
    if len(chars) != geom.cells:
        raise DataError("sudoku", f"expected {geom.cells} cells for a {geom}, got {len(chars)}")
    marked = [False] * geom.cells if marks is None else [bool(m) for m in np.asarray(marks).reshape(-1)]
    N, R, C = geom.size, geom.box_rows, geom.box_cols
    lines = []
    for r in range(N):
        if r and r % R == 0:
            lines.append("+-".join("-" * (2 * C) for _ in range(R))[:-1])
        boxes = []
        for s in range(R):
            boxes.append("".join(chars[r * N + c] + ("*" if marked[r * N + c] else " ")
                                 for c in range(s * C, (s + 1) * C)))
        lines.append("| ".join(boxes).rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Dataset folders in the reference layout


def grouped_sudoku_examples(questions: np.ndarray, solutions: np.ndarray, geom: Geometry, num_aug: int = 0,
                            rng: np.random.Generator | None = None) -> dict:
    """Arrays for `write_split` from digit grids, as the reference Sudoku builder lays them out: a
    group per puzzle holding the original then `num_aug` augmented copies, every example its own
    puzzle, identifier 0; tokens blank 1, digit d -> d + 1."""
    count = len(questions)
    if num_aug:
        if rng is None:
            raise DataError("sudoku", "augmentation needs a random generator")
        inputs, labels = augment_sudokus(questions, solutions, num_aug, geom, rng)
    else:
        inputs = np.asarray(questions, np.uint8).reshape(count, -1)
        labels = np.asarray(solutions, np.uint8).reshape(count, -1)
    examples = len(inputs)
    return dict(
        inputs=digits_to_tokens(inputs), labels=digits_to_tokens(labels),
        puzzle_identifiers=np.zeros(examples, np.int32),
        puzzle_indices=np.arange(examples + 1, dtype=np.int32),
        group_indices=np.arange(0, examples + 1, 1 + int(num_aug), dtype=np.int32),
    )


def write_sudoku_split(directory, split: str, questions: np.ndarray, solutions: np.ndarray, geom: Geometry,
                       num_aug: int = 0, rng: np.random.Generator | None = None):
    """Write digit grids as one split with the reference Sudoku metadata (vocab N + 2, PAD 0 also
    the ignore label, one identifier)."""
    from trm_fast.data.dataset import write_split

    return write_split(directory, split, **grouped_sudoku_examples(questions, solutions, geom, num_aug, rng),
                       vocab_size=geom.size + 2, pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0,
                       num_puzzle_identifiers=1)


def auto_workers(total: int) -> int:
    """Processes for building `total` puzzles: 1 for small jobs (process start-up costs ~2 s), else
    every core (at most 16)."""
    return 1 if total < 400 else max(1, min(os.cpu_count() or 1, 16))


def build_sudoku_dataset(out_dir, size: int = 9, num_train: int = 1000, num_test: int = 1000, num_aug: int = 1000,
                         min_rating: int = 0, seed: int = 0, box_rows: int | None = None, box_cols: int | None = None,
                         workers: int | None = 1, log=None) -> Path:
    """Generate a Sudoku dataset folder in the reference layout, or reuse a matching one.

    Test puzzles come first (stream 1), then training puzzles (stream 0) skipping anything equivalent
    to a test puzzle, so no test puzzle is a symmetric image of a training puzzle or of any of its
    augmented copies. Training puzzles get `num_aug` augmented copies each (seeded), the test split
    none. The settings are recorded in `trm_fast_build.json`; a folder whose record matches is
    returned untouched, any other content is replaced; written under a temporary name and renamed
    into place. `workers` (None: `auto_workers`) only changes the speed, never the content."""
    from trm_fast.data.dataset import _build_info_matches, building_folder, write_identifiers

    geom = geometry(size, box_rows, box_cols)
    for name, value in (("num_train", num_train), ("num_test", num_test), ("num_aug", num_aug), ("min_rating", min_rating)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DataError("build_sudoku_dataset", f"{name} must be an integer >= 0, got {value!r}")
    out = Path(out_dir)
    params = dict(kind="sudoku", version=BUILD_VERSION, size=geom.size, box_rows=geom.box_rows,
                  box_cols=geom.box_cols, num_train=int(num_train), num_test=int(num_test), num_aug=int(num_aug),
                  min_rating=int(min_rating), seed=int(seed))
    if _build_info_matches(out, params):
        return out
    if workers is None:
        workers = auto_workers(int(num_train) + int(num_test))
    if log is not None:
        log(f"generating {num_test} test + {num_train} train {geom} Sudoku puzzles (min rating {min_rating}) "
            f"into {out} with {workers} process(es)")
    started = time.monotonic()
    seen: set = set()
    common = dict(size=geom.size, box_rows=geom.box_rows, box_cols=geom.box_cols, min_rating=int(min_rating),
                  seed=int(seed), exclude=seen, workers=workers)
    test = generate_sudokus(int(num_test), stream=1, **common)
    train = generate_sudokus(int(num_train), stream=0, **common)
    if log is not None:
        seconds = time.monotonic() - started
        log(f"generated {num_train + num_test} puzzles in {seconds:.1f}s "
            f"({(num_train + num_test) / max(seconds, 1e-9):.0f}/s); writing {num_aug} augmented copies of each training puzzle")

    with building_folder(out, params) as tmp:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
        write_sudoku_split(tmp, "train", *train, geom=geom, num_aug=int(num_aug), rng=rng)
        write_sudoku_split(tmp, "test", *test, geom=geom, num_aug=0)
        write_identifiers(tmp, ["<blank>"])
    return out


def read_build_info(folder) -> dict | None:
    """The `trm_fast_build.json` record of a dataset folder (or of the folder above a split
    folder), or None when there is none or it cannot be read."""
    from trm_fast.data.dataset import BUILD_INFO_FILE

    folder = Path(folder)
    for candidate in (folder / BUILD_INFO_FILE, folder.parent / BUILD_INFO_FILE):
        try:
            info = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        return info if isinstance(info, dict) else None
    return None


def sudoku_geometry_of(folder, vocab_size: int | None = None, seq_len: int | None = None) -> Geometry | None:
    """The Sudoku geometry of a dataset folder: from its build record when it has one (kind
    "sudoku"), else from the metadata as the reference builder writes it (vocabulary N + 2 over
    N*N cells, N in 4, 6, 8, 9, default boxes); None for anything else."""
    info = read_build_info(folder) if folder is not None else None
    if info is not None and "kind" in info:
        if info.get("kind") != "sudoku":
            return None
        try:
            return geometry(int(info["size"]), info.get("box_rows"), info.get("box_cols"))
        except (KeyError, TypeError, ValueError):
            return None
    if vocab_size is None or seq_len is None:
        return None
    side = int(round(seq_len ** 0.5))
    if side * side == seq_len and side in SUPPORTED_SIZES and vocab_size == side + 2:
        return geometry(side)
    return None
