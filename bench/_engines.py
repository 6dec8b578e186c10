"""Whole training / evaluation steps for each engine, built only from public pieces of trm_fast.

One training supervision step, identical for every engine except where stated:
    carry, outputs = model(carry, batch)                           (ACT: refill halted slots, recurse)
    losses = act_loss_head(logits, labels, q_halt_logits)          (LM + Q-halt loss, metrics)
    ((losses.lm_loss.sum() + 0.5 * losses.q_halt_loss.sum()) / B).backward()
    adam_atan2_ema_step_(all parameters, EMA copy)                 (AdamATan2 + EMA)
    sign_sgd_rows_(puzzle table, local_ids, local_rows.grad)       (sparse puzzle embedding)
The carry is written back into fixed tensors so a CUDA graph can replay the step.

Engines (`ENGINE_NAMES`):
    reference           TRM (reference.py) eager; every op backend "torch" (plain PyTorch)
    reference_compiled  the same with model + loss under torch.compile (how the reference project runs)
    fast_<backend>      FastTRM (fast.py) eager with all fused ops on <backend> (torch | triton | cuda)
    fast_<backend>_graphs  the fast step captured whole in one CUDA graph (GPU only)
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from trm_fast.cuda_graphs import zero_grads_
from trm_fast.flops import eval_step_flops, train_step_flops
from trm_fast.model.fast import FastTRM
from trm_fast.model.reference import TRM, TRMConfig
from trm_fast.ops import BackendUnavailable, act_loss_head, adam_atan2_ema_step_, resolve_backend_name, sign_sgd_rows_
from trm_fast.ops._backend import resolve, triton_runs_on

# Paper hyper-parameters (Sudoku-Extreme / Maze-Hard runs of the reference project).
LR = 1e-4
PUZZLE_EMB_LR = 1e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 1.0
PUZZLE_EMB_WEIGHT_DECAY = 1.0
EMA_DECAY = 0.999


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class BenchCase:
    """A model configuration and the batch it is benchmarked with."""

    name: str
    config: TRMConfig
    batch_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.config.seq_len  # grid tokens; the puzzle prefix is not counted

    @property
    def train_flops(self) -> int:
        return train_step_flops(self.config, self.batch_size)

    @property
    def eval_flops(self) -> int:
        return self.config.halt_max_steps * eval_step_flops(self.config, self.batch_size)


_SUDOKU = dict(vocab_size=11, seq_len=81, num_heads=8, h_cycles=3, l_cycles=6, puzzle_emb_len=16)
_MAZE = dict(vocab_size=6, seq_len=900, num_heads=8, h_cycles=3, l_cycles=4, puzzle_emb_len=16)
_VARIANTS = {
    "sudoku_mlp": dict(_SUDOKU, mlp_t=True, pos_encodings="none"),
    "sudoku_att": dict(_SUDOKU, pos_encodings="rope"),
    "maze_att": dict(_MAZE, pos_encodings="rope"),
}
# The maze-cpu training preset itself (trm_fast.config): the CPU target is measured on it.
_MAZE_CPU_PRESET = dict(vocab_size=6, seq_len=36, hidden_size=64, num_heads=4, h_cycles=2, l_cycles=2,
                        puzzle_emb_ndim=64, puzzle_emb_len=1, halt_max_steps=8, pos_encodings="rope")
CASE_NAMES = tuple(_VARIANTS) + ("maze_cpu_preset",)


def paper_case(name: str) -> BenchCase:
    """The paper's sizes in bf16. Sudoku: global batch 768 on one GPU. Maze: the reference trains it
    on 4 GPUs with global batch 768, so one GPU's share (192) is the per-device workload."""
    if name == "maze_cpu_preset":
        return BenchCase(name, TRMConfig(**_MAZE_CPU_PRESET, forward_dtype="bfloat16"), 64)
    config = TRMConfig(**_VARIANTS[name], hidden_size=512, puzzle_emb_ndim=512, forward_dtype="bfloat16")
    return BenchCase(name, config, 192 if name.startswith("maze") else 768)


