"""Op 1: residual add + weightless RMSNorm over the last dim, optionally fused with the next injection.

TRM's post-norm block ends with `h = rms(h + delta)`, and the next recursion call starts from
`h + injection` (z + y + x, or y + z). Fusing both saves a full read/write of [B, S, D] per call:
`rms_norm_residual_inject` returns (out, next_input) in one pass. Only `out` and one fp32 rstd per row
are saved for backward:  with g = grad_out + grad_next,
    grad_residual = grad_delta = rstd * (g - out * mean(g * out, -1)),  grad_inject_* = grad_next.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from trm_fast.ops.registry import resolve_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- reference (the spec)
def rms_norm_residual_reference(residual: Tensor, delta: Tensor, eps: float = 1e-5) -> Tensor:
    """rms(residual + delta) exactly as TRM computes it: the add in the input dtype, the norm in fp32."""
    summed = (residual + delta).float()
    normed = summed * torch.rsqrt(summed.square().mean(-1, keepdim=True) + eps)
    return normed.to(residual.dtype)


def rms_norm_residual_inject_reference(
    residual: Tensor, delta: Tensor, inject_a: Tensor, inject_b: Optional[Tensor] = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    out = rms_norm_residual_reference(residual, delta, eps)
    next_input = out + inject_a
    if inject_b is not None:
        next_input = next_input + inject_b
    return out, next_input


# ----------------------------------------------------------------------------- registered ops
def _rows(tensor: Tensor) -> int:
    return tensor.numel() // tensor.shape[-1]


@torch.library.custom_op("trm_fast::rms_norm_residual_fwd", mutates_args=())
def _forward_op(
    residual: Tensor, delta: Tensor, inject_a: Optional[Tensor], inject_b: Optional[Tensor], eps: float, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, next_input, rstd fp32 [rows]); next_input is an empty tensor when there is no injection."""
    if backend == "cuda":
        from trm_fast.ops import cuda_ext

        out, next_input, rstd = cuda_ext.run("rms_norm_residual_fwd", residual, delta, inject_a, inject_b, eps)
        return out, next_input, rstd.reshape(-1)
    if backend != "triton":
        raise ValueError(f"trm_fast::rms_norm_residual_fwd: backend must be 'triton' or 'cuda', got {backend!r}")
    from trm_fast.kernels.rms_norm_residual import rms_norm_residual_fwd

    out, next_input, rstd = rms_norm_residual_fwd(residual, delta, inject_a, inject_b, eps)
    if next_input is None:
        next_input = residual.new_empty(0)
    return out, next_input, rstd


@_forward_op.register_fake
def _forward_fake(residual, delta, inject_a, inject_b, eps, backend):
    next_input = torch.empty_like(residual) if inject_a is not None else residual.new_empty(0)
    rstd = residual.new_empty((_rows(residual),), dtype=torch.float32)
    return torch.empty_like(residual), next_input, rstd


@torch.library.custom_op("trm_fast::rms_norm_residual_bwd", mutates_args=())
def _backward_op(grad_out: Tensor, grad_next: Optional[Tensor], out: Tensor, rstd: Tensor, backend: str) -> Tensor:
    """grad_s = grad_residual = grad_delta."""
    if backend == "cuda":
        from trm_fast.ops import cuda_ext

        return cuda_ext.run("rms_norm_residual_bwd", grad_out, grad_next, out, rstd)
    if backend != "triton":
        raise ValueError(f"trm_fast::rms_norm_residual_bwd: backend must be 'triton' or 'cuda', got {backend!r}")
    from trm_fast.kernels.rms_norm_residual import rms_norm_residual_bwd

    return rms_norm_residual_bwd(grad_out, grad_next, out, rstd)


@_backward_op.register_fake
def _backward_fake(grad_out, grad_next, out, rstd, backend):
    return torch.empty_like(out)


def _setup_context(ctx, inputs, output):
    _, _, inject_a, inject_b, _, backend = inputs
    out, _, rstd = output
    ctx.save_for_backward(out, rstd)
    ctx.backend = backend
    ctx.has_inject_a = inject_a is not None
    ctx.has_inject_b = inject_b is not None


