"""Non-causal flash attention (forward and backward) for q, k, v of shape [B, H, S, hd].

Forward (one program per BLOCK_M queries of one (batch, head)): stream BLOCK_N keys/values at a
time, keep the running row max m and row sum l of exp(scores - m) (online softmax) and rescale the
fp32 accumulator whenever m grows. Scores are kept in base 2 (scale * log2(e) folded into one
multiply, exp2 instead of exp). The program stores the output and the row's log-sum-exp
lse = m + log2(l) (base 2, fp32), which is all backward needs to rebuild the probabilities.

Backward (FlashAttention-2 split, no atomics):
  1. delta = rowsum(dO * O)                     one pass, [B, H, S] fp32
  2. per key block:   P = exp2(scale2 * K Q^T - lse), dV += P dO, dS = P * (V dO^T - delta),
                      dK += dS Q * scale        (loop over all query blocks)
  3. per query block: the same P and dS,        dQ += dS K * scale (loop over all key blocks)
Steps 2 and 3 recompute P instead of storing the S x S matrix.

Tensors may have any strides with a unit last-dim stride (the launcher passes batch, head and
sequence strides), so views of [B, S, H, hd] memory work without copies. Sequences need not be a
multiple of the block sizes: out-of-range rows and columns are masked (e.g. S = 97 and 916).
head_dim must be a power of two between 16 and 128 (the tile width of the dot products).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

LOG2_E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


def block_config(seq_len: int, head_dim: int) -> dict:
    """Tile sizes and warps of the three kernels (shared by the launchers and AOT_SPECS).

    Short sequences (S=97) use 64-query tiles so that the last, mostly masked tile wastes less work;
    long ones (S=916) 128-query tiles to halve the K/V re-reads. Backward tiles stay at 64 so the
    five tiles a program holds fit sm_80's shared memory at head_dim 128. head_dim is one of
    SUPPORTED_HEAD_DIMS (trm_fast.ops.attention refuses others for this backend).
    """
    fwd_block_m = 64 if seq_len <= 128 else 128
    fwd_block_n = 64 if head_dim <= 64 else 32
    return {
        "fwd": {"BLOCK_M": fwd_block_m, "BLOCK_N": fwd_block_n, "num_warps": 4 if fwd_block_m == 64 else 8,
                "num_stages": 3},
        "preprocess": {"BLOCK_M": 64, "num_warps": 4, "num_stages": 1},
        "bwd": {"BLOCK_M": 64 if head_dim <= 64 else 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    }


@triton.jit
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,  # lse: [B, H, S] fp32 contiguous (base-2 log-sum-exp)
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    num_heads, seq_len, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    query_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // num_heads).to(tl.int64)
    head = (batch_head % num_heads).to(tl.int64)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh

    rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < seq_len
    dims = tl.arange(0, HEAD_DIM)
    key_offsets = tl.arange(0, BLOCK_N)
    q = tl.load(q_base + rows[:, None] * stride_qs + dims[None, :], mask=row_valid[:, None], other=0.0)

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, seq_len, BLOCK_N):
        keys = key_start + key_offsets
        key_valid = keys < seq_len
        k = tl.load(k_base + keys[:, None] * stride_ks + dims[None, :], mask=key_valid[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vs + dims[None, :], mask=key_valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        scores = tl.where(key_valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        probs = tl.exp2(scores - new_max[:, None])
        correction = tl.exp2(row_max - new_max)  # 0 on the first block (row_max = -inf)
        row_sum = row_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    out = acc / row_sum[:, None]
    out_base = out_ptr + batch * stride_ob + head * stride_oh
    tl.store(out_base + rows[:, None] * stride_os + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_valid[:, None])
    tl.store(lse_ptr + batch_head.to(tl.int64) * seq_len + rows, row_max + tl.log2(row_sum), mask=row_valid)


@triton.jit
def attention_bwd_preprocess_kernel(
    out_ptr, grad_out_ptr, delta_ptr,  # delta: [B, H, S] fp32 contiguous
    stride_ob, stride_oh, stride_os,
    stride_gb, stride_gh, stride_gs,
    num_heads, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    query_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // num_heads).to(tl.int64)
    head = (batch_head % num_heads).to(tl.int64)
    rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < seq_len
    dims = tl.arange(0, HEAD_DIM)
    out = tl.load(out_ptr + batch * stride_ob + head * stride_oh + rows[:, None] * stride_os + dims[None, :],
                  mask=row_valid[:, None], other=0.0).to(tl.float32)
    grad_out = tl.load(grad_out_ptr + batch * stride_gb + head * stride_gh + rows[:, None] * stride_gs + dims[None, :],
                       mask=row_valid[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + batch_head.to(tl.int64) * seq_len + rows, tl.sum(out * grad_out, axis=1), mask=row_valid)


@triton.jit
def attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr,
    grad_k_ptr, grad_v_ptr,  # [B, H, S, hd] contiguous
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_gb, stride_gh, stride_gs,
    num_heads, seq_len, qk_scale_log2, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    key_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // num_heads).to(tl.int64)
    head = (batch_head % num_heads).to(tl.int64)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    grad_out_base = grad_out_ptr + batch * stride_gb + head * stride_gh
    stats_base = batch_head.to(tl.int64) * seq_len

    keys = key_block * BLOCK_N + tl.arange(0, BLOCK_N)
    key_valid = keys < seq_len
    dims = tl.arange(0, HEAD_DIM)
    query_offsets = tl.arange(0, BLOCK_M)
    k = tl.load(k_ptr + batch * stride_kb + head * stride_kh + keys[:, None] * stride_ks + dims[None, :],
                mask=key_valid[:, None], other=0.0)
    v = tl.load(v_ptr + batch * stride_vb + head * stride_vh + keys[:, None] * stride_vs + dims[None, :],
                mask=key_valid[:, None], other=0.0)

    grad_k = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    grad_v = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for query_start in range(0, seq_len, BLOCK_M):
        rows = query_start + query_offsets
        row_valid = rows < seq_len
        q = tl.load(q_base + rows[:, None] * stride_qs + dims[None, :], mask=row_valid[:, None], other=0.0)
        grad_out = tl.load(grad_out_base + rows[:, None] * stride_gs + dims[None, :], mask=row_valid[:, None], other=0.0)
        lse = tl.load(lse_ptr + stats_base + rows, mask=row_valid, other=0.0)
        delta = tl.load(delta_ptr + stats_base + rows, mask=row_valid, other=0.0)
        # Transposed tiles ([keys, queries]) so dK and dV accumulate without transposing them.
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale_log2
        probs_t = tl.exp2(scores_t - lse[None, :])
        probs_t = tl.where(key_valid[:, None] & row_valid[None, :], probs_t, 0.0)
        grad_v += tl.dot(probs_t.to(grad_out.dtype), grad_out, input_precision=DOT_PRECISION)
        grad_probs_t = tl.dot(v, tl.trans(grad_out), input_precision=DOT_PRECISION)
        grad_scores_t = probs_t * (grad_probs_t - delta[None, :])
        grad_k += tl.dot(grad_scores_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    grad_offsets = batch_head.to(tl.int64) * seq_len * HEAD_DIM + keys[:, None] * HEAD_DIM + dims[None, :]
    tl.store(grad_k_ptr + grad_offsets, (grad_k * scale).to(grad_k_ptr.dtype.element_ty), mask=key_valid[:, None])
    tl.store(grad_v_ptr + grad_offsets, grad_v.to(grad_v_ptr.dtype.element_ty), mask=key_valid[:, None])


@triton.jit
def attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr,
    grad_q_ptr,  # [B, H, S, hd] contiguous
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_gb, stride_gh, stride_gs,
    num_heads, seq_len, qk_scale_log2, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    query_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // num_heads).to(tl.int64)
    head = (batch_head % num_heads).to(tl.int64)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    stats_base = batch_head.to(tl.int64) * seq_len

    rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < seq_len
    dims = tl.arange(0, HEAD_DIM)
    key_offsets = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qs + dims[None, :],
                mask=row_valid[:, None], other=0.0)
    grad_out = tl.load(grad_out_ptr + batch * stride_gb + head * stride_gh + rows[:, None] * stride_gs + dims[None, :],
                       mask=row_valid[:, None], other=0.0)
    lse = tl.load(lse_ptr + stats_base + rows, mask=row_valid, other=0.0)
    delta = tl.load(delta_ptr + stats_base + rows, mask=row_valid, other=0.0)

    grad_q = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, seq_len, BLOCK_N):
        keys = key_start + key_offsets
        key_valid = keys < seq_len
        k = tl.load(k_base + keys[:, None] * stride_ks + dims[None, :], mask=key_valid[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vs + dims[None, :], mask=key_valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        probs = tl.exp2(scores - lse[:, None])
        probs = tl.where(row_valid[:, None] & key_valid[None, :], probs, 0.0)
        grad_probs = tl.dot(grad_out, tl.trans(v), input_precision=DOT_PRECISION)
        grad_scores = probs * (grad_probs - delta[:, None])
        grad_q += tl.dot(grad_scores.to(k.dtype), k, input_precision=DOT_PRECISION)

    grad_offsets = batch_head.to(tl.int64) * seq_len * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(grad_q_ptr + grad_offsets, (grad_q * scale).to(grad_q_ptr.dtype.element_ty), mask=row_valid[:, None])


def output_strides(shape: torch.Size) -> tuple[int, int, int, int]:
    """Strides of a [B, H, S, hd] output laid out in memory as [B, S, H, hd]."""
    batch, num_heads, seq_len, head_dim = shape
    return (seq_len * num_heads * head_dim, head_dim, num_heads * head_dim, 1)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tests compare against fp32 references); 16-bit inputs
    # use the tensor cores either way.
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides(tensor: torch.Tensor) -> tuple[int, int, int]:
    return tensor.stride(0), tensor.stride(1), tensor.stride(2)


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns (out, lse).

    out is [B, H, S, hd] stored as [B, S, H, hd] memory (a transposed view), so that
    out.transpose(1, 2).reshape(B, S, H * hd), the output projection's input, needs no copy.
    lse is [B, H, S] fp32, base-2 log-sum-exp of the scaled scores.
    q, k, v: [B, H, S, hd] of one shape, dtype and device (checked by trm_fast.ops.attention), last dim of
    stride 1 (the registered op ensures it).
    """
    batch, num_heads, seq_len, head_dim = q.shape
    config = block_config(seq_len, head_dim)["fwd"]
    out = torch.empty_strided(q.shape, output_strides(q.shape), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, num_heads, seq_len), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    scale = 1.0 / math.sqrt(head_dim)
    grid = (triton.cdiv(seq_len, config["BLOCK_M"]), batch * num_heads)
    attention_fwd_kernel[grid](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        num_heads, seq_len, scale * LOG2_E,
        HEAD_DIM=head_dim, BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return out, lse


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels: returns (grad_q, grad_k, grad_v), contiguous [B, H, S, hd].

    grad_out, q, k, v, out as in the forward (last dim of stride 1); lse: the forward's contiguous fp32 [B, H, S].
    """
    batch, num_heads, seq_len, head_dim = q.shape
    configs = block_config(seq_len, head_dim)
    grad_q, grad_k, grad_v = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if q.numel() == 0:
        return grad_q, grad_k, grad_v
    scale = 1.0 / math.sqrt(head_dim)
    precision = _dot_precision(q.dtype)

    delta = torch.empty_like(lse)
    pre = configs["preprocess"]
    attention_bwd_preprocess_kernel[(triton.cdiv(seq_len, pre["BLOCK_M"]), batch * num_heads)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), num_heads, seq_len,
        HEAD_DIM=head_dim, BLOCK_M=pre["BLOCK_M"], num_warps=pre["num_warps"], num_stages=pre["num_stages"],
    )
    bwd = configs["bwd"]
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), num_heads, seq_len, scale * LOG2_E, scale)
    attention_bwd_dkdv_kernel[(triton.cdiv(seq_len, bwd["BLOCK_N"]), batch * num_heads)](
        q, k, v, grad_out, lse, delta, grad_k, grad_v, *common,
        HEAD_DIM=head_dim, BLOCK_M=bwd["BLOCK_M"], BLOCK_N=bwd["BLOCK_N"], DOT_PRECISION=precision,
        num_warps=bwd["num_warps"], num_stages=bwd["num_stages"],
    )
    attention_bwd_dq_kernel[(triton.cdiv(seq_len, bwd["BLOCK_M"]), batch * num_heads)](
        q, k, v, grad_out, lse, delta, grad_q, *common,
        HEAD_DIM=head_dim, BLOCK_M=bwd["BLOCK_M"], BLOCK_N=bwd["BLOCK_N"], DOT_PRECISION=precision,
        num_warps=bwd["num_warps"], num_stages=bwd["num_stages"],
    )
    return grad_q, grad_k, grad_v


def _strided_signature(*names: str) -> dict[str, str]:
    return {f"stride_{name}{axis}": "i32" for name in names for axis in "bhs"}


def _aot_specs() -> list[AOTSpec]:
    specs = []
    head_dim = 64
    for seq_len in (97, 916):
        configs = block_config(seq_len, head_dim)
        fwd, pre, bwd = configs["fwd"], configs["preprocess"], configs["bwd"]
        fwd_sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*bf16", "lse_ptr": "*fp32",
                   **_strided_signature("q", "k", "v", "o"),
                   "num_heads": "i32", "seq_len": "i32", "qk_scale_log2": "fp32",
                   "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "DOT_PRECISION": "constexpr"}
        specs.append(AOTSpec(
            f"attention.attention_fwd_kernel[bf16,S={seq_len},hd=64]", attention_fwd_kernel, fwd_sig,
            {"HEAD_DIM": head_dim, "BLOCK_M": fwd["BLOCK_M"], "BLOCK_N": fwd["BLOCK_N"], "DOT_PRECISION": "tf32"},
            num_warps=fwd["num_warps"], num_stages=fwd["num_stages"]))
        pre_sig = {"out_ptr": "*bf16", "grad_out_ptr": "*bf16", "delta_ptr": "*fp32", **_strided_signature("o", "g"),
                   "num_heads": "i32", "seq_len": "i32", "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr"}
        bwd_sig_tail = {**_strided_signature("q", "k", "v", "g"), "num_heads": "i32", "seq_len": "i32",
                        "qk_scale_log2": "fp32", "scale": "fp32", "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr",
                        "BLOCK_N": "constexpr", "DOT_PRECISION": "constexpr"}
        inputs = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "grad_out_ptr": "*bf16", "lse_ptr": "*fp32",
                  "delta_ptr": "*fp32"}
        bwd_constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": bwd["BLOCK_M"], "BLOCK_N": bwd["BLOCK_N"],
                          "DOT_PRECISION": "tf32"}
        if seq_len == 97:  # backward tiles do not depend on S: compile them once
            specs.append(AOTSpec("attention.attention_bwd_preprocess_kernel[bf16,hd=64]",
                                 attention_bwd_preprocess_kernel, pre_sig,
                                 {"HEAD_DIM": head_dim, "BLOCK_M": pre["BLOCK_M"]},
                                 num_warps=pre["num_warps"], num_stages=pre["num_stages"]))
            specs.append(AOTSpec("attention.attention_bwd_dkdv_kernel[bf16,hd=64]", attention_bwd_dkdv_kernel,
                                 {**inputs, "grad_k_ptr": "*bf16", "grad_v_ptr": "*bf16", **bwd_sig_tail},
                                 dict(bwd_constexprs), num_warps=bwd["num_warps"], num_stages=bwd["num_stages"]))
            specs.append(AOTSpec("attention.attention_bwd_dq_kernel[bf16,hd=64]", attention_bwd_dq_kernel,
                                 {**inputs, "grad_q_ptr": "*bf16", **bwd_sig_tail},
                                 dict(bwd_constexprs), num_warps=bwd["num_warps"], num_stages=bwd["num_stages"]))
    return specs


from trm_fast.kernels._aot import with_allowed_spills, with_divisible  # noqa: E402  (the AOT specs' helpers)


def _with_launch_facts(spec: AOTSpec) -> AOTSpec:
    # Every batch, head and sequence stride is a multiple of head_dim = 64 (num_heads 8 and seq_len 97 / 916 are not).
    spec = with_divisible(spec, *(name for name in spec.signature if name.startswith("stride_")))
    if spec.fn is attention_bwd_dkdv_kernel:  # measured with the launch specialisation (docs/kernels.md)
        spec = with_allowed_spills(spec, 80, "12 B at 255 registers with Triton 3.6 (none with 3.8)")
    return spec


AOT_SPECS: list[AOTSpec] = [_with_launch_facts(spec) for spec in _aot_specs()]
