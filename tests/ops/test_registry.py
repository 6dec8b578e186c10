"""The op registry is the one op list: an entry added there reaches dispatch, the AOT table, the
benchmarks and the GPU report's plan; and its skip rule keeps CPU-only cases off a GPU machine."""
import sys
import types

import pytest
import torch

from tests.op_backends import gpu_backends, runs_here
from trm_fast.ops import registry
from trm_fast.ops.registry import OPS, BenchCase, OpCase, OpEntry


def _toy_case(shapes, module) -> OpCase:
    return OpCase("", lambda: (shapes.rand(shapes.batch, shapes.width),), module.toy_double, module.toy_double_reference,
                  bytes={"fwd": 2 * shapes.batch * shapes.width * shapes.element_size})


@pytest.fixture
def toy_op(monkeypatch):
    """One entry in OPS plus its own files (an op module and a kernels module), nothing else."""
    op_module = types.ModuleType("trm_fast.ops.toy")
    op_module.toy_double = lambda x, backend=None: 2 * x
    op_module.toy_double_reference = lambda x: x + x
    kernels_module = types.ModuleType("trm_fast.kernels.toy")
    kernels_module.AOT_SPECS = ["toy.double_kernel[fp32]"]  # stands in for an AOTSpec: the table collects them
    monkeypatch.setitem(sys.modules, "trm_fast.ops.toy", op_module)
    monkeypatch.setitem(sys.modules, "trm_fast.kernels.toy", kernels_module)
    entry = OpEntry("toy_double", "toy", "toy_double_reference", kernels="toy", aot_specs=("toy.double",),
                    bench=(BenchCase("toy_double", _toy_case),), cuda_kernel="toy")
    monkeypatch.setitem(OPS, entry.name, entry)
    return entry


def test_an_op_entry_reaches_dispatch_the_aot_table_and_the_bench_plan(toy_op):
    from bench.bench_ops import op_cases
    from bench.report.plan import build_plan
    from trm_fast.kernels._aot import all_specs
    from trm_fast.ops import resolve_backend_name

    assert resolve_backend_name("cpu", "torch")["toy_double"] == "torch"
    assert registry.resolve_op("toy_double", torch.device("cpu"), "torch") == "torch"
    assert registry.unavailable_reason("toy_double", "cuda", "cpu") == "the CUDA extension is not available"
    assert "toy.double_kernel[fp32]" in all_specs()

    ids = {task.id for task in build_plan(tiny=False)}
    assert {"op_correctness/toy_double/triton", "op_correctness/toy_double/cuda", "ops/toy_double/plain",
            "ops/toy_double/fused_triton", "ops/toy_double/fused_cuda"} <= ids
    cpu_profile = types.SimpleNamespace(on_gpu=False, device=torch.device("cpu"), dtype=torch.float32)
    case = op_cases(cpu_profile)["toy_double"]
    (x,) = case.inputs()
    torch.testing.assert_close(case.fused(x, backend="triton"), case.plain(x))


def test_every_entry_names_real_functions():
    import importlib

    import trm_fast.ops

    for entry in OPS.values():
        module = importlib.import_module(f"trm_fast.ops.{entry.module}")
        assert callable(getattr(module, entry.name)) and callable(getattr(module, entry.reference)), entry.name
        assert getattr(trm_fast.ops, entry.name) is getattr(module, entry.name), f"trm_fast.ops does not export {entry.name}"


def test_start_up_report_lists_the_same_ops_as_before():
    report = registry.resolve_backend_name("cpu", "torch")
    assert list(report) == ["add_streams", "rms_norm_residual", "rope_qkv", "swiglu", "token_rms_norm_residual",
                            "act_loss_head", "adam_atan2_ema_step_", "attention"]
    assert report["attention"] == "sdpa" and set(report.values()) == {"torch", "sdpa"}


def test_cpu_cases_skip_on_a_machine_with_cuda(monkeypatch):
    """A GPU machine does not switch Triton's interpreter on (conftest.py), so Triton cannot take CPU
    tensors there: every op's CPU test module must skip rather than fail with BackendUnavailable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for name in OPS:
        mark = runs_here(name)
        assert mark.args == (True,) and "interpreter" in mark.kwargs["reason"], name
        assert registry.unavailable_reason(name, "triton", "cuda") in (None, f"{name}'s Triton kernels do not run on this cuda device")
    assert registry.unavailable_reason("rope_qkv", "triton", "cuda") is None


def test_cuda_runs_only_for_ops_with_a_cpp_kernel(monkeypatch):
    monkeypatch.setattr(registry, "cuda_extension_available", lambda: True)
    assert gpu_backends("rms_norm_residual") == ["torch", "triton", "cuda"]
    assert gpu_backends("act_loss_head") == ["torch", "triton", "cuda"]
    for name in ("add_streams", "rope_qkv", "swiglu", "token_rms_norm_residual", "attention"):
        assert gpu_backends(name) == ["torch", "triton"], name
        assert "no CUDA C++ kernel" in registry.unavailable_reason(name, "cuda", "cuda")
