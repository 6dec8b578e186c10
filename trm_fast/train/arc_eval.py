"""The ARC evaluator: vote over a test split's augmented predictions, score pass@k, write a submission.

Every augmented copy of an ARC task ("{task}|||t{k}|||{perm}" in identifiers.json: dihedral transform
k, colour map perm) puts its test inputs to the model. Each prediction is cropped from its canvas,
the colour map and the transform are undone, and it is matched to the original test input it answers
(the de-augmented input grid equals that test input). The distinct answers of a test input are
ranked by votes, ties broken by the higher mean sigmoid(q_halt) of their voters. A test input is
solved at k when its true output is among the top k answers; a task scores the fraction of its test
inputs solved; pass@k is the mean over the tasks of test_puzzles.json (a task with no predictions
scores 0). pass@2 is the ARC Prize metric.

submission.json (ARC Prize format): {task: [{"attempt_1": grid, "attempt_2": grid}, ...]}, one entry
per test input in order; with one candidate it is repeated (as the reference does); a test input
without predictions, or an empty crop, gets [[0]] (the reference leaves such an input out, which
shifts the task's later entries). arc_results.json: the pass@k figures, counts, and per task its
score@1/@2 and per test input the expected shape, the votes, the distinct answers, the rank of the
true output, solved@1/@2 and the top 10 candidates (votes, mean sigmoid(q_halt), shape, correct).

    voter = ArcVoter.from_folder(folder)                    # identifiers.json, test_puzzles.json
    voter.add_batch(puzzle_identifiers, predictions, q_halt_logits, inputs, valid)   # per batch
    result = voter.result()                                 # ArcResult: metrics, per-task, submission
    result.write(out_dir)                                   # submission.json, arc_results.json

`evaluate_arc` runs a model over batches of the test split (every supervision step, as
`trm_fast.train.evaluate.run_all_steps`; the last step's answers and q_halt vote) and does all of it.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from trm_fast.atomic import atomic_write_json
from trm_fast.data import arc
from trm_fast.data.errors import DataError

PASS_KS = (1, 2, 5, 10, 100, 1000)
ATTEMPTS = 2  # attempts per test input in an ARC Prize submission
TOP_CANDIDATES_RECORDED = 10  # candidates per test input kept in arc_results.json
SUBMISSION_FILE = "submission.json"
RESULTS_FILE = "arc_results.json"

# ----------------------------------------------------------------------------------------------
# Grid helpers beyond trm_fast.data.arc's (which owns the dihedral numbering, colour maps, canvas
# tokens and crop).


def _undo(grid: np.ndarray, k: int, inverse_colour_map: np.ndarray) -> np.ndarray:
    """Undo an augmentation given its transform and the inverse of its colour map."""
    return np.ascontiguousarray(inverse_colour_map[arc.inverse_dihedral(np.asarray(grid), k)])


def _canvas_side(seq_len: int) -> int:
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ValueError(f"ARC sequences are square canvases; seq_len {seq_len} is not a square")
    return side


def _crop_shapes(tokens: np.ndarray) -> np.ndarray:
    """[N, 2] crop shapes of the canvases `tokens` [N, side * side] (trm_fast.data.arc.crop_shapes)."""
    side = _canvas_side(tokens.shape[1])
    return arc.crop_shapes(tokens.reshape(tokens.shape[0], side, side))


def _grid_key(grid: np.ndarray) -> tuple[int, int, bytes]:
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    return grid.shape[0], grid.shape[1], grid.tobytes()


def _key_grid(key: tuple[int, int, bytes]) -> np.ndarray:
    rows, cols, data = key
    return np.frombuffer(data, dtype=np.uint8).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------
# Reading the folder's files


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, "file is missing (an ARC folder holds identifiers.json and test_puzzles.json "
                        "beside train/ and test/)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None


def check_identifiers(names, where: str | os.PathLike = "identifiers.json") -> list[str]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DataError(where, "expected a JSON list of identifier names (index = puzzle identifier)")
    return names


@dataclass
class _TestInput:
    input: np.ndarray
    output: np.ndarray


def check_test_puzzles(puzzles, where: str | os.PathLike = "test_puzzles.json") -> dict[str, list[_TestInput]]:
    """{task: [test pairs in order]} from test_puzzles.json as the reference builder writes it:
    {task: {"train": [...], "test": [{"input": grid, "output": grid}, ...]}}."""
    if not isinstance(puzzles, dict) or not puzzles:
        raise DataError(where, "expected a non-empty JSON object {task id: {\"train\": [...], \"test\": [...]}}")
    tasks = {}
    for task, puzzle in puzzles.items():
        tests = puzzle.get("test") if isinstance(puzzle, dict) else None
        if not isinstance(tests, list) or not tests:
            raise DataError(where, f"task '{task}' has no list of test pairs under \"test\"")
        pairs = []
        for index, pair in enumerate(tests):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise DataError(where, f"task '{task}' test pair {index} lacks \"input\" or \"output\"")
            pairs.append(_TestInput(arc.parse_grid(pair["input"], where, f"task '{task}' test pair {index} input"),
                                    arc.parse_grid(pair["output"], where, f"task '{task}' test pair {index} output")))
        tasks[str(task)] = pairs
    return tasks


def baseline_scores(test_puzzles: dict, tasks: dict[str, list[_TestInput]]) -> dict[str, float]:
    """Two answers that need no model, scored like pass@1 (the mean over tasks of the share of test
    inputs solved): "identity" answers each test input with itself; "most_common_output" with the
    task's most frequent demonstration output (the first of the most frequent on a tie). A model
    that learnt nothing scores about these."""
    identity, common = 0.0, 0.0
    for task, pairs in tasks.items():
        outputs = [np.asarray(pair["output"], dtype=np.uint8) for pair in test_puzzles[task].get("train", [])
                   if isinstance(pair, dict) and "output" in pair]
        keys = [_grid_key(grid) for grid in outputs]
        most_common = max(keys, key=keys.count) if keys else None
        identity += sum(np.array_equal(pair.input, pair.output) for pair in pairs) / len(pairs)
        common += sum(most_common == _grid_key(pair.output) for pair in pairs) / len(pairs)
    return {"identity": identity / len(tasks), "most_common_output": common / len(tasks)}


# ----------------------------------------------------------------------------------------------
# Voting


@dataclass
class ArcResult:
    """What the voter found: `metrics` {"pass@k": fraction}, `tasks` (per task, per test input: the
    top candidates with their votes, solved@1/@2, the expected shape; as written to
    arc_results.json), `submission` (the ARC Prize submission), and counts."""

    metrics: dict[str, float]
    tasks: dict[str, dict]
    submission: dict[str, list[dict]]
    predictions: int  # predictions that voted
    unmatched: int  # predictions whose task or de-augmented input is not a test input of test_puzzles.json
    seconds: float = 0.0  # model time (evaluate_arc only)
    files: dict[str, str] = field(default_factory=dict)  # written files (after `write`)
    baselines: dict[str, float] = field(default_factory=dict)  # baseline_scores of the same tasks

    @property
    def pass_at_2(self) -> float:
        return self.metrics["pass@2"]

    def summary(self) -> dict:
        return {**self.metrics, "tasks": len(self.tasks), "predictions": self.predictions,
                "unmatched": self.unmatched, "seconds": self.seconds,
                **{f"baseline/{name}": value for name, value in self.baselines.items()}}

    def write(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """submission.json and arc_results.json in `out_dir`, each written atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results = {**self.summary(), "tasks": self.tasks}
        self.files = {"submission": str(atomic_write_json(out / SUBMISSION_FILE, self.submission)),
                      "results": str(atomic_write_json(out / RESULTS_FILE, results))}
        return self.files


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # = 1 / (1 + exp(-x)), without overflow