def tiny_case(name: str) -> BenchCase:
    """Scaled down for CPU (fp32): width 64, 2 heads, T=2, n=1, short grids, batch 8. Same code paths.
    maze_cpu_preset is the CPU training preset at its real size (6x6 mazes, batch 64)."""
    if name == "maze_cpu_preset":
        return BenchCase(name, TRMConfig(**_MAZE_CPU_PRESET), 64)
    values = dict(_VARIANTS[name], hidden_size=64, num_heads=2, puzzle_emb_ndim=64, puzzle_emb_len=2)
    values.update(h_cycles=2, l_cycles=1, seq_len=36 if name.startswith("maze") else 16)
    return BenchCase(name, TRMConfig(**values), 8)


def make_batch(config: TRMConfig, batch_size: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.seq_len)
    batch = {
        "inputs": torch.randint(1, config.vocab_size, shape, generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, config.vocab_size, shape, generator=generator, dtype=torch.int64),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32),
    }
    return {key: value.to(device) for key, value in batch.items()}


# ----------------------------------------------------------------------------- engines
@dataclass(frozen=True)
class EngineSpec:
    name: str
    model: str  # "reference" | "fast"
    backend: str  # op backend of model, loss and optimizer: "torch" | "triton" | "cuda"
    compiled: bool = False
    cuda_graphs: bool = False


ENGINE_SPECS = {
    spec.name: spec
    for spec in (
        EngineSpec("reference", "reference", "torch"),
        EngineSpec("reference_compiled", "reference", "torch", compiled=True),
        EngineSpec("fast_torch", "fast", "torch"),
        EngineSpec("fast_triton", "fast", "triton"),
        EngineSpec("fast_cuda", "fast", "cuda"),
        # The torch backend's sign-SGD needs `unique` (a host sync), so only fused backends are graphed.
        EngineSpec("fast_triton_graphs", "fast", "triton", cuda_graphs=True),
        EngineSpec("fast_cuda_graphs", "fast", "cuda", cuda_graphs=True),
    )
}
ENGINE_NAMES = tuple(ENGINE_SPECS)
BASELINES = ("reference", "reference_compiled")  # ratios are stated against these


def why_unavailable(spec: EngineSpec, device: torch.device) -> Optional[str]:
    """None when `spec` can run on `device`, else the reason (a skip message)."""
    if spec.cuda_graphs and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if spec.backend == "triton" and not triton_runs_on(device):
        return "Triton cannot run here"
    if spec.backend == "cuda":
        try:
            if resolve(device, "cuda", has_cuda_kernel=True) != "cuda":
                return "the CUDA extension is not available"
        except BackendUnavailable as error:
            return str(error)
    return None


def op_backends(spec: EngineSpec, device: torch.device) -> dict[str, str]:
    """Which implementation each op runs with under this engine (what the report records)."""
    return resolve_backend_name(device, spec.backend)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model(spec: EngineSpec, config: TRMConfig, device: torch.device, seed: int = 0) -> TRM:
    torch.manual_seed(seed)
    model = TRM(config) if spec.model == "reference" else FastTRM(config, backend=spec.backend)
    return model.to(device)


