"""Residual add + weightless RMSNorm over the token axis (dim -2) of [B, S, D]: mlp_t's post-norm.

The reference model transposes to [B, D, S] to normalise over S; here each program takes one batch
entry and a block of BLOCK_D columns and reduces down the S rows of that column strip in place, so
nothing is transposed or copied. When the strip fits one register tile (S up to 1024 at the paper
sizes) every input is read once; longer sequences loop twice over S chunks (sum of squares, then
normalise), rereading the strip, which is then still in L2.
    s = residual + delta;  rstd[b, d] = 1 / sqrt(mean_S(s^2) + eps);  out = s * rstd
    backward: grad_s = rstd * (grad_out - out * mean_S(grad_out * out))
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

_MAX_TILE = 16384  # fp32 elements one program holds per tensor
_MIN_BLOCK_D = 16  # 16 columns: 32 contiguous bytes of bf16 per row, one full memory sector


def block_config(seq: int, hidden: int) -> dict:
    """Tile sizes and warps for [*, seq, hidden] (shared by the launchers and the AOT specs)."""
    full_s = triton.next_power_of_2(seq)
    block_d = min(triton.next_power_of_2(hidden), max(_MIN_BLOCK_D, 4096 // full_s))
    if full_s * block_d <= _MAX_TILE:
        block_s, single_tile = full_s, True
    else:
        block_s, single_tile = max(1, 8192 // block_d), False
    tile = block_s * block_d
    num_warps = 4 if tile <= 2048 else (8 if tile <= 8192 else 16)
    return {"BLOCK_S": block_s, "BLOCK_D": block_d, "SINGLE_TILE": single_tile, "num_warps": num_warps}


@triton.jit
def _token_tile(base, rows, cols, col_mask, seq, hidden):
    """Element offsets and mask of a [tokens, columns] tile of one [seq, hidden] matrix."""
    mask = (rows < seq)[:, None] & col_mask[None, :]
    return base + rows[:, None] * hidden + cols[None, :], mask


@triton.jit
def _load_fp32_pair(first_ptr, second_ptr, offsets, mask):
    first = tl.load(first_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(second_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return first, second


@triton.jit
def token_rms_norm_fwd_kernel(
    residual_ptr, delta_ptr,  # [batch, seq, hidden]
    out_ptr, rstd_ptr,  # [batch, seq, hidden], [batch, hidden] fp32
    seq, hidden, eps,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < hidden
    base = batch * seq * hidden
    tokens = tl.arange(0, BLOCK_S)
    dtype = out_ptr.dtype.element_ty
    if SINGLE_TILE:  # the whole token strip stays in registers: one read, one write
        offsets, mask = _token_tile(base, tokens, cols, col_mask, seq, hidden)
        residual, delta = _load_fp32_pair(residual_ptr, delta_ptr, offsets, mask)
        summed = (residual + delta).to(dtype).to(tl.float32)  # the add rounds like the unfused one
        rstd = tl.rsqrt(tl.sum(summed * summed, axis=0) / seq + eps)
        tl.store(out_ptr + offsets, (summed * rstd[None, :]).to(dtype), mask=mask)
    else:  # long sequences: one pass for the statistics, one to normalise
        sum_squares = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, seq, BLOCK_S):
            offsets, mask = _token_tile(base, start + tokens, cols, col_mask, seq, hidden)
            residual, delta = _load_fp32_pair(residual_ptr, delta_ptr, offsets, mask)
            summed = (residual + delta).to(dtype).to(tl.float32)
            sum_squares += tl.sum(summed * summed, axis=0)
        rstd = tl.rsqrt(sum_squares / seq + eps)
        for start in range(0, seq, BLOCK_S):
            offsets, mask = _token_tile(base, start + tokens, cols, col_mask, seq, hidden)
            residual, delta = _load_fp32_pair(residual_ptr, delta_ptr, offsets, mask)
            summed = (residual + delta).to(dtype).to(tl.float32)
            tl.store(out_ptr + offsets, (summed * rstd[None, :]).to(dtype), mask=mask)
    tl.store(rstd_ptr + batch * hidden + cols, rstd, mask=col_mask)


@triton.jit
def token_rms_norm_bwd_kernel(
    grad_out_ptr, out_ptr, rstd_ptr,  # [batch, seq, hidden] x2, [batch, hidden] fp32
    grad_s_ptr,  # [batch, seq, hidden]
    seq, hidden,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < hidden
    base = batch * seq * hidden
    tokens = tl.arange(0, BLOCK_S)
    rstd = tl.load(rstd_ptr + batch * hidden + cols, mask=col_mask, other=0.0)
    dtype = grad_s_ptr.dtype.element_ty
    if SINGLE_TILE:
        offsets, mask = _token_tile(base, tokens, cols, col_mask, seq, hidden)
        grad, out = _load_fp32_pair(grad_out_ptr, out_ptr, offsets, mask)
        mean_grad_out = tl.sum(grad * out, axis=0) / seq
        grad_s = rstd[None, :] * (grad - out * mean_grad_out[None, :])
        tl.store(grad_s_ptr + offsets, grad_s.to(dtype), mask=mask)
    else:
        sum_grad_out = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, seq, BLOCK_S):
            offsets, mask = _token_tile(base, start + tokens, cols, col_mask, seq, hidden)
            grad, out = _load_fp32_pair(grad_out_ptr, out_ptr, offsets, mask)
            sum_grad_out += tl.sum(grad * out, axis=0)
        mean_grad_out = sum_grad_out / seq
        for start in range(0, seq, BLOCK_S):
            offsets, mask = _token_tile(base, start + tokens, cols, col_mask, seq, hidden)
            grad, out = _load_fp32_pair(grad_out_ptr, out_ptr, offsets, mask)
            grad_s = rstd[None, :] * (grad - out * mean_grad_out[None, :])
            tl.store(grad_s_ptr + offsets, grad_s.to(dtype), mask=mask)


def _sizes(tensor: torch.Tensor) -> tuple[int, int, int]:
    """(batch, S, D) of a [..., S, D] tensor; batch = numel / (S * D)."""
    seq, hidden = tensor.shape[-2], tensor.shape[-1]
    return tensor.numel() // (seq * hidden), seq, hidden


def _grid(batch: int, hidden: int, config: dict) -> tuple[int, int]:
    return (batch, triton.cdiv(hidden, config["BLOCK_D"]))


def token_rms_norm_fwd(residual: torch.Tensor, delta: torch.Tensor, eps: float = 1e-5):
    """Launch the forward kernel: returns (out, rstd fp32 [batch, D]), batch = numel / (S * D).

    Inputs as trm_fast.ops.token_rms_norm checks them: contiguous [..., S, D] (S, D > 0) tensors of one
    shape, dtype and device.
    """
    batch, seq, hidden = _sizes(residual)
    out = torch.empty_like(residual)
    rstd = torch.empty((batch, hidden), dtype=torch.float32, device=residual.device)
    if batch == 0:
        return out, rstd
    config = block_config(seq, hidden)
    token_rms_norm_fwd_kernel[_grid(batch, hidden, config)](
        residual, delta, out, rstd, seq, hidden, eps,
        BLOCK_S=config["BLOCK_S"], BLOCK_D=config["BLOCK_D"], SINGLE_TILE=config["SINGLE_TILE"],
        num_warps=config["num_warps"],
    )
    return out, rstd


def token_rms_norm_bwd(grad_out: torch.Tensor, out: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """Launch the backward kernel: returns grad_s (= grad_residual = grad_delta).

    grad_out and out: contiguous, of the forward's shape and dtype; rstd: the forward's fp32 [batch, D].
    """
    batch, seq, hidden = _sizes(out)
    grad_s = torch.empty_like(out)
    if batch == 0:
        return grad_s
    config = block_config(seq, hidden)
    token_rms_norm_bwd_kernel[_grid(batch, hidden, config)](
        grad_out, out, rstd, grad_s, seq, hidden,
        BLOCK_S=config["BLOCK_S"], BLOCK_D=config["BLOCK_D"], SINGLE_TILE=config["SINGLE_TILE"],
        num_warps=config["num_warps"],
    )
    return grad_s


def _aot_specs(dtype: str = "bf16", hidden: int = 512) -> list[AOTSpec]:
    tensor = f"*{dtype}"
    specs = []
    # mlp_t widths: Sudoku S = 81 + 16 = 97; 30x30 tasks S = 900 + 16 = 916; a long S for the loop variant.
    for seq in (97, 916, 4096):
        config = block_config(seq, hidden)
        blocks = {key: config[key] for key in ("BLOCK_S", "BLOCK_D", "SINGLE_TILE")}
        specs.append(AOTSpec(
            name=f"token_rms_norm.fwd[{dtype},S={seq},D={hidden}]", fn=token_rms_norm_fwd_kernel,
            signature={"residual_ptr": tensor, "delta_ptr": tensor, "out_ptr": tensor, "rstd_ptr": "*fp32",
                       "seq": "i32", "hidden": "i32", "eps": "fp32",
                       "BLOCK_S": "constexpr", "BLOCK_D": "constexpr", "SINGLE_TILE": "constexpr"},
            constexprs=blocks, num_warps=config["num_warps"],
        ))
        specs.append(AOTSpec(
            name=f"token_rms_norm.bwd[{dtype},S={seq},D={hidden}]", fn=token_rms_norm_bwd_kernel,
            signature={"grad_out_ptr": tensor, "out_ptr": tensor, "rstd_ptr": "*fp32", "grad_s_ptr": tensor,
                       "seq": "i32", "hidden": "i32",
                       "BLOCK_S": "constexpr", "BLOCK_D": "constexpr", "SINGLE_TILE": "constexpr"},
            constexprs=blocks, num_warps=config["num_warps"],
        ))
    return specs


from trm_fast.kernels._aot import with_divisible  # noqa: E402  (the AOT specs' own helper)

# hidden = 512; seq is a multiple of 16 only in the S=4096 specs (97 and 916 are not).
AOT_SPECS: list[AOTSpec] = [with_divisible(spec, "hidden", *(["seq"] if "S=4096," in spec.name else []))
                             for spec in _aot_specs("bf16", 512)]