def _numpy(value) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class ArcVoter:
    """Accumulates votes batch by batch (see the module docstring); `result()` ranks and scores."""

    def __init__(self, identifiers: list[str], test_puzzles: dict, *, blank_identifier_id: int = 0,
                 pass_ks: Sequence[int] = PASS_KS, identifiers_path: str | os.PathLike = "identifiers.json",
                 test_puzzles_path: str | os.PathLike = "test_puzzles.json"):
        self.identifiers = check_identifiers(identifiers, identifiers_path)
        self.tasks = check_test_puzzles(test_puzzles, test_puzzles_path)
        self.baselines = baseline_scores(test_puzzles, self.tasks)
        self.identifiers_path = str(identifiers_path)
        self.blank_identifier_id = blank_identifier_id
        self.pass_ks = tuple(sorted(set(int(k) for k in pass_ks) | {1, ATTEMPTS}))
        # (task, input key) -> indices of the task's test pairs with that input
        self._inputs: dict[tuple[str, tuple], list[int]] = {}
        for task, pairs in self.tasks.items():
            for index, pair in enumerate(pairs):
                self._inputs.setdefault((task, _grid_key(pair.input)), []).append(index)
        self._names: dict[int, tuple[str, int, np.ndarray]] = {}
        # (task, test index) -> {answer key: [votes, sum of sigmoid(q_halt)]}
        self._votes: dict[tuple[str, int], dict[tuple, list]] = {}
        self.predictions = 0
        self.unmatched = 0

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **options) -> "ArcVoter":
        """The voter of an ARC dataset folder (identifiers.json and test_puzzles.json at its root; a
        split folder such as <folder>/test is accepted too)."""
        folder = Path(folder)
        if not (folder / "test_puzzles.json").exists() and (folder / "dataset.json").exists():
            folder = folder.parent
        ids_path, puzzles_path = folder / "identifiers.json", folder / "test_puzzles.json"
        return cls(_read_json(ids_path), _read_json(puzzles_path), identifiers_path=ids_path,
                   test_puzzles_path=puzzles_path, **options)

    def _name(self, identifier: int) -> tuple[str, int, np.ndarray]:
        """(task, transform k, inverse colour map) of a puzzle identifier."""
        parsed = self._names.get(identifier)
        if parsed is None:
            if not 0 <= identifier < len(self.identifiers):
                raise DataError(self.identifiers_path, f"puzzle identifier {identifier} is outside its "
                                f"{len(self.identifiers)} names (is it this dataset's identifiers.json?)")
            name = self.identifiers[identifier]
            try:
                task, k, colour_map = arc.parse_augmented_name(name)
            except DataError as exc:
                raise DataError(self.identifiers_path, f"entry {identifier} '{name[:80]}': {exc}") from None
            parsed = self._names[identifier] = (task, k, arc.inverse_colour_map(colour_map))
        return parsed

    def add_batch(self, puzzle_identifiers, predictions, q_halt_logits, inputs, valid=None) -> None:
        """One batch: puzzle identifiers [B], predicted tokens [B, L] (argmax of the logits), q_halt
        logits [B], the input tokens [B, L], and optionally `valid` [B] (False: padding). Rows with
        the blank identifier are padding too."""
        ids = _numpy(puzzle_identifiers).reshape(-1).astype(np.int64)
        keep = ids != self.blank_identifier_id
        if valid is not None:
            keep &= _numpy(valid).reshape(-1).astype(bool)
        if not keep.any():
            return
        ids = ids[keep]
        predictions = _numpy(predictions).reshape(len(keep), -1)[keep]
        inputs = _numpy(inputs).reshape(len(keep), -1)[keep]
        confidence = _sigmoid(_numpy(q_halt_logits).reshape(-1)[keep])
        side = _canvas_side(predictions.shape[1])
        pred_shapes, input_shapes = _crop_shapes(predictions), _crop_shapes(inputs)
        # Colours (values outside the crops are meaningless and never read).
        predictions = (predictions.astype(np.int16) - arc.COLOUR_OFFSET).astype(np.uint8).reshape(-1, side, side)
        inputs = (inputs.astype(np.int16) - arc.COLOUR_OFFSET).astype(np.uint8).reshape(-1, side, side)
        for row, identifier in enumerate(ids.tolist()):
            task, k, inverse_colours = self._name(identifier)
            (in_rows, in_cols), (out_rows, out_cols) = input_shapes[row], pred_shapes[row]
            original_input = _undo(inputs[row, :in_rows, :in_cols], k, inverse_colours)
            tests = self._inputs.get((task, _grid_key(original_input)))
            if tests is None:
                self.unmatched += 1
                continue
            answer = _grid_key(_undo(predictions[row, :out_rows, :out_cols], k, inverse_colours))
            for test in tests:
                tally = self._votes.setdefault((task, test), {}).setdefault(answer, [0, 0.0])
                tally[0] += 1
                tally[1] += float(confidence[row])
            self.predictions += 1

    # Merging (data parallel evaluation: every rank votes on its share, rank 0 merges)

    def state(self) -> dict:
        """The votes as plain lists (what trm_fast.train.distributed.gather_objects can send)."""
        votes = [[task, test, rows, cols, list(data), count, q_sum]
                 for (task, test), answers in self._votes.items()
                 for (rows, cols, data), (count, q_sum) in answers.items()]
        return {"votes": votes, "predictions": self.predictions, "unmatched": self.unmatched}

    def merge(self, state: dict) -> None:
        for task, test, rows, cols, data, count, q_sum in state["votes"]:
            tally = self._votes.setdefault((task, int(test)), {}).setdefault((int(rows), int(cols), bytes(data)), [0, 0.0])
            tally[0] += int(count)
            tally[1] += float(q_sum)
        self.predictions += int(state["predictions"])
        self.unmatched += int(state["unmatched"])

    # Ranking and scoring

    def ranked(self, task: str, test: int) -> list[tuple[tuple, int, float]]:
        """The distinct answers of one test input, best first: (answer key, votes, mean sigmoid(q_halt));
        most votes first, ties by the higher mean confidence, then by the grid (deterministic)."""
        answers = self._votes.get((task, test), {})
        ranked = [(key, count, q_sum / count) for key, (count, q_sum) in answers.items()]
        ranked.sort(key=lambda item: (-item[1], -item[2], item[0]))
        return ranked

    def result(self) -> ArcResult:
        totals = dict.fromkeys(self.pass_ks, 0.0)
        tasks, submission = {}, {}
        for task, pairs in self.tasks.items():
            solved = dict.fromkeys(self.pass_ks, 0)
            tests, attempts = [], []
            for index, pair in enumerate(pairs):
                ranked = self.ranked(task, index)
                truth = _grid_key(pair.output)
                rank = next((place for place, (key, _c, _q) in enumerate(ranked, 1) if key == truth), None)
                for k in self.pass_ks:
                    solved[k] += rank is not None and rank <= k
                grids = [_key_grid(key).tolist() for key, _c, _q in ranked[:ATTEMPTS]]
                grids = [grid if grid and grid[0] else [[0]] for grid in grids]  # an empty crop is no grid
                grids += [grids[0] if grids else [[0]]] * (ATTEMPTS - len(grids))
                attempts.append({f"attempt_{number}": grid for number, grid in enumerate(grids, 1)})
                tests.append({
                    "expected_shape": list(pair.output.shape),
                    "votes": sum(count for _key, count, _q in ranked),
                    "distinct_answers": len(ranked),
                    "rank_of_truth": rank,
                    "solved@1": rank == 1,
                    "solved@2": rank is not None and rank <= 2,
                    "candidates": [{"votes": count, "mean_q": round(q, 6), "shape": [key[0], key[1]],
                                    "correct": key == truth} for key, count, q in ranked[:TOP_CANDIDATES_RECORDED]],
                })
            scores = {k: solved[k] / len(pairs) for k in self.pass_ks}
            for k in self.pass_ks:
                totals[k] += scores[k]
            tasks[task] = {"score@1": scores[1], "score@2": scores[ATTEMPTS], "tests": tests}
            submission[task] = attempts
        metrics = {f"pass@{k}": totals[k] / len(self.tasks) for k in self.pass_ks}
        return ArcResult(metrics, tasks, submission, self.predictions, self.unmatched, baselines=self.baselines)


