"""Maze CSV files as published for Maze-Hard: header `source,question,answer,rating`, then one row
per maze whose question and answer are N*N-character strings over "# SGo" in row-major order.
Sudoku CSV files as published for Sudoku-Extreme: the same header, N*N-character strings of digits
with '.' (or '0') for blanks (`read_sudoku_csv`, `write_sudoku_csv`, `convert_sudoku_csv`).

`read_maze_csv` checks every row (characters, length, squareness, one S and one G, answer
consistent with the question, see `maze.check_maze_pair`) and converts to token arrays;
`write_maze_csv` writes the same format; `convert_maze_csv` turns a train/test pair of CSV files
into a dataset folder exactly like the reference maze builder does.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm_fast.data import maze as maze_gen
from trm_fast.data import sudoku as sudoku_gen
from trm_fast.data.dataset import write_identifiers
from trm_fast.data.maze_folders import write_maze_split
from trm_fast.data.errors import DataError

HEADER = ("source", "question", "answer", "rating")

# byte value -> token id (0 marks "not a maze character")
_CHAR_TO_TOKEN = np.zeros(256, np.uint8)
for _token, _char in enumerate(maze_gen.CHARSET, start=1):
    _CHAR_TO_TOKEN[ord(_char)] = _token
_TOKEN_TO_CHAR = np.frombuffer(("?" + maze_gen.CHARSET).encode(), np.uint8)


@dataclass
class MazeRecords:
    """Mazes read from a CSV file: uint8 token arrays [count, size*size] plus the other columns."""

    inputs: np.ndarray
    labels: np.ndarray
    size: int
    sources: list[str] = field(default_factory=list)
    ratings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


def maze_string_to_tokens(text: str, where: str = "maze string") -> np.ndarray:
    """Characters "# SGo" -> tokens 1..5 (uint8, flat)."""
    try:
        raw = np.frombuffer(text.encode("ascii"), np.uint8)
    except UnicodeEncodeError:
        bad = next(ch for ch in text if ord(ch) > 127)
        raise DataError(where, f"character {bad!r} at position {text.index(bad)} is not one of "
                        f"{maze_gen.CHARSET!r}") from None
    tokens = _CHAR_TO_TOKEN[raw]
    if len(tokens) and not tokens.all():
        pos = int(np.flatnonzero(tokens == 0)[0])
        raise DataError(where, f"character {text[pos]!r} at position {pos} is not one of {maze_gen.CHARSET!r}")
    return tokens


def tokens_to_maze_string(tokens: np.ndarray, where: str = "maze tokens") -> str:
    """Tokens 1..5 -> the "# SGo" string (PAD or unknown tokens are an error)."""
    flat = np.asarray(tokens).reshape(-1)
    bad = np.flatnonzero((flat < 1) | (flat > len(maze_gen.CHARSET)))
    if len(bad):
        raise DataError(where, f"token {int(flat[bad[0]])} at position {int(bad[0])} has no maze "
                        f"character (expected 1..{len(maze_gen.CHARSET)})")
    return _TOKEN_TO_CHAR[flat.astype(np.intp)].tobytes().decode("ascii")


def _side_of(length: int, where: str) -> int:
    side = int(round(length ** 0.5))
    if side * side != length or side == 0:
        raise DataError(where, f"has {length} characters, which is not N*N for a square maze")
    return side


def _csv_rows(path: Path):
    """(where, line, source, question, answer, rating) of every data row of a `source,question,answer,rating`
    file; `where` is "<path> line <line>". A missing file, a wrong header, a wrong field count, malformed
    CSV or non-UTF-8 text is a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(path, "file is missing")
    # utf-8-sig: a byte-order mark at the start (as spreadsheet programs write it) is dropped, so it
    # does not end up glued to the first header field; files without one read the same as plain UTF-8.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip().lower() for h in header) != HEADER:
                raise DataError(f"{path} line 1", f"expected the header {','.join(HEADER)}, got {header!r}")
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if not row:
                    continue  # blank line
                if len(row) != len(HEADER):
                    raise DataError(where, f"expected {len(HEADER)} fields ({','.join(HEADER)}), got {len(row)}")
                yield (where, reader.line_num, *row)
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}", f"malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc})") from None


