"""Op 9: non-causal scaled dot-product attention over [B, H, S, hd], scale 1/sqrt(hd).

Implementations, as `attention_backend_name` reports them:
  "flash_attn_3"  flash-attn 3 (`flash_attn_interface.flash_attn_func`), Hopper GPUs, fp16/bf16
  "flash_attn_2"  flash-attn 2 (`flash_attn.flash_attn_func`), CUDA GPUs, fp16/bf16
  "sdpa"          torch.nn.functional.scaled_dot_product_attention (PyTorch picks its own kernel)
  "triton"        our flash-attention kernels (trm_fast.kernels.attention), forward and backward
Selection by `backend`:
  "torch"          -> sdpa, always (plain op that torch.compile sees through)
  None / "auto"    -> on CUDA: flash_attn_3 > flash_attn_2 > sdpa (the mature library kernels);
                      on CPU: sdpa. Our Triton kernels are only used when asked for: the engine
                      decides after benchmarking them against the libraries on the GPU.
  "cuda"           -> like auto, but CUDA tensors are required
  "triton"         -> our kernels (CUDA, or CPU under TRITON_INTERPRET=1)
On CPU, sdpa attends bf16/fp16 inputs in fp32 and casts the result back: PyTorch's CPU flash-attention
backward is ~7x slower in bf16 than in fp32 at the CPU presets' shapes (S=50, hd=16; measured on AVX512).
flash-attn takes [B, S, H, hd]; we hand it transposed views, so no copies are made. Outputs of the
flash-attn and Triton paths are [B, H, S, hd] views of [B, S, H, hd] memory, which makes the usual
`out.transpose(1, 2).reshape(B, S, H * hd)` before the output projection free.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from trm_fast.ops._backend import BackendUnavailable, requested_backend, resolve

try:  # flash-attn 3 (Hopper); optional
    from flash_attn_interface import flash_attn_func as _flash_attn_3_func
except Exception:  # ImportError, or a broken build failing at import
    _flash_attn_3_func = None
try:  # flash-attn 2; optional
    from flash_attn import flash_attn_func as _flash_attn_2_func
except Exception:
    _flash_attn_2_func = None

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The spec: softmax(q k^T / sqrt(hd)) v, computed in fp32 (fp64 for fp64 inputs) and cast back."""
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2)) * scale
    return torch.matmul(scores.softmax(dim=-1), v.to(compute_dtype)).to(q.dtype)


def _device_capability_major(device: torch.device) -> int:
    try:
        return torch.cuda.get_device_capability(device)[0]
    except Exception:
        return 0


def attention_backend_name(device, backend: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> str:
    """Which implementation `attention` runs for tensors on `device` (of `dtype`, when given)."""
    device = torch.device(device)
    choice = requested_backend(backend)
    if choice == "triton":
        resolve(device, "triton")  # raises BackendUnavailable where Triton cannot run
        return "triton"
    if choice == "torch":
        return "sdpa"
    if choice == "cuda" and device.type != "cuda":
        raise BackendUnavailable(f"backend 'cuda' needs CUDA tensors, got {device.type} tensors")
    if device.type == "cuda" and (dtype is None or dtype in _FLASH_DTYPES):
        if _flash_attn_3_func is not None and _device_capability_major(device) >= 9:
            return "flash_attn_3"
        if _flash_attn_2_func is not None:
            return "flash_attn_2"
    return "sdpa"


def _run_flash_attn(flash_attn_func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # flash-attn wants [B, S, H, hd] with a unit last stride: transposed views, no copies.
    result = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
    out = result[0] if isinstance(result, tuple) else result  # some FA3 releases also return the lse
    return out.transpose(1, 2)


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for label, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"attention: {label} must be a tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"attention: {label} dtype must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.dim() != 4:
            raise ValueError(f"attention: {label} must be [B, H, S, hd], got shape {tuple(tensor.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def _unit_last_stride(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


@torch.library.custom_op("trm_fast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, S, hd] in [B, S, H, hd] memory, lse [B, H, S] fp32 base 2)."""
    from trm_fast.kernels.attention import attention_fwd

    return attention_fwd(_unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v))


@_attention_op.register_fake
def _(q, k, v, backend):
    from trm_fast.kernels.attention import output_strides

    out = torch.empty_strided(q.shape, output_strides(q.shape), dtype=q.dtype, device=q.device)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.custom_op("trm_fast::attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from trm_fast.kernels.attention import attention_bwd

    tensors = [_unit_last_stride(t) for t in (grad_out, q, k, v, out)]
    return attention_bwd(*tensors, lse.contiguous())


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, backend):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.backend = backend


def _backward(ctx, grad_out, grad_lse):
    # lse is an internal statistic returned for backward only; its gradient is ignored.
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grad_q, grad_k, grad_v = torch.ops.trm_fast.attention_backward(grad_out, q, k, v, out, lse, ctx.backend)
    return grad_q, grad_k, grad_v, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Non-causal attention, out [B, H, S, hd] (q, k, v: [B, H, S, hd]); see the module doc for backends."""
    _validate(q, k, v)
    name = attention_backend_name(q.device, backend, dtype=q.dtype)
    if name == "sdpa":
        if q.device.type == "cpu" and q.dtype != torch.float32:
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v)
    if name == "flash_attn_3":
        return _run_flash_attn(_flash_attn_3_func, q, k, v)
    if name == "flash_attn_2":
        return _run_flash_attn(_flash_attn_2_func, q, k, v)
    from trm_fast.kernels.attention import SUPPORTED_HEAD_DIMS

    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention (triton): head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")
    out, _ = _attention_op(q, k, v, "triton")
    return out
