"""Models that ship inside the package: one folder per model, `<name>/model.json` (model config,
puzzle format, how it was trained, held-out figures) + `<name>/model.safetensors` (weights), plus
the held-out sets its figures were measured on (CSV). `trm_fast.load("maze-cpu")` and
`trm-fast eval|solve --checkpoint maze-cpu` find them by name; `trm_fast.pretrained.build` makes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "trm-fast-model"  # model.json's "format"
VERSION = 1


def is_model_folder(path: Path) -> bool:
    """Whether `path` is an exported model folder (shipped or written by `build.export_model`)."""
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def names() -> list[str]:
    """The shipped models' names."""
    return sorted(entry.name for entry in ROOT.iterdir() if entry.is_dir() and is_model_folder(entry))


def folder(name: str) -> Optional[Path]:
    """The folder of the shipped model `name`, or None when no model of that name ships."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    candidate = ROOT / name
    return candidate if is_model_folder(candidate) else None