def _check_lengths(where: str, question: str, answer: str, cells: int, shape: str) -> None:
    for name, text in (("question", question), ("answer", answer)):
        if len(text) != cells:
            raise DataError(f"{where} field '{name}'", f"has {len(text)} characters, expected {cells} ({shape})")


def read_maze_csv(path: str | os.PathLike, size: int | None = None, check_answers: bool = True) -> MazeRecords:
    """Read a maze CSV file. `size` (grid side) is taken from the first row when not given."""
    path = Path(path)
    inputs, labels, sources, ratings = [], [], [], []
    for where, _, source, question, answer, rating in _csv_rows(path):
        if size is None:
            size = _side_of(len(question), f"{where} field 'question'")
        _check_lengths(where, question, answer, size * size, f"{size}x{size}")
        q = maze_string_to_tokens(question, f"{where} field 'question'")
        a = maze_string_to_tokens(answer, f"{where} field 'answer'")
        if check_answers:
            maze_gen.check_maze_pair(q, a, size, where)
        inputs.append(q)
        labels.append(a)
        sources.append(source)
        ratings.append(rating)
    if size is None:
        raise DataError(path, "no maze rows after the header")
    shape = (len(inputs), size * size)
    return MazeRecords(
        inputs=np.stack(inputs) if inputs else np.zeros(shape, np.uint8),
        labels=np.stack(labels) if labels else np.zeros(shape, np.uint8),
        size=size, sources=sources, ratings=ratings,
    )


