"""Op 6: the fused ACT loss head (LM cross entropy + metrics + Q-halt BCE in one pass over the logits).

Per sequence b with labelled tokens T_b (labels != ignore_index), n_b = max(|T_b|, 1):
    lm_loss[b]        = sum_{t in T_b} CE(logits[b, t], labels[b, t]) / n_b
    token_accuracy[b] = #{t in T_b: argmax logits[b, t] == labels[b, t]} / n_b
    seq_correct[b]    = every labelled token is argmax-correct (true when there are none)
    q_halt_loss[b]    = BCE-with-logits(q_halt_logits[b], seq_correct[b])
    token_count[b]    = |T_b| (int32)
CE is TRM's stable-max cross entropy (default) or the softmax one. Gradients flow to `logits` (through
lm_loss) and `q_halt_logits` (through q_halt_loss); the metrics are piecewise constant.
The references compute in float64 like the TRM code; the kernels compute in fp32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from trm_fast.ops.registry import resolve_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LABEL_DTYPES = (torch.int32, torch.int64)
LOSS_TYPES = ("stablemax", "softmax")
IGNORE_INDEX = -100  # label of positions without a target (the one definition; data and training use it)


# ----------------------------------------------------------------------------- references (the spec)
def _stablemax_transform(x: Tensor) -> Tensor:
    """s(x) = 1/(1-x) for x < 0, x + 1 otherwise: positive, monotone, grows only linearly.

    The unused branch is evaluated at min(x, 0), so it stays finite: at x = 1 (common in bf16 logits)
    1/(1-x) would be inf and its masked gradient 0 * inf = NaN. The reference adds 1e-30 for the
    same reason; the values are identical."""
    return torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)


def _per_token_loss(log_probs: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    labelled = labels != ignore_index
    safe_labels = torch.where(labelled, labels, 0).long()
    label_log_probs = log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(labelled, -label_log_probs, torch.zeros_like(label_log_probs))


def stablemax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-token stable-max CE in float64 (0 at ignored tokens), as TRM's loss."""
    s = _stablemax_transform(logits.double())
    return _per_token_loss(torch.log(s / s.sum(-1, keepdim=True)), labels, ignore_index)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-token softmax CE in float64 (0 at ignored tokens)."""
    return _per_token_loss(torch.log_softmax(logits.double(), dim=-1), labels, ignore_index)


def act_loss_head_reference(
    logits: Tensor, labels: Tensor, q_halt_logits: Tensor, ignore_index: int = IGNORE_INDEX, loss_type: str = "stablemax"
) -> dict[str, Tensor]:
    per_token = (stablemax_cross_entropy if loss_type == "stablemax" else softmax_cross_entropy)(
        logits, labels, ignore_index
    )
    labelled = labels != ignore_index
    count = labelled.sum(-1)
    divisor = count.clamp_min(1).double()
    correct = labelled & (logits.argmax(-1) == labels)
    n_correct = correct.sum(-1)
    seq_correct = n_correct == count
    q_halt_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        q_halt_logits.double(), seq_correct.double(), reduction="none"
    )
    return {
        "lm_loss": (per_token.sum(-1) / divisor).float(),
        "q_halt_loss": q_halt_loss.float(),
        "token_accuracy": (n_correct.double() / divisor).float(),
        "seq_correct": seq_correct,
        "token_count": count.to(torch.int32),
    }


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("trm_fast::act_loss_head_fwd", mutates_args=())
def _forward_op(
    logits: Tensor, labels: Tensor, q_halt_logits: Tensor, ignore_index: int, loss_type: str, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(lm_loss, q_halt_loss, token_accuracy, seq_correct, token_count)."""
    stablemax = loss_type == "stablemax"
    if backend == "cuda":
        from trm_fast.ops import cuda_ext

        return tuple(cuda_ext.run("loss_head_fwd", logits, labels, q_halt_logits, ignore_index, stablemax))
    if backend != "triton":
        raise ValueError(f"trm_fast::act_loss_head_fwd: backend must be 'triton' or 'cuda', got {backend!r}")
    from trm_fast.kernels.loss_head import act_loss_head_fwd

    return act_loss_head_fwd(logits, labels, q_halt_logits, ignore_index, stablemax)


@_forward_op.register_fake
def _forward_fake(logits, labels, q_halt_logits, ignore_index, loss_type, backend):
    batch = logits.shape[0]
    per_seq = logits.new_empty((batch,), dtype=torch.float32)
    return (
        per_seq, torch.empty_like(per_seq), torch.empty_like(per_seq),
        logits.new_empty((batch,), dtype=torch.bool), logits.new_empty((batch,), dtype=torch.int32),
    )


