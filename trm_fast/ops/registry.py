"""The one list of trm-fast's fused ops: what dispatch, the CUDA extension, the AOT table, the
benchmarks, the GPU report and the tests read.

Adding an op is its own files (kernels/<kernels>.py with AOT_SPECS, trm_fast/ops/<module>.py with
the public function and its `*_reference`, optionally csrc/<cuda_kernel>.cu + .h + _bindings.cpp,
and its tests) plus one `OpEntry` in `OPS`. Entries name functions by string, so this module
imports no op module: op modules import it for their dispatch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from trm_fast.ops._backend import cuda_extension_available, resolve, triton_runs_on


# ----------------------------------------------------------------------------- benchmark cases
@dataclass(frozen=True)
class BenchShapes:
    """The sizes an op is benchmarked at (bench/bench_ops.py picks them: the paper's on a GPU, small
    odd ones on CPU) and where: every bench case builds its inputs from these."""

    batch: int
    seq: int  # Sudoku tokens incl. prefix
    width: int
    heads: int
    inner: int  # channel SwiGLU width
    token_inner: int  # token SwiGLU width (mlp_t)
    vocab: int
    attn_batch: int
    attn_seq: int  # Maze tokens incl. prefix
    param_shapes: tuple[tuple[int, ...], ...]  # a real model's parameters (the optimizer's case)
    device: torch.device
    dtype: torch.dtype

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def rand(self, *size: int, grad: bool = True, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return torch.randn(*size, device=self.device, dtype=dtype or self.dtype).requires_grad_(grad)


@dataclass
class OpCase:
    """inputs() -> fresh inputs (leaves requiring grad where the op is differentiable);
    fused(*inputs, backend=) and plain(*inputs) compute the same thing."""

    name: str
    inputs: Callable[[], tuple]
    fused: Callable
    plain: Callable
    bytes: dict = field(default_factory=dict)  # pass -> minimal bytes moved (memory-bound ops)
    flops: dict = field(default_factory=dict)  # pass -> FLOPs (compute-bound ops)
    differentiable: bool = True
    compilable: bool = True  # the plain version traces without graph breaks


@dataclass(frozen=True)
class BenchCase:
    """A benchmark of an op: `make(shapes, op_module)` returns its OpCase (whose name is filled in)."""

    name: str
    make: Callable[[BenchShapes, object], OpCase]


# ----------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class OpEntry:
    name: str  # the public function, exported by trm_fast.ops
    module: str  # trm_fast.ops.<module> holds it and its reference
    reference: str  # the plain-PyTorch twin in that module (the spec)
    kernels: str  # kernels/<kernels>.py: its Triton kernels and their AOT_SPECS
    aot_specs: tuple[str, ...]  # prefixes of the AOT spec names its kernels must have
    bench: tuple[BenchCase, ...]
    # csrc/<cuda_kernel>.cu, whose binding exports <cuda_kernel>_fwd and _bwd; None: backend "cuda"
    # runs the Triton kernel.
    cuda_kernel: Optional[str] = None
    # In the backend report printed at start-up (op 7 is listed by FastTRM when it is switched on).
    at_startup: bool = True
    # "module:function" naming the implementation for (device, backend) when it is not the
    # backend resolve() picks (attention chooses among libraries).
    backend_name: Optional[str] = None
    # "module:function" -> bool for devices where its Triton kernels run (beyond triton_runs_on).
    triton_device_check: Optional[str] = None

    def bench_cases(self, shapes: BenchShapes) -> dict[str, OpCase]:
        module = importlib.import_module(f"trm_fast.ops.{self.module}")
        return {case.name: replace(case.make(shapes, module), name=case.name) for case in self.bench}


def _loaded(reference: str) -> Callable:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(f"trm_fast.ops.{module}"), attribute)


def _memory_bound(fn: str, reference: str, inputs: Callable[[BenchShapes], tuple], fwd: int, fwdbwd: Optional[int],
                  rows_of: Callable[[BenchShapes], int] = lambda s: s.rows * s.width) -> BenchCase:
    """A case moving `fwd` (`fwdbwd`) rows_of(shapes) elements; name filled in by the entry."""
    def make(s: BenchShapes, module) -> OpCase:
        amount = rows_of(s) * s.element_size
        moved = {"fwd": fwd * amount} | ({"fwdbwd": fwdbwd * amount} if fwdbwd is not None else {})
        return OpCase("", lambda: inputs(s), getattr(module, fn), getattr(module, reference), bytes=moved)

    return BenchCase(fn, make)


def _swiglu_tokens(s: BenchShapes, module) -> OpCase:
    amount = s.batch * s.token_inner * s.width * s.element_size
    return OpCase("", lambda: (s.rand(s.batch, 2 * s.token_inner, s.width), -2),
                  lambda x, dim, backend=None: module.swiglu(x, dim=dim, backend=backend),
                  lambda x, dim: module.swiglu_reference(x, dim=dim), bytes={"fwd": 3 * amount, "fwdbwd": 8 * amount})


def _loss_head(s: BenchShapes, module) -> OpCase:
    return OpCase("", lambda: (s.rand(s.batch, s.seq, s.vocab),
                               torch.randint(0, s.vocab, (s.batch, s.seq), device=s.device),
                               s.rand(s.batch, dtype=torch.float32)),
                  module.act_loss_head, module.act_loss_head_reference,
                  bytes={"fwd": s.rows * (s.vocab * s.element_size + 8),
                         "fwdbwd": s.rows * (2 * s.vocab * s.element_size + 8)})


def _rope_tables(s: BenchShapes):
    from trm_fast.ops.rope import rope_tables

    return rope_tables(s.seq, s.width // s.heads, device=s.device)


def _rope(s: BenchShapes, module) -> OpCase:
    cos, sin = _rope_tables(s)
    amount = s.rows * s.width * s.element_size
    return OpCase("", lambda: (s.rand(s.batch, s.seq, 3 * s.width), cos, sin, s.heads), module.rope_qkv,
                  module.rope_qkv_reference, bytes={"fwd": 6 * amount, "fwdbwd": 12 * amount})


def _attention(s: BenchShapes, module) -> OpCase:
    # At Maze's sequence length: compute-bound, so FLOP/s (backward = 2x forward, see flops.py).
    flops = 4 * s.attn_batch * s.attn_seq**2 * s.width
    shape = (s.attn_batch, s.heads, s.attn_seq, s.width // s.heads)
    return OpCase("", lambda: tuple(s.rand(*shape) for _ in range(3)), module.attention, module.attention_reference,
                  flops={"fwd": flops, "fwdbwd": 3 * flops})


def _fused_inject_qkv_rope(s: BenchShapes, module) -> OpCase:
    cos, sin = _rope_tables(s)
    flops = 2 * s.rows * s.width * 3 * s.width
    B, S, D = s.batch, s.seq, s.width
    return OpCase("", lambda: (s.rand(B, S, D), s.rand(B, S, D), s.rand(B, S, D), s.rand(3 * D, D), cos, sin, s.heads),
                  module.fused_inject_qkv_rope, module.fused_inject_qkv_rope_reference,
                  flops={"fwd": flops, "fwdbwd": 3 * flops})


_ADAM_HYPER = dict(beta1=0.9, beta2=0.95, weight_decay=1.0, ema_decay=0.999)


def _adam(s: BenchShapes, module) -> OpCase:
    """One step over a real parameter set: no backward."""
    numel = sum(torch.Size(shape).numel() for shape in s.param_shapes)

    def inputs():
        lists = [[torch.randn(shape, device=s.device) for shape in s.param_shapes] for _ in range(5)]
        lists[3] = [t.abs() for t in lists[3]]  # second moments are non-negative
        return (*lists, torch.ones((), device=s.device), torch.full((), 1e-4, device=s.device))

    def fused(params, grads, m, v, ema, step, lr, backend=None):
        module.adam_atan2_ema_step_(params, grads, m, v, ema, step=step, lr=lr, backend=backend, **_ADAM_HYPER)

    def plain(params, grads, m, v, ema, step, lr):
        module.adam_atan2_ema_step_reference_(params, grads, m, v, ema, step=step, lr=lr, **_ADAM_HYPER)

    return OpCase("", inputs, fused, plain, bytes={"fwd": 9 * 4 * numel}, differentiable=False)


def _sign_sgd(s: BenchShapes, module) -> OpCase:
    def inputs():
        return (torch.randn(4, s.width, device=s.device),
                torch.randint(0, 4, (s.batch,), device=s.device, dtype=torch.int32),
                torch.randn(s.batch, s.width, device=s.device), 1e-4, 1.0)

    return OpCase("", inputs, module.sign_sgd_rows_, module.sign_sgd_rows_reference_,
                  bytes={"fwd": 2 * s.batch * s.width * 4}, differentiable=False,
                  compilable=False)  # `unique` has a data-dependent size


def _streams(count: int) -> Callable[[BenchShapes], tuple]:
    return lambda s: tuple(s.rand(s.batch, s.seq, s.width) for _ in range(count))


# In the order of the start-up backend report; the benchmarks run in this order too.
OPS: dict[str, OpEntry] = {entry.name: entry for entry in (
    OpEntry("add_streams", "add_streams", "add_streams_reference", kernels="add_streams", aot_specs=("add_streams",),
            bench=(_memory_bound("add_streams", "add_streams_reference", _streams(3), 4, 4),)),
    OpEntry("rms_norm_residual", "rms_norm_residual", "rms_norm_residual_reference", kernels="rms_norm_residual",
            aot_specs=("rms_norm_residual.fwd", "rms_norm_residual.bwd"), cuda_kernel="rms_norm_residual",
            bench=(_memory_bound("rms_norm_residual", "rms_norm_residual_reference", _streams(2), 3, 6),
                   _memory_bound("rms_norm_residual_inject", "rms_norm_residual_inject_reference", _streams(4), 6, 10))),
    OpEntry("rope_qkv", "rope", "rope_qkv_reference", kernels="rope", aot_specs=("rope",),
            bench=(BenchCase("rope_qkv", _rope),)),
    OpEntry("swiglu", "swiglu", "swiglu_reference", kernels="swiglu", aot_specs=("swiglu.fwd", "swiglu.bwd"),
            bench=(_memory_bound("swiglu", "swiglu_reference", lambda s: (s.rand(s.batch, s.seq, 2 * s.inner),), 3, 8,
                                 rows_of=lambda s: s.rows * s.inner),
                   BenchCase("swiglu_tokens", _swiglu_tokens))),
    OpEntry("token_rms_norm_residual", "token_rms_norm", "token_rms_norm_residual_reference", kernels="token_rms_norm",
            aot_specs=("token_rms_norm.fwd", "token_rms_norm.bwd"),
            bench=(_memory_bound("token_rms_norm_residual", "token_rms_norm_residual_reference", _streams(2), 3, 6),)),
    OpEntry("act_loss_head", "loss_head", "act_loss_head_reference", kernels="loss_head", aot_specs=("loss_head.fwd",),
            cuda_kernel="loss_head", bench=(BenchCase("act_loss_head", _loss_head),)),
    OpEntry("adam_atan2_ema_step_", "optimizer", "adam_atan2_ema_step_reference_", kernels="optimizer",
            aot_specs=("optimizer.adam_atan2_ema",), bench=(BenchCase("adam_atan2_ema_step_", _adam),)),
    OpEntry("attention", "attention", "attention_reference", kernels="attention", aot_specs=("attention",),
            backend_name="attention:attention_backend_name", bench=(BenchCase("attention", _attention),)),
    OpEntry("fused_inject_qkv_rope", "fused_linear", "fused_inject_qkv_rope_reference", kernels="fused_linear",
            aot_specs=("fused_linear",), at_startup=False, triton_device_check="fused_linear:fused_linear_available",
            bench=(BenchCase("fused_inject_qkv_rope", _fused_inject_qkv_rope),)),
    OpEntry("sign_sgd_rows_", "optimizer", "sign_sgd_rows_reference_", kernels="optimizer",
            aot_specs=("optimizer.sign_sgd_rows",), at_startup=False, bench=(BenchCase("sign_sgd_rows_", _sign_sgd),)),
)}


# ----------------------------------------------------------------------------- what readers ask
def resolve_op(name: str, device: torch.device, backend: Optional[str] = None) -> str:
    """The backend op `name` runs with on `device`: "cuda" only where it has a C++ kernel."""
    return resolve(device, backend, has_cuda_kernel=OPS[name].cuda_kernel is not None)


def resolve_backend_name(device: torch.device | str, backend: Optional[str] = None) -> dict[str, str]:
    """The implementation each op runs with on `device`: what start-up logs and benchmarks report."""
    device = torch.device(device)
    report = {}
    for entry in OPS.values():
        if entry.at_startup:
            chosen = _loaded(entry.backend_name) if entry.backend_name else None
            report[entry.name] = chosen(device, backend) if chosen else resolve_op(entry.name, device, backend)
    return report


def unavailable_reason(name: str, backend: str, device: torch.device | str) -> Optional[str]:
    """None when op `name` runs its own `backend` kernel on `device`, else why not (one line).

    The one skip rule of the tests, the benchmarks and the GPU report: "torch" always runs; "triton"
    where Triton runs on that device (a GPU, or the interpreter for CPU tensors) and the op's
    kernels support it; "cuda" only for an op with a C++ kernel, on a GPU with the extension built.
    """
    entry, device = OPS[name], torch.device(device)
    if backend == "torch":
        return None
    if backend == "cuda":
        if entry.cuda_kernel is None:
            return f"{name} has no CUDA C++ kernel (backend cuda runs its Triton kernel)"
        if device.type != "cuda" or not cuda_extension_available():
            return "the CUDA extension is not available"
        return None
    if backend != "triton":
        raise ValueError(f"unknown backend {backend!r}: expected torch, triton or cuda")
    if not triton_runs_on(device):
        if device.type == "cpu":
            return "Triton runs on CPU tensors only in its interpreter (TRITON_INTERPRET=1 before importing triton)"
        return f"Triton cannot run on {device.type} here"
    if entry.triton_device_check and not _loaded(entry.triton_device_check)(device):
        return f"{name}'s Triton kernels do not run on this {device.type} device"
    return None


def own_kernel_backends(name: str) -> tuple[str, ...]:
    """The backends that run a kernel of this op's own: triton, and cuda where it has a C++ kernel."""
    return ("triton", "cuda") if OPS[name].cuda_kernel is not None else ("triton",)


def bench_case_names(cuda_only: bool = False) -> tuple[str, ...]:
    """Every op benchmark's name, in order (`cuda_only`: of the ops with a C++ kernel)."""
    return tuple(case.name for entry in OPS.values() if entry.cuda_kernel or not cuda_only for case in entry.bench)


def op_of_bench_case(case_name: str) -> OpEntry:
    return next(entry for entry in OPS.values() if any(case.name == case_name for case in entry.bench))


def bench_cases(shapes: BenchShapes) -> dict[str, OpCase]:
    """Every op's benchmark cases at `shapes`, in order."""
    cases: dict[str, OpCase] = {}
    for entry in OPS.values():
        cases.update(entry.bench_cases(shapes))
    return cases
