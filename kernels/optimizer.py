"""Fused optimizer steps: AdamATan2 + EMA over every parameter in one launch, and sign-SGD on table rows.

AdamATan2 + EMA (math of the published AdamATan2 CUDA package):
    p *= 1 - lr * wd
    m = lerp(m, g, 1 - beta1);  v = lerp(v, g * g, 1 - beta2)
    p -= lr / (1 - beta1^step) * atan2(m, sqrt(v) / sqrt(1 - beta2^step))
    ema = ema * decay + p * (1 - decay)
Multi-tensor layout: a pointer table. The launcher writes, once per set of tensors, where every
param / grad / m / v / ema tensor lives (as an element offset from the first parameter, which keeps
Triton's alignment analysis working) and their sizes into small int64 device tensors, plus a
table of chunks (tensor index, start offset) of BLOCK elements each; one program updates one chunk.
This needs nothing from the caller (a flat buffer would force the model's parameters and, harder,
autograd's .grad tensors to be views of one allocation), and the table is cached by address, so
repeated steps (and CUDA-graph replays) launch with no host work and no copies. `step` and `lr` can
be read from 0-dim device tensors, so the bias corrections are computed on the device.

Sign-SGD rows (TRM's sparse puzzle embedding): rows sharing an id have their gradients summed
first; then table[id] = table[id] * (1 - lr * wd) - lr * sign(sum). One program per (gradient row,
column block): a program whose id already occurred at an earlier row does nothing; otherwise it sums
the gradient rows with its id (scanning the ids in blocks, loading only blocks that match) and
writes the table row. No atomics (deterministic), no `unique` (no host sync), and every id value is
written by exactly one program.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec

ADAM_BLOCK = 2048
ADAM_WARPS = 4
_TABLE_CACHE_SIZE = 8


def adam_block_config() -> tuple[int, int]:
    """(BLOCK, num_warps) of the AdamATan2 kernel; AOT_SPECS reuse it."""
    return ADAM_BLOCK, ADAM_WARPS


def sign_sgd_block_config(dim: int) -> tuple[int, int, int]:
    """(BLOCK_IDS, BLOCK_D, num_warps): ids scanned per iteration, columns per program."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), 1024)
    block_ids = max(1, min(64, 4096 // block_d))
    return block_ids, block_d, 4


# ----------------------------------------------------------------------------- device math
@triton.jit
def _atan2(y, x):
    """fp32 atan2 from basic ops (no libdevice, so it also runs in Triton's interpreter).

    Reduce to a = min(|x|,|y|) / max(|x|,|y|) in [0, 1], then to |t| <= tan(pi/8) through
    atan(a) = pi/4 + atan((a - 1) / (a + 1)); there the odd Taylor series up to t^17 is accurate to
    3e-9, below fp32 rounding. Quadrants are restored from the signs, as in C's atan2.
    """
    ax = tl.abs(x)
    ay = tl.abs(y)
    big = tl.maximum(ax, ay)
    small = tl.minimum(ax, ay)
    a = tl.where(big > 0, small / tl.where(big > 0, big, 1.0), 0.0)
    reduce = a > 0.41421356237309503
    t = tl.where(reduce, (a - 1.0) / (a + 1.0), a)
    t2 = t * t
    series = 1.0 / 17.0
    series = series * t2 * -1.0 + 1.0 / 15.0
    series = series * t2 * -1.0 + 1.0 / 13.0
    series = series * t2 * -1.0 + 1.0 / 11.0
    series = series * t2 * -1.0 + 1.0 / 9.0
    series = series * t2 * -1.0 + 1.0 / 7.0
    series = series * t2 * -1.0 + 1.0 / 5.0
    series = series * t2 * -1.0 + 1.0 / 3.0
    series = series * t2 * -1.0 + 1.0
    angle = t * series + tl.where(reduce, 0.7853981633974483, 0.0)
    angle = tl.where(ay > ax, 1.5707963267948966 - angle, angle)
    angle = tl.where(x < 0, 3.141592653589793 - angle, angle)
    return tl.where(y < 0, -angle, angle)


@triton.jit
def _adam_atan2_ema_kernel(
    base_ptr,  # fp32: the first parameter; every tensor is found relative to it
    offsets_ptr,  # int64 [5, N]: element offsets from base_ptr of param, grad, exp_avg, exp_avg_sq, ema
    numels_ptr,  # int64 [N]
    chunks_ptr,  # int64 [2, C]: rows tensor index, start offset
    n_tensors, n_chunks,
    step_ptr, lr_ptr,  # 0-dim device tensors, read when HYPER_FROM_TENSORS
    step_value, lr_value,  # the same as numbers otherwise
    beta1, beta2, weight_decay, ema_decay,
    BLOCK: tl.constexpr, HYPER_FROM_TENSORS: tl.constexpr, HAS_EMA: tl.constexpr, ALIGNED: tl.constexpr,
):
    chunk = tl.program_id(0)
    tensor = tl.load(chunks_ptr + chunk)
    start = tl.load(chunks_ptr + n_chunks + chunk)
    numel = tl.load(numels_ptr + tensor)
    if HYPER_FROM_TENSORS:
        step = tl.load(step_ptr).to(tl.float32)
        lr = tl.load(lr_ptr).to(tl.float32)
    else:
        step = step_value
        lr = lr_value
    # beta^step = 2^(step * log2(beta)), computed on the device so `step` never visits the host
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
    step_size = lr / bias_correction1

    # Each tensor is addressed as base_ptr + an element offset: pointer arithmetic on a pointer
    # argument keeps Triton's alignment analysis (a pointer made from an integer would lose it),
    # so with ALIGNED the full chunks compile to 16-byte accesses.
    param_offset = tl.load(offsets_ptr + tensor)
    grad_offset = tl.load(offsets_ptr + n_tensors + tensor)
    exp_avg_offset = tl.load(offsets_ptr + 2 * n_tensors + tensor)
    exp_avg_sq_offset = tl.load(offsets_ptr + 3 * n_tensors + tensor)
    ema_offset = tl.load(offsets_ptr + 4 * n_tensors + tensor)
    if ALIGNED:  # every tensor starts on 16 bytes = 4 elements
        param_offset = tl.multiple_of(param_offset, 4)
        grad_offset = tl.multiple_of(grad_offset, 4)
        exp_avg_offset = tl.multiple_of(exp_avg_offset, 4)
        exp_avg_sq_offset = tl.multiple_of(exp_avg_sq_offset, 4)
        ema_offset = tl.multiple_of(ema_offset, 4)
    param_ptr = base_ptr + param_offset
    grad_ptr = base_ptr + grad_offset
    exp_avg_ptr = base_ptr + exp_avg_offset
    exp_avg_sq_ptr = base_ptr + exp_avg_sq_offset
    ema_ptr = base_ptr + ema_offset

    if ALIGNED:  # chunks start at multiples of BLOCK
        start = tl.multiple_of(start, BLOCK)
    offsets = start + tl.arange(0, BLOCK)
    # Full chunks go without a mask, so the compiler can use 16-byte accesses; only a tensor's
    # last chunk pays for per-element masking.
    if start + BLOCK <= numel:
        _adam_atan2_ema_chunk(
            param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, ema_ptr, offsets, numel, lr, step_size,
            bias_correction2_sqrt, beta1, beta2, weight_decay, ema_decay, HAS_EMA=HAS_EMA, MASKED=False,
        )
    else:
        _adam_atan2_ema_chunk(
            param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, ema_ptr, offsets, numel, lr, step_size,
            bias_correction2_sqrt, beta1, beta2, weight_decay, ema_decay, HAS_EMA=HAS_EMA, MASKED=True,
        )


@triton.jit
def _adam_atan2_ema_chunk(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, ema_ptr, offsets, numel, lr, step_size,
    bias_correction2_sqrt, beta1, beta2, weight_decay, ema_decay, HAS_EMA: tl.constexpr, MASKED: tl.constexpr,
):
    if MASKED:
        mask = offsets < numel
    else:
        mask = None
    param = tl.load(param_ptr + offsets, mask=mask)
    grad = tl.load(grad_ptr + offsets, mask=mask)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask)

    param = param * (1.0 - lr * weight_decay)
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq + (1.0 - beta2) * (grad * grad - exp_avg_sq)
    param = param - step_size * _atan2(exp_avg, tl.sqrt(exp_avg_sq) / bias_correction2_sqrt)

    tl.store(param_ptr + offsets, param, mask=mask)
    tl.store(exp_avg_ptr + offsets, exp_avg, mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, exp_avg_sq, mask=mask)
    if HAS_EMA:
        ema = tl.load(ema_ptr + offsets, mask=mask)
        tl.store(ema_ptr + offsets, ema * ema_decay + param * (1.0 - ema_decay), mask=mask)


@triton.jit
def _sign_sgd_rows_kernel(
    table_ptr,  # [N, D] fp32, updated in place
    row_ids_ptr,  # [K] int
    row_grads_ptr,  # [K, D]
    lr_ptr, lr_value, weight_decay,
    n_table_rows, n_ids, dim,
    BLOCK_IDS: tl.constexpr, BLOCK_D: tl.constexpr, LR_FROM_TENSOR: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    my_id = tl.load(row_ids_ptr + row)
    # Does an earlier gradient row carry the same id? Then that row's program owns the update.
    earlier = tl.zeros([BLOCK_IDS], dtype=tl.int32)
    for id_start in range(0, row, BLOCK_IDS):
        positions = id_start + tl.arange(0, BLOCK_IDS)
        ids = tl.load(row_ids_ptr + positions, mask=positions < row, other=-1)
        earlier += ((ids == my_id) & (positions < row)).to(tl.int32)
    owns_update = (tl.sum(earlier, axis=0) == 0) & (my_id >= 0) & (my_id < n_table_rows)
    if owns_update:
        summed = tl.zeros([BLOCK_D], dtype=tl.float32)
        for id_start in range(row, n_ids, BLOCK_IDS):
            positions = id_start + tl.arange(0, BLOCK_IDS)
            ids = tl.load(row_ids_ptr + positions, mask=positions < n_ids, other=-1)
            match = (ids == my_id) & (positions < n_ids)
            if tl.sum(match.to(tl.int32), axis=0) > 0:
                grads = tl.load(
                    row_grads_ptr + positions.to(tl.int64)[:, None] * dim + cols[None, :],
                    mask=match[:, None] & col_ok[None, :], other=0.0,
                ).to(tl.float32)
                summed += tl.sum(grads, axis=0)
        if LR_FROM_TENSOR:
            lr = tl.load(lr_ptr).to(tl.float32)
        else:
            lr = lr_value
        sign = tl.where(summed > 0, 1.0, tl.where(summed < 0, -1.0, 0.0))
        table_row = table_ptr + my_id.to(tl.int64) * dim + cols
        values = tl.load(table_row, mask=col_ok, other=0.0)
        tl.store(table_row, values * (1.0 - lr * weight_decay) - lr * sign, mask=col_ok)


# ----------------------------------------------------------------------------- launchers
class _PointerTable:
    """Device-side addresses and chunk list for one set of tensor lists (built once, then cached)."""

    def __init__(self, tensor_lists: list[list[torch.Tensor]], device: torch.device):
        numels = [t.numel() for t in tensor_lists[0]]
        base = tensor_lists[0][0].data_ptr()
        addresses = [[t.data_ptr() for t in tensors] for tensors in tensor_lists]
        element_offsets = [[(address - base) // 4 for address in row] for row in addresses]  # fp32: 4 bytes
        chunk_tensor, chunk_start = [], []
        for index, numel in enumerate(numels):
            for start in range(0, numel, ADAM_BLOCK):
                chunk_tensor.append(index)
                chunk_start.append(start)
        self.used_in_graph = False
        self.n_tensors = len(numels)
        self.n_chunks = len(chunk_tensor)
        self.aligned = all(address % 16 == 0 for row in addresses for address in row)
        self.offsets = _to_device(element_offsets, device)
        self.numels = _to_device(numels, device)
        self.chunks = _to_device([chunk_tensor, chunk_start], device)


def _to_device(values, device: torch.device) -> torch.Tensor:
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


_table_cache: "OrderedDict[tuple, _PointerTable]" = OrderedDict()


def _pointer_table(tensor_lists: list[list[torch.Tensor]], device: torch.device) -> _PointerTable:
    key = (str(device),) + tuple((t.data_ptr(), t.numel()) for tensors in tensor_lists for t in tensors)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    table = _table_cache.get(key)
    if table is None:
        if capturing:  # building needs a host-to-device copy, which a graph would replay from freed memory
            raise RuntimeError(
                "adam_atan2_ema_step_: run one step on these exact tensors before capturing it in a CUDA graph"
            )
        table = _PointerTable(tensor_lists, device)
        _table_cache[key] = table
        evictable = [k for k, t in _table_cache.items() if not t.used_in_graph]
        for old_key in evictable[: max(0, len(_table_cache) - _TABLE_CACHE_SIZE)]:
            del _table_cache[old_key]
    else:
        _table_cache.move_to_end(key)
    if capturing:  # a captured graph reads these device tensors on every replay: never free them
        table.used_in_graph = True
    return table


def _scalar_args(value) -> tuple[torch.Tensor | None, float]:
    """(tensor, 0.0) for a one-element device tensor (read by the kernel), (None, number) otherwise."""
    if isinstance(value, torch.Tensor):
        return value, 0.0
    return None, float(value)


def adam_atan2_ema_step(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], ema_params: list[torch.Tensor] | None,
    step, lr, beta1: float, beta2: float, weight_decay: float, ema_decay: float,
) -> None:
    """One fused launch over all tensors (fp32, contiguous, same device; step and lr numbers or one-element
    tensors on that device: all checked by trm_fast.ops.optimizer)."""
    if not params:
        return
    device = params[0].device
    has_ema = bool(ema_params)
    lists = [params, grads, exp_avgs, exp_avg_sqs, ema_params if has_ema else params]
    table = _pointer_table(lists, device)
    step_tensor, step_value = _scalar_args(step)
    lr_tensor, lr_value = _scalar_args(lr)
    hyper_from_tensors = step_tensor is not None or lr_tensor is not None
    if hyper_from_tensors:  # one kernel variant reads both from memory
        if step_tensor is None:
            step_tensor = torch.full((), step_value, dtype=torch.float32, device=device)
        if lr_tensor is None:
            lr_tensor = torch.full((), lr_value, dtype=torch.float32, device=device)
    else:
        step_tensor = lr_tensor = table.numels  # unused placeholders
    block, num_warps = adam_block_config()
    _adam_atan2_ema_kernel[(table.n_chunks,)](
        params[0], table.offsets, table.numels, table.chunks, table.n_tensors, table.n_chunks,
        step_tensor, lr_tensor, step_value, lr_value,
        float(beta1), float(beta2), float(weight_decay), float(ema_decay),
        BLOCK=block, HYPER_FROM_TENSORS=hyper_from_tensors, HAS_EMA=has_ema, ALIGNED=table.aligned,
        num_warps=num_warps,
    )


def sign_sgd_rows(
    table: torch.Tensor, row_ids: torch.Tensor, row_grads: torch.Tensor, lr, weight_decay: float
) -> None:
    """In-place sign-SGD on the rows of `table` named by `row_ids` (all checked by trm_fast.ops.optimizer)."""
    n_ids = row_ids.shape[0]
    if n_ids == 0:
        return
    dim = table.shape[1]
    lr_tensor, lr_value = _scalar_args(lr)
    block_ids, block_d, num_warps = sign_sgd_block_config(dim)
    _sign_sgd_rows_kernel[(n_ids, triton.cdiv(dim, block_d))](
        table, row_ids, row_grads,
        lr_tensor if lr_tensor is not None else table, lr_value, float(weight_decay),
        table.shape[0], n_ids, dim,
        BLOCK_IDS=block_ids, BLOCK_D=block_d, LR_FROM_TENSOR=lr_tensor is not None, num_warps=num_warps,
    )


# ----------------------------------------------------------------------------- AOT specs
def _aot_specs() -> list[AOTSpec]:
    block, num_warps = adam_block_config()
    specs = []
    for from_tensors in (True, False):
        for has_ema in (True, False):
            specs.append(AOTSpec(
                name=f"optimizer.adam_atan2_ema[fp32,{'tensor' if from_tensors else 'number'} step/lr,"
                f"{'ema' if has_ema else 'no ema'}]",
                fn=_adam_atan2_ema_kernel,
                signature={
                    "base_ptr": "*fp32", "offsets_ptr": "*i64", "numels_ptr": "*i64", "chunks_ptr": "*i64",
                    "n_tensors": "i32", "n_chunks": "i32",
                    "step_ptr": "*fp32", "lr_ptr": "*fp32", "step_value": "fp32", "lr_value": "fp32",
                    "beta1": "fp32", "beta2": "fp32", "weight_decay": "fp32", "ema_decay": "fp32",
                    "BLOCK": "constexpr", "HYPER_FROM_TENSORS": "constexpr", "HAS_EMA": "constexpr",
                    "ALIGNED": "constexpr",
                },
                constexprs={"BLOCK": block, "HYPER_FROM_TENSORS": from_tensors, "HAS_EMA": has_ema, "ALIGNED": True},
                num_warps=num_warps,
            ))
    block_ids, block_d, sgd_warps = sign_sgd_block_config(512)  # puzzle embedding width = hidden size
    for ids_type in ("*i32", "*i64"):
        specs.append(AOTSpec(
            name=f"optimizer.sign_sgd_rows[fp32 table,{ids_type[1:]} ids,D512]",
            fn=_sign_sgd_rows_kernel,
            signature={
                "table_ptr": "*fp32", "row_ids_ptr": ids_type, "row_grads_ptr": "*fp32",
                "lr_ptr": "*fp32", "lr_value": "fp32", "weight_decay": "fp32",
                "n_table_rows": "i32", "n_ids": "i32", "dim": "i32",
                "BLOCK_IDS": "constexpr", "BLOCK_D": "constexpr", "LR_FROM_TENSOR": "constexpr",
            },
            constexprs={"BLOCK_IDS": block_ids, "BLOCK_D": block_d, "LR_FROM_TENSOR": True},
            num_warps=sgd_warps,
        ))
    return specs


from trm_fast.kernels._aot import with_divisible  # noqa: E402  (the AOT specs' own helper)

# The sign-SGD rows are 512 wide; tensor and id counts vary and are left unmarked.
AOT_SPECS: list[AOTSpec] = [with_divisible(spec, "dim") if "dim" in spec.signature else spec for spec in _aot_specs()]
