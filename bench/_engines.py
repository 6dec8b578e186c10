"""Whole training / evaluation steps for each engine: the trainer's own code, built from the presets.

A training step is `trm_fast.train.step.TrainStep` (what `trm-fast train` runs: micro-batches with
their ACT carries, the ACT loss with Q-halt/Q-continue, AdamATan2 with the fused EMA, sign-SGD of
the puzzle rows), built by `build_train_step` from `config.preset(...)` plus overrides; with CUDA
graphs it is wrapped in the trainer's `GraphedStep`. Evaluation is the trainer's `evaluate`.

Engines (`ENGINE_NAMES`) are config overrides of the same step:
    reference           engine=reference, every op backend "torch" (plain PyTorch)
    reference_compiled  the same with compile=true (how the reference project runs)
    fast_<backend>      engine=fast, backend=<backend> (torch | triton | cuda)
    fast_<backend>_graphs  the fast step captured whole in one CUDA graph (cuda_graphs=true, GPU only)
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Optional

import torch

from bench.timing import device_seconds, sync
from trm_fast import config as config_lib
from trm_fast import memory as memory_lib
from trm_fast.config import TrainConfig
from trm_fast.flops import eval_step_flops, train_step_flops
from trm_fast.model import TRMConfig
from trm_fast.ops import BackendUnavailable, resolve_backend_name
from trm_fast.ops._backend import resolve, triton_runs_on
from trm_fast.train.evaluate import evaluate
from trm_fast.train.step import build_train_step


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class DataShape:
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int = 1


SUDOKU, MAZE_30 = DataShape(11, 81), DataShape(6, 900)
MAZE_CPU = DataShape(6, config_lib.preset("maze-cpu").maze.size ** 2)  # the CPU preset's own maze size (bench_cpu_preset.py)


@dataclass(frozen=True)
class BenchCase:
    """A training config (a preset plus overrides) and the shape of the data it is benchmarked on."""

    name: str
    train_config: TrainConfig
    data: DataShape

    @property
    def config(self) -> TRMConfig:
        data = self.data
        return config_lib.model_config(self.train_config, data.vocab_size, data.seq_len, data.num_puzzle_identifiers)

    @property
    def batch_size(self) -> int:
        return self.train_config.global_batch_size

    def micro_batch_size(self, device: torch.device) -> int:
        """The micro-batch the trainer would pick on `device` (one process)."""
        return memory_lib.micro_batch_for(self.config, self.train_config, self.batch_size, device)[0]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.config.seq_len  # grid tokens; the puzzle prefix is not counted

    @property
    def train_flops(self) -> int:
        return train_step_flops(self.config, self.batch_size)

    @property
    def eval_flops(self) -> int:
        return self.config.halt_max_steps * eval_step_flops(self.config, self.batch_size)


# The paper's Sudoku runs are their own presets: sudoku-paper (TRM-MLP: mlp_t, no positional
# encoding, T=3, n=6) and sudoku-att-paper (the same with attention and RoPE).
_CASES = {
    "sudoku_mlp": ("sudoku-paper", [], SUDOKU),
    "sudoku_att": ("sudoku-att-paper", [], SUDOKU),
    "maze_att": ("maze-paper", [], MAZE_30),
}
CASE_NAMES = tuple(_CASES)
# Scaled down for CPU (fp32): width 64, 2 heads, T=2, n=1, short grids, batch 8. Same code paths.
_TINY_OVERRIDES = ["model.hidden_size=64", "model.num_heads=2", "model.puzzle_emb_len=2", "model.h_cycles=2",
                   "model.l_cycles=1", "model.forward_dtype=float32", "global_batch_size=8"]


def _case(name: str, extra: list[str], data: DataShape) -> BenchCase:
    preset_name, overrides, _ = _CASES[name]
    cfg = config_lib.apply_overrides(config_lib.preset(preset_name), overrides + extra)
    return BenchCase(name, cfg, data)


def paper_case(name: str) -> BenchCase:
    """The preset at the paper's sizes (bf16, global batch 768, micro-batches as the trainer picks)."""
    return _case(name, [], _CASES[name][2])


