"""`RecursiveReasoner`: TRM's recursion, deep supervision and adaptive halting around any block.

    reasoner = RecursiveReasoner(my_block, hidden_size=256, h_cycles=3, l_cycles=6)
    state = reasoner.initial_state(x)              # x: [B, S, D] embedded input
    for _ in range(reasoner.halt_max_steps):       # deep supervision: one optimizer step each
        state, y_answer = reasoner(x, state)       # y_answer carries gradients of the last cycle
        loss = my_loss(my_head(y_answer)) + my_q_loss(state.q_halt_logits, ...)
        ...
        if state.halted.all(): break

`my_block` is any nn.Module mapping [B, S, D] -> [B, S, D]; the reasoner calls it as
block(state + injection) the way TRM calls its net. When the block is trm-fast's own
`ReasoningNet`, the fused engine runs it (same function, fused kernels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from trm_fast.model.fast import fused_recursion
from trm_fast.model.reference import ReasoningNet, latent_recursion, trunc_normal_


@dataclass
class ReasonerState:
    y_answer: torch.Tensor  # [B, S, D], detached
    z_latent: torch.Tensor  # [B, S, D], detached
    steps: torch.Tensor  # int32 [B] supervision steps taken by each slot
    halted: torch.Tensor  # bool [B]; a halted slot restarts from the initial states at the next call
    q_halt_logits: Optional[torch.Tensor] = None  # fp32 [B] from the last call (with gradients)


class RecursiveReasoner(nn.Module):
    """Latent/answer recursion with deep supervision and ACT halting around `block`.

    Args:
        block: nn.Module mapping [B, S, D] -> [B, S, D] (the tiny network applied recursively).
        hidden_size: D.
        h_cycles: T, recursion cycles per supervision step (T-1 without gradients).
        l_cycles: n, latent updates per cycle.
        halt_max_steps: supervision steps after which a slot always halts.
        halt_exploration_prob: probability that a slot must run a random minimum of steps (training).
        cos_sin: RoPE tables passed to a `ReasoningNet` block (ignored for other blocks).
        backend: fused-op backend for a `ReasoningNet` block (None = automatic).
    """

    def __init__(
        self,
        block: nn.Module,
        hidden_size: int,
        h_cycles: int = 3,
        l_cycles: int = 6,
        halt_max_steps: int = 16,
        halt_exploration_prob: float = 0.1,
        cos_sin: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if h_cycles < 1 or l_cycles < 1 or halt_max_steps < 1:
            raise ValueError("h_cycles, l_cycles and halt_max_steps must all be >= 1")
        self.block = block
        self.hidden_size = hidden_size
        self.h_cycles, self.l_cycles = h_cycles, l_cycles
        self.halt_max_steps = halt_max_steps
        self.halt_exploration_prob = halt_exploration_prob
        self.cos_sin = cos_sin
        self.backend = backend
        self.q_head = nn.Linear(hidden_size, 1)
        with torch.no_grad():  # start near "never halt", as TRM does
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        self.register_buffer("y_init", trunc_normal_(torch.empty(hidden_size), std=1.0))
        self.register_buffer("z_init", trunc_normal_(torch.empty(hidden_size), std=1.0))

    def initial_state(self, x_input: torch.Tensor) -> ReasonerState:
        batch = x_input.shape[0]
        shape = x_input.shape
        return ReasonerState(
            y_answer=self.y_init.to(x_input).expand(shape).clone(),
            z_latent=self.z_init.to(x_input).expand(shape).clone(),
            steps=torch.zeros(batch, dtype=torch.int32, device=x_input.device),
            halted=torch.ones(batch, dtype=torch.bool, device=x_input.device),
        )

    def recurse(self, x_input, y_answer, z_latent):
        """One supervision step's recursion; returns (y_answer, z_latent) with gradients of the last cycle."""
        if isinstance(self.block, ReasoningNet):
            return fused_recursion(self.block, y_answer, z_latent, x_input, self.cos_sin, self.h_cycles, self.l_cycles, self.backend)
        return latent_recursion(lambda state, injection: self.block(state + injection), y_answer, z_latent, x_input, self.h_cycles, self.l_cycles)

    def forward(self, x_input: torch.Tensor, state: Optional[ReasonerState] = None):
        """One supervision step. Halted slots of `state` restart from the initial states (their
        rows of `x_input` should then hold new examples). Returns (new state, y_answer)."""
        if x_input.ndim != 3 or x_input.shape[-1] != self.hidden_size:
            raise ValueError(f"x_input must be [batch, seq, {self.hidden_size}], got {tuple(x_input.shape)}")
        if state is None:
            state = self.initial_state(x_input)
        restart = state.halted.view(-1, 1, 1)
        y_answer = torch.where(restart, self.y_init.to(x_input), state.y_answer)
        z_latent = torch.where(restart, self.z_init.to(x_input), state.z_latent)
        steps = torch.where(state.halted, 0, state.steps) + 1

        y_answer, z_latent = self.recurse(x_input, y_answer, z_latent)
        q_halt = self.q_head(y_answer[:, 0]).float().squeeze(-1)

        with torch.no_grad():
            halted = steps >= self.halt_max_steps
            if self.training and self.halt_max_steps > 1:
                halted = halted | (q_halt > 0)
                explore = torch.rand_like(q_halt) < self.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=self.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)
        new_state = ReasonerState(y_answer.detach(), z_latent.detach(), steps.to(torch.int32), halted, q_halt)
        return new_state, y_answer
