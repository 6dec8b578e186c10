"""How long a run trains: the schedule's length, given in steps or measured to fill a time budget.

The rule `trm-fast train` and `trm-fast ablate` follow (config fields `max_steps`, `max_minutes`):

- `max_steps` N: the learning-rate schedule spans N steps and the run stops there (`max_minutes`, if
  set too, caps the wall clock).
- `max_minutes` M without `max_steps`: the run fills M minutes. After its first steps, all inside the
  learning-rate warm-up (where the rate does not depend on the schedule's length yet), the trainer
  measures its step rate and sets `max_steps` to the steps that fit the time left. The length is
  printed ("schedule: N steps to fill M min"), saved in config.json and metrics.jsonl, and a run
  with `max_steps` N reproduces it. The minutes stay a hard cap.
- neither: the schedule spans `epochs`, as in the reference.

    apply_budget(cfg, max_steps=None, max_minutes=30)     # the command-line flags
    fit = ScheduleFit.for_run(cfg, step, longest, started, deadline)   # in the trainer
    length = fit.observe(step, time.monotonic())            # None until the length is set
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from trm_fast.config import ConfigError, TrainConfig

# The length is set after at most this many steps (or at the warm-up's end if that comes first).
DECISION_STEP = 50
# Untimed first steps: torch.compile and allocator warm-up make them slower than the rest.
UNTIMED_STEPS = 10
# Share of the time left that the schedule fills: the rest is for periodic evaluations, checkpoints
# and steps slower than the measured ones, so the cosine ends before the minutes run out.
FILL_SHARE = 0.9


def fills_time(cfg: TrainConfig) -> bool:
    """True when the run's length is measured to fill `max_minutes` (no `max_steps` given)."""
    return cfg.max_minutes is not None and cfg.max_steps is None


def budget_overrides(max_steps: Optional[int], max_minutes: Optional[float]) -> list[str]:
    """The `--max-steps` / `--max-minutes` flags as `field=value` overrides (checked), with the
    meaning of apply_budget: none when neither flag is given."""
    if max_steps is None and max_minutes is None:
        return []
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
    if max_minutes is not None and not max_minutes > 0:
        raise ConfigError(f"--max-minutes must be > 0, got {max_minutes}")
    return [f"max_steps={'none' if max_steps is None else max_steps}",
            f"max_minutes={'none' if max_minutes is None else repr(float(max_minutes))}"]


def apply_budget(cfg: TrainConfig, max_steps: Optional[int], max_minutes: Optional[float]) -> None:
    """The `--max-steps` / `--max-minutes` flags onto a config. Either flag replaces the config's
    whole budget (a preset's step count and minute cap): `--max-steps` alone runs exactly that many
    steps, `--max-minutes` alone fills the minutes, both give a schedule of N steps capped at M
    minutes. Neither flag keeps the config's budget."""
    if budget_overrides(max_steps, max_minutes):  # checks the values
        cfg.max_steps, cfg.max_minutes = max_steps, max_minutes


def steps_from_epochs(cfg: TrainConfig, batches_per_epoch: float) -> int:
    """Optimizer steps of `cfg.epochs` epochs, as the reference counts them."""
    return max(int(cfg.epochs * batches_per_epoch), 1)


def describe(cfg: TrainConfig) -> str:
    """The budget in words, e.g. "5000 steps or 13.5 min", "fills 30 min", "50000 epochs"."""
    if fills_time(cfg):
        return f"fills {cfg.max_minutes:g} min"
    if cfg.max_steps is not None:
        return f"{cfg.max_steps} steps" + (f" or {cfg.max_minutes:g} min" if cfg.max_minutes is not None else "")
    return f"{cfg.epochs} epochs"


