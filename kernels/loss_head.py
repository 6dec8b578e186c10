"""Fused ACT loss head: per-token cross entropy, argmax accuracy and the Q-halt BCE in one pass.

Forward: one program per sequence. It walks the sequence's L rows in tiles of [BLOCK_ROWS, BLOCK_V]
(the vocabulary, 6..12 in TRM, padded to a power of two) and keeps the per-sequence sums (CE,
correct tokens, labelled tokens) in registers, so the per-sequence reductions and the Q-halt BCE
happen in the same program: no atomics, no second launch, deterministic.

Backward: one program per tile of rows of the flattened [B*L, V] logits. It recomputes the
per-token probabilities from the logits instead of having the forward save a [B*L, V] gradient:
saving would cost a full fp32 write in forward plus a read in backward, recomputing costs one
extra read of the (bf16) logits, and the vocabulary is tiny, so the math is free. The only
per-sequence state backward needs is the labelled-token count, which is a forward output.

Stable-max (TRM): s(x) = 1/(1-x) for x < 0, x + 1 otherwise; p = s / sum(s); CE = log(sum s) - log(s_y).
Its gradient: dCE/dx_j = s'(x_j) * (1/sum(s) - [j == y] / s_y), with s'(x) = 1/(1-x)^2 or 1.
Softmax: CE = logsumexp(x) - x_y; dCE/dx_j = p_j - [j == y].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

MAX_VOCAB = 1024  # one row of the vocabulary lives in registers (trm_fast.ops.loss_head refuses wider ones)
_TILE_ELEMENTS = 2048  # logits per tile: 16 per thread at 4 warps


def loss_head_block_config(seq_len: int, vocab: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_V, num_warps) used by both kernels; AOT_SPECS reuse it."""
    block_v = triton.next_power_of_2(max(vocab, 2))
    block_rows = max(1, min(_TILE_ELEMENTS // block_v, triton.next_power_of_2(max(seq_len, 1))))
    return block_rows, block_v, 4


@triton.jit
def _token_losses(x, labels, labelled, cols, col_ok, STABLEMAX: tl.constexpr):
    """Per-row CE (0 where unlabelled) and argmax == label, for a [ROWS, V] fp32 tile."""
    is_label = cols[None, :] == labels[:, None]
    if STABLEMAX:
        neg = tl.minimum(x, 0.0)  # keeps the unused branch finite
        s = tl.where(x < 0, 1.0 / (1.0 - neg), x + 1.0)
        s = tl.where(col_ok[None, :], s, 0.0)
        s_label = tl.sum(tl.where(is_label, s, 0.0), axis=1)
        s_label = tl.where(labelled, s_label, 1.0)  # avoid log(0) on unlabelled rows
        ce = tl.log(tl.sum(s, axis=1)) - tl.log(s_label)
    else:
        masked = tl.where(col_ok[None, :], x, float("-inf"))
        row_max = tl.max(masked, axis=1)
        sum_exp = tl.sum(tl.exp(masked - row_max[:, None]), axis=1)
        x_label = tl.sum(tl.where(is_label, x, 0.0), axis=1)
        ce = tl.log(sum_exp) + row_max - x_label
    ce = tl.where(labelled, ce, 0.0)
    prediction = tl.argmax(tl.where(col_ok[None, :], x, float("-inf")), axis=1)
    correct = labelled & (prediction == labels)
    return ce, correct


@triton.jit
def _act_loss_head_fwd_kernel(
    logits_ptr, labels_ptr, q_halt_ptr,  # [B, L, V], [B, L], [B]
    lm_loss_ptr, q_halt_loss_ptr, accuracy_ptr, seq_correct_ptr, count_ptr,  # [B] outputs
    seq_len, vocab, ignore_index,
    BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, STABLEMAX: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    col_ok = cols < vocab
    ce_sum = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    correct_sum = tl.zeros([BLOCK_ROWS], dtype=tl.int32)
    labelled_sum = tl.zeros([BLOCK_ROWS], dtype=tl.int32)
    for start in range(0, seq_len, BLOCK_ROWS):
        positions = start + tl.arange(0, BLOCK_ROWS)
        row_ok = positions < seq_len
        rows = seq * seq_len + positions
        labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int32)
        labelled = row_ok & (labels != ignore_index)
        x = tl.load(
            logits_ptr + rows[:, None] * vocab + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        ).to(tl.float32)
        ce, correct = _token_losses(x, labels, labelled, cols, col_ok, STABLEMAX)
        ce_sum += ce
        correct_sum += correct.to(tl.int32)
        labelled_sum += labelled.to(tl.int32)
    total_ce = tl.sum(ce_sum, axis=0)
    n_correct = tl.sum(correct_sum, axis=0)
    n_labelled = tl.sum(labelled_sum, axis=0)
    divisor = tl.maximum(n_labelled, 1).to(tl.float32)
    seq_correct = n_correct == n_labelled  # vacuously true without labels, as in TRM
    # BCE with logits, in the overflow-free form max(q, 0) - q*t + log(1 + exp(-|q|)).
    q = tl.load(q_halt_ptr + seq).to(tl.float32)
    target = seq_correct.to(tl.float32)
    bce = tl.maximum(q, 0.0) - q * target + tl.log(1.0 + tl.exp(-tl.abs(q)))
    tl.store(lm_loss_ptr + seq, total_ce / divisor)
    tl.store(accuracy_ptr + seq, n_correct.to(tl.float32) / divisor)
    tl.store(q_halt_loss_ptr + seq, bce)
    tl.store(seq_correct_ptr + seq, seq_correct)
    tl.store(count_ptr + seq, n_labelled)


@triton.jit
def _act_loss_head_bwd_kernel(
    logits_ptr, labels_ptr, count_ptr, grad_lm_loss_ptr,  # [B*L, V], [B*L], [B] int32, [B] fp32
    grad_logits_ptr,  # [B*L, V] in the logits dtype
    n_rows, seq_len, vocab, ignore_index,
    BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, STABLEMAX: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_V)
    col_ok = cols < vocab
    mask = row_ok[:, None] & col_ok[None, :]
    seqs = rows // seq_len
    count = tl.load(count_ptr + seqs, mask=row_ok, other=1)
    # d lm_loss[b] / d CE_t = 1 / max(count_b, 1)
    scale = tl.load(grad_lm_loss_ptr + seqs, mask=row_ok, other=0.0) / tl.maximum(count, 1).to(tl.float32)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int32)
    labelled = row_ok & (labels != ignore_index)
    x = tl.load(logits_ptr + rows[:, None] * vocab + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    is_label = cols[None, :] == labels[:, None]
    if STABLEMAX:
        neg = tl.minimum(x, 0.0)  # keeps the unused branch finite
        s = tl.where(x < 0, 1.0 / (1.0 - neg), x + 1.0)
        s = tl.where(col_ok[None, :], s, 0.0)
        ds = tl.where(x < 0, 1.0 / ((1.0 - neg) * (1.0 - neg)), 1.0)
        inv_sum = 1.0 / tl.sum(s, axis=1)
        s_label = tl.sum(tl.where(is_label, s, 0.0), axis=1)
        inv_label = 1.0 / tl.where(labelled, s_label, 1.0)
        grad = ds * (inv_sum[:, None] - tl.where(is_label, inv_label[:, None], 0.0))
    else:
        masked = tl.where(col_ok[None, :], x, float("-inf"))
        e = tl.exp(masked - tl.max(masked, axis=1)[:, None])
        grad = e / tl.sum(e, axis=1)[:, None] - tl.where(is_label, 1.0, 0.0)
    grad = tl.where(labelled[:, None], grad * scale[:, None], 0.0)
    tl.store(grad_logits_ptr + rows[:, None] * vocab + cols[None, :], grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
# Inputs as trm_fast.ops.loss_head checks them: contiguous logits [B, L, V] (V <= MAX_VOCAB) and
# labels [B, L], q_halt_logits [B], all on one device.
def act_loss_head_fwd(
    logits: torch.Tensor, labels: torch.Tensor, q_halt_logits: torch.Tensor, ignore_index: int, stablemax: bool
) -> tuple[torch.Tensor, ...]:
    """(lm_loss, q_halt_loss, token_accuracy fp32 [B], seq_correct bool [B], token_count int32 [B])."""
    batch, seq_len, vocab = logits.shape
    q_halt_logits = q_halt_logits.contiguous()
    lm_loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    q_halt_loss = torch.empty_like(lm_loss)
    accuracy = torch.empty_like(lm_loss)
    seq_correct = torch.empty(batch, dtype=torch.bool, device=logits.device)
    count = torch.empty(batch, dtype=torch.int32, device=logits.device)
    if batch == 0:
        return lm_loss, q_halt_loss, accuracy, seq_correct, count
    block_rows, block_v, num_warps = loss_head_block_config(seq_len, vocab)
    _act_loss_head_fwd_kernel[(batch,)](
        logits, labels, q_halt_logits, lm_loss, q_halt_loss, accuracy, seq_correct, count,
        seq_len, vocab, ignore_index,
        BLOCK_ROWS=block_rows, BLOCK_V=block_v, STABLEMAX=stablemax, num_warps=num_warps,
    )
    return lm_loss, q_halt_loss, accuracy, seq_correct, count


def act_loss_head_bwd(
    logits: torch.Tensor, labels: torch.Tensor, token_count: torch.Tensor, grad_lm_loss: torch.Tensor,
    ignore_index: int, stablemax: bool,
) -> torch.Tensor:
    """Gradient of sum_b grad_lm_loss[b] * lm_loss[b] w.r.t. logits, in the logits dtype."""
    batch, seq_len, vocab = logits.shape
    grad_logits = torch.empty_like(logits)
    n_rows = batch * seq_len
    if n_rows == 0:
        return grad_logits
    block_rows, block_v, num_warps = loss_head_block_config(seq_len, vocab)
    _act_loss_head_bwd_kernel[(triton.cdiv(n_rows, block_rows),)](
        logits, labels, token_count.contiguous(), grad_lm_loss.float().contiguous(), grad_logits,
        n_rows, seq_len, vocab, ignore_index,
        BLOCK_ROWS=block_rows, BLOCK_V=block_v, STABLEMAX=stablemax, num_warps=num_warps,
    )
    return grad_logits


# ----------------------------------------------------------------------------- AOT specs
def _aot_specs() -> list[AOTSpec]:
    specs = []
    # bf16 logits at the paper shapes: maze/ARC (seq 900, V 6 / 12) and sudoku (seq 81, V 11)
    for seq_len, vocab in ((900, 6), (900, 12), (81, 11)):
        block_rows, block_v, num_warps = loss_head_block_config(seq_len, vocab)
        for stablemax in (True, False):
            constexprs = {"BLOCK_ROWS": block_rows, "BLOCK_V": block_v, "STABLEMAX": stablemax}
            tag = f"[bf16,L{seq_len},V{vocab},{'stablemax' if stablemax else 'softmax'}]"
            specs.append(AOTSpec(
                name=f"loss_head.fwd{tag}",
                fn=_act_loss_head_fwd_kernel,
                signature={
                    "logits_ptr": "*bf16", "labels_ptr": "*i32", "q_halt_ptr": "*fp32",
                    "lm_loss_ptr": "*fp32", "q_halt_loss_ptr": "*fp32", "accuracy_ptr": "*fp32",
                    "seq_correct_ptr": "*i1", "count_ptr": "*i32",
                    "seq_len": "i32", "vocab": "i32", "ignore_index": "i32",
                    "BLOCK_ROWS": "constexpr", "BLOCK_V": "constexpr", "STABLEMAX": "constexpr",
                },
                constexprs=constexprs,
                num_warps=num_warps,
            ))
            specs.append(AOTSpec(
                name=f"loss_head.bwd{tag}",
                fn=_act_loss_head_bwd_kernel,
                signature={
                    "logits_ptr": "*bf16", "labels_ptr": "*i32", "count_ptr": "*i32", "grad_lm_loss_ptr": "*fp32",
                    "grad_logits_ptr": "*bf16",
                    "n_rows": "i32", "seq_len": "i32", "vocab": "i32", "ignore_index": "i32",
                    "BLOCK_ROWS": "constexpr", "BLOCK_V": "constexpr", "STABLEMAX": "constexpr",
                },
                constexprs=constexprs,
                num_warps=num_warps,
            ))
    return specs


from trm_fast.kernels._aot import with_allowed_spills  # noqa: E402  (the AOT specs' helper)

# Pointers only: seq_len 900 / 81, vocab 6..12 and n_rows = B * L are not (always) multiples of 16.
# Measured with the launch specialisation (docs/kernels.md): the softmax forward at V = 11 / 12 spills 12 B
# on sm_80 with Triton 3.8 (not on sm_90, nor with 3.6). To remove when the kernel is next tuned.
AOT_SPECS: list[AOTSpec] = [
    with_allowed_spills(spec, 80, "12 B with Triton 3.8 (none with 3.6)")
    if spec.name.startswith("loss_head.fwd") and "softmax" in spec.name and ",V6," not in spec.name else spec
    for spec in _aot_specs()
]
