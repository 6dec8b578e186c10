"""Op 2: a + b (+ c) in one pass, accumulated in fp32, result in the input dtype.

Used for TRM's state injection (z + y + x, y + z) where it is not already fused into the previous
norm's epilogue (op 1). The gradient of each input is grad_out itself, so backward needs no kernel.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from trm_fast.ops.registry import resolve_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def add_streams_reference(a: Tensor, b: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """The sum in fp32, rounded once to the input dtype."""
    total = a.float() + b.float()
    if c is not None:
        total = total + c.float()
    return total.to(a.dtype)


@torch.library.custom_op("trm_fast::add_streams", mutates_args=())
def _add_streams_op(a: Tensor, b: Tensor, c: Optional[Tensor], backend: str) -> Tensor:
    if backend not in ("triton", "cuda"):  # no C++ kernel: resolve() maps "cuda" to "triton"
        raise ValueError(f"trm_fast::add_streams: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.add_streams import add_streams as launch

    return launch(a, b, c)


@_add_streams_op.register_fake
def _add_streams_fake(a, b, c, backend):
    return torch.empty_like(a)


def _setup_context(ctx, inputs, output):
    ctx.has_c = inputs[2] is not None


def _backward(ctx, grad_out):
    return grad_out, grad_out, (grad_out if ctx.has_c else None), None


_add_streams_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(a: Tensor, b: Tensor, c: Optional[Tensor]) -> None:
    for label, tensor in (("a", a), ("b", b), ("c", c)):
        if tensor is None and label == "c":
            continue
        if not isinstance(tensor, Tensor):
            raise TypeError(f"add_streams: {label} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"add_streams: {label} has dtype {tensor.dtype} (use float32, float16 or bfloat16)")
        if tensor.dtype != a.dtype:
            raise TypeError(f"add_streams: {label} has dtype {tensor.dtype}, a has {a.dtype}")
        if tensor.shape != a.shape:
            raise ValueError(f"add_streams: {label} has shape {tuple(tensor.shape)}, a has {tuple(a.shape)}")
        if tensor.device != a.device:
            raise ValueError(f"add_streams: {label} is on {tensor.device}, a on {a.device}")


def add_streams(a: Tensor, b: Tensor, c: Optional[Tensor] = None, backend: str | None = None) -> Tensor:
    """a + b (+ c): same shape, dtype and device; fp32 accumulation."""
    _validate(a, b, c)
    chosen = resolve_op("add_streams", a.device, backend)
    if chosen == "torch":
        return add_streams_reference(a, b, c)
    for label, tensor in (("a", a), ("b", b), ("c", c)):
        if tensor is not None and not tensor.is_contiguous():
            raise ValueError(f"add_streams: backend {chosen!r} needs contiguous inputs, {label} is not (or use backend='torch')")
    return _add_streams_op(a, b, c, chosen)
