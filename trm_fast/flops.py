"""Analytic FLOP counts of TRM supervision steps, for model FLOP utilisation (MFU).

Convention (the usual "model FLOPs" of MFU reports, e.g. PaLM's appendix B):
- Only matrix products are counted, 2*m*k*n FLOPs for [m, k] @ [k, n]: the linear layers, the
  attention score (Q K^T) and value (P V) products, the token-mixing matmuls of TRM-MLP and the
  heads. Norms, activations, softmax, RoPE, embedding look-ups, the loss and the optimizer are
  memory-bound and not counted (they are < 1% of the matmul FLOPs at the paper sizes).
- Work that an implementation chooses to redo (activation recomputation, flash-attention's backward
  recomputing the scores) is not counted: the count is a property of the model, not of the engine.
- Backward = 2x forward (a gradient w.r.t. the input and one w.r.t. the weight per product; for the
  attention products a gradient w.r.t. each operand), so a differentiated product costs 3x.
- One training supervision step = the T-1 gradient-free cycles counted forward only, plus the last
  cycle and the heads counted forward + backward (3x). Each cycle is n+1 net calls (n z-updates,
  one y-update). The heads run on every position of y, prefix included, as both engines compute
  them before dropping the prefix (lm_head), and on position 0 (q_head).
- One evaluation supervision step = all T cycles and the heads, forward only.
"""
from __future__ import annotations

from typing import Optional

from trm_fast.model.reference import TRMConfig, swiglu_width


def _matmul(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def layer_flops(config: TRMConfig, batch_size: int) -> int:
    """Forward FLOPs of one post-norm block (token mixer + channel SwiGLU) on [B, S, D]."""
    rows = batch_size * config.total_len
    width, seq = config.hidden_size, config.total_len
    inner = swiglu_width(width, config.expansion)
    channel_mlp = _matmul(rows, width, 2 * inner) + _matmul(rows, inner, width)
    if config.mlp_t:
        # [2It, S] @ [S, D] and [S, It] @ [It, D] per example: the SwiGLU over the token axis.
        token_inner = swiglu_width(seq, config.expansion)
        mixer = batch_size * (_matmul(2 * token_inner, seq, width) + _matmul(seq, token_inner, width))
    else:
        projections = _matmul(rows, width, 3 * width) + _matmul(rows, width, width)
        # Per head [S, hd] @ [hd, S] then [S, S] @ [S, hd]; summed over heads hd becomes D.
        scores_and_values = batch_size * (_matmul(seq, width, seq) + _matmul(seq, seq, width))
        mixer = projections + scores_and_values
    return mixer + channel_mlp


def net_call_flops(config: TRMConfig, batch_size: int) -> int:
    """Forward FLOPs of one call of the reasoning net (all its layers); the injection add is free."""
    return config.num_layers * layer_flops(config, batch_size)


def heads_flops(config: TRMConfig, batch_size: int) -> int:
    """Forward FLOPs of lm_head over all S positions and q_head (D -> 2) at position 0."""
    rows = batch_size * config.total_len
    return _matmul(rows, config.hidden_size, config.vocab_size) + _matmul(batch_size, config.hidden_size, 2)


def train_step_flops(config: TRMConfig, batch_size: int) -> int:
    """Model FLOPs of one training supervision step (see the module docstring for the convention)."""
    calls_per_cycle = config.l_cycles + 1
    gradient_free = (config.h_cycles - 1) * calls_per_cycle * net_call_flops(config, batch_size)
    with_gradient = 3 * (calls_per_cycle * net_call_flops(config, batch_size) + heads_flops(config, batch_size))
    return gradient_free + with_gradient


def eval_step_flops(config: TRMConfig, batch_size: int) -> int:
    """Model FLOPs of one evaluation supervision step (forward only, all T cycles, heads)."""
    calls = config.h_cycles * (config.l_cycles + 1)
    return calls * net_call_flops(config, batch_size) + heads_flops(config, batch_size)


# Dense (no sparsity) peak matmul throughput per GPU, TFLOP/s, from the vendors' data sheets.
_PEAK_TFLOPS = {
    # name fragment: {dtype: TFLOP/s}
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # fp32 entry = TF32 tensor cores
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # SXM
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 183.0},
}


def peak_flops(device_name: str, dtype: str = "bfloat16") -> Optional[float]:
    """Data-sheet dense peak FLOP/s of a GPU named `device_name` for `dtype`; None when unknown."""
    for fragment, by_dtype in _PEAK_TFLOPS.items():
        if fragment.lower() in device_name.lower():
            value = by_dtype.get(dtype)
            return None if value is None else value * 1e12
    return None


def model_flop_utilisation(flops: float, seconds: float, peak: Optional[float]) -> Optional[float]:
    """Achieved FLOP/s as a fraction of `peak` (None when the peak is unknown)."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak
