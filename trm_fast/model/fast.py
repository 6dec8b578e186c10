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

Two engine options, both off by default (`FastTRM(config, backend, fused_linear=..., recompute=...)`):
- `fused_linear=True` (attention variants): every net call hands its first block the state and the
  injections unsummed, and that block's qkv projection is op 7 (`fused_inject_qkv_rope`): the sum is
  formed in the matmul prologue (fp32, rounded once, like `add_streams`), RoPE and the head layout
  in the epilogue. It replaces the previous call's injection epilogue (the last block then ends in a
  plain `rms_norm_residual`), the `add_streams` at gradient boundaries, and the separate projection +
  `rope_qkv` pass. mlp_t has no linear over the feature axis of the injected sum (its first matmul
  mixes tokens), so there the option changes nothing. Op 7 needs `fused_linear_available(device)`
  (an sm_80+ GPU, or Triton's interpreter on CPU) and, for its Triton kernel, a head_dim it
  supports: otherwise `initial_carry` / the first forward raises `BackendUnavailable` (no silent
  fallback). Off by default until the GPU report shows it wins at a shape.
- `recompute=True`: each gradient-carrying net call (the last H cycle) runs under
  `torch.utils.checkpoint.checkpoint(use_reentrant=False)`: autograd keeps only each call's inputs
  (states, injections, next input) instead of its internals (qkv, attention, SwiGLU activations,
  norm outputs), and backward re-runs the call. Same function and gradients; memory for time.
  Works eagerly and under torch.compile (fullgraph); the gradient-free cycles are unaffected.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trm_fast.model.reference import TRM, Block, ReasoningNet, TRMConfig, TRMInner
from trm_fast.ops import (
    BackendUnavailable,
    add_streams,
    attention,
    fused_inject_qkv_rope,
    fused_linear_available,
    resolve_backend_name,
    rms_norm_residual,
    rms_norm_residual_inject,
    rope_qkv,
    swiglu,
    token_rms_norm_residual,
)
from trm_fast.ops._backend import resolve


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
    prologue: Sequence[torch.Tensor] = (),
):
    """One post-norm block on `hidden` (already state + injection).

    With `prologue` (attention blocks only), `hidden` is the bare state and the qkv projection adds
    the one or two injections in `prologue` in its prologue (op 7): the block's input is then
    hidden + sum(prologue), rounded once.
    Returns (out, next_input): next_input = out + sum(inject), or None when nothing is injected.
    """
    eps = layer.eps
    if layer.use_mlp_t:
        if prologue:
            raise ValueError("fused_block: mlp_t blocks take their input already injected (no op 7 prologue)")
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
        cos, sin = cos_sin if cos_sin is not None else (None, None)
        if prologue:
            inject_b = prologue[1] if len(prologue) > 1 else None
            hidden, q, k, v = fused_inject_qkv_rope(hidden, prologue[0], inject_b, weights.qkv, cos, sin,
                                                    attn.num_heads, backend=backend)
        else:
            qkv = F.linear(hidden, weights.qkv)
            q, k, v = rope_qkv(qkv, cos, sin, attn.num_heads, backend=backend)
        attended = attention(q, k, v, backend=backend)  # [B, H, S, hd]
        attended = attended.transpose(1, 2).reshape(batch, seq, width)
        hidden = rms_norm_residual(hidden, F.linear(attended, weights.out), eps=eps, backend=backend)

    delta = F.linear(swiglu(F.linear(hidden, weights.gate_up), dim=-1, backend=backend), weights.down)
    if inject:
        return rms_norm_residual_inject(hidden, delta, *inject, eps=eps, backend=backend)
    return rms_norm_residual(hidden, delta, eps=eps, backend=backend), None


def fused_net_call(net: ReasoningNet, weights, net_input, cos_sin, backend, inject=(), prologue=()):
    """The whole net on its input; the last block's epilogue makes the next input (`inject`).

    `net_input` is the injected input, or with `prologue` the bare state whose injections the
    first block's qkv projection adds (op 7).
    """
    hidden = net_input
    last = len(net.layers) - 1
    next_input = None
    for index, (layer, layer_weights) in enumerate(zip(net.layers, weights)):
        hidden, next_input = fused_block(layer, layer_weights, hidden, cos_sin, backend,
                                         inject if index == last else (), prologue if index == 0 else ())
    return hidden, next_input


def _net_call_on_streams(net, weights, cos_sin, backend, inject_count: int, net_input, *streams):
    """fused_net_call with every tensor a positional argument (what checkpoint stores and replays)."""
    return fused_net_call(net, weights, net_input, cos_sin, backend, streams[:inject_count], streams[inject_count:])


def recursion_plan(h_cycles: int, l_cycles: int) -> list[tuple[str, bool]]:
    """The call sequence of one supervision step: ("z" | "y", with_gradient)."""
    plan = []
    for cycle in range(h_cycles):
        with_grad = cycle == h_cycles - 1
        plan += [("z", with_grad)] * l_cycles + [("y", with_grad)]
    return plan


