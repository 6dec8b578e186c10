"""The exact bit-mask Sudoku solver and its rating (see the package docstring for the method)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from trm_fast.data.errors import DataError
from trm_fast.data.sudoku.geometry import _FIELD, Geometry, _Tables, _tables, geometry_for_cells


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
