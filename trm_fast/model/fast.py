"""The fast TRM engine: the reference model's parameters, a planned recursion over fused ops.

What differs from `reference.py` (and why it is faster), while computing the same function:
- Weights are cast to the activation dtype once per supervision step, not once per net call
  (the reference casts every weight T*(n+1) times per step).
- The `x + y + z` input injection is produced by the previous net call's final post-norm kernel
  (`rms_norm_residual_inject`): one pass writes both the new state and the next call's input,
  instead of a norm pass followed by two separate add passes.
- RoPE reads the fused qkv projection and writes q, k, v in the attention layout in one pass;
  SwiGLU and the residual norms are single passes; mlp_t indexes the token axis instead of
  materialising transposes.
- The T-1 gradient-free cycles run under inference mode (eager) so autograd records nothing.
Backends per op come from `trm_fast.ops` (torch | triton | cuda, chosen automatically or forced).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from trm_fast.model.reference import TRM, Block, ReasoningNet, TRMConfig, TRMInner
from trm_fast.ops import (
    add_streams,
    attention,
    resolve_backend_name,
    rms_norm_residual,
    rms_norm_residual_inject,
    rope_qkv,
    swiglu,
    token_rms_norm_residual,
)


def _gradient_free():
    """inference_mode is cheapest in eager mode; torch.compile traces no_grad regions more reliably."""
    if torch.compiler.is_compiling():
        return torch.no_grad()
    return torch.inference_mode()


class CastWeights:
    """A block's weights cast to the compute dtype once per supervision step."""

    def __init__(self, layer: Block, dtype: torch.dtype):
        if layer.use_mlp_t:
            self.token_gate_up = layer.mlp_t.gate_up_proj.weight.to(dtype)
            self.token_down = layer.mlp_t.down_proj.weight.to(dtype)
        else:
            self.qkv = layer.self_attn.qkv_proj.weight.to(dtype)
            self.out = layer.self_attn.o_proj.weight.to(dtype)
        self.gate_up = layer.mlp.gate_up_proj.weight.to(dtype)
        self.down = layer.mlp.down_proj.weight.to(dtype)


def fused_block(
    layer: Block,
    weights: CastWeights,
    hidden: torch.Tensor,
    cos_sin,
    backend: Optional[str],
    inject: Sequence[torch.Tensor] = (),
):
    """One post-norm block on `hidden` (already state + injection).

    Returns (out, next_input): next_input = out + sum(inject), or None when nothing is injected.
    """
    eps = layer.eps
    if layer.use_mlp_t:
        # [2I, S] @ [B, S, D] -> [B, 2I, D]: the token-axis MLP without transposed copies. The weight
        # is broadcast with stride 0 so one strided-batched GEMM reads it (torch.matmul's 2D @ 3D
        # path would fold the batch into transposed copies, forward and backward).
        batch = hidden.shape[0]
        token_gate_up = torch.bmm(weights.token_gate_up.expand(batch, -1, -1), hidden)
        token_act = swiglu(token_gate_up, dim=-2, backend=backend)
        token_delta = torch.bmm(weights.token_down.expand(batch, -1, -1), token_act)
        hidden = token_rms_norm_residual(hidden, token_delta, eps=eps, backend=backend)
    else:
        attn = layer.self_attn
        batch, seq, width = hidden.shape
        qkv = F.linear(hidden, weights.qkv)
        cos, sin = cos_sin if cos_sin is not None else (None, None)
        q, k, v = rope_qkv(qkv, cos, sin, attn.num_heads, backend=backend)
        attended = attention(q, k, v, backend=backend)  # [B, H, S, hd]
        attended = attended.transpose(1, 2).reshape(batch, seq, width)
        hidden = rms_norm_residual(hidden, F.linear(attended, weights.out), eps=eps, backend=backend)

    delta = F.linear(swiglu(F.linear(hidden, weights.gate_up), dim=-1, backend=backend), weights.down)
    if inject:
        return rms_norm_residual_inject(hidden, delta, *inject, eps=eps, backend=backend)
    return rms_norm_residual(hidden, delta, eps=eps, backend=backend), None


