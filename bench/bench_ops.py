"""Each fused op against its plain-PyTorch equivalent (the op's `*_reference`), forward and
forward+backward, the plain version eager and under torch.compile.

Shapes: the paper's on GPU (Sudoku rows B*S = 768*97 at D=512 in bf16; attention at Maze's 916
tokens), small odd ones on CPU. Memory-bound ops state their effective bandwidth (the minimum bytes
the op must move / time) next to a plain copy's (`torch.clone`), measured in the same run;
compute-bound ones (attention, the fused linears) their FLOP/s.
Groups are ops/<op>/<fwd|fwdbwd>; variants plain, plain_compiled, fused_<backend>.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from bench._engines import earlier_baselines, paper_case, tiny_case
from bench.profiles import session_profile
from bench.timing import sync
from trm_fast.model.reference import TRM, swiglu_width
from trm_fast.ops.registry import BenchShapes, OpCase, bench_cases, op_of_bench_case, unavailable_reason

PASSES = ("fwd", "fwdbwd")
VARIANTS = ("plain", "plain_compiled", "fused_triton", "fused_cuda")
OPS_BASELINES = ("plain", "plain_compiled")
COPY = "copy"  # the bandwidth yardstick: a plain clone, no op of ours


def shapes_for(profile) -> BenchShapes:
    optimizer_config = (paper_case("sudoku_att") if profile.on_gpu else tiny_case("sudoku_att")).config
    param_shapes = tuple(tuple(p.shape) for p in TRM(optimizer_config).parameters())  # a real parameter set
    where = dict(param_shapes=param_shapes, device=profile.device, dtype=profile.dtype)
    if profile.on_gpu:
        sudoku, maze = paper_case("sudoku_att"), paper_case("maze_att")
        config = sudoku.config
        # Each op sees one micro-batch of the trainer's step (the whole batch where it fits).
        device = profile.device
        return BenchShapes(sudoku.micro_batch_size(device), config.total_len, config.hidden_size, config.num_heads,
                           swiglu_width(config.hidden_size, config.expansion),
                           swiglu_width(config.total_len, config.expansion), config.vocab_size,
                           maze.micro_batch_size(device), maze.config.total_len, **where)
    # Odd sizes on purpose (rows 2*17, seq 17), head_dim 64 so the fused linear kernels apply.
    return BenchShapes(batch=2, seq=17, width=128, heads=2, inner=96, token_inner=32, vocab=11, attn_batch=1,
                       attn_seq=33, **where)


def op_cases(profile) -> dict[str, OpCase]:
    """The copy yardstick, then every op's cases from trm_fast.ops.registry, at the profile's shapes."""
    shapes = shapes_for(profile)
    amount = 2 * shapes.rows * shapes.width * shapes.element_size
    copy = OpCase(COPY, lambda: (shapes.rand(shapes.batch, shapes.seq, shapes.width, grad=False),),
                  lambda x, backend=None: x.clone(), lambda x: x.clone(), bytes={"fwd": amount}, differentiable=False)
    return {COPY: copy, **bench_cases(shapes)}


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
    """Why (profile, case, variant, pass) is not measured, or None: only runnable ones are generated."""
    if profile.interpreted_ops is not None and case.name not in profile.interpreted_ops:
        return f"{case.name} is not in the {profile.name} profile"
    if pass_name == "fwdbwd" and not case.differentiable:
        return f"{case.name} has no backward"
    if case.name == COPY:
        return None if variant == "plain" else "the copy is the bandwidth yardstick only"
    if variant == "plain_compiled":
        if not case.compilable:
            return f"the plain {case.name} does not compile without graph breaks"
        if profile.compiled_ops is not None and case.name not in profile.compiled_ops:
            return f"plain {case.name} is compiled only in the gpu profile"
    if variant.startswith("fused_"):
        return unavailable_reason(op_of_bench_case(case.name).name, variant.removeprefix("fused_"), profile.device)
    return None


_CASES: dict = {}


def cases_of(profile) -> dict[str, OpCase]:
    if profile.name not in _CASES:
        _CASES[profile.name] = op_cases(profile)
    return _CASES[profile.name]


def test_op(benchmark, bench_profile, recorder, op_name, pass_name, variant):
    profile = bench_profile
    case = cases_of(profile)[op_name]
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


def runnable_cases(profile) -> list[tuple[str, str, str]]:
    """(op, pass, variant) of every measurement that runs in `profile`, baselines first."""
    return [(name, pass_name, variant) for name, case in cases_of(profile).items() for pass_name in PASSES
            for variant in VARIANTS if variant_skip_reason(profile, case, variant, pass_name) is None]


def pytest_generate_tests(metafunc):
    if "op_name" in metafunc.fixturenames:
        cases = runnable_cases(session_profile())
        metafunc.parametrize("op_name, pass_name, variant", cases, ids=["-".join(case) for case in cases])