class TrainEngine:
    """One engine's whole training supervision step on a fixed batch; `step()` runs one (synchronised)."""

    def __init__(
        self, spec: EngineSpec, case: BenchCase, device: torch.device, seed: int = 0, warmup_steps: int = 2,
        compile_backend: str = "inductor",
    ):
        self.spec, self.case, self.device = spec, case, device
        self.model = build_model(spec, case.config, device, seed).train()
        self.batch = make_batch(case.config, case.batch_size, device, seed)
        self.carry = self.model.initial_carry(self.batch)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.ema_params = [p.detach().clone() for p in self.params]
        # Device tensors, updated in place: a graph replay reads them without host syncs.
        self.step_count = torch.zeros((), dtype=torch.float32, device=device)
        self.lr = torch.full((), LR, dtype=torch.float32, device=device)
        self.puzzle_lr = torch.full((), PUZZLE_EMB_LR, dtype=torch.float32, device=device)
        self.forward_and_loss = self._forward_and_loss
        if spec.compiled:
            self.forward_and_loss = torch.compile(self._forward_and_loss, backend=compile_backend)
        self.run = self._step
        if spec.cuda_graphs:
            from trm_fast.cuda_graphs import GraphedStep

            # Warm-up (eager, side stream) happens in GraphedStep's first calls; the capture follows.
            self.run = GraphedStep(self._step, warmup_steps=max(1, warmup_steps))

    def _forward_and_loss(self, carry, batch):
        new_carry, outputs = self.model(carry, batch)
        labels = new_carry.current_data["labels"]
        losses = act_loss_head(outputs["logits"], labels, outputs["q_halt_logits"], backend=self.spec.backend)
        total = (losses["lm_loss"].sum() + 0.5 * losses["q_halt_loss"].sum()) / labels.shape[0]
        return new_carry, total, losses

    def _step(self, batch: dict) -> dict:
        backend = self.spec.backend
        puzzle_emb = self.model.inner.puzzle_emb
        # In place, never None: captured graphs and the fused optimizer keep the gradients' addresses.
        zero_grads_(self.params + ([puzzle_emb.local_rows] if puzzle_emb is not None else []))
        new_carry, total, losses = self.forward_and_loss(self.carry, batch)
        total.backward()
        self.carry.copy_(new_carry)
        with torch.no_grad():
            self.step_count += 1
            adam_atan2_ema_step_(
                self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, self.ema_params,
                step=self.step_count, lr=self.lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
                ema_decay=EMA_DECAY, backend=backend,
            )
            if puzzle_emb is not None and puzzle_emb.local_rows.grad is not None:
                sign_sgd_rows_(
                    puzzle_emb.weights, puzzle_emb.local_ids, puzzle_emb.local_rows.grad, self.puzzle_lr,
                    PUZZLE_EMB_WEIGHT_DECAY, backend=backend,
                )
        return {"loss": total.detach(), "seq_correct": losses["seq_correct"]}

    def step(self) -> dict:
        outputs = self.run(self.batch)
        sync(self.device)
        return outputs


class EvalEngine:
    """Evaluation of one batch: a fresh carry, all 16 supervision steps, then the loss head's metrics."""

    def __init__(
        self, spec: EngineSpec, case: BenchCase, device: torch.device, seed: int = 0, compile_backend: str = "inductor"
    ):
        if spec.cuda_graphs:
            raise ValueError("the evaluation benchmark has no CUDA-graph engine")
        self.spec, self.case, self.device = spec, case, device
        self.model = build_model(spec, case.config, device, seed).eval()
        self.batch = make_batch(case.config, case.batch_size, device, seed)
        # Compiled per supervision step (as the reference runs its model), not the unrolled 16 steps.
        self.forward = torch.compile(self.model, backend=compile_backend) if spec.compiled else self.model

    @torch.no_grad()
    def step(self) -> dict:
        carry = self.model.initial_carry(self.batch)
        for _ in range(self.case.config.halt_max_steps):
            carry, outputs = self.forward(carry, self.batch)
        metrics = act_loss_head(
            outputs["logits"], carry.current_data["labels"], outputs["q_halt_logits"], backend=self.spec.backend
        )
        sync(self.device)
        return metrics


# ----------------------------------------------------------------------------- measuring
def time_calls(fn: Callable[[], object], rounds: int, warmup: int) -> list[float]:
    """Wall seconds of `rounds` calls after `warmup` calls (fn synchronises the device itself)."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def peak_memory_bytes(device: torch.device) -> Optional[int]:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def teardown(engine, device: torch.device) -> None:
    """Free an engine's memory (and its compiled graphs) before the next one is measured."""
    if getattr(engine, "spec", None) is not None and engine.spec.compiled:
        torch._dynamo.reset()
    release_memory(device)


def median_seconds(engine, rounds: int, warmup: int, device: torch.device) -> float:
    """Median time of `engine.step` over `rounds` after `warmup`, then frees the engine (baselines)."""
    seconds = sorted(time_calls(engine.step, rounds, warmup))[rounds // 2]
    teardown(engine, device)
    return seconds
