"""Maze CSV files as published for Maze-Hard: header `source,question,answer,rating`, then one row
per maze whose question and answer are N*N-character strings over "# SGo" in row-major order.

`read_maze_csv` checks every row (characters, length, squareness, one S and one G, answer
consistent with the question, see `maze.check_maze_pair`) and converts to token arrays;
`write_maze_csv` writes the same format; `convert_maze_csv` turns a train/test pair of CSV files
into a dataset folder exactly like the reference maze builder does.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trm_fast.data import maze as maze_gen
from trm_fast.data.dataset import write_identifiers, write_maze_split
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


def read_maze_csv(path: str | os.PathLike, size: int | None = None, check_answers: bool = True) -> MazeRecords:
    """Read a maze CSV file. `size` (grid side) is taken from the first row when not given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file is missing")
    inputs, labels, sources, ratings = [], [], [], []
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
                source, question, answer, rating = row
                if size is None:
                    size = _side_of(len(question), f"{where} field 'question'")
                for name, text in (("question", question), ("answer", answer)):
                    if len(text) != size * size:
                        raise DataError(f"{where} field '{name}'", f"has {len(text)} characters, expected "
                                        f"{size * size} ({size}x{size})")
                q = maze_string_to_tokens(question, f"{where} field 'question'")
                a = maze_string_to_tokens(answer, f"{where} field 'answer'")
                if check_answers:
                    maze_gen.check_maze_pair(q, a, size, where)
                inputs.append(q)
                labels.append(a)
                sources.append(source)
                ratings.append(rating)
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}", f"malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc})") from None
    if size is None:
        raise DataError(path, "no maze rows after the header")
    shape = (len(inputs), size * size)
    return MazeRecords(
        inputs=np.stack(inputs) if inputs else np.zeros(shape, np.uint8),
        labels=np.stack(labels) if labels else np.zeros(shape, np.uint8),
        size=size, sources=sources, ratings=ratings,
    )


def write_maze_csv(path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray,
                   sources: list[str] | str = "trm-fast", ratings: list | None = None) -> Path:
    """Write mazes (token arrays [count, N*N] or [count, N, N]) as a Maze-Hard style CSV file.

    `ratings` defaults to each maze's path length in moves (number of 'o' cells + 1).
    """
    path = Path(path)
    inputs = np.asarray(inputs)
    labels = np.asarray(labels)
    count = len(inputs)
    inputs = inputs.reshape(count, -1)
    labels = labels.reshape(count, -1)
    if labels.shape != inputs.shape:
        raise DataError(path, f"labels shape {labels.shape} differs from inputs {inputs.shape}")
    if isinstance(sources, str):
        sources = [sources] * count
    if ratings is None:
        ratings = [int((row == maze_gen.PATH).sum()) + 1 for row in labels]
    if len(sources) != count or len(ratings) != count:
        raise DataError(path, f"need one source and rating per maze ({count}), got {len(sources)} and {len(ratings)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(count):
            writer.writerow([sources[i], tokens_to_maze_string(inputs[i], f"{path} maze {i} question"),
                             tokens_to_maze_string(labels[i], f"{path} maze {i} answer"), ratings[i]])
    return path


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
