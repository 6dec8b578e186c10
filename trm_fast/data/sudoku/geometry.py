"""Sudoku grid shapes (N x N in R x C boxes), the token scheme, and the per-shape tables the
solver and the symmetry code share."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter

import numpy as np

from trm_fast.data.errors import DataError

PAD, BLANK = 0, 1  # tokens; digit d is token d + 1
DIGIT_OFFSET = 1
MAX_SIZE = 9
SUPPORTED_SIZES = (4, 6, 8, 9)

_FIELD = 5  # bits per digit in a candidate mask (counts up to 15 fit in a field)


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
