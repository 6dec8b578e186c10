"""RoPE on the fused qkv projection, writing q, k, v straight into the [B, H, S, hd] layout.

Forward, per token s and head (rotate-half convention, x_lo = x[:hd/2], x_hi = x[hd/2:]):
    out_lo = x_lo * cos_lo - x_hi * sin_lo
    out_hi = x_hi * cos_hi + x_lo * sin_hi
applied in fp32 to the q and k heads; v heads are copied. Loading the two halves separately is the
rotate_half without materialising a rotated copy, and the store addresses do the [B,S,H,hd] ->
[B,H,S,hd] transpose, so the projection output is read once and each of q, k, v written once.
Backward is the transpose of that linear map (the inverse rotation when cos/sin come from
cat(freqs, freqs)):
    grad_lo = g_lo * cos_lo + g_hi * sin_hi
    grad_hi = g_hi * cos_hi - g_lo * sin_lo
written back into the [B, S, 3*H*hd] rows of grad_qkv.

Grid: (token blocks, 3*H head slots, batch); a program handles BLOCK_S tokens of one head slot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec


def block_config(seq_len: int, head_dim: int) -> dict:
    """Block sizes and warps of both RoPE kernels for an even head_dim >= 2 (shared by the launchers and AOT_SPECS)."""
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    # About 2K elements per half-tile: 64 tokens at head_dim 64.
    block_s = max(16, min(128, 2048 // block_half, triton.next_power_of_2(seq_len)))
    return {"HALF": half, "BLOCK_HALF": block_half, "BLOCK_S": block_s, "num_warps": 4}


@triton.jit
def rotate_halves(lo, hi, cos_ptr, sin_ptr, table, mask, HALF: tl.constexpr, INVERSE: tl.constexpr):
    """RoPE (rotate-half) on a tile held as its two head halves, in fp32; `table` indexes the low
    half of the [S, hd] cos/sin tables. INVERSE applies the transposed rotation (the backward)."""
    cos_lo = tl.load(cos_ptr + table, mask=mask, other=0.0)
    cos_hi = tl.load(cos_ptr + table + HALF, mask=mask, other=0.0)
    sin_lo = tl.load(sin_ptr + table, mask=mask, other=0.0)
    sin_hi = tl.load(sin_ptr + table + HALF, mask=mask, other=0.0)
    if INVERSE:
        return lo * cos_lo + hi * sin_hi, hi * cos_hi - lo * sin_lo
    return lo * cos_lo - hi * sin_lo, hi * cos_hi + lo * sin_hi


@triton.jit
def store_head_halves(q_ptr, k_ptr, v_ptr, part, offsets, lo, hi, mask, HALF: tl.constexpr):
    """Write a tile's two halves into q, k or v ([B, H, S, hd]) by `part` (0, 1, 2)."""
    if part == 0:
        tl.store(q_ptr + offsets, lo.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(q_ptr + offsets + HALF, hi.to(q_ptr.dtype.element_ty), mask=mask)
    elif part == 1:
        tl.store(k_ptr + offsets, lo.to(k_ptr.dtype.element_ty), mask=mask)
        tl.store(k_ptr + offsets + HALF, hi.to(k_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(v_ptr + offsets, lo.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offsets + HALF, hi.to(v_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rope_qkv_fwd_kernel(
    qkv_ptr,  # [B, S, 3*H*hd]
    cos_ptr, sin_ptr,  # [S, hd] fp32 (unused when HAS_ROPE is False)
    q_ptr, k_ptr, v_ptr,  # [B, H, S, hd] each
    seq_len, num_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_S: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    token_block = tl.program_id(0)
    head_slot = tl.program_id(1)  # 0..3H-1: q heads, then k heads, then v heads
    batch = tl.program_id(2).to(tl.int64)
    part = head_slot // num_heads
    head = head_slot % num_heads
    head_dim = 2 * HALF

    tokens = token_block * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (tokens < seq_len)[:, None] & (cols < HALF)[None, :]
    row_width = 3 * num_heads * head_dim
    src = qkv_ptr + batch * seq_len * row_width + tokens[:, None] * row_width + head_slot * head_dim + cols[None, :]
    x_lo = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x_hi = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    out_lo = x_lo
    out_hi = x_hi
    if HAS_ROPE:
        if part < 2:
            table = tokens[:, None] * head_dim + cols[None, :]
            out_lo, out_hi = rotate_halves(x_lo, x_hi, cos_ptr, sin_ptr, table, mask, HALF, False)

    dst = ((batch * num_heads + head) * seq_len + tokens[:, None]) * head_dim + cols[None, :]
    store_head_halves(q_ptr, k_ptr, v_ptr, part, dst, out_lo, out_hi, mask, HALF)


@triton.jit
def rope_qkv_bwd_kernel(
    grad_q_ptr, grad_k_ptr, grad_v_ptr,  # [B, H, S, hd] each, contiguous
    cos_ptr, sin_ptr,  # [S, hd] fp32
    grad_qkv_ptr,  # [B, S, 3*H*hd]
    seq_len, num_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_S: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    token_block = tl.program_id(0)
    head_slot = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    part = head_slot // num_heads
    head = head_slot % num_heads
    head_dim = 2 * HALF

    tokens = token_block * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (tokens < seq_len)[:, None] & (cols < HALF)[None, :]
    src = ((batch * num_heads + head) * seq_len + tokens[:, None]) * head_dim + cols[None, :]
    if part == 0:
        g_lo = tl.load(grad_q_ptr + src, mask=mask, other=0.0).to(tl.float32)
        g_hi = tl.load(grad_q_ptr + src + HALF, mask=mask, other=0.0).to(tl.float32)
    elif part == 1:
        g_lo = tl.load(grad_k_ptr + src, mask=mask, other=0.0).to(tl.float32)
        g_hi = tl.load(grad_k_ptr + src + HALF, mask=mask, other=0.0).to(tl.float32)
    else:
        g_lo = tl.load(grad_v_ptr + src, mask=mask, other=0.0).to(tl.float32)
        g_hi = tl.load(grad_v_ptr + src + HALF, mask=mask, other=0.0).to(tl.float32)
    out_lo = g_lo
    out_hi = g_hi
    if HAS_ROPE:
        if part < 2:
            table = tokens[:, None] * head_dim + cols[None, :]
            out_lo, out_hi = rotate_halves(g_lo, g_hi, cos_ptr, sin_ptr, table, mask, HALF, True)

    row_width = 3 * num_heads * head_dim
    dst = grad_qkv_ptr + batch * seq_len * row_width + tokens[:, None] * row_width + head_slot * head_dim + cols[None, :]
    tl.store(dst, out_lo.to(grad_qkv_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, out_hi.to(grad_qkv_ptr.dtype.element_ty), mask=mask)


def rope_qkv_fwd(qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, num_heads: int):
    """Launch the forward kernel: qkv [B, S, 3*H*hd] contiguous -> (q, k, v) each [B, H, S, hd].

    Inputs as trm_fast.ops.rope checks them (head_dim even; cos and sin both None or contiguous fp32
    [S, hd] on qkv's device); the registered op makes qkv and the tables contiguous.
    """
    batch, seq_len, width = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = (qkv.new_empty(batch, num_heads, seq_len, head_dim) for _ in range(3))
    if qkv.numel() == 0:
        return q, k, v
    config = block_config(seq_len, head_dim)
    grid = (triton.cdiv(seq_len, config["BLOCK_S"]), 3 * num_heads, batch)
    rope_qkv_fwd_kernel[grid](
        qkv, cos if cos is not None else qkv, sin if sin is not None else qkv, q, k, v,
        seq_len, num_heads,
        HALF=config["HALF"], BLOCK_HALF=config["BLOCK_HALF"], BLOCK_S=config["BLOCK_S"],
        HAS_ROPE=cos is not None, num_warps=config["num_warps"],
    )
    return q, k, v


def rope_qkv_bwd(grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
                 cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """Launch the backward kernel: grads [B, H, S, hd] (contiguous, of the forward's q, k, v shape and dtype)
    -> grad_qkv [B, S, 3*H*hd]; cos and sin as in the forward."""
    batch, num_heads, seq_len, head_dim = grad_q.shape
    grad_qkv = grad_q.new_empty(batch, seq_len, 3 * num_heads * head_dim)
    if grad_qkv.numel() == 0:
        return grad_qkv
    config = block_config(seq_len, head_dim)
    grid = (triton.cdiv(seq_len, config["BLOCK_S"]), 3 * num_heads, batch)
    rope_qkv_bwd_kernel[grid](
        grad_q, grad_k, grad_v, cos if cos is not None else grad_q, sin if sin is not None else grad_q, grad_qkv,
        seq_len, num_heads,
        HALF=config["HALF"], BLOCK_HALF=config["BLOCK_HALF"], BLOCK_S=config["BLOCK_S"],
        HAS_ROPE=cos is not None, num_warps=config["num_warps"],
    )
    return grad_qkv


def _aot_specs() -> list[AOTSpec]:
    specs, seen = [], set()
    for seq_len in (97, 916):  # the paper shapes; identical configs are compiled once
        config = block_config(seq_len, 64)
        if tuple(sorted(config.items())) in seen:
            continue
        seen.add(tuple(sorted(config.items())))
        constexprs = {key: config[key] for key in ("HALF", "BLOCK_HALF", "BLOCK_S")}
        constexprs["HAS_ROPE"] = True
        fwd_signature = {
            "qkv_ptr": "*bf16", "cos_ptr": "*fp32", "sin_ptr": "*fp32",
            "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16",
            "seq_len": "i32", "num_heads": "i32",
            "HALF": "constexpr", "BLOCK_HALF": "constexpr", "BLOCK_S": "constexpr", "HAS_ROPE": "constexpr",
        }
        bwd_signature = {
            "grad_q_ptr": "*bf16", "grad_k_ptr": "*bf16", "grad_v_ptr": "*bf16",
            "cos_ptr": "*fp32", "sin_ptr": "*fp32", "grad_qkv_ptr": "*bf16",
            "seq_len": "i32", "num_heads": "i32",
            "HALF": "constexpr", "BLOCK_HALF": "constexpr", "BLOCK_S": "constexpr", "HAS_ROPE": "constexpr",
        }
        specs.append(AOTSpec(f"rope.rope_qkv_fwd_kernel[bf16,S={seq_len}]", rope_qkv_fwd_kernel, fwd_signature,
                             constexprs, num_warps=config["num_warps"]))
        specs.append(AOTSpec(f"rope.rope_qkv_bwd_kernel[bf16,S={seq_len}]", rope_qkv_bwd_kernel, bwd_signature,
                             dict(constexprs), num_warps=config["num_warps"]))
    return specs


AOT_SPECS: list[AOTSpec] = _aot_specs()
