"""A run directory: its layout, the metrics it records, and the checkpoints that resume it.

    <run_dir>/config.json                        the run's TrainConfig (trm_fast.config.to_dict)
    <run_dir>/metrics.jsonl                      one JSON record a line (see `append_metrics`)
    <run_dir>/checkpoints/step_<step:08d>.pt     the newest keep_checkpoints checkpoints, and the best one
    <run_dir>/best.json                          the best periodic evaluation so far and its checkpoint
    <run_dir>/final_eval.json                    the final held-out evaluation; there once the run finished

The trainer writes through this module (rank 0 only) and the study, `trm-fast plot` and `eval`
read through it; docs/run-directory.md describes every file.

A checkpoint is a dict with
    format "trm-fast", version, step, model_config (TRMConfig dict), train_config (TrainConfig dict),
    model (raw weights), ema_model (averaged weights; what evaluation uses), optimizer, ema,
    ranks: [per-rank {rng, sampler, carries}], world_size, metrics (last evaluation), data (metadata),
    best (the best periodic evaluation up to its step, as in best.json, or None)
`save_checkpoint` builds it from a trainer, `restore_checkpoint` puts it back (exactly, on CPU), and
`trm_fast.model.compat.load_any_state_dict` reads its weights for evaluation. Writing goes to a
temporary file in the same folder, fsync'ed, then os.replace'd over the target, so a crash or full
disk mid-write leaves any earlier checkpoint untouched.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from trm_fast import config as config_lib
from trm_fast.atomic import atomic_write, atomic_write_json
from trm_fast.errors import CheckpointError, RunDirectoryError, first_line
from trm_fast.model import ACTCarry
from trm_fast.model.compat import CHECKPOINT_FORMAT as FORMAT
from trm_fast.model.compat import read_checkpoint_file
from trm_fast.train import distributed as dist_lib

if TYPE_CHECKING:
    from trm_fast.config import TrainConfig
    from trm_fast.train.loop import Trainer

VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
BEST_FILE = "best.json"
# cfg.best_metric -> +1 when higher is better, -1 when lower is
BEST_METRIC_SIGN = {"exact_accuracy": 1, "accuracy": 1, "lm_loss": -1, "loss": -1, "pass@1": 1, "pass@2": 1}
WHICH = ("newest", "best")
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


# ----------------------------------------------------------------------------------------------
# Layout


def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG_FILE


def metrics_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS_FILE


def final_eval_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / FINAL_EVAL_FILE


def best_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / BEST_FILE


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run ended with its final evaluation (a later invocation has nothing to train)."""
    return final_eval_path(run_dir).is_file()


# ----------------------------------------------------------------------------------------------
# Writing (the trainer, on rank 0)


