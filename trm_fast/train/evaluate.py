"""Evaluation and inference.

- `evaluate`: every example runs all halt_max_steps supervision steps (batch-uniform, as in the
  reference), and the metrics are read from the last step's outputs.
- `evaluate_each_step`: the same run, with the metrics after every supervision step (the curve of
  accuracy against thinking time); its last point is `evaluate`'s figure.
- `run_with_halting` / `evaluate_with_halting`: each example stops at its own Q-halt decision (as
  in training, without exploration) or at the step limit; halted examples leave the batch and
  waiting ones take their slots (as the trainer refills its carry), so the work really shrinks.

Batches are dicts with inputs [B, L], labels [B, L], puzzle_identifiers [B] and optionally a bool
`valid` [B] marking the real rows of a padded last batch; padded rows count nowhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from trm_fast.flops import eval_step_flops
from trm_fast.model.reference import ACTCarry, q_head_says_halt
from trm_fast.train.distributed import DistContext, all_reduce_sum
from trm_fast.train.losses import HALTED_METRICS, METRIC_NAMES, act_loss, summarise

MODEL_KEYS = ("inputs", "labels", "puzzle_identifiers")


def batch_to_device(batch: dict, device: torch.device) -> dict:
    moved = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            value = torch.as_tensor(value)
        moved[key] = value.to(device, non_blocking=True)
    return moved


@torch.no_grad()
def run_all_steps(
    model: torch.nn.Module,
    batch: dict,
    on_step: Optional[Callable[[int, dict], None]] = None,
) -> tuple[object, dict]:
    """Run every supervision step on a fresh carry; returns (final carry, final outputs).
    `on_step(step_index, outputs)` sees each step's outputs (for step-by-step display)."""
    was_training = model.training
    model.eval()
    try:
        model_batch = {key: batch[key] for key in MODEL_KEYS if key in batch}
        carry = model.initial_carry(model_batch)
        outputs = {}
        for step_index in range(model.config.halt_max_steps):
            carry, outputs = model(carry, model_batch)
            if on_step is not None:
                on_step(step_index, outputs)
    finally:
        model.train(was_training)
    return carry, outputs


def _valid_rows(batch: dict) -> torch.Tensor:
    valid = batch.get("valid")
    if valid is None:
        return torch.ones(batch["labels"].shape[0], dtype=torch.bool, device=batch["labels"].device)
    return valid.bool()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    loss_type: str = "stablemax",
    backend: Optional[str] = None,
    context: Optional[DistContext] = None,
    prefix: str = "eval/",
    on_outputs: Optional[Callable[[dict, dict], None]] = None,
) -> dict[str, float]:
    """Metrics over all (valid) examples of `batches` (this rank's shard; summed over ranks).
    `on_outputs(batch, outputs)` sees each batch (on the device) with its last step's outputs (the
    ARC vote, trm_fast.train.arc_eval.evaluate_and_vote)."""
    sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float32, device=device)
    for batch in batches:
        batch = batch_to_device(batch, device)
        carry, outputs = run_all_steps(model, batch)
        if on_outputs is not None:
            on_outputs(batch, outputs)
        valid = _valid_rows(batch)
        _loss, metrics = act_loss(outputs, batch["labels"], valid, carry.steps, loss_type, backend, row_mask=valid)
        sums += metrics
    if context is not None:
        all_reduce_sum(sums, context)
    result = summarise(sums.cpu(), prefix=prefix)
    return result


def _synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepCurve:
    """`evaluate_each_step`'s result: metrics after each supervision step (entry s: as if every
    example stopped after step s + 1), and what the whole run cost."""

    steps: list[dict[str, float]]
    seconds: float
    example_steps: int  # supervision steps run, summed over examples (= examples x halt_max_steps)
    flops: int  # model FLOPs of those steps (trm_fast.flops)

    @property
    def final(self) -> dict[str, float]:
        return self.steps[-1]

    def to_dict(self) -> dict:
        return {**self.final, "per_step": [{"step": index + 1, **metrics} for index, metrics in enumerate(self.steps)],
                "seconds": self.seconds, "example_steps": self.example_steps, "flops": self.flops}


