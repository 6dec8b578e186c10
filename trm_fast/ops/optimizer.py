"""Op 8: fused AdamATan2 + EMA over every parameter (one launch), and sign-SGD on embedding rows.

AdamATan2 is Adam whose update uses atan2(m_hat, sqrt(v_hat)) instead of m_hat / (sqrt(v_hat) + eps):
bounded (|update| <= pi/2 * lr) and with no eps. The math is that of the published AdamATan2 CUDA
package, in fp32:
    p *= 1 - lr * wd
    m = lerp(m, g, 1 - beta1);  v = lerp(v, g * g, 1 - beta2)
    p -= lr / (1 - beta1^step) * atan2(m, sqrt(v) / sqrt(1 - beta2^step))
    ema = ema * ema_decay + p * (1 - ema_decay)            (when ema_params is given)
`step` and `lr` may be Python numbers or one-element device tensors: with tensors nothing is read on
the host, so a CUDA graph can replay the step while the schedule changes the tensors in place.

sign_sgd_rows_ is TRM's update of the sparse puzzle-embedding table: duplicate ids have their gradients
summed, then table[id] = table[id] * (1 - lr * wd) - lr * sign(summed gradient).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from trm_fast.ops.registry import resolve_op

Scalar = Union[float, int, Tensor]


# ----------------------------------------------------------------------------- references (the spec)
@torch.no_grad()
def adam_atan2_ema_step_reference_(
    params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor],
    ema_params: Optional[Sequence[Tensor]], *, step: Scalar, lr: Scalar, beta1: float, beta2: float,
    weight_decay: float, ema_decay: float,
) -> None:
    params, grads, exp_avgs, exp_avg_sqs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs)
    if not params:
        return
    if isinstance(step, Tensor):
        step = step.float()
    if isinstance(lr, Tensor):
        lr = lr.float()
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denominators, bias_correction2_sqrt)
    updates = [torch.atan2(m, d) for m, d in zip(exp_avgs, denominators)]  # no _foreach_atan2
    torch._foreach_mul_(updates, lr / bias_correction1)
    torch._foreach_sub_(params, updates)
    if ema_params:
        ema_params = list(ema_params)
        torch._foreach_mul_(ema_params, ema_decay)
        torch._foreach_add_(ema_params, params, alpha=1 - ema_decay)


@torch.no_grad()
def sign_sgd_rows_reference_(table: Tensor, row_ids: Tensor, row_grads: Tensor, lr: Scalar, weight_decay: float) -> None:
    unique_ids, inverse = row_ids.long().unique(return_inverse=True)
    summed = torch.zeros(unique_ids.shape[0], table.shape[1], dtype=torch.float32, device=table.device)
    summed.index_add_(0, inverse, row_grads.float())
    rows = table[unique_ids]
    table[unique_ids] = rows * (1 - lr * weight_decay) - lr * torch.sign(summed)


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op(
    "trm_fast::adam_atan2_ema_step_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "ema_params")
)
def _adam_op(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    ema_params: list[Tensor], step_tensor: Optional[Tensor], step_value: float, lr_tensor: Optional[Tensor],
    lr_value: float, beta1: float, beta2: float, weight_decay: float, ema_decay: float, backend: str,
) -> None:
    """ema_params is an empty list when there is no EMA."""
    if backend != "triton":
        raise ValueError(f"trm_fast::adam_atan2_ema_step_: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.optimizer import adam_atan2_ema_step

    adam_atan2_ema_step(
        params, grads, exp_avgs, exp_avg_sqs, ema_params or None,
        step_tensor if step_tensor is not None else step_value, lr_tensor if lr_tensor is not None else lr_value,
        beta1, beta2, weight_decay, ema_decay,
    )


@_adam_op.register_fake
def _adam_fake(*args) -> None:
    return None


@torch.library.custom_op("trm_fast::sign_sgd_rows_", mutates_args=("table",))
def _sign_sgd_op(
    table: Tensor, row_ids: Tensor, row_grads: Tensor, lr_tensor: Optional[Tensor], lr_value: float,
    weight_decay: float, backend: str,
) -> None:
    if backend != "triton":
        raise ValueError(f"trm_fast::sign_sgd_rows_: backend must be 'triton', got {backend!r}")
    from trm_fast.kernels.optimizer import sign_sgd_rows

    sign_sgd_rows(table, row_ids, row_grads, lr_tensor if lr_tensor is not None else lr_value, weight_decay)


@_sign_sgd_op.register_fake
def _sign_sgd_fake(*args) -> None:
    return None


# ----------------------------------------------------------------------------- public functions
def _split_scalar(name: str, value: Scalar, device: torch.device) -> tuple[Optional[Tensor], float]:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} tensor is on {value.device} but the parameters are on {device}")
        return value.reshape(()), 0.0
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return None, float(value)


def _validate_lists(name: str, lists: dict[str, Sequence[Tensor]]) -> torch.device:
    reference = lists["params"]
    device = reference[0].device
    for list_name, tensors in lists.items():
        if len(tensors) != len(reference):
            raise ValueError(f"{name}: {list_name} has {len(tensors)} tensors but params has {len(reference)}")
        for index, (tensor, param) in enumerate(zip(tensors, reference)):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name}: {list_name}[{index}] is {type(tensor).__name__}, not a tensor")
            if tensor.dtype != torch.float32:
                raise TypeError(f"{name}: {list_name}[{index}] has dtype {tensor.dtype}; only float32 is supported")
            if tensor.shape != param.shape:
                raise ValueError(
                    f"{name}: {list_name}[{index}] has shape {tuple(tensor.shape)}, params[{index}] {tuple(param.shape)}"
                )
            if tensor.device != device:
                raise ValueError(f"{name}: {list_name}[{index}] is on {tensor.device}, params[0] on {device}")
            if not tensor.is_contiguous():
                raise ValueError(f"{name}: {list_name}[{index}] must be contiguous")
    return device


def adam_atan2_ema_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    ema_params: Optional[Sequence[Tensor]],
    *,
    step: Scalar,
    lr: Scalar,
    beta1: float,
    beta2: float,
    weight_decay: float,
    ema_decay: float,
    backend: str | None = None,
) -> None:
    """One AdamATan2 step (+ EMA) in place over lists of fp32 tensors; see the module docstring."""
    name = "adam_atan2_ema_step_"
    params, grads, exp_avgs, exp_avg_sqs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs)
    ema_list = list(ema_params) if ema_params is not None else []
    if not params:
        return
    lists = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if ema_params is not None:
        lists["ema_params"] = ema_list
    device = _validate_lists(name, lists)
    step_tensor, step_value = _split_scalar("step", step, device)
    lr_tensor, lr_value = _split_scalar("lr", lr, device)
    chosen = resolve_op("adam_atan2_ema_step_", device, backend)
    if chosen == "torch":
        adam_atan2_ema_step_reference_(
            params, grads, exp_avgs, exp_avg_sqs, ema_list, step=step, lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay, ema_decay=ema_decay,
        )
        return
    with torch.no_grad():
        _adam_op(
            params, grads, exp_avgs, exp_avg_sqs, ema_list, step_tensor, step_value, lr_tensor, lr_value,
            float(beta1), float(beta2), float(weight_decay), float(ema_decay), chosen,
        )


def sign_sgd_rows_(
    table: Tensor, row_ids: Tensor, row_grads: Tensor, lr: Scalar, weight_decay: float, backend: str | None = None
) -> None:
    """Sign-SGD with weight decay on the rows of `table` named by `row_ids` (duplicates summed first).

    Ids outside [0, table rows) are skipped by the kernel (they cannot be checked without a host sync).
    """
    name = "sign_sgd_rows_"
    if not all(isinstance(t, Tensor) for t in (table, row_ids, row_grads)):
        raise TypeError(f"{name}: table, row_ids and row_grads must be tensors")
    if table.dim() != 2 or table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError(f"{name}: table must be a contiguous float32 [N, D] tensor, got {table.dtype} {tuple(table.shape)}")
    if row_ids.dim() != 1 or row_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: row_ids must be a 1-D int32/int64 tensor, got {row_ids.dtype} {tuple(row_ids.shape)}")
    if tuple(row_grads.shape) != (row_ids.shape[0], table.shape[1]):
        raise ValueError(
            f"{name}: row_grads must have shape {(row_ids.shape[0], table.shape[1])}, got {tuple(row_grads.shape)}"
        )
    if row_grads.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: row_grads dtype {row_grads.dtype} is not supported (float32, float16, bfloat16)")
    if row_ids.device != table.device or row_grads.device != table.device:
        raise ValueError(f"{name}: table, row_ids and row_grads must be on the same device")
    lr_tensor, lr_value = _split_scalar("lr", lr, table.device)
    chosen = resolve_op("sign_sgd_rows_", table.device, backend)
    if chosen == "torch":
        sign_sgd_rows_reference_(table, row_ids, row_grads, lr, weight_decay)
        return
    with torch.no_grad():
        _sign_sgd_op(
            table, row_ids.contiguous(), row_grads.contiguous(), lr_tensor, lr_value, float(weight_decay), chosen
        )