def tiny_case(name: str) -> BenchCase:
    """Small enough for CPU."""
    data = _CASES[name][2]
    return _case(name, _TINY_OVERRIDES, DataShape(data.vocab_size, 36 if name.startswith("maze") else 16))


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
        EngineSpec("fast_torch_compiled", "fast", "torch", compiled=True),  # what maze-cpu trains with
        EngineSpec("fast_triton", "fast", "triton"),
        EngineSpec("fast_cuda", "fast", "cuda"),
        # The torch backend's sign-SGD needs `unique` (a host sync), so only fused backends are graphed.
        EngineSpec("fast_triton_graphs", "fast", "triton", cuda_graphs=True),
        EngineSpec("fast_cuda_graphs", "fast", "cuda", cuda_graphs=True),
    )
}
ENGINE_NAMES = tuple(ENGINE_SPECS)
# Ratios are stated against these; fast_torch is the default engine, so compiled and fused engines
# also show what they gain over it.
BASELINES = ("reference", "reference_compiled", "fast_torch")


def earlier_baselines(variant: str, baselines: tuple[str, ...]) -> tuple[str, ...]:
    """The baselines a variant is compared with: all of them, or for a baseline those listed before it."""
    return baselines[: baselines.index(variant)] if variant in baselines else baselines


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


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def engine_config(spec: EngineSpec, case: BenchCase) -> TrainConfig:
    """The case's training config with the engine's overrides (compilation is applied by the engine)."""
    return config_lib.apply_overrides(config_lib.from_dict(config_lib.to_dict(case.train_config)), [
        f"engine={spec.model}", f"backend={spec.backend}", "compile=false", f"cuda_graphs={spec.cuda_graphs}",
    ])


class TrainEngine:
    """The trainer's step for one engine on a fixed batch; `step()` runs one (synchronised)."""

    def __init__(
        self, spec: EngineSpec, case: BenchCase, device: torch.device, seed: int = 0, warmup_steps: int = 2,
        compile_backend: str = "inductor",
    ):
        self.spec, self.case, self.device = spec, case, device
        cfg = engine_config(spec, case)
        self.train_step = build_train_step(cfg, case.config, device, micro_batch_size=case.micro_batch_size(device))
        if spec.compiled:  # cfg.compile, with the profile's compiler backend (aot_eager in the tiny profile)
            self.train_step.forward = torch.compile(self.train_step.model, backend=compile_backend)
        self.train_step.set_learning_rates(cfg.lr, cfg.puzzle_emb_lr)
        self.batch = make_batch(case.config, case.batch_size, device, seed)
        self.run = self.train_step
        if spec.cuda_graphs:
            from trm_fast.cuda_graphs import GraphedStep

            # Warm-up (eager, side stream) happens in GraphedStep's first calls; the capture follows.
            self.run = GraphedStep(self.train_step, warmup_steps=max(1, warmup_steps))

    def step(self) -> torch.Tensor:
        """The metric sums of the step (trm_fast.train.losses.METRIC_NAMES)."""
        metric_sums = self.run(self.batch)
        sync(self.device)
        return metric_sums


class EvalEngine:
    """The trainer's evaluation of one batch: a fresh carry, all supervision steps, then the metrics."""

    def __init__(
        self, spec: EngineSpec, case: BenchCase, device: torch.device, seed: int = 0, compile_backend: str = "inductor"
    ):
        if spec.cuda_graphs:
            raise ValueError("the evaluation benchmark has no CUDA-graph engine")
        self.spec, self.case, self.device = spec, case, device
        cfg = engine_config(spec, case)
        self.model = build_train_step(cfg, case.config, device).model.eval()
        self.batch = make_batch(case.config, case.batch_size, device, seed)
        self.batch["valid"] = torch.ones(case.batch_size, dtype=torch.bool, device=device)
        # Compiled per supervision step (as the reference runs its model), not the unrolled 16 steps.
        self.forward = torch.compile(self.model, backend=compile_backend) if spec.compiled else self.model
        self.loss_type, self.backend = cfg.loss_type, cfg.backend

    def step(self) -> dict:
        return evaluate(self.forward, [self.batch], self.device, loss_type=self.loss_type, backend=self.backend, prefix="")


# ----------------------------------------------------------------------------- measuring
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
    seconds = sorted(device_seconds(engine.step, device, warmup, rounds))[rounds // 2]
    teardown(engine, device)
    return seconds
