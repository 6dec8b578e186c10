"""Run checkpoints: written atomically, pruned to the last k, resumable exactly.

One file per checkpoint, `<run_dir>/checkpoints/step_<step:08d>.pt`, a dict with
    format "trm-fast", version, step, model_config (TRMConfig dict), train_config (TrainConfig dict),
    model (raw weights), ema_model (averaged weights; what evaluation uses), optimizer, ema,
    ranks: [per-rank {rng, sampler, carry}], world_size, metrics (last evaluation), data (metadata)
`trm_fast.model.compat.load_any_state_dict` reads the weights of such a file for evaluation.

Writing goes to a temporary file in the same folder, fsync'ed, then os.replace'd over the target,
so a crash or full disk mid-write leaves any earlier checkpoint untouched.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trm_fast.errors import CheckpointError
from trm_fast.model.compat import CHECKPOINT_FORMAT as FORMAT
from trm_fast.model.compat import read_checkpoint_file

VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


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


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    for _step, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
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
