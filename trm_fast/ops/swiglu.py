"""Op 4: SwiGLU activation silu(gate) * up on a fused gate/up projection, split along dim -1 or -2.

dim=-1 is the channel MLP ([..., 2I] -> [..., I]); dim=-2 is mlp_t's token MLP ([B, 2I, D] ->
[B, I, D]), computed in place of the transposes the reference model uses. Backward recomputes
silu from the saved gate_up, so no activation is stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trm_fast.ops.registry import resolve_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def swiglu_reference(gate_up: Tensor, dim: int = -1) -> Tensor:
    gate, up = gate_up.chunk(2, dim)
    return F.silu(gate) * up


@torch.library.custom_op("trm_fast::swiglu_fwd", mutates_args=())
def _forward_op(gate_up: Tensor, dim: int, backend: str) -> Tensor:
    if backend not in ("triton", "cuda"):  # no C++ kernel: resolve() maps "cuda" to "triton"
        raise ValueError(f"trm_fast::swiglu_fwd: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.swiglu import swiglu_fwd

    return swiglu_fwd(gate_up, dim)


@_forward_op.register_fake
def _forward_fake(gate_up, dim, backend):
    shape = list(gate_up.shape)
    shape[dim] = shape[dim] // 2
    return gate_up.new_empty(shape)


@torch.library.custom_op("trm_fast::swiglu_bwd", mutates_args=())
def _backward_op(grad_out: Tensor, gate_up: Tensor, dim: int, backend: str) -> Tensor:
    if backend not in ("triton", "cuda"):
        raise ValueError(f"trm_fast::swiglu_bwd: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.swiglu import swiglu_bwd

    return swiglu_bwd(grad_out, gate_up, dim)


@_backward_op.register_fake
def _backward_fake(grad_out, gate_up, dim, backend):
    return torch.empty_like(gate_up)


def _setup_context(ctx, inputs, output):
    gate_up, dim, backend = inputs
    ctx.save_for_backward(gate_up)
    ctx.dim = dim
    ctx.backend = backend


def _backward(ctx, grad_out):
    (gate_up,) = ctx.saved_tensors
    return _backward_op(grad_out.contiguous(), gate_up, ctx.dim, ctx.backend), None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def swiglu(gate_up: Tensor, dim: int = -1, backend: str | None = None) -> Tensor:
    """silu(gate) * up where gate, up = gate_up.chunk(2, dim); dim is -1 (channels) or -2 (tokens)."""
    if not isinstance(gate_up, Tensor):
        raise TypeError(f"swiglu: gate_up must be a torch.Tensor, got {type(gate_up).__name__}")
    if gate_up.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"swiglu: dtype {gate_up.dtype} is not supported (use float32, float16 or bfloat16)")
    if gate_up.dim() < 2 and dim == -2 or gate_up.dim() < 1:
        raise ValueError(f"swiglu: gate_up of shape {tuple(gate_up.shape)} has no dim {dim}")
    if dim not in (-1, -2, gate_up.dim() - 1, gate_up.dim() - 2):
        raise ValueError(f"swiglu: dim must be -1 or -2, got {dim}")
    dim = dim - gate_up.dim() if dim >= 0 else dim  # canonical negative form
    if gate_up.shape[dim] % 2:
        raise ValueError(f"swiglu: size {gate_up.shape[dim]} of dim {dim} must be even (gate and up halves)")
    chosen = resolve_op("swiglu", gate_up.device, backend)
    if chosen == "torch":
        return swiglu_reference(gate_up, dim)
    if not gate_up.is_contiguous():
        raise ValueError(f"swiglu: backend {chosen!r} needs a contiguous gate_up (or use backend='torch')")
    from trm_fast.kernels.swiglu import fits_grid, split_shape

    _, half = split_shape(gate_up.shape, dim)
    if not fits_grid(half):
        raise ValueError(f"swiglu: {half} elements per gate/up half exceed the Triton kernel's grid (use backend='torch')")
    return _forward_op(gate_up, dim, chosen)
