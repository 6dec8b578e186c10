"""Device-memory estimate of a TRM training step, and the micro-batch that fits a device.

What a supervision step keeps alive (per process), counted from what the fast engine's ops save
for backward (trm_fast/ops: `save_for_backward` of each op, plus the inputs torch's matmuls keep):

- Model state, independent of the batch: fp32 parameters, their gradients, two AdamATan2 moments
  and the EMA copy (5 x 4 bytes per parameter), plus the weights cast to the activation dtype.
- The puzzle-embedding table, a buffer updated by sign-SGD (no optimizer state, not in the EMA): fp32
  [num_puzzle_identifiers, puzzle_emb_ndim], plus the rows the local batch reads and their
  gradients (fp32 [B, puzzle_emb_ndim] each). One identifier per augmented ARC puzzle makes it
  ~1.6 GB at the reference's width 512 (the kind's `puzzle_identifiers`); a maze or Sudoku run has one row.
  Evaluation builds a second model holding the EMA weights and a copy of the table: transient, while
  no training step is in flight, so not counted here.
- The ACT carries of the whole local batch (y_answer and z_latent, [B, S, D] each, between steps).
- Per example of a micro-batch, the activations the gradient cycle saves for backward: for each of
  its n+1 net calls, the call's input, and per layer
      attention:  q, k, v, attention output, its head-merged copy, the two norm outputs,
                  SwiGLU input [2I] and output [I]             -> 7 D + 3 I per token, plus fp32
                  log-sum-exp [H] and two rstd scalars per token
      mlp_t:      token-mixing SwiGLU input [2 It, D] and output [It, D] per example, the two
                  norm outputs, SwiGLU input [2I] and output [I] -> 3 It D + S (2 D + 3 I), plus
                  two rstd per token
  The T-1 gradient-free cycles save nothing.
- A working set: the temporaries of one net call in flight (forward of a gradient-free call,
  or backward through one call), taken as one call's saved activations again.

With `recompute`, each gradient-cycle net call keeps only its output and its next input (the
inputs of the following call) and rebuilds its internals in backward, so the saved part becomes
2 D per token per call plus one call's activations while its backward runs.

The figures are estimates for choosing a micro-batch, not allocator-exact: `choose_micro_batch`
keeps a margin of the free memory for fragmentation and library workspaces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from trm_fast.model.reference import TRMConfig, swiglu_width

GIB = 1024**3
FP32 = 4


def _activation_bytes(config: TRMConfig) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[config.forward_dtype]


def net_call_saved_bytes(config: TRMConfig) -> int:
    """Bytes one net call with gradients saves for backward, per example."""
    width, seq, layers = config.hidden_size, config.total_len, config.num_layers
    inner = swiglu_width(width, config.expansion)
    element = _activation_bytes(config)
    if config.mlp_t:
        token_inner = swiglu_width(seq, config.expansion)
        per_layer = element * (3 * token_inner * width + seq * (2 * width + 3 * inner)) + FP32 * 2 * seq
    else:
        per_layer = element * seq * (7 * width + 3 * inner) + FP32 * seq * (config.num_heads + 2)
    call_input = element * seq * width
    return call_input + layers * per_layer


def heads_saved_bytes(config: TRMConfig) -> int:
    """Per example: the fp32 logits the loss keeps (the lm_head input is the last call's output)."""
    return FP32 * config.seq_len * config.vocab_size


@dataclass(frozen=True)
class StepMemory:
    """Estimated bytes of one training step: `fixed` does not scale with the micro-batch."""

    model_state: int  # parameters, gradients, moments, EMA, cast weights
    carries: int  # ACT carries of the whole local batch
    per_example: int  # saved activations + working set, per example of a micro-batch
    puzzle_table: int = 0  # the puzzle-embedding table, plus the local batch's rows and their gradients

    @property
    def fixed(self) -> int:
        return self.model_state + self.carries + self.puzzle_table

    def total(self, micro_batch_size: int) -> int:
        return self.fixed + micro_batch_size * self.per_example


def parameter_count(config: TRMConfig) -> int:
    """Trainable parameters of a TRM (the puzzle table is a buffer updated by sign-SGD)."""
    import torch

    from trm_fast.model.reference import TRM

    with torch.device("meta"):
        model = TRM(config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def puzzle_table_bytes(config: TRMConfig) -> int:
    """The fp32 puzzle-embedding table: num_puzzle_identifiers x puzzle_emb_ndim."""
    return FP32 * config.num_puzzle_identifiers * config.puzzle_emb_ndim


def step_memory(config: TRMConfig, local_batch_size: int, recompute: bool = False) -> StepMemory:
    element = _activation_bytes(config)
    puzzle_table = puzzle_table_bytes(config) + 2 * FP32 * local_batch_size * config.puzzle_emb_ndim
    params = parameter_count(config)
    model_state = 5 * FP32 * params + element * params
    carries = local_batch_size * 2 * element * config.total_len * config.hidden_size
    calls = config.l_cycles + 1
    one_call = net_call_saved_bytes(config)
    if recompute:
        saved = calls * 2 * element * config.total_len * config.hidden_size + one_call
    else:
        saved = calls * one_call
    per_example = saved + one_call + heads_saved_bytes(config)
    return StepMemory(model_state, carries, per_example, puzzle_table)


def choose_micro_batch(local_batch_size: int, memory: StepMemory, free_bytes: int, margin: float = 0.85) -> int:
    """The largest divisor of `local_batch_size` whose estimated step fits in `margin` of `free_bytes`.

    Raises ValueError when even one example per micro-batch does not fit."""
    budget = margin * free_bytes - memory.fixed
    for size in sorted((d for d in range(1, local_batch_size + 1) if local_batch_size % d == 0), reverse=True):
        if size * memory.per_example <= budget:
            return size
    raise ValueError(
        f"one example needs ~{memory.total(1) / GIB:.1f} GiB but {free_bytes / GIB:.1f} GiB are free"
    )


def micro_batch_for(config: TRMConfig, cfg, local_batch_size: int, device) -> tuple[int, Optional[str]]:
    """(micro-batch, what to tell the user) for a run of `cfg` (a TrainConfig) on `device`.

    `cfg.micro_batch_size` when set; otherwise the whole per-process batch on CPU, and on a GPU the
    largest share whose estimated step fits the free memory. Raises ValueError when nothing fits."""
    import torch

    device = torch.device(device)
    if cfg.micro_batch_size is not None or device.type != "cuda":
        return cfg.micro_batch_size or local_batch_size, None
    estimate = step_memory(config, local_batch_size, recompute=cfg.recompute)
    free_bytes, _total = torch.cuda.mem_get_info(device)
    micro = choose_micro_batch(local_batch_size, estimate, free_bytes)
    table = (f", of which the puzzle-embedding table {estimate.puzzle_table / GIB:.1f} GiB"
             if estimate.puzzle_table >= 0.1 * GIB else "")
    message = (f"micro-batch {micro} x {local_batch_size // micro} per process (estimated {estimate.total(micro) / GIB:.1f} "
               f"GiB{table} of {free_bytes / GIB:.1f} GiB free; set micro_batch_size to override)")
    if micro < local_batch_size and not cfg.recompute:
        recomputed = step_memory(config, local_batch_size, recompute=True)
        message += f"; recompute=true would allow {choose_micro_batch(local_batch_size, recomputed, free_bytes)}"
    return micro, message


# ----------------------------------------------------------------------------------------------
# Before the data exists: a config's model shape from its settings

def estimated_model_config(cfg) -> Optional[TRMConfig]:
    """The TRMConfig a run of `cfg` (a TrainConfig) will build, from its data settings and without
    the data: a built-in kind's (its data_shape and puzzle_identifiers) or a folder's
    train/dataset.json; None when unknown."""
    import json
    from pathlib import Path

    from trm_fast.config import model_config
    from trm_fast.puzzles import get_kind

    kind = get_kind(cfg.dataset)
    if kind is not None:
        settings = kind.settings(cfg)
        vocab_size, seq_len, _examples = kind.data_shape(settings)
        return model_config(cfg, vocab_size, seq_len, kind.puzzle_identifiers(settings))
    path = Path(cfg.dataset) / "train" / "dataset.json"
    try:
        meta = json.loads(path.read_text())
        return model_config(cfg, int(meta["vocab_size"]), int(meta["seq_len"]), int(meta["num_puzzle_identifiers"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
