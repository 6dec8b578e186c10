"""The training step of TRM: the one definition `trm-fast train`, the benchmarks and the tests run.

One call is one optimizer step on this process's share of the global batch:

    zero the gradients (in place)
    for each micro-batch m (its own ACT carry, as a data-parallel rank has its own):
        carry_m, outputs = model(carry_m, batch_m)                # one supervision step (ACT refill)
        loss_m, metrics_m = act_loss(outputs, ...)                # LM + Q-halt (+ Q-continue) loss
        (loss_m / global_batch_size).backward()                   # gradients accumulate
    all-reduce the gradients over processes (data parallel)
    AdamATan2 (+ the fused EMA update) on the weights
    sign-SGD on the puzzle-embedding rows every micro-batch (and rank) used

Capturable by construction, so `GraphedStep` can wrap the same object: learning rates and step
counts are device scalars, gradients are zeroed in place, carries are updated in place, and the
step's state (EMA, puzzle rows) is handed to it explicitly, never looked up through module buffers.
The trainer keeps scheduling, logging, evaluation and checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from trm_fast.config import ConfigError, TrainConfig
from trm_fast.cuda_graphs import zero_grads_
from trm_fast.errors import first_line
from trm_fast.model import TRM, ACTCarry, TRMConfig, make_model
from trm_fast.train import distributed as dist_lib
from trm_fast.train.ema import EMA
from trm_fast.train.losses import act_loss
from trm_fast.train.optim import AdamATan2, PuzzleEmbeddingSignSGD


def local_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Each process's share of the global batch."""
    if cfg.global_batch_size % world_size:
        raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not divisible by the {world_size} processes")
    return cfg.global_batch_size // world_size


class TrainStep:
    def __init__(
        self,
        model: TRM,
        cfg: TrainConfig,
        ema: Optional[EMA] = None,
        context: Optional[dist_lib.DistContext] = None,
        micro_batch_size: Optional[int] = None,
        log: Callable[[str], None] = print,
    ):
        self.model = model.train()
        self.log = log
        self.cfg = cfg
        self.ema = ema
        device = next(model.parameters()).device
        self.context = context or dist_lib.DistContext(device=device)
        world_size = self.context.world_size
        self.local_batch_size = local_batch_size(cfg, world_size)
        self.micro_batch_size = micro_batch_size or cfg.micro_batch_size or self.local_batch_size
        if self.local_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"micro_batch_size {self.micro_batch_size} does not divide the per-process batch {self.local_batch_size} "
                f"(global_batch_size {cfg.global_batch_size} over {world_size} process(es))"
            )

        self.params = [p for p in model.parameters() if p.requires_grad]
        op_backend = None if cfg.backend == "auto" else cfg.backend
        self.optimizer = AdamATan2(
            self.params, lr=0.0, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
            ema=ema, backend=op_backend, capturable=True,
        )
        self.puzzle_lr = torch.zeros((), dtype=torch.float32, device=device)
        self.sign_sgd = None
        if model.puzzle_emb is not None:
            self.sign_sgd = PuzzleEmbeddingSignSGD(
                model.puzzle_emb.weights, lr=self.puzzle_lr, weight_decay=cfg.puzzle_emb_weight_decay,
                backend=op_backend, gather_rows=lambda ids, rows: dist_lib.gather_rows(ids, rows, self.context),
            )
        self.forward = torch.compile(model) if cfg.compile else model
        self.compile_checked = not cfg.compile  # until the first compiled call has succeeded
        self.carries: Optional[list[ACTCarry]] = None  # one per micro-batch, made at the first step

    @property
    def num_micro_batches(self) -> int:
        return self.local_batch_size // self.micro_batch_size

    def set_learning_rates(self, lr: float, puzzle_emb_lr: float) -> None:
        """Written into the device scalars the step reads (a captured graph sees the new values)."""
        self.optimizer.set_lr(lr)
        self.puzzle_lr.fill_(puzzle_emb_lr)

    def split(self, batch: dict) -> list[dict]:
        """This process's batch as micro-batches (views, in order)."""
        parts = {key: value.split(self.micro_batch_size) for key, value in batch.items()}
        return [{key: parts[key][index] for key in batch} for index in range(self.num_micro_batches)]

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the step reads and updates in place (what a captured graph bakes in)."""
        tensors = list(self.params) + [p.grad for p in self.params if p.grad is not None]
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if torch.is_tensor(value)]
        for group in self.optimizer.param_groups:
            tensors += [group["lr_tensor"], group["step_tensor"]]
        if self.ema is not None:
            tensors += list(self.ema.shadow.values())
        if self.model.puzzle_emb is not None:
            tensors += [self.model.puzzle_emb.weights, self.puzzle_lr]
        for carry in self.carries or []:
            tensors += [carry.y_answer, carry.z_latent, carry.steps, carry.halted, *carry.current_data.values()]
            if carry.puzzle_rows is not None:
                tensors += [carry.puzzle_rows.values, carry.puzzle_rows.ids]
        return tensors

    def _forward(self, carry: ACTCarry, micro_batch: dict):
        """The model's supervision step; a compile that fails (a compiler or toolchain this torch
        build cannot use) falls back to eager once, with one line, instead of ending the run."""
        if self.compile_checked:
            return self.forward(carry, micro_batch)
        try:
            result = self.forward(carry, micro_batch)
        except Exception as error:  # noqa: BLE001 - any compiler failure; the eager model is the same function
            reason = first_line(str(error)) or type(error).__name__
            self.log(f"torch.compile failed ({type(error).__name__}: {reason}); training continues eagerly")
            self.forward = self.model
            result = self.forward(carry, micro_batch)
        self.compile_checked = True
        return result

    def __call__(self, batch: dict) -> torch.Tensor:
        """One optimizer step; returns the metric sums over this process's batch (on the device)."""
        cfg = self.cfg
        micro_batches = self.split(batch)
        if self.carries is None:
            self.carries = [self.model.initial_carry(micro) for micro in micro_batches]
        rows = [carry.puzzle_rows for carry in self.carries if carry.puzzle_rows is not None]
        zero_grads_(self.params + [row.values for row in rows])

        metric_sums = None
        for carry, micro in zip(self.carries, micro_batches):
            new_carry, outputs = self._forward(carry, micro)
            loss, metrics = act_loss(
                outputs, new_carry.current_data["labels"], new_carry.halted, new_carry.steps, cfg.loss_type, cfg.backend
            )
            (loss / cfg.global_batch_size).backward()
            carry.copy_(new_carry)
            metric_sums = metrics if metric_sums is None else metric_sums + metrics

        dist_lib.all_reduce_gradients(self.params, self.context)
        self.optimizer.step()
        if self.sign_sgd is not None and rows:
            self.sign_sgd.step(torch.cat([row.ids for row in rows]), torch.cat([row.values.grad for row in rows]))
        return metric_sums


