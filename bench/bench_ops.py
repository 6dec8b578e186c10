"""Each fused op against its plain-PyTorch equivalent (the op's `*_reference`), forward and
forward+backward, the plain version eager and under torch.compile.

Shapes: the paper's on GPU (Sudoku rows B*S = 768*97 at D=512 in bf16; attention at Maze's 916
tokens), small odd ones on CPU. Memory-bound ops state their effective bandwidth (the minimum bytes
the op must move / time) next to a plain copy's (`torch.clone`), measured in the same run;
compute-bound ones (attention, the fused linears) their FLOP/s.
Groups are ops/<op>/<fwd|fwdbwd>; variants plain, plain_compiled, fused_<backend>.
"""
from __future__ import annotations

import importlib

from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

from bench._engines import paper_case, sync, tiny_case
from bench.bench_step import earlier_baselines
from trm_fast.model.reference import TRM, swiglu_width
from trm_fast.ops import _backend

# The op modules (trm_fast.ops re-exports functions under some of the same names, hence import_module).
add_streams_mod = importlib.import_module("trm_fast.ops.add_streams")
attention_mod = importlib.import_module("trm_fast.ops.attention")
fused_linear_mod = importlib.import_module("trm_fast.ops.fused_linear")
loss_head_mod = importlib.import_module("trm_fast.ops.loss_head")
optimizer_mod = importlib.import_module("trm_fast.ops.optimizer")
rms_mod = importlib.import_module("trm_fast.ops.rms_norm_residual")
rope_mod = importlib.import_module("trm_fast.ops.rope")
swiglu_mod = importlib.import_module("trm_fast.ops.swiglu")
token_rms_mod = importlib.import_module("trm_fast.ops.token_rms_norm")

PASSES = ("fwd", "fwdbwd")
VARIANTS = ("plain", "plain_compiled", "fused_triton", "fused_cuda")
OPS_BASELINES = ("plain", "plain_compiled")
CUDA_KERNEL_OPS = ("rms_norm_residual", "rms_norm_residual_inject", "act_loss_head")


@dataclass
class Shapes:
    batch: int
    seq: int  # Sudoku tokens incl. prefix
    width: int
    heads: int
    inner: int  # channel SwiGLU width
    token_inner: int  # token SwiGLU width (mlp_t)
    vocab: int
    attn_batch: int
    attn_seq: int  # Maze tokens incl. prefix


def shapes_for(profile) -> Shapes:
    if profile.on_gpu:
        sudoku, maze = paper_case("sudoku_att"), paper_case("maze_att")
        config = sudoku.config
        # Each op sees one micro-batch of the trainer's step (the whole batch where it fits).
        device = profile.device
        return Shapes(sudoku.micro_batch_size(device), config.total_len, config.hidden_size, config.num_heads,
                      swiglu_width(config.hidden_size, config.expansion), swiglu_width(config.total_len, config.expansion),
                      config.vocab_size, maze.micro_batch_size(device), maze.config.total_len)
    # Odd sizes on purpose (rows 2*17, seq 17), head_dim 64 so the fused linear kernels apply.
    return Shapes(batch=2, seq=17, width=128, heads=2, inner=96, token_inner=32, vocab=11, attn_batch=1, attn_seq=33)


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


