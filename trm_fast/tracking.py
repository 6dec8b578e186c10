"""Experiment tracking: every record the trainer appends to metrics.jsonl also goes to TensorBoard or
Weights & Biases, with the same keys and step (config group `tracking`, off by default).

    tracker = open_tracker(cfg.tracking, run_dir, config_lib.to_dict(cfg))  # no package: TrackingError now
    tracker.start(step)  # training starts (or resumes) after `step`
    tracker.log({"step": 20, "train/lm_loss": 0.52, ...})
    tracker.close()

TensorBoard: event files in <run dir>/tensorboard (`tensorboard --logdir runs`); a resumed run drops
the events logged after the checkpoint it continues from. W&B: the library's environment applies
(WANDB_MODE=offline works without a network, WANDB_ENTITY, WANDB_API_KEY); its files go into the run
directory unless WANDB_DIR is set, and the W&B run id is kept in <run dir>/tracking.json so that a
resumed training continues the same W&B run.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

from trm_fast.config import CHOICES, ConfigError, TrackingSettings

STATE_FILE = "tracking.json"  # in the run directory: the W&B run id, for resuming
TENSORBOARD_DIR = "tensorboard"  # in the run directory


class TrackingError(ConfigError):
    """Tracking cannot start (its package is missing, or the library refused); one line."""


def require_package(library: str) -> ModuleType:
    """The tracking library's module; TrackingError naming the pip command when it is not installed."""
    try:
        return importlib.import_module(library)
    except ImportError:
        raise TrackingError(
            f"tracking.library={library} needs the {library} package: pip install {library} "
            f"(or pip install 'trm-fast[{library}]')"
        ) from None


def numbers(record: dict) -> dict[str, float]:
    """The record's numeric values (true/false as 1/0) except its step."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float))}


class Tracker:
    """No tracking: tracking.library=none, and every process but the first of a distributed run."""

    def start(self, step: int) -> None:
        """Start the tracking run; training continues after `step` (0: a new run). TrackingError
        when the library refuses."""

    def log(self, record: dict) -> None:
        """Send one metrics.jsonl record ({"step": int, key: value, ...}) after start()."""

    def close(self) -> None:
        """Finish the tracking run (idempotent)."""


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        require_package("tensorboard")
        self.log_dir = run_dir / TENSORBOARD_DIR
        self.config = config
        self.writer = None

    def start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: the events an interrupted run logged after its checkpoint are dropped (the
        # resumed run logs those steps again); TensorBoard would otherwise draw both.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1)
        self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=2) + "\n```", global_step=step)

    def log(self, record: dict) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(Tracker):
    def __init__(self, settings: TrackingSettings, run_dir: Path, config: dict):
        self.wandb = require_package("wandb")
        self.settings = settings
        self.run_dir = run_dir
        self.config = config
        self.run = None

    def start(self, step: int) -> None:
        state_path = self.run_dir / STATE_FILE
        saved = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            run = self.wandb.init(
                project=self.settings.project,
                name=self.settings.run_name or self.run_dir.name,
                id=saved.get("wandb_run_id"),  # none: W&B picks one
                resume="allow",  # a known id (a resumed training): continue that W&B run
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
                config=self.config,
            )
        except Exception as error:  # noqa: BLE001 - W&B raises many kinds (login, network, settings)
            first_line = (str(error).splitlines() or [type(error).__name__])[0][:300]
            raise TrackingError(f"wandb could not start a run ({first_line}); log in with `wandb login` "
                                "or train offline with WANDB_MODE=offline") from None
        state_path.write_text(json.dumps({"wandb_run_id": run.id}) + "\n")
        self.run = run

    def log(self, record: dict) -> None:
        self.run.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def open_tracker(settings: TrackingSettings, run_dir: str | os.PathLike, config: dict) -> Tracker:
    """The tracker `settings.library` names, for a run in `run_dir` with this training config (a
    dict, logged at start). Checks now that the library is installed."""
    run_dir = Path(run_dir)
    if settings.library == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if settings.library == "wandb":
        return WandbTracker(settings, run_dir, config)
    if settings.library == "none":
        return Tracker()
    raise TrackingError(f"tracking.library: expected one of {', '.join(CHOICES['tracking.library'])}, "
                        f"got {settings.library!r}")
