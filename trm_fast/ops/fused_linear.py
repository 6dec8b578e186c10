"""Op 7: a linear layer whose input is the recursion's injection sum, computed in the matmul prologue.

    fused_inject_linear(state, inject_a, inject_b, weight) -> (hidden, hidden @ weight.T)
    fused_inject_qkv_rope(state, inject_a, inject_b, w_qkv, cos, sin, num_heads) -> (hidden, q, k, v)
with hidden = state + inject_a (+ inject_b) summed in fp32 and rounded once (as op 2 does), and q, k, v
in op 3's layout ([B, H, S, hd], RoPE on q and k). The Triton kernels (trm_fast.kernels.fused_linear)
fuse the sum into the A-tile loads and, for qkv, RoPE + the head transpose into the epilogue.

Backward uses plain torch matmuls (cuBLAS on the GPU) and, for qkv, op 3's RoPE backward kernel:
    grad_qkv = rope_backward(grad_q, grad_k, grad_v)           (qkv variant only)
    grad_hidden_total = grad_hidden + grad_out @ weight
    grad_weight = grad_out^T @ hidden
    grad_state = grad_inject_a = grad_inject_b = grad_hidden_total
Whether these beat ops 1-3 around cuBLAS is a GPU measurement: `fused_linear_available` only says
whether the kernels can run; the engine makes the choice.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from trm_fast.ops._backend import triton_runs_on
from trm_fast.ops.registry import resolve_op
from trm_fast.ops.rope import rope_qkv_backward, rope_qkv_reference

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fused_linear_available(device) -> bool:
    """True when the Triton kernels of this op can run on `device` (sm_80+ GPU, or the interpreter)."""
    device = torch.device(device)
    if not triton_runs_on(device):
        return False
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_capability(device)[0] >= 8  # bf16 tensor-core dots
        except Exception:
            return False
    return True


def inject_sum_reference(state: torch.Tensor, inject_a: torch.Tensor, inject_b: Optional[torch.Tensor]) -> torch.Tensor:
    total = state.float() + inject_a.float()
    if inject_b is not None:
        total = total + inject_b.float()
    return total.to(state.dtype)


def fused_inject_linear_reference(state, inject_a, inject_b, weight):
    hidden = inject_sum_reference(state, inject_a, inject_b)
    return hidden, F.linear(hidden, weight)


def fused_inject_qkv_rope_reference(state, inject_a, inject_b, w_qkv, cos, sin, num_heads):
    hidden = inject_sum_reference(state, inject_a, inject_b)
    q, k, v = rope_qkv_reference(F.linear(hidden, w_qkv), cos, sin, num_heads)
    return hidden, q, k, v


def _validate(name: str, state, inject_a, inject_b, weight) -> None:
    for label, tensor in (("state", state), ("inject_a", inject_a), ("inject_b", inject_b), ("weight", weight)):
        if tensor is None and label == "inject_b":
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name}: {label} dtype must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.dtype != state.dtype:
            raise TypeError(f"{name}: {label} dtype {tensor.dtype} differs from state's {state.dtype}")
        if tensor.device != state.device:
            raise ValueError(f"{name}: {label} is on {tensor.device} but state on {state.device}")
    for label, tensor in (("inject_a", inject_a), ("inject_b", inject_b)):
        if tensor is not None and tensor.shape != state.shape:
            raise ValueError(f"{name}: {label} shape {tuple(tensor.shape)} differs from state's {tuple(state.shape)}")
    if state.dim() < 1 or weight.dim() != 2 or weight.shape[1] != state.shape[-1]:
        raise ValueError(f"{name}: weight must be [N, {state.shape[-1] if state.dim() else '?'}], got {tuple(weight.shape)}")


# --- fused_inject_linear ------------------------------------------------------------------------

@torch.library.custom_op("trm_fast::fused_inject_linear", mutates_args=())
def _fused_inject_linear_op(
    state: torch.Tensor, inject_a: torch.Tensor, inject_b: Optional[torch.Tensor], weight: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    from trm_fast.kernels.fused_linear import inject_linear_fwd

    return inject_linear_fwd(state.contiguous(), inject_a.contiguous(),
                             inject_b.contiguous() if inject_b is not None else None, weight.contiguous())


@_fused_inject_linear_op.register_fake
def _(state, inject_a, inject_b, weight, backend):
    return torch.empty_like(state), state.new_empty(*state.shape[:-1], weight.shape[0])


def _linear_setup_context(ctx, inputs, output):
    _, _, inject_b, weight, _ = inputs
    hidden, _ = output
    ctx.save_for_backward(hidden, weight)
    ctx.has_inject_b = inject_b is not None


def _hidden_and_weight_grads(grad_hidden, grad_out, hidden, weight):
    """Plain matmuls: grad of hidden (both uses) and of weight, for out = hidden @ weight^T."""
    grad_total = torch.matmul(grad_out, weight)
    if grad_hidden is not None:
        grad_total = grad_total + grad_hidden
    grad_weight = torch.matmul(grad_out.reshape(-1, weight.shape[0]).t(), hidden.reshape(-1, weight.shape[1]))
    return grad_total, grad_weight


def _linear_backward(ctx, grad_hidden, grad_out):
    hidden, weight = ctx.saved_tensors
    if grad_out is None:
        grad_out = hidden.new_zeros(*hidden.shape[:-1], weight.shape[0])
    grad_total, grad_weight = _hidden_and_weight_grads(grad_hidden, grad_out, hidden, weight)
    return grad_total, grad_total, (grad_total if ctx.has_inject_b else None), grad_weight, None


_fused_inject_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def fused_inject_linear(
    state: torch.Tensor,
    inject_a: torch.Tensor,
    inject_b: Optional[torch.Tensor],
    weight: torch.Tensor,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, hidden @ weight.T) with hidden = state + inject_a (+ inject_b); state [..., K], weight [N, K]."""
    _validate("fused_inject_linear", state, inject_a, inject_b, weight)
    chosen = resolve_op("fused_inject_qkv_rope", state.device, backend)
    if chosen == "torch":
        return fused_inject_linear_reference(state, inject_a, inject_b, weight)
    return _fused_inject_linear_op(state, inject_a, inject_b, weight, chosen)


