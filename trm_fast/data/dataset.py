"""The reference project's dataset folder format: read, validate, write, and cache built folders
(a kind's builder writes into `building_folder`; the maze one is in trm_fast.data.maze_folders).

Layout (as written by the reference `dataset/build_*_dataset.py` builders)::

    <dir>/identifiers.json                 list of puzzle identifier names, index = identifier id
    <dir>/{train,test}/dataset.json        metadata (`PuzzleMetadata` fields)
    <dir>/{train,test}/<set>__inputs.npy   (N, seq_len) integer tokens (uint8 in practice)
    <dir>/{train,test}/<set>__labels.npy   (N, seq_len) integer tokens
    <dir>/{train,test}/<set>__puzzle_identifiers.npy   int32 (P,)   identifier of each puzzle
    <dir>/{train,test}/<set>__puzzle_indices.npy       int32 (P+1,) first example of each puzzle
    <dir>/{train,test}/<set>__group_indices.npy        int32 (G+1,) first puzzle of each group
(<set> is "all" for every reference builder.) Extra files and extra metadata keys are ignored.

Known quirks of reference folders that load unchanged here: `total_puzzles` may be missing (older
builders) or may hold the number of GROUPS rather than puzzles (the maze and sudoku builders with
augmentation write `len(group_indices) - 1`); both are accepted. Folders written here store the
number of puzzles.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trm_fast.data.errors import DataError

SPLITS = ("train", "test")
ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
BUILD_INFO_FILE = "trm_fast_build.json"
_VALUE_CHECK_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class PuzzleMetadata:
    """Contents of `dataset.json` (field names and meaning as in the reference project)."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: tuple[str, ...] = ("all",)

    def to_json(self) -> dict:
        data = asdict(self)
        data["sets"] = list(self.sets)
        return data

    @classmethod
    def from_json(cls, data: object, where: str | os.PathLike) -> "PuzzleMetadata":
        """Parse and type-check a dataset.json object; `total_puzzles` may be absent (-1 then)."""
        if not isinstance(data, dict):
            raise DataError(where, f"expected a JSON object, got {type(data).__name__}")

        def integer(name: str, optional: bool = False) -> int | None:
            if name not in data:
                raise DataError(where, f"missing field '{name}'")
            value = data[name]
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(where, f"field '{name}' must be an integer, got {value!r}")
            return value

        mean = data.get("mean_puzzle_examples")
        if "mean_puzzle_examples" not in data:
            raise DataError(where, "missing field 'mean_puzzle_examples'")
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise DataError(where, f"field 'mean_puzzle_examples' must be a number, got {mean!r}")
        sets = data.get("sets")
        if "sets" not in data:
            raise DataError(where, "missing field 'sets'")
        if (not isinstance(sets, list) or not sets or len(set(sets)) != len(sets)
                or not all(isinstance(s, str) and s and "/" not in s for s in sets)):
            raise DataError(where, f"field 'sets' must be a non-empty list of distinct names, got {sets!r}")
        meta = cls(
            pad_id=integer("pad_id"),
            ignore_label_id=integer("ignore_label_id", optional=True),
            blank_identifier_id=integer("blank_identifier_id"),
            vocab_size=integer("vocab_size"),
            seq_len=integer("seq_len"),
            num_puzzle_identifiers=integer("num_puzzle_identifiers"),
            total_groups=integer("total_groups"),
            mean_puzzle_examples=float(mean),
            total_puzzles=integer("total_puzzles") if "total_puzzles" in data else -1,
            sets=tuple(sets),
        )
        meta.check_ranges(where)
        return meta

    def check_ranges(self, where: str | os.PathLike) -> None:
        """Checks that need no arrays."""
        if self.vocab_size < 1:
            raise DataError(where, f"field 'vocab_size' must be >= 1, got {self.vocab_size}")
        if self.seq_len < 1:
            raise DataError(where, f"field 'seq_len' must be >= 1, got {self.seq_len}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise DataError(where, f"field 'pad_id' must lie in [0, vocab_size={self.vocab_size}), got {self.pad_id}")
        if self.num_puzzle_identifiers < 1:
            raise DataError(where, f"field 'num_puzzle_identifiers' must be >= 1, got {self.num_puzzle_identifiers}")
        if not 0 <= self.blank_identifier_id < self.num_puzzle_identifiers:
            raise DataError(where, f"field 'blank_identifier_id' must lie in [0, num_puzzle_identifiers="
                            f"{self.num_puzzle_identifiers}), got {self.blank_identifier_id}")
        if self.total_groups < 0:
            raise DataError(where, f"field 'total_groups' must be >= 0, got {self.total_groups}")


@dataclass
class PuzzleSet:
    """The arrays of one set of a split. inputs/labels are read-only memory maps."""

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_puzzles(self) -> int:
        return int(self.puzzle_indices.shape[0] - 1)

    @property
    def num_groups(self) -> int:
        return int(self.group_indices.shape[0] - 1)


@dataclass
class PuzzleSplit:
    """One split (train or test) of a dataset folder: metadata plus its sets."""

    path: Path
    split: str
    metadata: PuzzleMetadata
    sets: dict[str, PuzzleSet]
    identifiers: list[str] | None = field(default=None, repr=False)

    def get_set(self, name: str | None = None) -> PuzzleSet:
        """The named set, or the only one when `name` is None."""
        if name is None:
            if len(self.sets) != 1:
                raise DataError(self.path, f"split has sets {list(self.sets)}; name the one to use")
            return next(iter(self.sets.values()))
        if name not in self.sets:
            raise DataError(self.path, f"no set '{name}' (sets: {list(self.sets)})")
        return self.sets[name]

    # Shortcuts for the usual single-set split.
    @property
    def inputs(self) -> np.ndarray:
        return self.get_set().inputs

    @property
    def labels(self) -> np.ndarray:
        return self.get_set().labels

    @property
    def puzzle_identifiers(self) -> np.ndarray:
        return self.get_set().puzzle_identifiers

    @property
    def puzzle_indices(self) -> np.ndarray:
        return self.get_set().puzzle_indices

    @property
    def group_indices(self) -> np.ndarray:
        return self.get_set().group_indices


# ----------------------------------------------------------------------------------------------
# Validation


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file is missing")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated data, bad header, pickled objects
        raise DataError(path, f"not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(path, "expected one .npy array")
    return array


def _check_index_array(array: np.ndarray, end: int, where: Path, counts: str, of: str) -> None:
    """An offsets array: 1-D integers, starts at 0, strictly increasing, ends at `end`."""
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(where, f"expected a 1-D integer array, got {array.dtype} shape {array.shape}")
    if len(array) < 1 or array[0] != 0:
        raise DataError(where, f"must start with 0 (offsets of {counts} into {of})")
    steps = np.diff(array.astype(np.int64))
    if np.any(steps <= 0):
        bad = int(np.flatnonzero(steps <= 0)[0])
        raise DataError(where, f"must be strictly increasing: entry {bad + 1} is {int(array[bad + 1])} "
                        f"after {int(array[bad])} (every one of {counts} needs at least one of {of})")
    if int(array[-1]) != end:
        raise DataError(where, f"last entry is {int(array[-1])} but there are {end} {of}")


def _check_token_values(array: np.ndarray, lo: int, hi: int, where: Path, extra: int | None = None) -> None:
    """All values in [lo, hi) (or equal to `extra`), scanned in chunks so memory maps stay cheap."""
    for begin in range(0, array.shape[0], _VALUE_CHECK_CHUNK_ROWS):
        chunk = np.asarray(array[begin:begin + _VALUE_CHECK_CHUNK_ROWS])
        bad = (chunk < lo) | (chunk >= hi)
        if extra is not None:
            bad &= chunk != extra
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise DataError(where, f"row {begin + row} position {col} holds {int(chunk[row, col])}, "
                            f"expected a token in [{lo}, {hi})")


def validate_set(meta: PuzzleMetadata, arrays: PuzzleSet, split_dir: Path, check_values: bool = True) -> None:
    """Check one set's arrays against each other and against the metadata."""
    files = {name: split_dir / f"{arrays.name}__{name}.npy" for name in ARRAY_FIELDS}
    for name in ("inputs", "labels"):
        array = getattr(arrays, name)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise DataError(files[name], f"expected a 2-D integer array, got {array.dtype} shape {array.shape}")
        if array.shape[1] != meta.seq_len:
            raise DataError(files[name], f"rows have {array.shape[1]} tokens but dataset.json "
                            f"field 'seq_len' is {meta.seq_len}")
    if arrays.labels.shape != arrays.inputs.shape:
        raise DataError(files["labels"], f"shape {arrays.labels.shape} differs from inputs {arrays.inputs.shape}")
    _check_index_array(arrays.puzzle_indices, arrays.num_examples, files["puzzle_indices"], "puzzles", "examples")
    _check_index_array(arrays.group_indices, arrays.num_puzzles, files["group_indices"], "groups", "puzzles")
    ids = arrays.puzzle_identifiers
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(files["puzzle_identifiers"], f"expected a 1-D integer array, got {ids.dtype} shape {ids.shape}")
    if len(ids) != arrays.num_puzzles:
        raise DataError(files["puzzle_identifiers"], f"has {len(ids)} entries but puzzle_indices "
                        f"describes {arrays.num_puzzles} puzzles")
    if len(ids) and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        raise DataError(files["puzzle_identifiers"], f"values {int(ids.min())}..{int(ids.max())} fall outside "
                        f"[0, num_puzzle_identifiers={meta.num_puzzle_identifiers})")
    if check_values:
        _check_token_values(arrays.inputs, 0, meta.vocab_size, files["inputs"])
        _check_token_values(arrays.labels, 0, meta.vocab_size, files["labels"], extra=meta.ignore_label_id)


def _check_totals(meta: PuzzleMetadata, sets: list[PuzzleSet], where: Path) -> None:
    groups = sum(s.num_groups for s in sets)
    puzzles = sum(s.num_puzzles for s in sets)
    examples = sum(s.num_examples for s in sets)
    if meta.total_groups != groups:
        raise DataError(where, f"field 'total_groups' is {meta.total_groups} but group_indices describe {groups} groups")
    # total_puzzles: the true count, or the group count that reference builders write (see module doc).
    if meta.total_puzzles not in (-1, puzzles, groups):
        raise DataError(where, f"field 'total_puzzles' is {meta.total_puzzles} but puzzle_indices "
                        f"describe {puzzles} puzzles")
    mean = examples / puzzles if puzzles else 0.0
    if not math.isclose(meta.mean_puzzle_examples, mean, rel_tol=1e-6, abs_tol=1e-9):
        raise DataError(where, f"field 'mean_puzzle_examples' is {meta.mean_puzzle_examples} but the "
                        f"arrays hold {examples} examples in {puzzles} puzzles ({mean:.6g} each)")


def _read_identifiers(root: Path, meta: PuzzleMetadata) -> list[str] | None:
    path = root / "identifiers.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(path, "expected a JSON list of identifier names")
    if len(names) != meta.num_puzzle_identifiers:
        raise DataError(path, f"lists {len(names)} names but dataset.json field "
                        f"'num_puzzle_identifiers' is {meta.num_puzzle_identifiers}")
    return names


def load_split(directory: str | os.PathLike, split: str, check_values: bool = True) -> PuzzleSplit:
    """Load and validate `<directory>/<split>`; inputs/labels stay memory-mapped.

    `check_values` scans every token against vocab_size (chunked; turn it off for huge folders).
    Any inconsistency raises `DataError` naming the file and field.
    """
    root = Path(directory)
    split_dir = root / split
    meta_path = split_dir / "dataset.json"
    if not meta_path.is_file():
        raise DataError(meta_path, f"file is missing (is {root} a dataset folder with a '{split}' split?)")
    try:
        raw = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(meta_path, f"not valid JSON ({exc})") from None
    meta = PuzzleMetadata.from_json(raw, meta_path)

    sets: dict[str, PuzzleSet] = {}
    for set_name in meta.sets:
        loaded = {name: _load_npy(split_dir / f"{set_name}__{name}.npy", mmap=name in ("inputs", "labels"))
                  for name in ARRAY_FIELDS}
        arrays = PuzzleSet(name=set_name, **loaded)
        validate_set(meta, arrays, split_dir, check_values)
        sets[set_name] = arrays
    _check_totals(meta, list(sets.values()), meta_path)
    return PuzzleSplit(path=split_dir, split=split, metadata=meta, sets=sets,
                       identifiers=_read_identifiers(root, meta))


# ----------------------------------------------------------------------------------------------
# Writing


def _token_array(tokens: np.ndarray) -> np.ndarray:
    """uint8 as the reference writes, unless the values do not fit (then int32)."""
    array = np.asarray(tokens)
    if np.issubdtype(array.dtype, np.integer) and (array.size == 0 or (array.min() >= 0 and array.max() < 256)):
        return np.ascontiguousarray(array, dtype=np.uint8)
    return np.ascontiguousarray(array, dtype=np.int32) if np.issubdtype(array.dtype, np.integer) else array


def write_split(directory: str | os.PathLike, split: str, inputs: np.ndarray, labels: np.ndarray,
                puzzle_identifiers: np.ndarray, puzzle_indices: np.ndarray, group_indices: np.ndarray,
                *, vocab_size: int, pad_id: int = 0, ignore_label_id: int | None = 0,
                blank_identifier_id: int = 0, num_puzzle_identifiers: int = 1,
                set_name: str = "all") -> PuzzleMetadata:
    """Write one split in the reference layout; the metadata counts are derived from the arrays.

    Everything is validated first (same checks as `load_split`), so a bad call writes nothing.
    """
    split_dir = Path(directory) / split
    arrays = PuzzleSet(
        name=set_name,
        inputs=_token_array(inputs),
        labels=_token_array(labels),
        puzzle_identifiers=np.asarray(puzzle_identifiers, dtype=np.int32),
        puzzle_indices=np.asarray(puzzle_indices, dtype=np.int32),
        group_indices=np.asarray(group_indices, dtype=np.int32),
    )
    if np.asarray(inputs).ndim != 2:
        raise DataError(split_dir / f"{set_name}__inputs.npy", f"expected (N, seq_len), got shape {np.shape(inputs)}")
    num_puzzles = max(arrays.num_puzzles, 0)
    meta = PuzzleMetadata(
        pad_id=pad_id, ignore_label_id=ignore_label_id, blank_identifier_id=blank_identifier_id,
        vocab_size=vocab_size, seq_len=int(arrays.inputs.shape[1]),
        num_puzzle_identifiers=num_puzzle_identifiers, total_groups=max(arrays.num_groups, 0),
        mean_puzzle_examples=arrays.num_examples / num_puzzles if num_puzzles else 0.0,
        total_puzzles=num_puzzles, sets=(set_name,),
    )
    meta.check_ranges(split_dir / "dataset.json")
    validate_set(meta, arrays, split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_FIELDS:
        np.save(split_dir / f"{set_name}__{name}.npy", getattr(arrays, name))
    (split_dir / "dataset.json").write_text(json.dumps(meta.to_json()))
    return meta


def write_identifiers(directory: str | os.PathLike, names: list[str]) -> None:
    """`identifiers.json`: name of each puzzle identifier (index 0 is "<blank>" by convention)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "identifiers.json").write_text(json.dumps(list(names)))


# ----------------------------------------------------------------------------------------------
# Cached, atomic dataset folders (the builders of trm_fast.data.maze_folders and trm_fast.data.sudoku)


def _build_info_matches(folder: Path, params: dict) -> bool:
    try:
        recorded = json.loads((folder / BUILD_INFO_FILE).read_text())
        if recorded != params:
            return False
        for split in SPLITS:
            load_split(folder, split, check_values=False)
        return True
    except (OSError, ValueError):  # DataError is a ValueError
        return False


def _publish(tmp: Path, out: Path, params: dict) -> None:
    """Move the finished temp folder to `out`, replacing a stale folder there."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        # Someone else (another rank) published at the same moment: keep theirs if it is right.
        if not _build_info_matches(out, params):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building_folder(out: Path, params: dict):
    """A temporary folder beside `out` to write a dataset into; on success its build record
    (`params`) is written and it replaces `out` atomically, on failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.building-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        yield tmp
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(params, indent=1))
        _publish(tmp, out, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_build_info(folder) -> dict | None:
    """The `trm_fast_build.json` record of a dataset folder (or of the folder above a split
    folder), or None when there is none or it cannot be read."""
    folder = Path(folder)
    for candidate in (folder / BUILD_INFO_FILE, folder.parent / BUILD_INFO_FILE):
        try:
            info = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        return info if isinstance(info, dict) else None
    return None


# The maze folder builders moved to trm_fast.data.maze_folders (which builds on this module); their
# names stay importable here.
_MAZE_NAMES = ("MAZE_BUILD_VERSION", "build_maze_dataset", "grouped_examples", "write_maze_split")


def __getattr__(name: str):
    if name in _MAZE_NAMES:
        from trm_fast.data import maze_folders

        return getattr(maze_folders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
