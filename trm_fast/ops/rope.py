"""Op 3: rotary position embedding on the fused qkv projection, producing q, k, v for attention.

qkv is the [B, S, 3*H*hd] output of the fused projection (q heads, then k heads, then v heads).
q and k are rotated in fp32 with the rotate-half convention (cos/sin = cat(freqs, freqs), [S, hd]
fp32) and cast back; v is passed through. All three come out as contiguous [B, H, S, hd], the
layout attention kernels consume. The Triton path does this in one pass over qkv (no rotated
copies, no separate transposes); its backward writes grad_qkv [B, S, 3*H*hd] in one pass too.
cos/sin are constant tables: no gradient flows to them.
"""
from typing import Optional

import torch

from trm_fast.ops.registry import resolve_op

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [seq_len, head_dim] fp32 for positions 0..seq_len-1 (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope_qkv_reference(qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int):
    """The spec: split heads, transpose to [B, H, S, hd], rotate q and k in fp32."""
    batch, seq_len, width = qkv.shape
    head_dim = width // (3 * num_heads)
    q, k, v = qkv.view(batch, seq_len, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if cos is not None:
        q32, k32 = q.float(), k.float()  # one cast each, so backward sums both terms in fp32
        q = (q32 * cos + rotate_half(q32) * sin).to(qkv.dtype)
        k = (k32 * cos + rotate_half(k32) * sin).to(qkv.dtype)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _validate(qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int) -> None:
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"rope_qkv: qkv must be a tensor, got {type(qkv).__name__}")
    if qkv.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"rope_qkv: qkv dtype must be float32, float16 or bfloat16, got {qkv.dtype}")
    if qkv.dim() != 3:
        raise ValueError(f"rope_qkv: qkv must be [B, S, 3*H*hd], got shape {tuple(qkv.shape)}")
    if not isinstance(num_heads, int) or num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"rope_qkv: last dim {qkv.shape[-1]} is not 3 * num_heads ({num_heads}) * head_dim")
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim % 2:
        raise ValueError(f"rope_qkv: head_dim must be even for rotate-half RoPE, got {head_dim}")
    if (cos is None) != (sin is None):
        raise ValueError("rope_qkv: give both cos and sin, or neither")
    for label, table in (("cos", cos), ("sin", sin)):
        if table is None:
            continue
        if table.dtype != torch.float32:
            raise TypeError(f"rope_qkv: {label} must be float32, got {table.dtype}")
        if tuple(table.shape) != (qkv.shape[1], head_dim):
            raise ValueError(f"rope_qkv: {label} must be [S, hd] = {(qkv.shape[1], head_dim)}, got {tuple(table.shape)}")
        if table.device != qkv.device:
            raise ValueError(f"rope_qkv: {label} is on {table.device} but qkv on {qkv.device}")


@torch.library.custom_op("trm_fast::rope_qkv", mutates_args=())
def _rope_qkv_op(
    qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from trm_fast.kernels.rope import rope_qkv_fwd

    tables = (cos.contiguous(), sin.contiguous()) if cos is not None else (None, None)
    return rope_qkv_fwd(qkv.contiguous(), tables[0], tables[1], num_heads)


@_rope_qkv_op.register_fake
def _(qkv, cos, sin, num_heads, backend):
    batch, seq_len, width = qkv.shape
    head_dim = width // (3 * num_heads)
    return tuple(qkv.new_empty(batch, num_heads, seq_len, head_dim) for _ in range(3))


@torch.library.custom_op("trm_fast::rope_qkv_backward", mutates_args=())
def _rope_qkv_backward_op(
    grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
    cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], backend: str,
) -> torch.Tensor:
    from trm_fast.kernels.rope import rope_qkv_bwd

    tables = (cos.contiguous(), sin.contiguous()) if cos is not None else (None, None)
    return rope_qkv_bwd(grad_q.contiguous(), grad_k.contiguous(), grad_v.contiguous(), tables[0], tables[1])


@_rope_qkv_backward_op.register_fake
def _(grad_q, grad_k, grad_v, cos, sin, backend):
    batch, num_heads, seq_len, head_dim = grad_q.shape
    return grad_q.new_empty(batch, seq_len, 3 * num_heads * head_dim)


def _setup_context(ctx, inputs, output):
    _, cos, sin, _, backend = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backend = backend


def _backward(ctx, grad_q, grad_k, grad_v):
    cos, sin = ctx.saved_tensors
    reference = next((g for g in (grad_q, grad_k, grad_v) if g is not None), None)
    if reference is None:
        return None, None, None, None, None
    grads = [g if g is not None else torch.zeros_like(reference) for g in (grad_q, grad_k, grad_v)]
    grad_qkv = torch.ops.trm_fast.rope_qkv_backward(*grads, cos, sin, ctx.backend)
    return grad_qkv, None, None, None, None


_rope_qkv_op.register_autograd(_backward, setup_context=_setup_context)


def rope_qkv_backward(grad_q, grad_k, grad_v, cos, sin, backend: str = "triton") -> torch.Tensor:
    """grad_qkv [B, S, 3*H*hd] from the grads of q, k, v (the registered backward op; reused by op 7)."""
    return torch.ops.trm_fast.rope_qkv_backward(grad_q, grad_k, grad_v, cos, sin, backend)


def rope_qkv(
    qkv: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    num_heads: int,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v), each contiguous [B, H, S, hd], from the fused projection qkv [B, S, 3*H*hd]."""
    _validate(qkv, cos, sin, num_heads)
    chosen = resolve_op("rope_qkv", qkv.device, backend)
    if chosen == "torch":
        return rope_qkv_reference(qkv, cos, sin, num_heads)
    return _rope_qkv_op(qkv, cos, sin, num_heads, chosen)