# ----------------------------------------------------------------------------------------------
# Running a model


@torch.no_grad()
def evaluate_arc(model: torch.nn.Module, batches: Iterable[dict], device: torch.device,
                 folder: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 context=None, **voter_options) -> Optional[ArcResult]:
    """Run `model` over `batches` of an ARC test split (inputs, puzzle_identifiers, optionally
    valid; e.g. `trm_fast.train.data.limited_eval_batches(split, batch_size, None, context)`),
    every supervision step, and vote with the last step's answers and q_halt. `folder` is the
    dataset folder (identifiers.json, test_puzzles.json). With a data-parallel `context` every rank
    votes on its share and rank 0 merges and returns the result (the others return None).
    Writes submission.json and arc_results.json to `out_dir` when given (rank 0)."""
    from trm_fast.train.evaluate import _synchronize, batch_to_device, run_all_steps

    voter = ArcVoter.from_folder(folder, **voter_options)
    _synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        batch = batch_to_device(batch, device)
        _carry, outputs = run_all_steps(model, batch)
        voter.add_batch(batch["puzzle_identifiers"], outputs["logits"].argmax(-1), outputs["q_halt_logits"].float(),
                        batch["inputs"], batch.get("valid"))
    _synchronize(device)
    seconds = time.perf_counter() - started
    if context is not None and context.enabled:
        from trm_fast.train.distributed import gather_objects

        states = gather_objects(voter.state(), context)
        if not context.is_main:
            return None
        merged = ArcVoter.from_folder(folder, **voter_options)
        for state in states:
            merged.merge(state)
        voter = merged
    result = voter.result()
    result.seconds = seconds
    if out_dir is not None:
        result.write(out_dir)
    return result