def write_config(run_dir: str | os.PathLike, cfg: TrainConfig) -> None:
    """Create the run directory and record the config it trains with."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    config_lib.save_json(cfg, config_path(run_dir))


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """One record of metrics.jsonl, all with "step": a training log (train/* keys, train/lr,
    steps_per_second, tokens_per_second, mfu on a GPU, elapsed_s), a periodic evaluation (eval/*) or
    the final one ("final": true, test/*). A resumed run appends after what it finds."""
    with open(metrics_path(run_dir), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_final_eval(run_dir: str | os.PathLike, step: int, metrics: dict, best: Optional[dict] = None) -> None:
    """final_eval.json: {"step", "test/<metric>"...} and, when the run evaluated periodically, "best"
    (best.json's record: the step whose checkpoint `eval --which best` reads)."""
    with open(final_eval_path(run_dir), "w") as handle:
        json.dump({"step": step, **metrics, **({"best": best} if best is not None else {})}, handle, indent=2)


# ----------------------------------------------------------------------------------------------
# The best periodic evaluation (best.json)


def best_record(step: int, metric: str, value: float) -> dict:
    """best.json's content: the step, the metric ("eval/exact_accuracy"), its value and the checkpoint
    file (relative to the run directory) that holds that step's weights."""
    return {"step": step, "metric": metric, "value": value,
            "file": f"{CHECKPOINT_DIR}/{checkpoint_path('.', step).name}"}


def is_better(value: float, best: Optional[dict], metric_name: str) -> bool:
    """Whether an evaluation's `value` of cfg.best_metric `metric_name` beats the record `best` (a tie
    keeps the earlier step; a NaN never wins)."""
    if value != value:
        return False
    if best is None:
        return True
    return BEST_METRIC_SIGN[metric_name] * (value - best["value"]) > 0


def write_best(run_dir: str | os.PathLike, best: dict) -> None:
    """best.json, atomically (temporary file, fsync, rename): a reader sees the old record or the new."""
    atomic_write_json(best_path(run_dir), best)


def read_best(run_dir: str | os.PathLike) -> Optional[dict]:
    """best.json's record, or None when the run has none (no periodic evaluation yet)."""
    path = best_path(run_dir)
    if not path.is_file():
        return None
    try:
        best = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"{path}: cannot read ({error})") from None
    if not isinstance(best, dict) or not isinstance(best.get("step"), int) or not isinstance(best.get("file"), str):
        raise RunDirectoryError(f"{path}: not a best-checkpoint record (expected 'step' and 'file')")
    return best


# ----------------------------------------------------------------------------------------------
# Reading


def read_config_values(run_dir: str | os.PathLike) -> Optional[dict]:
    """The raw values of config.json (None when the run has none yet)."""
    path = config_path(run_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"{path}: cannot read ({error})") from None


@dataclass
class RunRecords:
    """The records of one run directory, as the trainer wrote them, with a resumed run's repeated
    records resolved (the later ones win)."""

    run_dir: Path
    train: list[dict]  # records with train/* keys, by step
    evals: list[dict]  # periodic held-out evaluations (eval/*), by step
    final: Optional[dict]  # the final held-out evaluation (test/*), when the run finished
    train_seconds: float  # training wall time summed over the run's invocations
    config: Optional[dict]

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return is_finished(self.run_dir)


def _record_kind(record: dict) -> Optional[str]:
    if record.get("final"):
        return "final"
    if "train/lm_loss" in record:
        return "train"
    if "eval/exact_accuracy" in record:
        return "eval"
    return None


def load_run(run_dir: str | os.PathLike) -> RunRecords:
    """Read `run_dir/metrics.jsonl`. A resumed run repeats the steps after its checkpoint: a record at
    a step already seen (or before the newest one) starts a new invocation, which replaces the
    records from that step on. Training time is summed over invocations (elapsed_s restarts)."""
    run_dir = Path(run_dir)
    path = metrics_path(run_dir)
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir}: no {METRICS_FILE} (not a trm-fast run directory?)")
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise RunDirectoryError(f"{path}: cannot read ({error})") from None
    kept: list[tuple[str, dict]] = []
    seen: set[tuple[str, int]] = set()
    newest = -1
    segments: list[float] = []
    last_elapsed = None
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # cut short by a killed process (a resumed run appends right after it)
            continue
        kind = _record_kind(record) if isinstance(record, dict) else None
        if kind is None or not isinstance(record.get("step"), int):
            continue
        step = record["step"]
        if kind == "final":
            kept = [(k, r) for k, r in kept if k != "final"]
        elif step < newest or (kind, step) in seen:  # a resumed invocation repeats this step
            kept = [(k, r) for k, r in kept if k != "final" and r["step"] < step]
            seen = {(k, r["step"]) for k, r in kept}
            newest = max((r["step"] for k, r in kept), default=-1)
        if kind != "final":
            seen.add((kind, step))
            newest = max(newest, step)
        kept.append((kind, record))
        if kind == "train" and isinstance(record.get("elapsed_s"), (int, float)):
            elapsed = float(record["elapsed_s"])
            if last_elapsed is None or elapsed < last_elapsed:
                segments.append(elapsed)
            else:
                segments[-1] = elapsed
            last_elapsed = elapsed
    train = sorted((r for k, r in kept if k == "train"), key=lambda r: r["step"])
    if not train:
        raise RunDirectoryError(f"{path}: no training records yet")
    evals = sorted((r for k, r in kept if k == "eval"), key=lambda r: r["step"])
    final = next((r for k, r in kept if k == "final"), None)
    try:
        config = read_config_values(run_dir)
    except RunDirectoryError:  # the records stand without it
        config = None
    return RunRecords(run_dir, train, evals, final, sum(segments), config)


def load_runs(paths) -> list[RunRecords]:
    """load_run of each path; a folder without metrics.jsonl that holds run directories (a study
    directory) stands for its runs."""
    runs = []
    for path in map(Path, paths):
        inside = [] if metrics_path(path).is_file() or not path.is_dir() else \
            sorted(d for d in path.iterdir() if metrics_path(d).is_file())
        runs += [load_run(d) for d in inside] if inside else [load_run(path)]
    return runs


def latest_training_record(run_dir: str | os.PathLike) -> Optional[dict]:
    """The newest training record of a run that is still writing (read from the file's end), or None."""
    try:
        with open(metrics_path(run_dir), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 8192, 0))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and _record_kind(record) == "train":
            return record
    return None


# ----------------------------------------------------------------------------------------------
# Checkpoints: files


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda stream: torch.save(payload, stream), binary=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def best_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint of the run's best periodic evaluation (best.json), or None when it has none."""
    best = read_best(run_dir)
    if best is None:
        return None
    path = Path(run_dir) / best["file"]
    if not path.is_file():
        raise CheckpointError(f"{best_path(run_dir)}: names {best['file']}, which is missing")
    return path


def select_checkpoint(run_dir: str | os.PathLike, which: str = "newest") -> Optional[Path]:
    """A run directory's newest checkpoint or (which="best") its best one; None when there is none."""
    if which not in WHICH:
        raise CheckpointError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    return latest_checkpoint(run_dir) if which == "newest" else best_checkpoint(run_dir)


def checkpoint_to_resume(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint, which `--resume` continues from."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir}: nothing to resume (no {CHECKPOINT_DIR}/step_*.pt)")
    return found


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: Optional[int] = None) -> None:
    """Remove all but the newest `keep` checkpoints, sparing the one of step `protect` (the best)."""
    for step, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if step == protect:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Our own training checkpoint (everything needed to resume)."""
    path = Path(path)
    payload = read_checkpoint_file(path, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trm-fast training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})")
    return payload


# ----------------------------------------------------------------------------------------------
# Checkpoints: the payload of a trainer


def save_checkpoint(trainer: Trainer) -> Optional[Path]:
    """Collective: every rank contributes its RNG, sampler position and carries; rank 0 writes the
    checkpoint of the trainer's step, then best.json (trainer.best), then prunes to cfg.keep_checkpoints
    sparing the best one: a crash at any point leaves a best.json that names an existing file.
    Returns its path (rank 0)."""
    context, train_step = trainer.context, trainer.train_step
    rank_state = {
        "rng": rng_state(),
        "sampler": encode(trainer.data.sampler.state_dict()),
        "carries": [carry_state(carry) for carry in train_step.carries or []],
    }
    all_rank_states = dist_lib.gather_objects(rank_state, context)
    path = None
    if context.is_main:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "step": trainer.step,
            "model_config": trainer.model.config.to_dict(),
            "train_config": config_lib.to_dict(trainer.cfg),
            "model": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
            "ema_model": {k: v.detach().cpu() for k, v in trainer.ema_state_dict().items()},
            "optimizer": train_step.optimizer.state_dict(),
            "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
            "world_size": context.world_size,
            "ranks": all_rank_states,
            "metrics": trainer.last_eval,
            "data": trainer.data.describe(),
            "best": trainer.best,
        }
        path = checkpoint_path(trainer.run_dir, trainer.step)
        atomic_torch_save(payload, path)
        if trainer.best is not None:
            write_best(trainer.run_dir, trainer.best)
        prune_checkpoints(trainer.run_dir, trainer.cfg.keep_checkpoints,
                          protect=trainer.best["step"] if trainer.best is not None else None)
    dist_lib.barrier(context)
    return path


def restore_checkpoint(trainer: Trainer, path: Path) -> None:
    """Put a checkpoint back into a freshly built trainer: weights, optimizer, EMA, data position,
    step and last evaluation, and (same number of processes and micro-batches) RNG and ACT carries."""
    payload = load_checkpoint(path)
    context, train_step = trainer.context, trainer.train_step
    same_world = payload["world_size"] == context.world_size
    saved, current = payload["model_config"], trainer.model.config.to_dict()
    if saved != current:
        differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        details = ", ".join(f"{key}: {saved.get(key)} there, {current.get(key)} here" for key in differing)
        raise CheckpointError(f"{path}: its model config differs from this run's ({details})")
    try:
        trainer.model.load_state_dict(payload["model"])
        train_step.optimizer.load_state_dict(payload["optimizer"])
        if trainer.ema is not None:
            if payload["ema"] is None:
                raise CheckpointError(f"{path}: has no EMA state but this run uses EMA")
            trainer.ema.load_state_dict(payload["ema"])
        # The sampler position is global (the same on every rank), so any rank's entry will do.
        rank_state = payload["ranks"][context.rank if same_world else 0]
        trainer.data.sampler.load_state_dict(decode(rank_state["sampler"]))
        if same_world:
            set_rng_state(rank_state["rng"])
    except (KeyError, RuntimeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: does not fit this run ({first_line(str(error))})") from None
    trainer.step = int(payload["step"])
    trainer.last_eval = payload.get("metrics")
    trainer.best = payload.get("best")  # the best evaluation up to this step (checkpoints before it had none)
    carries = rank_state.get("carries", []) if same_world else []
    if carries and len(carries) == train_step.num_micro_batches:
        train_step.carries = [_carry_from_state(trainer, state) for state in carries]
        trainer.log(f"resumed from {path} at step {trainer.step}")
    else:
        # The carried slots belonged to another split of the batch: start them afresh.
        seed_everything(trainer.cfg.seed + context.rank + 1_000_003 * trainer.step)
        trainer.log(
            f"resumed from {path} at step {trainer.step}; it was written by {payload['world_size']} process(es) "
            f"with {len(rank_state.get('carries', []))} micro-batch(es) each, this run has {context.world_size} with "
            f"{train_step.num_micro_batches}: weights, optimizer and data position continue, the ACT carries restart"
        )


_CARRY_TENSORS = ("y_answer", "z_latent", "steps", "halted")


def carry_state(carry: ACTCarry) -> dict:
    """The persistent part of a carry, on the CPU (the puzzle rows are scratch, not state)."""
    state = {name: getattr(carry, name).detach().cpu() for name in _CARRY_TENSORS}
    state["current_data"] = {k: v.detach().cpu() for k, v in carry.current_data.items()}
    return state


def restore_carry_(carry: ACTCarry, state: dict) -> None:
    """Write a saved carry into an allocated one in place."""
    for name in _CARRY_TENSORS:
        getattr(carry, name).copy_(state[name])
    for key, value in state["current_data"].items():
        carry.current_data[key].copy_(value)


def _carry_from_state(trainer: Trainer, state: dict) -> ACTCarry:
    carry = trainer.model.initial_carry({k: v.to(trainer.device) for k, v in state["current_data"].items()})
    restore_carry_(carry, state)
    return carry


# ----------------------------------------------------------------------------------------------
# Plain-data encoding: checkpoints load with torch.load(weights_only=True), which accepts tensors and
# Python containers/scalars only, so numpy values (RNG states, sampler states) are encoded.


def encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy()), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"], copy=True)
        if "__tuple__" in value:
            return tuple(decode(item) for item in value["__tuple__"])
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------
# RNG streams: seeded when a run starts, saved in every checkpoint, put back on resume


def seed_everything(seed: int) -> None:
    """Seed every RNG a run draws from (Python, NumPy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return encode(state)


def set_rng_state(encoded: dict) -> None:
    state = decode(encoded)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
