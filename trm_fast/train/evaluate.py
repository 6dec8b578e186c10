"""Evaluation and inference: every example runs all halt_max_steps supervision steps (batch-uniform,
as in the reference), and the metrics are read from the last step's outputs.

Batches are dicts with inputs [B, L], labels [B, L], puzzle_identifiers [B] and optionally a bool
`valid` [B] marking the real rows of a padded last batch; padded rows count nowhere.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from trm_fast.train.distributed import DistContext, all_reduce_sum
from trm_fast.train.losses import METRIC_NAMES, act_loss, summarise

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
        model_batch = {key: batch[key] for key in MODEL_KEYS}
        carry = model.initial_carry(model_batch)
        outputs = {}
        for step_index in range(model.config.halt_max_steps):
            carry, outputs = model(carry, model_batch)
            if on_step is not None:
                on_step(step_index, outputs)
    finally:
        model.train(was_training)
    return carry, outputs


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    loss_type: str = "stablemax",
    backend: Optional[str] = None,
    context: Optional[DistContext] = None,
    prefix: str = "eval/",
) -> dict[str, float]:
    """Metrics over all (valid) examples of `batches` (this rank's shard; summed over ranks)."""
    sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float32, device=device)
    for batch in batches:
        batch = batch_to_device(batch, device)
        carry, outputs = run_all_steps(model, batch)
        labels = batch["labels"]
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(labels.shape[0], dtype=torch.bool, device=device)
        valid = valid.bool()
        _loss, metrics = act_loss(outputs, labels, valid, carry.steps, loss_type, backend, row_mask=valid)
        sums += metrics
    if context is not None:
        all_reduce_sum(sums, context)
    result = summarise(sums.cpu(), prefix=prefix)
    return result