def _backward(ctx, grad_out, grad_next, _grad_rstd):
    out, rstd = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    if not ctx.has_inject_a:
        grad_next = None
    elif grad_next is not None:
        grad_next = grad_next.contiguous()
    grad_s = _backward_op(grad_out, grad_next, out, rstd, ctx.backend)
    grad_inject_a = grad_next if ctx.has_inject_a else None
    grad_inject_b = grad_next if ctx.has_inject_b else None
    return grad_s, grad_s, grad_inject_a, grad_inject_b, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public functions
def _validate(name: str, residual: Tensor, others: dict[str, Optional[Tensor]]) -> None:
    if not isinstance(residual, Tensor):
        raise TypeError(f"{name}: residual must be a torch.Tensor, got {type(residual).__name__}")
    if residual.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: dtype {residual.dtype} is not supported (use float32, float16 or bfloat16)")
    if residual.dim() == 0 or residual.shape[-1] == 0:
        raise ValueError(f"{name}: expected a [..., D] tensor with D > 0, got shape {tuple(residual.shape)}")
    for label, tensor in others.items():
        if tensor is None:
            continue
        if tensor.dtype != residual.dtype:
            raise TypeError(f"{name}: {label} has dtype {tensor.dtype}, residual has {residual.dtype}")
        if tensor.shape != residual.shape:
            raise ValueError(f"{name}: {label} has shape {tuple(tensor.shape)}, residual has {tuple(residual.shape)}")
        if tensor.device != residual.device:
            raise ValueError(f"{name}: {label} is on {tensor.device}, residual on {residual.device}")


def _check_kernel_inputs(name: str, tensors: dict[str, Optional[Tensor]], hidden: int, chosen: str) -> None:
    for label, tensor in tensors.items():
        if tensor is not None and not tensor.is_contiguous():
            raise ValueError(f"{name}: backend {chosen!r} needs contiguous inputs, {label} is not (or use backend='torch')")
    if chosen == "triton":
        from trm_fast.kernels.rms_norm_residual import MAX_HIDDEN

        if hidden > MAX_HIDDEN:
            raise ValueError(f"{name}: D={hidden} exceeds the Triton kernel's limit {MAX_HIDDEN} (use backend='torch')")


def rms_norm_residual(residual: Tensor, delta: Tensor, eps: float = 1e-5, backend: str | None = None) -> Tensor:
    """rms(residual + delta) over the last dim, weightless, statistics in fp32, result in the input dtype."""
    inputs = {"residual": residual, "delta": delta}
    _validate("rms_norm_residual", residual, inputs)
    chosen = resolve_op("rms_norm_residual", residual.device, backend)
    if chosen == "torch":
        return rms_norm_residual_reference(residual, delta, eps)
    _check_kernel_inputs("rms_norm_residual", inputs, residual.shape[-1], chosen)
    out, _, _ = _forward_op(residual, delta, None, None, float(eps), chosen)
    return out


def rms_norm_residual_inject(
    residual: Tensor,
    delta: Tensor,
    inject_a: Tensor,
    inject_b: Optional[Tensor] = None,
    eps: float = 1e-5,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """(out, next_input): out = rms(residual + delta), next_input = out + inject_a (+ inject_b)."""
    inputs = {"residual": residual, "delta": delta, "inject_a": inject_a, "inject_b": inject_b}
    if inject_a is None:
        raise ValueError("rms_norm_residual_inject: inject_a is required (use rms_norm_residual without injection)")
    _validate("rms_norm_residual_inject", residual, inputs)
    chosen = resolve_op("rms_norm_residual", residual.device, backend)
    if chosen == "torch":
        return rms_norm_residual_inject_reference(residual, delta, inject_a, inject_b, eps)
    _check_kernel_inputs("rms_norm_residual_inject", inputs, residual.shape[-1], chosen)
    out, next_input, _ = _forward_op(residual, delta, inject_a, inject_b, float(eps), chosen)
    return out, next_input