def evaluate_arc_folder(model: torch.nn.Module, folder: str | os.PathLike, device: torch.device, batch_size: int,
                        out_dir: str | os.PathLike | None = None, limit: Optional[int] = None,
                        context=None, **voter_options) -> Optional[ArcResult]:
    """`evaluate_arc` over the test split of the ARC dataset folder `folder` (or of the split
    folder itself, <folder>/test) (`limit`: only the first examples; tasks left out then score 0)."""
    from trm_fast.data.dataset import load_split
    from trm_fast.train.data import limited_eval_batches

    folder = Path(folder)
    split_name = "test"
    if (folder / "dataset.json").is_file():
        folder, split_name = folder.parent, folder.name
    split = load_split(folder, split_name)
    voter_options.setdefault("blank_identifier_id", split.metadata.blank_identifier_id)
    batches = limited_eval_batches(split, batch_size, limit, context)
    return evaluate_arc(model, batches, device, folder, out_dir, context, **voter_options)


# ----------------------------------------------------------------------------------------------
# In the trainer


def is_arc_folder(folder: str | os.PathLike | None) -> bool:
    """Whether a dataset folder holds ARC data the voter can score: test_puzzles.json and
    identifiers.json at its root (as trm_fast.data.arc_build and the reference builder write them)."""
    if folder is None:
        return False
    folder = Path(folder)
    return (folder / "test_puzzles.json").is_file() and (folder / "identifiers.json").is_file()