def build_train_step(
    cfg: TrainConfig,
    model_config: TRMConfig,
    device,
    context: Optional[dist_lib.DistContext] = None,
    micro_batch_size: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> TrainStep:
    """The model (cfg.engine, seeded with cfg.seed; rank 0's weights on every rank), its EMA and the
    step, as the trainer builds them. Benchmarks and tests build theirs here too, from a preset."""
    torch.manual_seed(cfg.seed)
    model_config = runnable_model_config(model_config, torch.device(device), log)
    model = make_model(model_config, cfg.engine, cfg.backend, **fast_options(cfg)).to(device)
    if context is not None:
        dist_lib.broadcast_module(model, context)
    ema = EMA(model, cfg.ema_rate) if cfg.ema else None
    return TrainStep(model, cfg, ema=ema, context=context, micro_batch_size=micro_batch_size, log=log)


def cpu_runs_fast(dtype: str) -> bool:
    """Whether this CPU has native dot products for `dtype` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16).
    Without them PyTorch emulates low-precision matmuls, which is slower than float32."""
    cpu = torch.cpu
    if dtype == "bfloat16":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    elif dtype == "float16":
        checks = ("_is_amx_fp16_supported",)
    else:
        return True
    # Private helpers (torch >= 2.3); a build without them counts as "no", which only costs speed.
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def runnable_model_config(model_config: TRMConfig, device: torch.device, log: Callable[[str], None] = print) -> TRMConfig:
    """The model config as it will run on `device`: a bf16/fp16 forward on a CPU without native
    low-precision dot products falls back to float32, with one printed line."""
    dtype = model_config.forward_dtype
    if device.type != "cpu" or cpu_runs_fast(dtype):
        return model_config
    log(f"forward_dtype {dtype}: this CPU has no native {dtype} dot products, so the model runs in float32 (faster here)")
    return dataclasses.replace(model_config, forward_dtype="float32")


def fast_options(cfg: TrainConfig) -> dict:
    """The fast engine's options a config sets (none for the reference engine)."""
    return dict(recompute=cfg.recompute, fused_linear=cfg.fused_linear) if cfg.engine == "fast" else {}
