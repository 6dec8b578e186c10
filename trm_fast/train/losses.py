"""The training objective of one supervision step, and its metrics, kept on the device.

    total = sum_b lm_loss[b] + 0.5 * (sum_b q_halt_loss[b] + sum_b q_continue_loss[b])
and the trainer back-propagates total / global_batch_size (reference: models/losses.py + pretrain.py).
lm_loss, q_halt_loss, the token accuracy and sequence correctness come from op 6
(`trm_fast.ops.loss_head.act_loss_head`; its "torch" backend is the float64 reference).

Metrics are returned as one vector of SUMS (see METRIC_NAMES) so a trainer can add them up over
steps and ranks without reading anything to the host. As in the reference, accuracies and steps are
summed over the sequences that HALTED at this step (and have labels): those are the finished
answers. The losses are summed over all sequences of the batch, the quantity being optimised.
`summarise` turns accumulated sums into averages.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from trm_fast.ops.loss_head import IGNORE_INDEX, act_loss_head

METRIC_NAMES = (
    "count",  # halted, labelled sequences (denominator of the next four)
    "accuracy",  # token accuracy
    "exact_accuracy",  # whole answer correct
    "q_halt_accuracy",  # (q_halt >= 0) == exact correctness
    "steps",  # supervision steps the halted sequences took
    "lm_loss",
    "q_halt_loss",
    "q_continue_loss",
    "sequences",  # all sequences (denominator of the losses)
)
HALTED_METRICS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")
LOSS_METRICS = ("lm_loss", "q_halt_loss", "q_continue_loss")


def act_loss(
    outputs: dict,
    labels: torch.Tensor,
    halted: torch.Tensor,
    steps: torch.Tensor,
    loss_type: str = "stablemax",
    backend: Optional[str] = None,
    row_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss to back-propagate, metric sums [len(METRIC_NAMES)] fp32, detached).

    `row_mask` (bool [B]) restricts everything to those rows (evaluation's padded batches)."""
    head = act_loss_head(
        outputs["logits"], labels, outputs["q_halt_logits"], ignore_index=IGNORE_INDEX, loss_type=loss_type, backend=backend
    )
    per_row_lm, per_row_q_halt = head["lm_loss"], head["q_halt_loss"]
    per_row_q_continue = None
    if "target_q_continue" in outputs:
        per_row_q_continue = F.binary_cross_entropy_with_logits(
            outputs["q_continue_logits"].float(), outputs["target_q_continue"].float(), reduction="none"
        )
    if row_mask is not None:
        halted = halted & row_mask
        per_row_lm = torch.where(row_mask, per_row_lm, 0.0)
        per_row_q_halt = torch.where(row_mask, per_row_q_halt, 0.0)
        if per_row_q_continue is not None:
            per_row_q_continue = torch.where(row_mask, per_row_q_continue, 0.0)
    lm_loss = per_row_lm.sum()
    q_halt_loss = per_row_q_halt.sum()
    if per_row_q_continue is not None:
        q_continue_loss = per_row_q_continue.sum()
    else:
        q_continue_loss = torch.zeros((), dtype=torch.float32, device=lm_loss.device)
    total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)

    with torch.no_grad():
        seq_correct = head["seq_correct"]
        finished = halted & (head["token_count"] > 0)
        q_says_correct = outputs["q_halt_logits"].detach() >= 0
        zero = torch.zeros((), dtype=torch.float32, device=lm_loss.device)
        metrics = torch.stack(
            [
                finished.sum().float(),
                torch.where(finished, head["token_accuracy"].float(), zero).sum(),
                (finished & seq_correct).sum().float(),
                (finished & (q_says_correct == seq_correct)).sum().float(),
                torch.where(finished, steps.float(), zero).sum(),
                lm_loss.detach().float(),
                q_halt_loss.detach().float(),
                q_continue_loss.detach().float(),
                (
                    row_mask.sum().float()
                    if row_mask is not None
                    else torch.full((), float(labels.shape[0]), dtype=torch.float32, device=lm_loss.device)
                ),
            ]
        )
    return total, metrics


def summarise(sums: torch.Tensor | list, prefix: str = "") -> dict[str, float]:
    """Averages from accumulated metric sums (a host-side tensor or list in METRIC_NAMES order)."""
    values = dict(zip(METRIC_NAMES, [float(v) for v in (sums.tolist() if torch.is_tensor(sums) else sums)]))
    count = max(values["count"], 1.0)
    sequences = max(values["sequences"], 1.0)
    result = {f"{prefix}count": values["count"]}
    for name in HALTED_METRICS:
        result[prefix + name] = values[name] / count
    for name in LOSS_METRICS:
        result[prefix + name] = values[name] / sequences
    result[prefix + "loss"] = (values["lm_loss"] + 0.5 * (values["q_halt_loss"] + values["q_continue_loss"])) / sequences
    return result