def fused_net_call(net: ReasoningNet, weights, net_input, cos_sin, backend, inject=()):
    """The whole net on its (already injected) input; the last block's epilogue makes the next input."""
    hidden = net_input
    last = len(net.layers) - 1
    next_input = None
    for index, (layer, layer_weights) in enumerate(zip(net.layers, weights)):
        hidden, next_input = fused_block(layer, layer_weights, hidden, cos_sin, backend, inject if index == last else ())
    return hidden, next_input


def recursion_plan(h_cycles: int, l_cycles: int) -> list[tuple[str, bool]]:
    """The call sequence of one supervision step: ("z" | "y", with_gradient)."""
    plan = []
    for cycle in range(h_cycles):
        with_grad = cycle == h_cycles - 1
        plan += [("z", with_grad)] * l_cycles + [("y", with_grad)]
    return plan


def fused_recursion(net: ReasoningNet, y_answer, z_latent, x_input, cos_sin, h_cycles: int, l_cycles: int, backend=None):
    """One supervision step's recursion (T-1 cycles without gradients, one with) on fused ops.

    Same function as `TRMInner.recurse`; each net call's last kernel also emits the next call's input.
    """
    weights = [CastWeights(layer, x_input.dtype) for layer in net.layers]
    plan = recursion_plan(h_cycles, l_cycles)

    def injection_for(index: int):
        """What the call after `index` adds to this call's output; () at a gradient boundary."""
        if index + 1 == len(plan) or plan[index][1] != plan[index + 1][1]:
            return ()  # the next input is rebuilt with gradients (x needs its gradient)
        kind, following = plan[index][0], plan[index + 1][0]
        if kind == "z":
            return (y_answer, x_input) if following == "z" else (y_answer,)
        return (z_latent, x_input)  # after y comes the next cycle's first z call

    next_input = None
    for index, (kind, with_grad) in enumerate(plan):
        with contextlib.nullcontext() if with_grad else _gradient_free():
            if next_input is None:  # the first call, or the first one with gradients
                if kind == "z":
                    next_input = add_streams(z_latent, y_answer, x_input, backend=backend)
                else:
                    next_input = add_streams(y_answer, z_latent, backend=backend)
            out, next_input = fused_net_call(net, weights, next_input, cos_sin, backend, injection_for(index))
        if kind == "z":
            z_latent = out
        else:
            y_answer = out
        if index + 1 < len(plan) and plan[index + 1][1] != with_grad:
            # Leaving the gradient-free cycles: inference tensors cannot be saved for backward.
            if not torch.compiler.is_compiling() and y_answer.is_inference():
                y_answer, z_latent = y_answer.clone(), z_latent.clone()
            next_input = None
    return y_answer, z_latent


class FastTRMInner(TRMInner):
    backend: Optional[str] = None  # None = automatic (TRM_FAST_BACKEND, then best available)

    def recurse(self, y_answer, z_latent, x_input, cos_sin):
        config = self.config
        return fused_recursion(self.L_level, y_answer, z_latent, x_input, cos_sin, config.h_cycles, config.l_cycles, self.backend)


class FastTRM(TRM):
    """Drop-in for `TRM` (same parameters, state dict and ACT semantics) on the fused engine."""

    inner_class = FastTRMInner

    def __init__(self, config: TRMConfig, backend: Optional[str] = None):
        super().__init__(config)
        self.inner.backend = backend

    @property
    def backend(self) -> Optional[str]:
        return self.inner.backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self.inner.backend = value

    def backend_report(self, device: torch.device) -> dict[str, str]:
        """Which implementation each op uses on `device` (printed at start-up by the CLI)."""
        return resolve_backend_name(device, self.backend)
