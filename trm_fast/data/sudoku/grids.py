"""Sudoku tokens <-> digits, rule checks of puzzle / answer pairs, and text pictures."""
from __future__ import annotations

import numpy as np

from trm_fast.data.errors import DataError
from trm_fast.data.sudoku.geometry import BLANK, DIGIT_OFFSET, PAD, Geometry, _tables, geometry, geometry_for_cells


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