def _size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def op_cases(profile) -> dict[str, OpCase]:
    shape = shapes_for(profile)
    device, dtype = profile.device, profile.dtype
    es = _size(dtype)
    B, S, D, H, I, It, V = shape.batch, shape.seq, shape.width, shape.heads, shape.inner, shape.token_inner, shape.vocab
    rows = B * S

    def rand(*size, grad=True, dt=dtype):
        return torch.randn(*size, device=device, dtype=dt).requires_grad_(grad)

    cos, sin = rope_mod.rope_tables(S, D // H, device=device)
    cases = [
        OpCase("copy", lambda: (rand(B, S, D, grad=False),), lambda x, backend=None: x.clone(), lambda x: x.clone(),
               bytes={"fwd": 2 * rows * D * es}, differentiable=False),
        OpCase("rms_norm_residual", lambda: (rand(B, S, D), rand(B, S, D)), rms_mod.rms_norm_residual,
               rms_mod.rms_norm_residual_reference, bytes={"fwd": 3 * rows * D * es, "fwdbwd": 6 * rows * D * es}),
        OpCase("rms_norm_residual_inject", lambda: tuple(rand(B, S, D) for _ in range(4)),
               rms_mod.rms_norm_residual_inject, rms_mod.rms_norm_residual_inject_reference,
               bytes={"fwd": 6 * rows * D * es, "fwdbwd": 10 * rows * D * es}),
        OpCase("add_streams", lambda: tuple(rand(B, S, D) for _ in range(3)), add_streams_mod.add_streams,
               add_streams_mod.add_streams_reference, bytes={"fwd": 4 * rows * D * es, "fwdbwd": 4 * rows * D * es}),
        OpCase("rope_qkv", lambda: (rand(B, S, 3 * D), cos, sin, H), rope_mod.rope_qkv, rope_mod.rope_qkv_reference,
               bytes={"fwd": 6 * rows * D * es, "fwdbwd": 12 * rows * D * es}),
        OpCase("swiglu", lambda: (rand(B, S, 2 * I),), swiglu_mod.swiglu, swiglu_mod.swiglu_reference,
               bytes={"fwd": 3 * rows * I * es, "fwdbwd": 8 * rows * I * es}),
        OpCase("swiglu_tokens", lambda: (rand(B, 2 * It, D), -2),
               lambda x, dim, backend=None: swiglu_mod.swiglu(x, dim=dim, backend=backend),
               lambda x, dim: swiglu_mod.swiglu_reference(x, dim=dim),
               bytes={"fwd": 3 * B * It * D * es, "fwdbwd": 8 * B * It * D * es}),
        OpCase("token_rms_norm_residual", lambda: (rand(B, S, D), rand(B, S, D)), token_rms_mod.token_rms_norm_residual,
               token_rms_mod.token_rms_norm_residual_reference, bytes={"fwd": 3 * rows * D * es, "fwdbwd": 6 * rows * D * es}),
        OpCase("act_loss_head",
               lambda: (rand(B, S, V), torch.randint(0, V, (B, S), device=device), rand(B, dt=torch.float32)),
               loss_head_mod.act_loss_head, loss_head_mod.act_loss_head_reference,
               bytes={"fwd": rows * (V * es + 8), "fwdbwd": rows * (2 * V * es + 8)}),
    ]
    # Attention at Maze's sequence length: compute-bound, so FLOP/s (backward = 2x forward, see flops.py).
    attn_flops = 4 * shape.attn_batch * shape.attn_seq**2 * D
    qkv_shape = (shape.attn_batch, H, shape.attn_seq, D // H)
    cases.append(OpCase("attention", lambda: tuple(rand(*qkv_shape) for _ in range(3)), attention_mod.attention,
                        attention_mod.attention_reference, flops={"fwd": attn_flops, "fwdbwd": 3 * attn_flops}))
    # Input injection fused into the qkv projection (op 7).
    linear_flops = 2 * rows * D * 3 * D
    cases.append(OpCase("fused_inject_qkv_rope",
                        lambda: (rand(B, S, D), rand(B, S, D), rand(B, S, D), rand(3 * D, D), cos, sin, H),
                        fused_linear_mod.fused_inject_qkv_rope, fused_linear_mod.fused_inject_qkv_rope_reference,
                        flops={"fwd": linear_flops, "fwdbwd": 3 * linear_flops}))
    # The optimizer over a real parameter set (TRM-Att at this width), one step: no backward.
    params_shapes = [tuple(p.shape) for p in TRM(_optimizer_config(profile)).parameters()]
    numel = sum(torch.Size(s).numel() for s in params_shapes)

    def adam_inputs():
        lists = [[torch.randn(s, device=device) for s in params_shapes] for _ in range(5)]
        lists[3] = [t.abs() for t in lists[3]]  # second moments are non-negative
        return (*lists, torch.ones((), device=device), torch.full((), 1e-4, device=device))

    def adam(params, grads, m, v, ema, step, lr, backend=None):
        optimizer_mod.adam_atan2_ema_step_(params, grads, m, v, ema, step=step, lr=lr, beta1=0.9, beta2=0.95,
                                           weight_decay=1.0, ema_decay=0.999, backend=backend)

    def adam_plain(params, grads, m, v, ema, step, lr):
        optimizer_mod.adam_atan2_ema_step_reference_(params, grads, m, v, ema, step=step, lr=lr, beta1=0.9,
                                                     beta2=0.95, weight_decay=1.0, ema_decay=0.999)

    cases.append(OpCase("adam_atan2_ema_step_", adam_inputs, adam, adam_plain, bytes={"fwd": 9 * 4 * numel},
                        differentiable=False))

    def sign_sgd_inputs():
        return (torch.randn(4, D, device=device), torch.randint(0, 4, (B,), device=device, dtype=torch.int32),
                torch.randn(B, D, device=device), 1e-4, 1.0)

    cases.append(OpCase("sign_sgd_rows_", sign_sgd_inputs, optimizer_mod.sign_sgd_rows_,
                        optimizer_mod.sign_sgd_rows_reference_, bytes={"fwd": 2 * B * D * 4}, differentiable=False,
                        compilable=False))  # `unique` has a data-dependent size
    return {case.name: case for case in cases}


def _optimizer_config(profile):
    return paper_case("sudoku_att").config if profile.on_gpu else tiny_case("sudoku_att").config


def _outputs(result) -> list[torch.Tensor]:
    values = result.values() if isinstance(result, dict) else (result if isinstance(result, (tuple, list)) else (result,))
    return [t for t in values if isinstance(t, torch.Tensor) and t.requires_grad]


def make_call(fn: Callable, inputs: tuple, with_backward: bool, device) -> Callable[[], None]:
    """A no-argument call of fn on fixed inputs; with_backward also back-propagates ones."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward_only():
        with torch.no_grad():
            fn(*inputs)
        sync(device)

    def forward_backward():
        outputs = _outputs(fn(*inputs))
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
        for leaf in leaves:
            leaf.grad = None
        sync(device)

    return forward_backward if with_backward else forward_only


def variant_skip_reason(profile, case: OpCase, variant: str, pass_name: str) -> Optional[str]:
    if profile.interpreted_ops is not None and case.name not in profile.interpreted_ops:
        return f"{case.name} is not in the {profile.name} profile"
    if pass_name == "fwdbwd" and not case.differentiable:
        return f"{case.name} has no backward"
    if case.name == "copy" and variant != "plain":
        return "the copy is the bandwidth yardstick only"
    if variant == "plain_compiled":
        if not case.compilable:
            return f"the plain {case.name} does not compile without graph breaks"
        if profile.compiled_ops is not None and case.name not in profile.compiled_ops:
            return f"plain {case.name} is compiled only in the gpu profile"
    if variant.startswith("fused_"):
        backend = variant.removeprefix("fused_")
        if backend == "cuda":
            if case.name not in CUDA_KERNEL_OPS:
                return f"{case.name} has no CUDA C++ kernel (backend cuda runs its Triton kernel)"
            if profile.device.type != "cuda" or not _backend.cuda_extension_available():
                return "the CUDA extension is not available"
        elif not _backend.triton_runs_on(profile.device):
            return "Triton cannot run here"
        if case.name == "fused_inject_qkv_rope" and not fused_linear_mod.fused_linear_available(profile.device):
            return "the fused linear kernels need sm_80+ or the interpreter"
    return None


_CASES: dict = {}


def test_op(benchmark, bench_profile, recorder, op_name, pass_name, variant):
    profile = bench_profile
    key = (profile.name, op_name)
    if key not in _CASES:
        _CASES[key] = op_cases(profile)[op_name]
    case = _CASES[key]
    reason = variant_skip_reason(profile, case, variant, pass_name)
    if reason:
        pytest.skip(reason)
    if variant == "plain":
        fn = case.plain
    elif variant == "plain_compiled":
        fn = profile.compile(case.plain)
    else:
        backend = variant.removeprefix("fused_")

        def fn(*args):
            return case.fused(*args, backend=backend)

    inputs = case.inputs()
    call = make_call(fn, inputs, pass_name == "fwdbwd", profile.device)
    interpreted = variant.startswith("fused_") and not profile.on_gpu
    group = f"ops/{op_name}/{pass_name}"
    work = {"bytes": case.bytes.get(pass_name), "flops": case.flops.get(pass_name)}
    recorder.measure(
        benchmark, group, variant, call,
        rounds=1 if interpreted else None, warmup=1 if interpreted or variant == "plain_compiled" else None,
        work=work,
        baselines={name: None for name in earlier_baselines(variant, OPS_BASELINES)},
        extra={"op": op_name, "pass": pass_name, "interpreter": interpreted},
    )


def pytest_generate_tests(metafunc):
    from bench.conftest import _session_profile

    if "op_name" in metafunc.fixturenames:
        names = ["copy", "rms_norm_residual", "rms_norm_residual_inject", "add_streams", "rope_qkv", "swiglu",
                 "swiglu_tokens", "token_rms_norm_residual", "act_loss_head", "attention", "fused_inject_qkv_rope",
                 "adam_atan2_ema_step_", "sign_sgd_rows_"]
        profile = _session_profile()
        if profile.interpreted_ops is not None:
            names = [name for name in names if name in profile.interpreted_ops]
        metafunc.parametrize("op_name", names)
        metafunc.parametrize("pass_name", PASSES)
        metafunc.parametrize("variant", VARIANTS)  # baselines first