@dataclass
class ScheduleFit:
    """Measures the step rate between `timed_from` and `decide_at` and then sets the schedule's length
    to the steps that fit before `deadline` (never more than `longest`, the epochs' length)."""

    timed_from: int
    decide_at: int
    longest: int
    deadline: float
    timer_start: Optional[float] = None
    steps_per_second: Optional[float] = None

    @classmethod
    def for_run(cls, cfg: TrainConfig, step: int, longest: int, now: float, deadline: float) -> Optional["ScheduleFit"]:
        """The fit of a run that starts (or resumes) at `step`; None when the run's length is given.
        A run resumed after its length was set has it in its config.json (max_steps); one resumed
        past the warm-up without it (written before this rule) keeps the epochs' length."""
        if not fills_time(cfg):
            return None
        if cfg.lr_warmup_steps < 1:
            raise ConfigError("max_minutes without max_steps measures the step rate during the learning-rate warm-up: "
                              "set lr_warmup_steps >= 1, or give max_steps")
        decide_at = min(cfg.lr_warmup_steps, DECISION_STEP)
        if step >= decide_at:
            return None
        timed_from = step + min(UNTIMED_STEPS, (decide_at - step) // 5)
        return cls(timed_from, decide_at, longest, deadline, timer_start=now if timed_from == step else None)

    def observe(self, step: int, now: float) -> Optional[int]:
        """Call after every step (`step` just finished): the schedule's length once it is set, else None."""
        if step == self.timed_from:
            self.timer_start = now
        if step < self.decide_at:
            return None
        self.steps_per_second = (step - self.timed_from) / max(now - self.timer_start, 1e-9)
        fitting = math.floor(self.steps_per_second * max(self.deadline - now, 0.0) * FILL_SHARE)
        return max(min(step + fitting, self.longest), step)

    def message(self, length: int, minutes: float) -> str:
        return (f"schedule: {length} steps to fill {minutes:g} min ({self.steps_per_second:.2f} steps/s over steps "
                f"{self.timed_from + 1}-{self.decide_at}; --max-steps {length} reruns this schedule)")


# ----------------------------------------------------------------------------------------------
# How long a GPU run takes, before it starts

# Share of a GPU's data-sheet peak (trm_fast.flops) assumed for duration estimates. No training run
# on a GPU has been measured by this project yet; the ablation study's GPU estimate assumes the same.
ASSUMED_MFU = 0.35


def _training_data_shape(cfg: TrainConfig) -> Optional[tuple[int, int, float]]:
    """(vocabulary, sequence length, examples per epoch) of the config's training data, without
    building it: from the generator settings, or a folder's train/dataset.json (None if unreadable)."""
    import json
    from pathlib import Path

    from trm_fast.data.dataset import PuzzleMetadata
    from trm_fast.puzzles import get_kind

    kind = get_kind(cfg.dataset)
    if kind is not None:
        return kind.data_shape(kind.settings(cfg))

    path = Path(cfg.dataset) / "train" / "dataset.json"
    try:
        meta = PuzzleMetadata.from_json(json.loads(path.read_text()), path)
    except (OSError, ValueError):
        return None
    return meta.vocab_size, meta.seq_len, meta.total_groups * meta.mean_puzzle_examples


def estimated_hours(cfg: TrainConfig, device_name: str) -> tuple[Optional[int], Optional[float]]:
    """(steps, hours) of a run on the GPU `device_name` at ASSUMED_MFU of its data-sheet peak;
    hours is None when the GPU's peak is unknown, both are None when the data cannot be read yet."""
    from trm_fast import flops
    from trm_fast.config import model_config

    shape = _training_data_shape(cfg)
    if shape is None:
        return None, None
    vocab_size, seq_len, examples = shape
    steps = steps_from_epochs(cfg, examples / cfg.global_batch_size)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    peak = flops.peak_flops(device_name, cfg.model.forward_dtype)
    if peak is None:
        return steps, None
    step_flops = flops.train_step_flops(model_config(cfg, vocab_size, seq_len), cfg.global_batch_size)
    hours = steps * step_flops / (peak * ASSUMED_MFU) / 3600
    if cfg.max_minutes is not None:
        hours = min(hours, cfg.max_minutes / 60)
    return steps, hours


def gpu_run_notice(cfg: TrainConfig, device_name: str, quick_command: str) -> str:
    """What a GPU run is about to cost, and (for a run longer than an hour) how to run a short one."""
    if fills_time(cfg):
        return f"{cfg.preset or 'this run'}: {describe(cfg)} on {device_name}"
    steps, hours = estimated_hours(cfg, device_name)
    if steps is None:
        length = describe(cfg)
    else:
        length = f"{steps} steps" + (f" ({cfg.epochs} epochs)" if cfg.max_steps is None else "")
    if hours is None:
        duration = "its duration is unknown (no data-sheet peak for this GPU)" if steps is not None else ""
    else:
        amount = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
        duration = (f"about {amount} on {device_name} if it sustains {ASSUMED_MFU:.0%} of its data-sheet "
                    f"{cfg.model.forward_dtype} peak (an estimate from the model's FLOPs)")
    text = f"{cfg.preset or 'this run'}: {length}" + (f", {duration}" if duration else "")
    if hours is None or hours > 1:
        text += (f". A shorter run: add --max-minutes 60 (the schedule then fills an hour), or train the quick "
                 f"preset: {quick_command}")
    return text