# --- fused_inject_qkv_rope ----------------------------------------------------------------------

@torch.library.custom_op("trm_fast::fused_inject_qkv_rope", mutates_args=())
def _fused_inject_qkv_rope_op(
    state: torch.Tensor, inject_a: torch.Tensor, inject_b: Optional[torch.Tensor], w_qkv: torch.Tensor,
    cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from trm_fast.kernels.fused_linear import inject_qkv_rope_fwd

    tables = (cos.contiguous(), sin.contiguous()) if cos is not None else (None, None)
    return inject_qkv_rope_fwd(state.contiguous(), inject_a.contiguous(),
                               inject_b.contiguous() if inject_b is not None else None, w_qkv.contiguous(),
                               tables[0], tables[1], num_heads)


@_fused_inject_qkv_rope_op.register_fake
def _(state, inject_a, inject_b, w_qkv, cos, sin, num_heads, backend):
    batch, seq_len, _ = state.shape
    head_dim = w_qkv.shape[0] // (3 * num_heads)
    heads = tuple(state.new_empty(batch, num_heads, seq_len, head_dim) for _ in range(3))
    return (torch.empty_like(state),) + heads


def _qkv_setup_context(ctx, inputs, output):
    _, _, inject_b, w_qkv, cos, sin, _, backend = inputs
    hidden = output[0]
    ctx.save_for_backward(hidden, w_qkv, cos, sin)
    ctx.has_inject_b = inject_b is not None
    ctx.backend = backend


def _qkv_backward(ctx, grad_hidden, grad_q, grad_k, grad_v):
    hidden, w_qkv, cos, sin = ctx.saved_tensors
    reference = next((g for g in (grad_q, grad_k, grad_v) if g is not None), None)
    if reference is None:
        grad_qkv = hidden.new_zeros(*hidden.shape[:-1], w_qkv.shape[0])
    else:
        grads = [g if g is not None else torch.zeros_like(reference) for g in (grad_q, grad_k, grad_v)]
        grad_qkv = rope_qkv_backward(*grads, cos, sin, ctx.backend)
    grad_total, grad_weight = _hidden_and_weight_grads(grad_hidden, grad_qkv, hidden, w_qkv)
    return grad_total, grad_total, (grad_total if ctx.has_inject_b else None), grad_weight, None, None, None, None


_fused_inject_qkv_rope_op.register_autograd(_qkv_backward, setup_context=_qkv_setup_context)


def fused_inject_qkv_rope(
    state: torch.Tensor,
    inject_a: torch.Tensor,
    inject_b: Optional[torch.Tensor],
    w_qkv: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    num_heads: int,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, q, k, v): hidden = state + inject_a (+ inject_b), [B, S, D]; q, k, v = RoPE'd heads of
    hidden @ w_qkv.T ([3*H*hd, D] weight), each [B, H, S, hd]."""
    name = "fused_inject_qkv_rope"
    _validate(name, state, inject_a, inject_b, w_qkv)
    if state.dim() != 3:
        raise ValueError(f"{name}: state must be [B, S, D], got shape {tuple(state.shape)}")
    if not isinstance(num_heads, int) or num_heads <= 0 or w_qkv.shape[0] % (3 * num_heads):
        raise ValueError(f"{name}: w_qkv rows {w_qkv.shape[0]} are not 3 * num_heads ({num_heads}) * head_dim")
    head_dim = w_qkv.shape[0] // (3 * num_heads)
    if (cos is None) != (sin is None):
        raise ValueError(f"{name}: give both cos and sin, or neither")
    for label, table in (("cos", cos), ("sin", sin)):
        if table is None:
            continue
        if table.dtype != torch.float32:
            raise TypeError(f"{name}: {label} must be float32, got {table.dtype}")
        if tuple(table.shape) != (state.shape[1], head_dim) or table.device != state.device:
            raise ValueError(f"{name}: {label} must be [S, hd] = {(state.shape[1], head_dim)} on {state.device}")
    chosen = resolve_op("fused_inject_qkv_rope", state.device, backend)
    if chosen == "torch":
        return fused_inject_qkv_rope_reference(state, inject_a, inject_b, w_qkv, cos, sin, num_heads)
    from trm_fast.kernels.fused_linear import SUPPORTED_HEAD_DIMS

    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name} (triton): head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    return _fused_inject_qkv_rope_op(state, inject_a, inject_b, w_qkv, cos, sin, num_heads, chosen)
