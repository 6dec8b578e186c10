"""Fused ops of trm-fast, each usable on its own from any PyTorch code.

Every op takes a trailing `backend=` ("torch" | "triton" | "cuda" | None for automatic; the
TRM_FAST_BACKEND environment variable sets the default), has a plain-PyTorch `*_reference`
twin, and is registered with torch.library (fake + autograd) so torch.compile traces it whole.
The op list is `OPS` (trm_fast.ops.registry): dispatch, the CUDA extension, the AOT table, the
benchmarks and the tests read it.
"""
from __future__ import annotations

from trm_fast.ops._backend import BACKENDS, BackendUnavailable
from trm_fast.ops.add_streams import add_streams
from trm_fast.ops.attention import attention, attention_backend_name
from trm_fast.ops.fused_linear import fused_inject_linear, fused_inject_qkv_rope, fused_linear_available
from trm_fast.ops.loss_head import act_loss_head, softmax_cross_entropy, stablemax_cross_entropy
from trm_fast.ops.optimizer import adam_atan2_ema_step_, sign_sgd_rows_
from trm_fast.ops.rms_norm_residual import rms_norm_residual, rms_norm_residual_inject
from trm_fast.ops.rope import rope_qkv
from trm_fast.ops.swiglu import swiglu
from trm_fast.ops.registry import OPS, resolve_backend_name
from trm_fast.ops.token_rms_norm import token_rms_norm_residual

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "OPS",
    "act_loss_head",
    "adam_atan2_ema_step_",
    "add_streams",
    "attention",
    "attention_backend_name",
    "fused_inject_linear",
    "fused_inject_qkv_rope",
    "fused_linear_available",
    "resolve_backend_name",
    "rms_norm_residual",
    "rms_norm_residual_inject",
    "rope_qkv",
    "sign_sgd_rows_",
    "softmax_cross_entropy",
    "stablemax_cross_entropy",
    "swiglu",
    "token_rms_norm_residual",
]
