"""Optimisers of a TRM run and their learning-rate schedule.

- `AdamATan2`: Adam whose update is atan2(m_hat, sqrt(v_hat)) (bounded, no eps), with decoupled
  weight decay, as in the published adam-atan2 package the reference trains with. The arithmetic is
  op 8 (`trm_fast.ops.optimizer.adam_atan2_ema_step_`), which can also update the EMA copy in the
  same pass.
- `PuzzleEmbeddingSignSGD`: sign-SGD with decoupled weight decay on the puzzle-embedding rows the
  batch used (the table is a buffer, not a Parameter). Under data parallelism every rank gathers all
  ranks' rows and ids first, so every rank applies the same update to its copy of the table.
The training step that drives them is `trm_fast.train.step.TrainStep`.
- `lr_at_step`: linear warmup, then cosine from lr down to lr * min_ratio (min_ratio 1 = constant).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Optional

import torch

from trm_fast.train.ema import EMA


def lr_at_step(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Learning rate of the `step`-th optimizer step (1-based, as in the reference's pretrain.py)."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * cosine))


def _optimizer_ops():
    from trm_fast.ops import optimizer as optimizer_ops  # op 8

    return optimizer_ops


class AdamATan2(torch.optim.Optimizer):
    """AdamATan2 over fp32 parameters; optionally updates `ema`'s shadow copies in the same pass.

    Per step, for each parameter p with gradient g (op 8):
        p *= 1 - lr * wd
        m = lerp(m, g, 1 - beta1);  v = lerp(v, g^2, 1 - beta2)
        p -= lr / (1 - beta1^t) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))
        ema = ema * decay + p * (1 - decay)            (when an EMA is attached)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        ema: Optional[EMA] = None,
        backend: Optional[str] = None,
        capturable: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamATan2: betas must be in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        for group in self.param_groups:
            for param in group["params"]:
                if param.dtype != torch.float32:
                    raise TypeError(f"AdamATan2 keeps fp32 master weights; got a {param.dtype} parameter")
        self.ema = ema
        self.backend = backend
        # capturable: step counts and learning rates live in device tensors updated in place, so a
        # CUDA graph can replay the step; every parameter must then have a gradient at every step.
        self.capturable = capturable
        if capturable:
            for group in self.param_groups:
                device = group["params"][0].device
                group["lr_tensor"] = torch.full((), float(group["lr"]), dtype=torch.float32, device=device)
                group["step_tensor"] = torch.zeros((), dtype=torch.float32, device=device)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if not self.capturable:
            return
        for group in self.param_groups:  # rebuild the device scalars a captured step reads
            device = group["params"][0].device
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state[p]]
            step = float(steps[0]) if steps else 0.0
            group["lr_tensor"] = torch.full((), float(group["lr"]), dtype=torch.float32, device=device)
            group["step_tensor"] = torch.full((), step, dtype=torch.float32, device=device)
            for param in group["params"]:
                if "step" in self.state[param]:
                    self.state[param]["step"] = group["step_tensor"]

    def set_lr(self, lr: float) -> None:
        """Set every group's learning rate (also the device copy a captured step reads)."""
        for group in self.param_groups:
            group["lr"] = lr
            if self.capturable:
                group["lr_tensor"].fill_(lr)

    @torch.no_grad()
    def _capturable_step(self) -> None:
        for group in self.param_groups:
            params = group["params"]
            if any(param.grad is None for param in params):
                raise RuntimeError("AdamATan2(capturable=True) needs a gradient for every parameter at every step")
            for param in params:
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] = group["step_tensor"]  # shared: all parameters step together
            group["step_tensor"].add_(1)
            self._fused_update(group, params, step=group["step_tensor"], lr=group["lr_tensor"])

    def _fused_update(self, group: dict, params: list, step, lr) -> None:
        """Op 8 over `params` (all at the same step count), with the EMA shadows when attached."""
        beta1, beta2 = group["betas"]
        _optimizer_ops().adam_atan2_ema_step_(
            params,
            [param.grad for param in params],
            [self.state[param]["exp_avg"] for param in params],
            [self.state[param]["exp_avg_sq"] for param in params],
            [self.ema.shadow_of(param) for param in params] if self.ema is not None else None,
            step=step,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            ema_decay=self.ema.decay if self.ema is not None else 0.0,
            backend=self.backend,
        )

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.capturable:
            self._capturable_step()
            return loss
        for group in self.param_groups:
            # Parameters that have taken the same number of steps share one fused call.
            by_step: dict[int, list] = defaultdict(list)
            skipped = []
            for param in group["params"]:
                if param.grad is None:
                    skipped.append(param)
                    continue
                if param.grad.is_sparse:
                    raise TypeError("AdamATan2 does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                by_step[int(state["step"].item())].append(param)
            for step, params in by_step.items():
                self._fused_update(group, params, step=step, lr=group["lr"])
            if self.ema is not None and skipped:
                # No update for these this step, but their average still moves toward them.
                self.ema.update_params(skipped)
        return loss


class PuzzleEmbeddingSignSGD:
    """Sign-SGD on the rows of a puzzle-embedding table that a step used (op 8's sign_sgd_rows_).

    `step(ids, grads)` takes the rows' ids and gradients explicitly (from the carries' PuzzleRows).
    `gather_rows(ids, grads) -> (all_ids, all_grads)` collects every rank's rows (identity on one
    process); rows sharing an id are summed before the sign, across micro-batches and ranks too.
    `lr` may be a device scalar (read at every step, as a captured graph needs).
    """

    def __init__(self, table: torch.Tensor, lr, weight_decay: float, backend: Optional[str] = None, gather_rows=None):
        self.table = table
        self.lr = lr
        self.weight_decay = weight_decay
        self.backend = backend
        self.gather_rows = gather_rows

    @torch.no_grad()
    def step(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        if self.gather_rows is not None:
            ids, grads = self.gather_rows(ids, grads)
        _optimizer_ops().sign_sgd_rows_(self.table, ids, grads, self.lr, self.weight_decay, backend=self.backend)
