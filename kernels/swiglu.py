"""SwiGLU activation on a fused gate/up tensor, split along any dim, without copies.

With gate_up viewed as [outer, 2, half] (half = size(dim)/2 * prod(shape after dim)), the gate of
element (o, n) sits at o*2*half + n, its up at o*2*half + half + n, and the output at o*half + n.
dim=-1 (channel MLP: inner size 1) and dim=-2 (mlp_t token MLP: [B, 2I, D]) are the same kernel.
Forward: out = silu(gate) * up. Backward recomputes silu from gate_up (no stored activation):
    grad_gate = grad * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate))),  grad_up = grad * silu(gate)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

# Grid axis 1 holds the blocks of one outer slice; CUDA limits it to 65535.
_MAX_GRID_Y = 65535


def split_shape(shape: torch.Size, dim: int) -> tuple[int, int]:
    """(outer, half): the number of [gate | up] slices and the elements in each half of one slice."""
    dim = dim % len(shape)
    inner = 1
    for size in shape[dim + 1:]:
        inner *= size
    outer = 1
    for size in shape[:dim]:
        outer *= size
    return outer, (shape[dim] // 2) * inner


def block_config(half: int) -> dict:
    """Elements per program (a power of two that divides `half` when one >= 256 does, so no lanes idle)."""
    block = min(1024, triton.next_power_of_2(half))
    while block > 256 and half % block:
        block //= 2
    return {"BLOCK": block, "num_warps": 4}


@triton.jit
def swiglu_fwd_kernel(
    gate_up_ptr, out_ptr,
    half,  # elements in each half of one outer slice
    BLOCK: tl.constexpr,
):
    outer = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < half
    gate_ptrs = gate_up_ptr + outer * 2 * half + offsets
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + half, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + outer * half + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(
    grad_out_ptr, gate_up_ptr, grad_gate_up_ptr,
    half,
    BLOCK: tl.constexpr,
):
    outer = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < half
    gate_offsets = outer * 2 * half + offsets
    gate = tl.load(gate_up_ptr + gate_offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + gate_offsets + half, mask=mask, other=0.0).to(tl.float32)
    grad = tl.load(grad_out_ptr + outer * half + offsets, mask=mask, other=0.0).to(tl.float32)
    sigmoid = tl.sigmoid(gate)
    silu = gate * sigmoid
    grad_gate = grad * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    grad_up = grad * silu
    dtype = grad_gate_up_ptr.dtype.element_ty
    tl.store(grad_gate_up_ptr + gate_offsets, grad_gate.to(dtype), mask=mask)
    tl.store(grad_gate_up_ptr + gate_offsets + half, grad_up.to(dtype), mask=mask)


def fits_grid(half: int) -> bool:
    """Whether slices of `half` elements per half fit the grid (trm_fast.ops.swiglu refuses larger ones)."""
    if half <= _MAX_GRID_Y * 256:  # blocks are >= 256 elements (or one block): fits, and no block math to trace
        return True
    return triton.cdiv(half, block_config(half)["BLOCK"]) <= _MAX_GRID_Y


def _grid(outer: int, half: int, block: int) -> tuple[int, int]:
    return (outer, triton.cdiv(half, block))


def _half_shape(gate_up: torch.Tensor, dim: int) -> list[int]:
    shape = list(gate_up.shape)
    shape[dim] //= 2
    return shape


def swiglu_fwd(gate_up: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """silu(gate) * up with gate, up = gate_up.chunk(2, dim); contiguous output of half the size.

    Inputs as trm_fast.ops.swiglu checks them: gate_up contiguous, size(dim) even, fits_grid(half).
    """
    dim = dim % gate_up.dim()
    out = gate_up.new_empty(_half_shape(gate_up, dim))
    outer, half = split_shape(gate_up.shape, dim)
    if out.numel() == 0:
        return out
    config = block_config(half)
    swiglu_fwd_kernel[_grid(outer, half, config["BLOCK"])](
        gate_up, out, half, BLOCK=config["BLOCK"], num_warps=config["num_warps"]
    )
    return out


def swiglu_bwd(grad_out: torch.Tensor, gate_up: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """grad of gate_up (same shape as gate_up), recomputing silu(gate); grad_out contiguous, like the output."""
    dim = dim % gate_up.dim()
    grad_gate_up = torch.empty_like(gate_up)
    outer, half = split_shape(gate_up.shape, dim)
    if grad_out.numel() == 0:
        return grad_gate_up
    config = block_config(half)
    swiglu_bwd_kernel[_grid(outer, half, config["BLOCK"])](
        grad_out, gate_up, grad_gate_up, half, BLOCK=config["BLOCK"], num_warps=config["num_warps"]
    )
    return grad_gate_up


def _aot_specs(dtype: str = "bf16") -> list[AOTSpec]:
    tensor = f"*{dtype}"
    # Paper shapes: channel MLP half = I = 1536; mlp_t at S=97 has I_t = 512, so half = I_t * D.
    cases = {"channel,I=1536": 1536, "token,I=512,D=512": 512 * 512}
    specs = []
    for label, half in cases.items():
        config = block_config(half)
        specs.append(AOTSpec(
            name=f"swiglu.fwd[{dtype},{label}]", fn=swiglu_fwd_kernel,
            signature={"gate_up_ptr": tensor, "out_ptr": tensor, "half": "i32", "BLOCK": "constexpr"},
            constexprs={"BLOCK": config["BLOCK"]}, num_warps=config["num_warps"],
        ))
        specs.append(AOTSpec(
            name=f"swiglu.bwd[{dtype},{label}]", fn=swiglu_bwd_kernel,
            signature={"grad_out_ptr": tensor, "gate_up_ptr": tensor, "grad_gate_up_ptr": tensor,
                       "half": "i32", "BLOCK": "constexpr"},
            constexprs={"BLOCK": config["BLOCK"]}, num_warps=config["num_warps"],
        ))
    return specs


from trm_fast.kernels._aot import with_divisible  # noqa: E402  (the AOT specs' own helper)

# half = 1536 (channel) and 512 * 512 (token) are multiples of 16.
AOT_SPECS: list[AOTSpec] = [with_divisible(spec, "half") for spec in _aot_specs("bf16")]
