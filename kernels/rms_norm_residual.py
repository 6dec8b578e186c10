"""Fused residual add + weightless RMSNorm over the last dim (+ the next call's input injection).

Forward, per row of D values (statistics in fp32, results in the input dtype):
    s = residual + delta;  rstd = 1 / sqrt(mean(s*s) + eps);  out = s * rstd
    next_input = out + inject_a (+ inject_b)        (only when injections are given)
Backward, with g = grad_out (+ grad_next):
    grad_s = rstd * (g - out * mean(g * out))
Each program normalises ROWS_PER_PROGRAM whole rows held in registers, so every input is read once
and every output written once; only `out` and one fp32 `rstd` per row are kept for backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

# Rows longer than this would not fit a program's registers; the torch backend handles them
# (trm_fast.ops.rms_norm_residual refuses longer rows for this backend).
MAX_HIDDEN = 16384
# Elements one program holds per tensor; small rows are packed several to a program.
_TILE_ELEMENTS = 2048


def block_config(hidden: int) -> dict:
    """Block sizes and warps for rows of `hidden` <= MAX_HIDDEN values (shared by launchers and AOT specs)."""
    block_d = triton.next_power_of_2(hidden)
    rows_per_program = max(1, min(16, _TILE_ELEMENTS // block_d))
    tile = block_d * rows_per_program
    num_warps = 4 if tile <= 2048 else (8 if tile <= 8192 else 16)
    return {"BLOCK_D": block_d, "ROWS_PER_PROGRAM": rows_per_program, "num_warps": num_warps}


@triton.jit
def rms_norm_residual_fwd_kernel(
    residual_ptr, delta_ptr, inject_a_ptr, inject_b_ptr,  # inputs [rows, hidden]
    out_ptr, next_ptr, rstd_ptr,  # outputs [rows, hidden], [rows, hidden], [rows] fp32
    rows, hidden, eps,
    NUM_INJECT: tl.constexpr,  # 0: no next_input; 1: + inject_a; 2: + inject_a + inject_b
    BLOCK_D: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr,
):
    row_ids = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    cols = tl.arange(0, BLOCK_D)
    row_mask = row_ids < rows
    mask = row_mask[:, None] & (cols < hidden)[None, :]
    offsets = row_ids[:, None] * hidden + cols[None, :]

    residual = tl.load(residual_ptr + offsets, mask=mask, other=0.0)
    delta = tl.load(delta_ptr + offsets, mask=mask, other=0.0)
    # As TRM does: the residual add rounds to the storage dtype, the statistics are fp32.
    summed = (residual.to(tl.float32) + delta.to(tl.float32)).to(out_ptr.dtype.element_ty).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(summed * summed, axis=1) / hidden + eps)
    out = summed * rstd[:, None]
    # Round once to the storage dtype so next_input = stored out + injection, as in the reference.
    out_stored = out.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offsets, out_stored, mask=mask)
    tl.store(rstd_ptr + row_ids, rstd, mask=row_mask)

    if NUM_INJECT > 0:
        # Rounded after each add, like the unfused (out + inject_a) + inject_b.
        inject_a = tl.load(inject_a_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        next_input = (out_stored.to(tl.float32) + inject_a).to(next_ptr.dtype.element_ty)
        if NUM_INJECT > 1:
            inject_b = tl.load(inject_b_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            next_input = (next_input.to(tl.float32) + inject_b).to(next_ptr.dtype.element_ty)
        tl.store(next_ptr + offsets, next_input, mask=mask)


@triton.jit
def rms_norm_residual_bwd_kernel(
    grad_out_ptr, grad_next_ptr, out_ptr, rstd_ptr,  # [rows, hidden] x3, [rows] fp32
    grad_s_ptr,  # output [rows, hidden]
    rows, hidden,
    HAS_GRAD_NEXT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr,
):
    row_ids = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)
    cols = tl.arange(0, BLOCK_D)
    row_mask = row_ids < rows
    mask = row_mask[:, None] & (cols < hidden)[None, :]
    offsets = row_ids[:, None] * hidden + cols[None, :]

    grad = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_GRAD_NEXT:
        grad += tl.load(grad_next_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row_ids, mask=row_mask, other=0.0)
    mean_grad_out = tl.sum(grad * out, axis=1) / hidden
    grad_s = rstd[:, None] * (grad - out * mean_grad_out[:, None])
    tl.store(grad_s_ptr + offsets, grad_s.to(grad_s_ptr.dtype.element_ty), mask=mask)


def rms_norm_residual_fwd(
    residual: torch.Tensor,
    delta: torch.Tensor,
    inject_a: torch.Tensor | None = None,
    inject_b: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the forward kernel: returns (out, next_input or None, rstd fp32 [rows], rows = numel / D).

    Inputs as trm_fast.ops.rms_norm_residual checks them: contiguous [..., D] tensors of one shape, dtype
    and device, 0 < D <= MAX_HIDDEN, inject_b only with inject_a.
    """
    hidden = residual.shape[-1]
    rows = residual.numel() // hidden
    config = block_config(hidden)
    out = torch.empty_like(residual)
    next_input = torch.empty_like(residual) if inject_a is not None else None
    rstd = torch.empty((rows,), dtype=torch.float32, device=residual.device)
    if rows == 0:
        return out, next_input, rstd
    num_inject = 0 if inject_a is None else (1 if inject_b is None else 2)
    # Absent tensors are replaced by `residual` so the signature (and the AOT specs) never change.
    grid = (triton.cdiv(rows, config["ROWS_PER_PROGRAM"]),)
    rms_norm_residual_fwd_kernel[grid](
        residual, delta,
        inject_a if inject_a is not None else residual,
        inject_b if inject_b is not None else residual,
        out, next_input if next_input is not None else out, rstd,
        rows, hidden, eps,
        NUM_INJECT=num_inject,
        BLOCK_D=config["BLOCK_D"],
        ROWS_PER_PROGRAM=config["ROWS_PER_PROGRAM"],
        num_warps=config["num_warps"],
    )
    return out, next_input, rstd