@torch.library.custom_op("trm_fast::act_loss_head_bwd", mutates_args=())
def _backward_op(
    logits: Tensor, labels: Tensor, token_count: Tensor, grad_lm_loss: Tensor, ignore_index: int, loss_type: str,
    backend: str,
) -> Tensor:
    """grad_logits for the upstream gradient grad_lm_loss [B] (fp32)."""
    stablemax = loss_type == "stablemax"
    if backend == "cuda":
        from trm_fast.ops import cuda_ext

        return cuda_ext.run("loss_head_bwd", logits, labels, token_count, grad_lm_loss.float(), ignore_index,
                            stablemax)
    if backend != "triton":
        raise ValueError(f"trm_fast::act_loss_head_bwd: backend must be 'triton' or 'cuda', got {backend!r}")
    from trm_fast.kernels.loss_head import act_loss_head_bwd

    return act_loss_head_bwd(logits, labels, token_count, grad_lm_loss, ignore_index, stablemax)


@_backward_op.register_fake
def _backward_fake(logits, labels, token_count, grad_lm_loss, ignore_index, loss_type, backend):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, labels, q_halt_logits, ignore_index, loss_type, backend = inputs
    _, _, _, seq_correct, token_count = output
    # Nothing [B, L, V]-sized is saved beyond the inputs: backward recomputes the probabilities.
    ctx.save_for_backward(logits, labels, q_halt_logits, seq_correct, token_count)
    ctx.ignore_index, ctx.loss_type, ctx.backend = ignore_index, loss_type, backend


def _backward(ctx, grad_lm_loss, grad_q_halt_loss, _grad_accuracy, _grad_correct, _grad_count):
    logits, labels, q_halt_logits, seq_correct, token_count = ctx.saved_tensors
    grad_logits = grad_q_halt = None
    if ctx.needs_input_grad[0] and grad_lm_loss is not None:
        grad_logits = _backward_op(
            logits, labels, token_count, grad_lm_loss.float().contiguous(), ctx.ignore_index, ctx.loss_type,
            ctx.backend,
        )
    if ctx.needs_input_grad[2] and grad_q_halt_loss is not None:
        # d BCE(q, t) / dq = sigmoid(q) - t: a [B] elementwise op, not worth a kernel
        grad_q_halt = (grad_q_halt_loss * (torch.sigmoid(q_halt_logits.float()) - seq_correct.float()))
        grad_q_halt = grad_q_halt.to(q_halt_logits.dtype)
    return grad_logits, None, grad_q_halt, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public function
def _validate(logits: Tensor, labels: Tensor, q_halt_logits: Tensor, loss_type: str) -> None:
    for name, tensor in (("logits", logits), ("labels", labels), ("q_halt_logits", q_halt_logits)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"act_loss_head: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"act_loss_head: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"act_loss_head: logits dtype {logits.dtype} is not supported (float32, float16, bfloat16)")
    if q_halt_logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"act_loss_head: q_halt_logits dtype {q_halt_logits.dtype} is not supported")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"act_loss_head: labels must be int32 or int64, got {labels.dtype}")
    if logits.dim() != 3 or logits.shape[-1] < 1:
        raise ValueError(f"act_loss_head: logits must be [B, L, V], got shape {tuple(logits.shape)}")
    batch, seq_len, _ = logits.shape
    if tuple(labels.shape) != (batch, seq_len):
        raise ValueError(f"act_loss_head: labels must have shape {(batch, seq_len)}, got {tuple(labels.shape)}")
    if tuple(q_halt_logits.shape) != (batch,):
        raise ValueError(f"act_loss_head: q_halt_logits must have shape {(batch,)}, got {tuple(q_halt_logits.shape)}")
    if labels.device != logits.device or q_halt_logits.device != logits.device:
        raise ValueError("act_loss_head: logits, labels and q_halt_logits must be on the same device")


def act_loss_head(
    logits: Tensor,
    labels: Tensor,
    q_halt_logits: Tensor,
    ignore_index: int = IGNORE_INDEX,
    loss_type: str = "stablemax",
    backend: str | None = None,
) -> dict[str, Tensor]:
    """Fused LM loss + metrics + Q-halt loss; see the module docstring. Returns a dict of [B] tensors."""
    _validate(logits, labels, q_halt_logits, loss_type)
    chosen = resolve_op("act_loss_head", logits.device, backend)
    if chosen == "torch":
        return act_loss_head_reference(logits, labels, q_halt_logits, ignore_index, loss_type)
    if chosen == "triton":
        from trm_fast.kernels.loss_head import MAX_VOCAB

        if logits.shape[-1] > MAX_VOCAB:
            raise ValueError(
                f"act_loss_head: vocab {logits.shape[-1]} exceeds the Triton kernel's limit {MAX_VOCAB} (use backend='torch')"
            )
    lm_loss, q_halt_loss, accuracy, seq_correct, count = _forward_op(
        logits.contiguous(), labels.contiguous(), q_halt_logits.contiguous(), int(ignore_index), loss_type, chosen
    )
    return {
        "lm_loss": lm_loss,
        "q_halt_loss": q_halt_loss,
        "token_accuracy": accuracy,
        "seq_correct": seq_correct,
        "token_count": count,
    }