def fused_recursion(
    net: ReasoningNet,
    y_answer,
    z_latent,
    x_input,
    cos_sin,
    h_cycles: int,
    l_cycles: int,
    backend=None,
    fused_linear: bool = False,
    recompute: bool = False,
):
    """One supervision step's recursion (T-1 cycles without gradients, one with) on fused ops.

    Same function as `TRMInner.recurse`. By default each net call's last kernel also emits the next
    call's input; with `fused_linear` (attention nets) each call's first qkv projection sums its
    state and injections instead (op 7). With `recompute` the gradient-carrying calls are
    checkpointed: only their inputs are kept for backward, which re-runs them.
    """
    weights = [CastWeights(layer, x_input.dtype) for layer in net.layers]
    plan = recursion_plan(h_cycles, l_cycles)
    use_prologue = fused_linear and not net.layers[0].use_mlp_t

    def injection_for(index: int):
        """What the call after `index` adds to this call's output; () at a gradient boundary."""
        if use_prologue or index + 1 == len(plan) or plan[index][1] != plan[index + 1][1]:
            return ()  # op 7 sums it, or the next input is rebuilt with gradients (x needs its gradient)
        kind, following = plan[index][0], plan[index + 1][0]
        if kind == "z":
            return (y_answer, x_input) if following == "z" else (y_answer,)
        return (z_latent, x_input)  # after y comes the next cycle's first z call

    next_input = None
    for index, (kind, with_grad) in enumerate(plan):
        with contextlib.nullcontext() if with_grad else _gradient_free():
            state = z_latent if kind == "z" else y_answer
            streams = (y_answer, x_input) if kind == "z" else (z_latent,)
            if use_prologue:
                net_input, prologue = state, streams
            else:
                if next_input is None:  # the first call, or the first one with gradients
                    next_input = add_streams(state, *streams, backend=backend)
                net_input, prologue = next_input, ()
            inject = injection_for(index)
            if with_grad and recompute and torch.is_grad_enabled():
                call = functools.partial(_net_call_on_streams, net, weights, cos_sin, backend, len(inject))
                out, next_input = checkpoint(call, net_input, *inject, *prologue,
                                             use_reentrant=False, preserve_rng_state=False)
            else:
                out, next_input = fused_net_call(net, weights, net_input, cos_sin, backend, inject, prologue)
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


def fused_linear_problem(config: TRMConfig, device, backend: Optional[str] = None) -> Optional[str]:
    """Why `fused_linear=True` cannot run for `config` on `device` (one line), or None when it can."""
    if config.mlp_t:
        return None  # op 7 is not used by mlp_t nets
    device = torch.device(device)
    if not fused_linear_available(device):
        return (f"FastTRM(fused_linear=True): op 7's Triton kernels cannot run on {device} (they need an "
                "sm_80+ GPU, or TRITON_INTERPRET=1 on CPU); use fused_linear=False")
    if resolve(device, backend) != "torch":
        from trm_fast.kernels.fused_linear import SUPPORTED_HEAD_DIMS

        head_dim = config.hidden_size // config.num_heads
        if head_dim not in SUPPORTED_HEAD_DIMS:
            return (f"FastTRM(fused_linear=True): op 7's qkv kernel supports head_dim {SUPPORTED_HEAD_DIMS}, "
                    f"this model has {head_dim}; use fused_linear=False")
    return None


class FastTRMInner(TRMInner):
    backend: Optional[str] = None  # None = automatic (TRM_FAST_BACKEND, then best available)
    fused_linear: bool = False  # op 7 for the qkv projection of each call's first block
    recompute: bool = False  # checkpoint the gradient-carrying net calls

    def check_fused_linear(self, device) -> None:
        """Raise BackendUnavailable when fused_linear is on but op 7 cannot run on `device`."""
        if not self.fused_linear:
            return
        problem = fused_linear_problem(self.config, device, self.backend)
        if problem:
            raise BackendUnavailable(problem)

    def recurse(self, y_answer, z_latent, x_input, cos_sin):
        config = self.config
        if self.fused_linear and not torch.compiler.is_compiling():  # compiled runs were checked by initial_carry
            self.check_fused_linear(x_input.device)
        return fused_recursion(self.L_level, y_answer, z_latent, x_input, cos_sin, config.h_cycles, config.l_cycles,
                               self.backend, fused_linear=self.fused_linear, recompute=self.recompute)


class FastTRM(TRM):
    """Drop-in for `TRM` (same parameters, state dict and ACT semantics) on the fused engine.

    `fused_linear` and `recompute` are the engine options described in the module docstring.
    """

    inner_class = FastTRMInner

    def __init__(self, config: TRMConfig, backend: Optional[str] = None, fused_linear: bool = False,
                 recompute: bool = False):
        super().__init__(config)
        self.inner.backend = backend
        self.inner.fused_linear = bool(fused_linear)
        self.inner.recompute = bool(recompute)

    @property
    def backend(self) -> Optional[str]:
        return self.inner.backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self.inner.backend = value

    @property
    def fused_linear(self) -> bool:
        return self.inner.fused_linear

    @fused_linear.setter
    def fused_linear(self, value: bool) -> None:
        self.inner.fused_linear = bool(value)

    @property
    def recompute(self) -> bool:
        return self.inner.recompute

    @recompute.setter
    def recompute(self, value: bool) -> None:
        self.inner.recompute = bool(value)

    def initial_carry(self, batch: dict):
        self.inner.check_fused_linear(batch["inputs"].device)  # eager, before any compiled step
        return super().initial_carry(batch)

    def backend_report(self, device: torch.device) -> dict[str, str]:
        """Which implementation each op uses on `device` (printed at start-up by the CLI)."""
        report = resolve_backend_name(device, self.backend)
        if self.fused_linear and not self.config.mlp_t:
            report["fused_inject_qkv_rope"] = resolve(torch.device(device), self.backend)
        return report