def evaluate_and_vote(model: torch.nn.Module, batches: Iterable[dict], device: torch.device,
                      folder: str | os.PathLike, *, blank_identifier_id: int = 0, context=None,
                      prefix: str = "eval/", out_dir: str | os.PathLike | None = None,
                      **evaluate_options) -> dict[str, float]:
    """The trainer's evaluation of ARC data: `trm_fast.train.evaluate.evaluate`'s metrics plus the
    vote's `<prefix>pass@k`, from one pass over `batches` (the examples evaluated: a periodic
    evaluation's first eval_examples, or the whole test split; tasks without predictions score 0).
    With a data-parallel `context` each rank votes on its share, rank 0 merges the votes, and every
    rank returns the same figures. Writes submission.json and arc_results.json to `out_dir` when
    given (rank 0)."""
    from trm_fast.train import distributed as dist_lib
    from trm_fast.train.evaluate import evaluate

    voter = ArcVoter.from_folder(folder, blank_identifier_id=blank_identifier_id)

    def vote(batch: dict, outputs: dict) -> None:
        voter.add_batch(batch["puzzle_identifiers"], outputs["logits"].argmax(-1), outputs["q_halt_logits"].float(),
                        batch["inputs"], batch.get("valid"))

    metrics = evaluate(model, batches, device, context=context, prefix=prefix, on_outputs=vote, **evaluate_options)
    context = context or dist_lib.DistContext()
    states = dist_lib.gather_objects(voter.state(), context) if context.enabled else None
    votes = None
    if context.is_main:
        if states is not None:
            voter = ArcVoter.from_folder(folder, blank_identifier_id=blank_identifier_id)
            for state in states:
                voter.merge(state)
        result = voter.result()
        if out_dir is not None:
            result.write(out_dir)
        votes = {prefix + name: value for name, value in result.metrics.items()}
    return {**metrics, **dist_lib.broadcast_object(votes, context)}
