"""Exponential moving average of a model's parameters (the weights evaluation and checkpoints use).

As in the reference's EMAHelper, only trainable parameters are averaged; buffers (the
puzzle-embedding table, the fixed initial states) are taken from the live model. After every
optimizer step: shadow = decay * shadow + (1 - decay) * param. AdamATan2 can do this inside its
fused update (see optim.py); `update` does it on its own for any other optimiser.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self._name_of: dict[int, str] = {}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    self.shadow[name] = param.detach().clone()
                    self._name_of[id(param)] = name

    def shadow_of(self, param: torch.Tensor) -> torch.Tensor:
        return self.shadow[self._name_of[id(param)]]

    @torch.no_grad()
    def update_params(self, params: Iterable[torch.Tensor]) -> None:
        for param in params:
            self.shadow_of(param).lerp_(param.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.update_params(p for p in model.parameters() if p.requires_grad)

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict with averaged parameters (buffers from the live model)."""
        state = model.state_dict()
        return {key: (self.shadow[key] if key in self.shadow else value).detach().clone() for key, value in state.items()}

    def averaged_copy(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` holding the averaged parameters (the live model is untouched)."""
        averaged = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in averaged.named_parameters():
                if name in self.shadow:
                    param.copy_(self.shadow[name])
        return averaged

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.detach().clone() for k, v in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:3]
            extra = sorted(set(shadow) - set(self.shadow))[:3]
            raise ValueError(f"EMA state does not fit the model (missing {missing}, unexpected {extra})")
        self.decay = float(state["decay"])
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
