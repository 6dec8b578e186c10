"""Matmul with the recursion's input injection summed in its prologue (and a RoPE epilogue variant).

TRM feeds every block call `state + injection` (z + y + x, or y + z). Instead of a separate add that
writes the sum and a matmul that reads it back, these kernels sum the two or three streams while
loading each A tile (fp32 sum, rounded once to the storage dtype, exactly like op 2), feed the tile
to tl.dot and keep the fp32 accumulator:
    hidden = state + inject_a (+ inject_b)          [M, K]
    out    = hidden @ weight^T                       [M, N]   (weight [N, K], torch.nn.Linear layout)
`hidden` is still needed (it is the block's residual), so it is written once: by the programs of
the first N tile. The other N tiles recompute the sum from the same inputs instead of waiting for
it; with the grouped tile order (GROUP_M row tiles sweep the N tiles together) those re-reads hit
L2, so HBM traffic is one read of each input and one write of hidden, against the unfused
add (read 2-3, write 1) + matmul (read 1). A separate add pass would need no redundant ALU work but
costs that extra write + read of hidden in HBM; the prologue sum is a few adds per loaded element,
free in a matmul.

The qkv variant (weight [3*H*hd, K]) applies rotate-half RoPE in the epilogue and stores q, k, v in
[B, H, S, hd] (op 3's layout). RoPE pairs column d with d + hd/2 of the same head, which a register
tile cannot permute, so each program keeps two accumulators: the first halves and the second halves
of HEADS_PER_TILE heads (their weight rows gathered by index), and rotates them elementwise. The
rotation uses the fp32 accumulator, before rounding (the reference rounds qkv to the storage dtype
first, then rotates in fp32: results agree to one rounding).

Backward is not here: the ops layer uses plain matmuls (cuBLAS) for grad_hidden and grad_weight.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec
from trm_fast.kernels.rope import rotate_halves, store_head_halves

SUPPORTED_HEAD_DIMS = (32, 64, 128)  # head_dim / 2 must be a power of two >= 16 (a dot tile)


def linear_block_config(out_features: int, in_features: int) -> dict:
    """Tile sizes and warps of inject_linear_kernel (shared by the launcher and AOT_SPECS)."""
    block_n = 128 if out_features >= 128 else max(16, triton.next_power_of_2(out_features))
    block_k = 64 if in_features >= 64 else max(16, triton.next_power_of_2(in_features))
    return {"BLOCK_M": 128, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}


def qkv_block_config(num_heads: int, head_dim: int, in_features: int) -> dict:
    """Tile sizes and warps of inject_qkv_rope_kernel (shared by the launcher and AOT_SPECS); head_dim is one
    of SUPPORTED_HEAD_DIMS (trm_fast.ops.fused_linear refuses others for this backend)."""
    half = head_dim // 2
    heads_per_tile = 1
    # Up to 128 output columns per program; a tile must not straddle the q/k/v boundary.
    while heads_per_tile * 2 * head_dim <= 128 and num_heads % (heads_per_tile * 2) == 0:
        heads_per_tile *= 2
    block_k = 64 if in_features >= 64 else max(16, triton.next_power_of_2(in_features))
    return {"HALF": half, "HEADS_PER_TILE": heads_per_tile, "BLOCK_M": 128, "BLOCK_K": block_k, "GROUP_M": 8,
            "num_warps": 8, "num_stages": 3}


@triton.jit
def _grouped_tile(tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program; GROUP_M row tiles sweep the column tiles together."""
    pid = tl.program_id(0)
    tiles_per_group = GROUP_M * tiles_n
    first_tile_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (pid % tiles_per_group) % group_rows
    tile_n = (pid % tiles_per_group) // group_rows
    return tile_m, tile_n