def _flat_pairs(path: Path, inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Questions and answers as [count, cells] arrays of the same shape (a DataError otherwise)."""
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    inputs, labels = inputs.reshape(len(inputs), -1), labels.reshape(len(labels), -1)
    if labels.shape != inputs.shape:
        raise DataError(path, f"labels shape {labels.shape} differs from inputs {inputs.shape}")
    return inputs, labels


def _write_rows(path: Path, sources: list[str] | str, questions: list[str], answers: list[str], ratings: list,
                noun: str) -> Path:
    """Write `source,question,answer,rating` rows (one source for all when `sources` is a string)."""
    count = len(questions)
    if isinstance(sources, str):
        sources = [sources] * count
    if len(sources) != count or len(ratings) != count:
        raise DataError(path, f"need one source and rating per {noun} ({count}), got {len(sources)} and {len(ratings)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(zip(sources, questions, answers, ratings))
    return path


def write_maze_csv(path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray,
                   sources: list[str] | str = "trm-fast", ratings: list | None = None) -> Path:
    """Write mazes (token arrays [count, N*N] or [count, N, N]) as a Maze-Hard style CSV file.

    `ratings` defaults to each maze's path length in moves (number of 'o' cells + 1).
    """
    path = Path(path)
    inputs, labels = _flat_pairs(path, inputs, labels)
    if ratings is None:
        ratings = [int((row == maze_gen.PATH).sum()) + 1 for row in labels]
    questions = [tokens_to_maze_string(row, f"{path} maze {i} question") for i, row in enumerate(inputs)]
    answers = [tokens_to_maze_string(row, f"{path} maze {i} answer") for i, row in enumerate(labels)]
    return _write_rows(path, sources, questions, answers, ratings, "maze")


def convert_maze_csv(train_csv: str | os.PathLike, test_csv: str | os.PathLike,
                     out_dir: str | os.PathLike, augment: bool = False) -> Path:
    """Dataset folder from Maze-Hard style train/test CSV files (8 dihedral images on train
    when `augment`), with the reference maze builder's layout and metadata."""
    train = read_maze_csv(train_csv)
    test = read_maze_csv(test_csv, size=train.size)
    write_maze_split(out_dir, "train", train.inputs, train.labels, train.size, augment)
    write_maze_split(out_dir, "test", test.inputs, test.labels, test.size, False)
    write_identifiers(out_dir, ["<blank>"])
    return Path(out_dir)


# ----------------------------------------------------------------------------------------------
# Sudoku CSV files (Sudoku-Extreme: `source,question,answer,rating`, 81-character strings, '.' blank)

_SUDOKU_CHAR_TO_DIGIT = np.full(256, 255, np.uint8)
_SUDOKU_CHAR_TO_DIGIT[ord(".")] = 0
for _digit in range(10):
    _SUDOKU_CHAR_TO_DIGIT[ord(str(_digit))] = _digit


@dataclass
class SudokuRecords:
    """Puzzles read from a Sudoku CSV file: TOKENS [count, N*N] (blank 1, digit d -> d + 1) as in
    the dataset folders, the grid shape, and the other columns."""

    inputs: np.ndarray
    labels: np.ndarray
    geometry: "sudoku_gen.Geometry"
    sources: list[str] = field(default_factory=list)
    ratings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def size(self) -> int:
        return self.geometry.size

    @property
    def questions(self) -> np.ndarray:
        """Digits (0 = blank)."""
        return sudoku_gen.tokens_to_digits(self.inputs)

    @property
    def solutions(self) -> np.ndarray:
        return sudoku_gen.tokens_to_digits(self.labels)


def _sudoku_digits(texts: list[str], lines: list[int], path: Path, name: str, geom) -> np.ndarray:
    """Strings of one column -> digits [M, N*N]; DataError at the first character that is not a
    digit 1..N, '.' or '0'."""
    cells = geom.cells
    try:
        raw = np.frombuffer("".join(texts).encode("ascii"), np.uint8).reshape(len(texts), cells)
    except UnicodeEncodeError:
        row = next(i for i, text in enumerate(texts) if not text.isascii())
        pos = next(i for i, ch in enumerate(texts[row]) if ord(ch) > 127)
        raise DataError(f"{path} line {lines[row]} field '{name}'", f"character {texts[row][pos]!r} at position "
                        f"{pos} is not a digit 1-{geom.size}, '.' or '0'") from None
    digits = _SUDOKU_CHAR_TO_DIGIT[raw]
    bad = digits > geom.size
    if bad.any():
        row, pos = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path} line {lines[row]} field '{name}'", f"character {chr(raw[row, pos])!r} at position "
                        f"{pos} is not a digit 1-{geom.size}, '.' or '0'")
    return digits


