"""Op 5: mlp_t's post-norm, rms(residual + delta) over the token axis (dim -2) of [..., S, D].

The reference model normalises mlp_t's output in a transposed [B, D, S] layout; this op normalises
the [B, S, D] layout over S directly, so the block needs no transposed copies:
    gate_up = W_gu @ h  ([2I, S] x [B, S, D] -> [B, 2I, D]);  act = swiglu(gate_up, dim=-2)
    h = token_rms_norm_residual(h, W_down @ act)
Backward saves only out and one fp32 rstd per (batch, column):
    grad_residual = grad_delta = rstd * (grad_out - out * mean_S(grad_out * out)).
"""
from __future__ import annotations

import torch
from torch import Tensor

from trm_fast.ops.registry import resolve_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def token_rms_norm_residual_reference(residual: Tensor, delta: Tensor, eps: float = 1e-5) -> Tensor:
    """The add in the input dtype, the norm over dim -2 in fp32, the result in the input dtype."""
    summed = (residual + delta).float()
    normed = summed * torch.rsqrt(summed.square().mean(-2, keepdim=True) + eps)
    return normed.to(residual.dtype)


@torch.library.custom_op("trm_fast::token_rms_norm_residual_fwd", mutates_args=())
def _forward_op(residual: Tensor, delta: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    """(out, rstd fp32 [batch, D]) with batch = numel / (S * D)."""
    if backend not in ("triton", "cuda"):  # no C++ kernel: resolve() maps "cuda" to "triton"
        raise ValueError(f"trm_fast::token_rms_norm_residual_fwd: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.token_rms_norm import token_rms_norm_fwd

    return token_rms_norm_fwd(residual, delta, eps)


@_forward_op.register_fake
def _forward_fake(residual, delta, eps, backend):
    seq, hidden = residual.shape[-2], residual.shape[-1]
    batch = residual.numel() // (seq * hidden)
    return torch.empty_like(residual), residual.new_empty((batch, hidden), dtype=torch.float32)


@torch.library.custom_op("trm_fast::token_rms_norm_residual_bwd", mutates_args=())
def _backward_op(grad_out: Tensor, out: Tensor, rstd: Tensor, backend: str) -> Tensor:
    if backend not in ("triton", "cuda"):
        raise ValueError(f"trm_fast::token_rms_norm_residual_bwd: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.token_rms_norm import token_rms_norm_bwd

    return token_rms_norm_bwd(grad_out, out, rstd)


@_backward_op.register_fake
def _backward_fake(grad_out, out, rstd, backend):
    return torch.empty_like(out)


def _setup_context(ctx, inputs, output):
    out, rstd = output
    ctx.save_for_backward(out, rstd)
    ctx.backend = inputs[3]


def _backward(ctx, grad_out, _grad_rstd):
    out, rstd = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_s = _backward_op(grad_out, out, rstd, ctx.backend)
    return grad_s, grad_s, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def token_rms_norm_residual(residual: Tensor, delta: Tensor, eps: float = 1e-5, backend: str | None = None) -> Tensor:
    """rms(residual + delta) over dim -2 (tokens) of [..., S, D]; fp32 statistics, input dtype out."""
    name = "token_rms_norm_residual"
    for label, tensor in (("residual", residual), ("delta", delta)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}: {label} has dtype {tensor.dtype} (use float32, float16 or bfloat16)")
    if delta.dtype != residual.dtype:
        raise TypeError(f"{name}: delta has dtype {delta.dtype}, residual has {residual.dtype}")
    if residual.dim() < 2 or residual.shape[-1] == 0 or residual.shape[-2] == 0:
        raise ValueError(f"{name}: expected [..., S, D] with S, D > 0, got shape {tuple(residual.shape)}")
    if delta.shape != residual.shape:
        raise ValueError(f"{name}: delta has shape {tuple(delta.shape)}, residual has {tuple(residual.shape)}")
    if delta.device != residual.device:
        raise ValueError(f"{name}: delta is on {delta.device}, residual on {residual.device}")
    chosen = resolve_op("token_rms_norm_residual", residual.device, backend)
    if chosen == "torch":
        return token_rms_norm_residual_reference(residual, delta, eps)
    if not (residual.is_contiguous() and delta.is_contiguous()):
        raise ValueError(f"{name}: backend {chosen!r} needs contiguous inputs (or use backend='torch')")
    out, _ = _forward_op(residual, delta, float(eps), chosen)
    return out