@triton.jit
def _load_injected_tile(state_ptr, inject_a_ptr, inject_b_ptr, hidden_ptr, offsets, mask, write_hidden,
                        HAS_INJECT_B: tl.constexpr):
    """state + inject_a (+ inject_b) summed in fp32, rounded once; stored when write_hidden."""
    hidden = tl.load(state_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    hidden += tl.load(inject_a_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_INJECT_B:
        hidden += tl.load(inject_b_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    hidden = hidden.to(hidden_ptr.dtype.element_ty)
    if write_hidden:
        tl.store(hidden_ptr + offsets, hidden, mask=mask)
    return hidden


@triton.jit
def inject_linear_kernel(
    state_ptr, inject_a_ptr, inject_b_ptr,  # [M, K] each
    weight_ptr,  # [N, K]
    hidden_ptr, out_ptr,  # [M, K], [M, N]
    rows, out_features, in_features,
    HAS_INJECT_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tile_m, tile_n = _grouped_tile(tl.cdiv(rows, BLOCK_M), tl.cdiv(out_features, BLOCK_N), GROUP_M)
    row_ids = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ids = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid = row_ids < rows
    col_valid = col_ids < out_features
    k_offsets = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k_start in range(0, in_features, BLOCK_K):
        ks = k_start + k_offsets
        k_valid = ks < in_features
        a_mask = row_valid[:, None] & k_valid[None, :]
        a_offsets = row_ids[:, None] * in_features + ks[None, :]
        hidden = _load_injected_tile(state_ptr, inject_a_ptr, inject_b_ptr, hidden_ptr, a_offsets, a_mask,
                                     tile_n == 0, HAS_INJECT_B)
        # weight^T tile [BLOCK_K, BLOCK_N] read straight from the [N, K] layout
        weight = tl.load(weight_ptr + col_ids[None, :] * in_features + ks[:, None],
                         mask=k_valid[:, None] & col_valid[None, :], other=0.0)
        acc += tl.dot(hidden, weight, input_precision=DOT_PRECISION)

    out_offsets = row_ids[:, None] * out_features + col_ids[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & col_valid[None, :])


@triton.jit
def inject_qkv_rope_kernel(
    state_ptr, inject_a_ptr, inject_b_ptr,  # [B*S, K] each
    weight_ptr,  # [3*H*hd, K]
    cos_ptr, sin_ptr,  # [S, hd] fp32
    hidden_ptr,  # [B*S, K]
    q_ptr, k_ptr, v_ptr,  # [B, H, S, hd] each
    rows, seq_len, in_features, num_heads,
    HAS_INJECT_B: tl.constexpr, HAS_ROPE: tl.constexpr, HALF: tl.constexpr, HEADS_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    WIDTH: tl.constexpr = HEADS_PER_TILE * HALF
    head_dim = 2 * HALF
    tile_m, tile_n = _grouped_tile(tl.cdiv(rows, BLOCK_M), 3 * num_heads // HEADS_PER_TILE, GROUP_M)
    row_ids = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = row_ids < rows
    k_offsets = tl.arange(0, BLOCK_K)
    # Column c of the accumulators: head first_slot + c // HALF, dims (c % HALF) and (c % HALF) + HALF.
    columns = tl.arange(0, WIDTH)
    head_in_tile = columns // HALF
    dim_lo = columns % HALF
    first_slot = tile_n * HEADS_PER_TILE  # head slot 0..3H-1 over q heads, k heads, v heads
    weight_rows_lo = (first_slot + head_in_tile) * head_dim + dim_lo

    acc_lo = tl.zeros([BLOCK_M, WIDTH], tl.float32)
    acc_hi = tl.zeros([BLOCK_M, WIDTH], tl.float32)
    for k_start in range(0, in_features, BLOCK_K):
        ks = k_start + k_offsets
        k_valid = ks < in_features
        a_mask = row_valid[:, None] & k_valid[None, :]
        a_offsets = row_ids[:, None] * in_features + ks[None, :]
        hidden = _load_injected_tile(state_ptr, inject_a_ptr, inject_b_ptr, hidden_ptr, a_offsets, a_mask,
                                     tile_n == 0, HAS_INJECT_B)
        weight_lo_ptrs = weight_ptr + weight_rows_lo[None, :] * in_features + ks[:, None]
        weight_lo = tl.load(weight_lo_ptrs, mask=k_valid[:, None], other=0.0)
        weight_hi = tl.load(weight_lo_ptrs + HALF * in_features, mask=k_valid[:, None], other=0.0)
        acc_lo += tl.dot(hidden, weight_lo, input_precision=DOT_PRECISION)
        acc_hi += tl.dot(hidden, weight_hi, input_precision=DOT_PRECISION)

    part = first_slot // num_heads  # 0: q, 1: k, 2: v (a tile never straddles two parts)
    heads = first_slot % num_heads + head_in_tile
    tokens = row_ids % seq_len
    batches = row_ids // seq_len
    mask = row_valid[:, None] & (columns < WIDTH)[None, :]
    out_lo = acc_lo
    out_hi = acc_hi
    if HAS_ROPE:
        if part < 2:
            table = tokens[:, None] * head_dim + dim_lo[None, :]
            out_lo, out_hi = rotate_halves(acc_lo, acc_hi, cos_ptr, sin_ptr, table, mask, HALF, False)

    dst = ((batches[:, None] * num_heads + heads[None, :]) * seq_len + tokens[:, None]) * head_dim + dim_lo[None, :]
    store_head_halves(q_ptr, k_ptr, v_ptr, part, dst, out_lo, out_hi, mask, HALF)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def inject_linear_fwd(state: torch.Tensor, inject_a: torch.Tensor, inject_b: torch.Tensor | None,
                      weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch inject_linear_kernel: returns (hidden [..., K], out [..., N]).

    Inputs as trm_fast.ops.fused_linear checks them: state and injections of one shape, weight [N, K], one
    dtype and device; the registered op makes them contiguous.
    """
    in_features = state.shape[-1]
    out_features = weight.shape[0]
    rows = state.numel() // max(in_features, 1)
    hidden = torch.empty_like(state)
    out = state.new_empty(*state.shape[:-1], out_features)
    if rows == 0 or out_features == 0 or in_features == 0:
        return hidden.copy_(state + inject_a + (inject_b if inject_b is not None else 0)), out.zero_()
    config = linear_block_config(out_features, in_features)
    grid = (triton.cdiv(rows, config["BLOCK_M"]) * triton.cdiv(out_features, config["BLOCK_N"]),)
    inject_linear_kernel[grid](
        state, inject_a, inject_b if inject_b is not None else inject_a, weight, hidden, out,
        rows, out_features, in_features,
        HAS_INJECT_B=inject_b is not None, BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
        BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"], DOT_PRECISION=_dot_precision(state.dtype),
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return hidden, out


def inject_qkv_rope_fwd(state: torch.Tensor, inject_a: torch.Tensor, inject_b: torch.Tensor | None,
                        weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, num_heads: int):
    """Launch inject_qkv_rope_kernel: returns (hidden [B, S, K], q, k, v each [B, H, S, hd]).

    Inputs as trm_fast.ops.fused_linear checks them: state [B, S, K] and injections of one shape, weight
    [3*H*hd, K] with hd in SUPPORTED_HEAD_DIMS, cos and sin both None or fp32 [S, hd], one device; the
    registered op makes them contiguous.
    """
    batch, seq_len, in_features = state.shape
    head_dim = weight.shape[0] // (3 * num_heads)
    hidden = torch.empty_like(state)
    q, k, v = (state.new_empty(batch, num_heads, seq_len, head_dim) for _ in range(3))
    rows = batch * seq_len
    if rows == 0 or in_features == 0:  # nothing to sum; a product over K = 0 is zero (and so is its rotation)
        return hidden, q.zero_(), k.zero_(), v.zero_()
    config = qkv_block_config(num_heads, head_dim, in_features)
    grid = (triton.cdiv(rows, config["BLOCK_M"]) * (3 * num_heads // config["HEADS_PER_TILE"]),)
    inject_qkv_rope_kernel[grid](
        state, inject_a, inject_b if inject_b is not None else inject_a, weight,
        cos if cos is not None else state, sin if sin is not None else state,
        hidden, q, k, v,
        rows, seq_len, in_features, num_heads,
        HAS_INJECT_B=inject_b is not None, HAS_ROPE=cos is not None, HALF=config["HALF"],
        HEADS_PER_TILE=config["HEADS_PER_TILE"], BLOCK_M=config["BLOCK_M"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config["GROUP_M"], DOT_PRECISION=_dot_precision(state.dtype),
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return hidden, q, k, v


def _aot_specs() -> list[AOTSpec]:
    d_model, num_heads, head_dim = 512, 8, 64
    specs = []
    # Paper shapes: qkv (N = 3 * 512) and the SwiGLU gate_up (N = 2 * 1536), K = 512, two or three streams.
    for out_features in (3 * d_model, 2 * 1536):
        config = linear_block_config(out_features, d_model)
        for has_b in (True, False):
            specs.append(AOTSpec(
                f"fused_linear.inject_linear_kernel[bf16,N={out_features},K={d_model},streams={3 if has_b else 2}]",
                inject_linear_kernel,
                {"state_ptr": "*bf16", "inject_a_ptr": "*bf16", "inject_b_ptr": "*bf16", "weight_ptr": "*bf16",
                 "hidden_ptr": "*bf16", "out_ptr": "*bf16", "rows": "i32", "out_features": "i32",
                 "in_features": "i32", "HAS_INJECT_B": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                 "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "DOT_PRECISION": "constexpr"},
                {"HAS_INJECT_B": has_b, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                 "BLOCK_K": config["BLOCK_K"], "GROUP_M": config["GROUP_M"], "DOT_PRECISION": "tf32"},
                num_warps=config["num_warps"], num_stages=config["num_stages"]))
    config = qkv_block_config(num_heads, head_dim, d_model)
    for has_b in (True, False):
        specs.append(AOTSpec(
            f"fused_linear.inject_qkv_rope_kernel[bf16,H={num_heads},hd={head_dim},K={d_model},streams={3 if has_b else 2}]",
            inject_qkv_rope_kernel,
            {"state_ptr": "*bf16", "inject_a_ptr": "*bf16", "inject_b_ptr": "*bf16", "weight_ptr": "*bf16",
             "cos_ptr": "*fp32", "sin_ptr": "*fp32", "hidden_ptr": "*bf16",
             "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16",
             "rows": "i32", "seq_len": "i32", "in_features": "i32", "num_heads": "i32",
             "HAS_INJECT_B": "constexpr", "HAS_ROPE": "constexpr", "HALF": "constexpr", "HEADS_PER_TILE": "constexpr",
             "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "DOT_PRECISION": "constexpr"},
            {"HAS_INJECT_B": has_b, "HAS_ROPE": True, "HALF": config["HALF"],
             "HEADS_PER_TILE": config["HEADS_PER_TILE"], "BLOCK_M": config["BLOCK_M"], "BLOCK_K": config["BLOCK_K"],
             "GROUP_M": config["GROUP_M"], "DOT_PRECISION": "tf32"},
            num_warps=config["num_warps"], num_stages=config["num_stages"]))
    return specs


from trm_fast.kernels._aot import with_allowed_spills, with_divisible  # noqa: E402  (the AOT specs' helpers)


def _with_launch_facts(spec: AOTSpec) -> AOTSpec:
    # K = 512 and N = 1536 / 3072 are multiples of 16; rows = B * S depends on the batch and is left unmarked.
    spec = with_divisible(spec, *(name for name in ("in_features", "out_features") if name in spec.signature))
    # Measured with the launch specialisation (docs/kernels.md, Triton 3.6 and 3.8): at 255 registers sm_80
    # spills up to ~0.2 KB, sm_90 nothing. To remove by retuning the sm_80 tiles.
    return with_allowed_spills(spec, 80, "up to ~0.2 KB at 255 registers (128-row fp32 accumulator)")


AOT_SPECS: list[AOTSpec] = [_with_launch_facts(spec) for spec in _aot_specs()]