def is_sudoku_csv(path: str | os.PathLike) -> bool:
    """Whether the first data row of a `source,question,answer,rating` file looks like a Sudoku
    (digits and '.') rather than a maze ("# SGo")."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if row:
                    question = row[1] if len(row) > 1 else ""
                    return bool(question) and all(ch in ".0123456789" for ch in question)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return False


def read_sudoku_csv(path: str | os.PathLike, size: int | None = None, box_rows: int | None = None,
                    box_cols: int | None = None, check_answers: bool = True) -> SudokuRecords:
    """Read a Sudoku CSV file (header `source,question,answer,rating`; question and answer are N*N
    characters in row-major order, '.' or '0' blank). The grid side comes from the first row unless
    `size` is given; boxes default to `sudoku.default_box`. Every row is checked: field count,
    length, characters, givens that repeat a digit in a row, column or box, and (with
    `check_answers`) an answer that changes a given, repeats a digit or leaves a blank. Any problem
    is one DataError naming the file and line."""
    path = Path(path)
    geom = sudoku_gen.geometry(size, box_rows, box_cols) if size is not None else None
    questions, answers, lines, sources, ratings = [], [], [], [], []
    for where, line, source, question, answer, rating in _csv_rows(path):
        if geom is None:
            geom = sudoku_gen.geometry_for_cells(len(question), box_rows, box_cols, f"{where} field 'question'")
        _check_lengths(where, question, answer, geom.cells, f"{geom.size}x{geom.size}")
        questions.append(question)
        answers.append(answer)
        lines.append(line)
        sources.append(source)
        ratings.append(rating)
    if geom is None:
        raise DataError(path, "no Sudoku rows after the header")
    q = _sudoku_digits(questions, lines, path, "question", geom)
    a = _sudoku_digits(answers, lines, path, "answer", geom)
    found = sudoku_gen.first_bad_pair(q, a if check_answers else None, geom)
    if found is not None:
        row, name, problem = found
        raise DataError(f"{path} line {lines[row]} field '{name}'", problem)
    return SudokuRecords(inputs=sudoku_gen.digits_to_tokens(q), labels=sudoku_gen.digits_to_tokens(a), geometry=geom,
                         sources=sources, ratings=ratings)


def write_sudoku_csv(path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray,
                     sources: list[str] | str = "trm-fast", ratings: list | None = None,
                     geometry=None) -> Path:
    """Write Sudoku puzzles (TOKENS [count, N*N], as in the dataset folders) as a Sudoku-Extreme
    style CSV file, '.' for blanks. `ratings` defaults to the solver's rating of each question
    (guesses to prove the solution unique; empty when it is not unique)."""
    path = Path(path)
    inputs, labels = _flat_pairs(path, inputs, labels)
    geom = geometry or sudoku_gen.geometry_for_cells(inputs.shape[1], where=path)
    questions = sudoku_gen.tokens_to_digits(inputs, f"{path} inputs")
    solutions = sudoku_gen.tokens_to_digits(labels, f"{path} labels")
    if ratings is None:
        ratings = []
        for question in questions:
            result = sudoku_gen.solve_sudoku(question, geom)
            ratings.append(result.guesses if result.count == 1 else "")
    chars = np.frombuffer(b".123456789", np.uint8)
    question_texts = [chars[row].tobytes().decode("ascii") for row in questions]
    answer_texts = [chars[row].tobytes().decode("ascii") for row in solutions]
    return _write_rows(path, sources, question_texts, answer_texts, ratings, "puzzle")


def convert_sudoku_csv(train_csv: str | os.PathLike, test_csv: str | os.PathLike, out_dir: str | os.PathLike,
                       num_aug: int = 0, seed: int = 0, subsample: int | None = None) -> Path:
    """Dataset folder from Sudoku-Extreme style train/test CSV files, laid out as the reference
    Sudoku builder does: `subsample` training puzzles drawn at random (seeded; all when None), each
    followed by `num_aug` augmented copies; the test split unaugmented."""
    train = read_sudoku_csv(train_csv)
    test = read_sudoku_csv(test_csv, size=train.size, box_rows=train.geometry.box_rows,
                           box_cols=train.geometry.box_cols)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    questions, solutions = train.questions, train.solutions
    if subsample is not None and subsample < len(questions):
        keep = np.sort(rng.choice(len(questions), size=int(subsample), replace=False))
        questions, solutions = questions[keep], solutions[keep]
    geom = train.geometry
    out = Path(out_dir)
    sudoku_gen.write_sudoku_split(out, "train", questions, solutions, geom, num_aug=int(num_aug), rng=rng)
    sudoku_gen.write_sudoku_split(out, "test", test.questions, test.solutions, geom, num_aug=0)
    write_identifiers(out, ["<blank>"])
    from trm_fast.data.dataset import BUILD_INFO_FILE

    (out / BUILD_INFO_FILE).write_text(json.dumps(dict(
        kind="sudoku", source="csv", size=geom.size, box_rows=geom.box_rows, box_cols=geom.box_cols,
        train_csv=str(train_csv), test_csv=str(test_csv), num_aug=int(num_aug), seed=int(seed), subsample=subsample),
        indent=1))
    return out