@torch.no_grad()
def evaluate_each_step(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    loss_type: str = "stablemax",
    backend: Optional[str] = None,
) -> StepCurve:
    """Every example runs all supervision steps (as `evaluate`); the metrics are read after each
    step, so the last entry is `evaluate`'s figure."""
    max_steps = model.config.halt_max_steps
    sums = torch.zeros(max_steps, len(METRIC_NAMES), dtype=torch.float32, device=device)
    examples = 0
    _synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        batch = batch_to_device(batch, device)
        valid = _valid_rows(batch)
        examples += int(valid.sum())

        def add_step(step_index: int, outputs: dict) -> None:
            # A fresh carry in eval mode: every row has taken step_index + 1 steps.
            steps = torch.full_like(valid, step_index + 1, dtype=torch.int32)
            _loss, metrics = act_loss(outputs, batch["labels"], valid, steps, loss_type, backend, row_mask=valid)
            sums[step_index] += metrics

        run_all_steps(model, batch, on_step=add_step)
    _synchronize(device)
    seconds = time.perf_counter() - started
    curve = [summarise(row, prefix="") for row in sums.cpu()]
    return StepCurve(curve, seconds, examples * max_steps, examples * max_steps * eval_step_flops(model.config, 1))


# ----------------------------------------------------------------------------------------------
# Halting


def q_says_halt(config, outputs: dict) -> torch.Tensor:
    """The Q head's decision per row, by the model's own rule (`q_head_says_halt`)."""
    return q_head_says_halt(config, outputs["q_halt_logits"], outputs["q_continue_logits"])


def halt_decision(config, outputs: dict, steps: torch.Tensor, use_q_head: bool = True) -> torch.Tensor:
    """Which slots stop after this step: the trainer's rule without its exploration: at the step
    limit, or (`use_q_head`) when the Q head says so."""
    at_limit = steps >= config.halt_max_steps
    if config.halt_max_steps == 1 or not use_q_head:
        return at_limit
    return at_limit | q_says_halt(config, outputs)


@dataclass
class HaltingRun:
    """Per example (in input order): the answer at the step it stopped, the steps it took, its
    q_halt there, and whether the Q head said halt there (False: only the step limit stopped it)."""

    answers: torch.Tensor  # int64 [N, L]
    steps: torch.Tensor  # int32 [N]
    q_halt: torch.Tensor  # float32 [N]
    halted: torch.Tensor  # bool [N]
    example_steps: int  # supervision steps run, summed over examples
    model_calls: int  # batched supervision steps (forward calls)


def _keep_slots(carry: ACTCarry, keep: torch.Tensor) -> ACTCarry:
    """The carry of the kept slots only (the others leave the batch)."""
    return ACTCarry(carry.y_answer[keep], carry.z_latent[keep], carry.steps[keep], carry.halted[keep],
                    {key: value[keep] for key, value in carry.current_data.items()}, puzzle_rows=None)