def rms_norm_residual_bwd(
    grad_out: torch.Tensor,
    grad_next: torch.Tensor | None,
    out: torch.Tensor,
    rstd: torch.Tensor,
) -> torch.Tensor:
    """Launch the backward kernel: returns grad_s (= grad_residual = grad_delta), out's dtype.

    grad_out, grad_next and out: contiguous, like the forward's inputs; rstd: the forward's fp32 [rows].
    """
    hidden = out.shape[-1]
    rows = out.numel() // hidden
    config = block_config(hidden)
    grad_s = torch.empty_like(out)
    if rows == 0:
        return grad_s
    grid = (triton.cdiv(rows, config["ROWS_PER_PROGRAM"]),)
    rms_norm_residual_bwd_kernel[grid](
        grad_out, grad_next if grad_next is not None else grad_out, out, rstd,
        grad_s,
        rows, hidden,
        HAS_GRAD_NEXT=grad_next is not None,
        BLOCK_D=config["BLOCK_D"],
        ROWS_PER_PROGRAM=config["ROWS_PER_PROGRAM"],
        num_warps=config["num_warps"],
    )
    return grad_s


def _aot_specs(dtype: str = "bf16", hidden: int = 512) -> list[AOTSpec]:
    config = block_config(hidden)
    blocks = {"BLOCK_D": config["BLOCK_D"], "ROWS_PER_PROGRAM": config["ROWS_PER_PROGRAM"]}
    tensor = f"*{dtype}"
    specs = []
    for num_inject in (0, 1, 2):
        specs.append(AOTSpec(
            name=f"rms_norm_residual.fwd[{dtype},D={hidden},inject={num_inject}]",
            fn=rms_norm_residual_fwd_kernel,
            signature={
                "residual_ptr": tensor, "delta_ptr": tensor, "inject_a_ptr": tensor, "inject_b_ptr": tensor,
                "out_ptr": tensor, "next_ptr": tensor, "rstd_ptr": "*fp32",
                "rows": "i32", "hidden": "i32", "eps": "fp32",
                "NUM_INJECT": "constexpr", "BLOCK_D": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
            },
            constexprs={"NUM_INJECT": num_inject, **blocks},
            num_warps=config["num_warps"],
        ))
    for has_grad_next in (False, True):
        specs.append(AOTSpec(
            name=f"rms_norm_residual.bwd[{dtype},D={hidden},grad_next={int(has_grad_next)}]",
            fn=rms_norm_residual_bwd_kernel,
            signature={
                "grad_out_ptr": tensor, "grad_next_ptr": tensor, "out_ptr": tensor, "rstd_ptr": "*fp32",
                "grad_s_ptr": tensor, "rows": "i32", "hidden": "i32",
                "HAS_GRAD_NEXT": "constexpr", "BLOCK_D": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
            },
            constexprs={"HAS_GRAD_NEXT": has_grad_next, **blocks},
            num_warps=config["num_warps"],
        ))
    return specs


from trm_fast.kernels._aot import with_divisible  # noqa: E402  (the AOT specs' own helper)

# hidden = 512; rows = B * S depends on the batch and is left unmarked.
AOT_SPECS: list[AOTSpec] = [with_divisible(spec, "hidden") for spec in _aot_specs("bf16", 512)]