@torch.no_grad()
def run_with_halting(
    model: torch.nn.Module,
    examples: dict[str, torch.Tensor],
    batch_size: int,
    on_step: Optional[Callable[[ACTCarry, dict, torch.Tensor], None]] = None,
    use_q_head: bool = True,
) -> HaltingRun:
    """Run `examples` (inputs [N, L], puzzle_identifiers [N], any other per-example tensors such as
    labels; all on the model's device) in `batch_size` slots, each example until `halt_decision`.

    A slot whose example stops takes the next waiting example (its state restarts, as in training);
    when none is waiting the slot leaves the batch, so the batch shrinks to the examples still
    thinking. `on_step(carry, outputs, stopped)` sees every step (stopped: bool per slot). Without
    `use_q_head` every example runs to the step limit (the same answers as `run_all_steps`)."""
    count = int(examples["inputs"].shape[0])
    device = examples["inputs"].device
    config = model.config
    answers = torch.zeros(examples["inputs"].shape, dtype=torch.int64, device=device)
    steps_taken = torch.zeros(count, dtype=torch.int32, device=device)
    q_halt = torch.zeros(count, dtype=torch.float32, device=device)
    halted = torch.zeros(count, dtype=torch.bool, device=device)
    example_steps = model_calls = 0
    was_training = model.training
    model.eval()
    try:
        slot_example = torch.arange(min(batch_size, count), device=device)  # which example each slot holds
        next_waiting = len(slot_example)
        batch = {key: value[slot_example] for key, value in examples.items()}
        carry = model.initial_carry(batch) if count else None
        while len(slot_example):
            carry, outputs = model(carry, batch)
            example_steps += len(slot_example)
            model_calls += 1
            stopped = halt_decision(config, outputs, carry.steps, use_q_head)
            if on_step is not None:
                on_step(carry, outputs, stopped)
            finished = slot_example[stopped]
            answers[finished] = outputs["logits"][stopped].argmax(-1)
            steps_taken[finished] = carry.steps[stopped]
            q_halt[finished] = outputs["q_halt_logits"][stopped].float()
            halted[finished] = q_says_halt(config, outputs)[stopped]
            stopped_slots = stopped.nonzero().flatten()
            if not len(stopped_slots):
                continue
            refilled = stopped_slots[: max(0, count - next_waiting)]
            slot_example[refilled] = torch.arange(next_waiting, next_waiting + len(refilled), device=device)
            next_waiting += len(refilled)
            # The model's forward puts the batch's example into every slot marked halted.
            carry.halted = stopped
            keep = torch.ones_like(stopped)
            keep[stopped_slots[len(refilled):]] = False
            if not bool(keep.all()):
                carry = _keep_slots(carry, keep)
                slot_example = slot_example[keep]
            batch = {key: value[slot_example] for key, value in examples.items()}
    finally:
        model.train(was_training)
    return HaltingRun(answers, steps_taken, q_halt, halted, example_steps, model_calls)


@dataclass
class HaltingEvaluation:
    """`evaluate_with_halting`'s result: accuracy metrics of the answers where each example stopped
    (count, accuracy, exact_accuracy, q_halt_accuracy, steps: the mean supervision steps), how many
    examples stopped after each step, and what the run cost."""

    metrics: dict[str, float]
    steps_histogram: list[int]  # entry s: examples that stopped after step s + 1
    seconds: float
    example_steps: int
    flops: int
    model_calls: int

    def to_dict(self) -> dict:
        return {**self.metrics, "steps_histogram": {str(step): count for step, count in enumerate(self.steps_histogram, 1)},
                "seconds": self.seconds, "example_steps": self.example_steps, "flops": self.flops,
                "model_calls": self.model_calls}


def collect_examples(batches: Iterable[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """The valid rows of evaluation batches, concatenated in order (inputs, labels, puzzle_identifiers)."""
    parts: dict[str, list] = {key: [] for key in MODEL_KEYS}
    for batch in batches:
        valid = batch["valid"].bool() if "valid" in batch else None
        for key in MODEL_KEYS:
            value = torch.as_tensor(batch[key])
            parts[key].append(value if valid is None else value[valid])
    return {key: torch.cat(values).to(device) for key, values in parts.items() if values}


@torch.no_grad()
def evaluate_with_halting(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    batch_size: int,
    loss_type: str = "stablemax",
    backend: Optional[str] = None,
) -> HaltingEvaluation:
    """The examples of `batches` run with `run_with_halting` in `batch_size` slots; metrics from
    each example's answer at the step where it stopped (the trainer's metric definitions)."""
    examples = collect_examples(batches, device)
    sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float32, device=device)

    def add_stopped(carry: ACTCarry, outputs: dict, stopped: torch.Tensor) -> None:
        nonlocal sums
        _loss, metrics = act_loss(outputs, carry.current_data["labels"], stopped, carry.steps, loss_type, backend)
        sums += metrics

    _synchronize(device)
    started = time.perf_counter()
    run = run_with_halting(model, examples, batch_size, on_step=add_stopped)
    _synchronize(device)
    seconds = time.perf_counter() - started
    summary = summarise(sums.cpu(), prefix="")
    metrics = {"count": summary["count"], **{name: summary[name] for name in HALTED_METRICS}}
    histogram = np.bincount(run.steps.cpu().numpy(), minlength=model.config.halt_max_steps + 1)[1:]
    return HaltingEvaluation(metrics, [int(n) for n in histogram], seconds, run.example_steps,
                             run.example_steps * eval_step_flops(model.config, 1), run.model_calls)
