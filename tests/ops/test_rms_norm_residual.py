"""Op 1 (residual add + RMSNorm [+ next-call injection]) on CPU: the Triton kernels run in the interpreter.

Checks forward and gradients against the plain-PyTorch reference, the registered ops with opcheck,
torch.compile(fullgraph=True) over the public functions, and the one-line input errors.
"""
import warnings

import pytest
import torch

from tests.op_backends import runs_here
from trm_fast.kernels import rms_norm_residual as kernels
from trm_fast.ops.rms_norm_residual import (
    rms_norm_residual,
    rms_norm_residual_inject,
    rms_norm_residual_inject_reference,
    rms_norm_residual_reference,
)

pytestmark = runs_here("rms_norm_residual")

# fp32: both sides compute in fp32 and differ only by summation order. fp16: the result is rounded to
# fp16 (2^-11 relative), so allow about one fp16 ulp of the largest normalised values (|x| < 5).
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=2e-3)}
GRAD_TOLERANCES = {torch.float32: dict(atol=5e-5, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=1e-2)}


def make_inputs(shape, dtype, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Residual and delta of different scales, as in TRM (state ~1, block output smaller).
    scales = [1.0, 0.5, 2.0, 1.0]
    return [
        (torch.randn(shape, generator=generator) * scales[i]).to(dtype).requires_grad_(True) for i in range(count)
    ]


def run_case(shape, dtype, num_inject, backend):
    tensors = make_inputs(shape, dtype, 2 + num_inject)
    residual, delta = tensors[:2]
    injects = tensors[2:] + [None] * (2 - num_inject)
    if num_inject == 0:
        outputs = (rms_norm_residual(residual, delta, backend=backend),)
        expected = (rms_norm_residual_reference(residual, delta),)
    else:
        outputs = rms_norm_residual_inject(residual, delta, injects[0], injects[1], backend=backend)
        expected = rms_norm_residual_inject_reference(residual, delta, injects[0], injects[1])
    generator = torch.Generator().manual_seed(1)
    upstream = [torch.randn(out.shape, generator=generator).to(dtype) for out in outputs]
    grads = torch.autograd.grad(outputs, tensors, upstream)
    expected_grads = torch.autograd.grad(expected, tensors, upstream)
    return outputs, expected, grads, expected_grads


@pytest.mark.parametrize("num_inject", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 96), (97, 96), (3, 5, 512), (916, 96)])
def test_forward_and_grads_match_reference_fp32(shape, num_inject):
    outputs, expected, grads, expected_grads = run_case(shape, torch.float32, num_inject, "triton")
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[torch.float32])


@pytest.mark.parametrize("num_inject", [0, 2])
def test_forward_and_grads_match_reference_fp16(num_inject):
    outputs, expected, grads, expected_grads = run_case((37, 96), torch.float16, num_inject, "triton")
    for got, want in zip(outputs, expected):
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float16])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[torch.float16])


def test_rstd_is_the_fp32_inverse_rms_of_each_row():
    residual, delta = make_inputs((7, 96), torch.float32, 2)
    _, _, rstd = kernels.rms_norm_residual_fwd(residual.detach(), delta.detach(), eps=1e-5)
    summed = (residual + delta).detach()
    torch.testing.assert_close(rstd, 1.0 / torch.sqrt(summed.square().mean(-1) + 1e-5), atol=1e-6, rtol=1e-5)


def test_gradient_when_only_next_input_is_used():
    residual, delta, inject_a = make_inputs((9, 96), torch.float32, 3)
    _, next_input = rms_norm_residual_inject(residual, delta, inject_a, backend="triton")
    grads = torch.autograd.grad(next_input.square().sum(), [residual, delta, inject_a])
    _, next_expected = rms_norm_residual_inject_reference(residual, delta, inject_a)
    expected = torch.autograd.grad(next_expected.square().sum(), [residual, delta, inject_a])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_inject", [0, 1, 2])
def test_opcheck_forward(num_inject, dtype):
    tensors = make_inputs((3, 5, 96), dtype, 2 + num_inject)
    injects = tensors[2:] + [None] * (2 - num_inject)
    torch.library.opcheck(
        torch.ops.trm_fast.rms_norm_residual_fwd.default, (tensors[0], tensors[1], *injects, 1e-5, "triton")
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_grad_next", [False, True])
def test_opcheck_backward(with_grad_next, dtype):
    residual, delta, grad_out, grad_next = (t.detach() for t in make_inputs((4, 96), dtype, 4))
    out, _, rstd = kernels.rms_norm_residual_fwd(residual, delta)
    torch.library.opcheck(
        torch.ops.trm_fast.rms_norm_residual_bwd.default,
        (grad_out, grad_next if with_grad_next else None, out, rstd, "triton"),
    )


def test_torch_compile_fullgraph_matches_reference():
    residual, delta, inject_a, inject_b = make_inputs((2, 7, 96), torch.float32, 4)

    def block_tail(residual, delta, inject_a, inject_b):
        out, next_input = rms_norm_residual_inject(residual, delta, inject_a, inject_b, backend="triton")
        return rms_norm_residual(out, next_input, backend="triton"), next_input

    def reference(residual, delta, inject_a, inject_b):
        out, next_input = rms_norm_residual_inject_reference(residual, delta, inject_a, inject_b)
        return rms_norm_residual_reference(out, next_input), next_input

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        compiled = torch.compile(block_tail, fullgraph=True, backend="aot_eager")
        outputs = compiled(residual, delta, inject_a, inject_b)
    expected = reference(residual, delta, inject_a, inject_b)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    tensors = [residual, delta, inject_a, inject_b]
    loss_weights = [torch.randn(out.shape, generator=torch.Generator().manual_seed(3)) for out in outputs]
    grads = torch.autograd.grad(outputs, tensors, loss_weights)
    expected_grads = torch.autograd.grad(expected, tensors, loss_weights)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[torch.float32])


def test_torch_compile_inductor_fullgraph():
    residual, delta, inject_a = (t.detach() for t in make_inputs((3, 96), torch.float32, 3))
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        compiled = torch.compile(
            lambda r, d, a: rms_norm_residual_inject(r, d, a, backend="triton"), fullgraph=True
        )
        outputs = compiled(residual, delta, inject_a)
    for got, want in zip(outputs, rms_norm_residual_inject_reference(residual, delta, inject_a)):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])


def test_bad_inputs_raise_one_line_errors():
    residual = torch.randn(4, 96)
    with pytest.raises(TypeError, match="dtype"):
        rms_norm_residual(residual.double(), residual.double(), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        rms_norm_residual(residual, residual.half(), backend="triton")
    with pytest.raises(ValueError, match="shape"):
        rms_norm_residual(residual, torch.randn(4, 95), backend="triton")
    with pytest.raises(ValueError, match="shape"):
        rms_norm_residual_inject(residual, residual, torch.randn(1, 96), backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm_residual(torch.randn(96, 4).t(), residual, backend="triton")
    with pytest.raises(ValueError, match="D > 0"):
        rms_norm_residual(torch.randn(4, 0), torch.randn(4, 0), backend="triton")
    with pytest.raises(ValueError, match="inject_a"):
        rms_norm_residual_inject(residual, residual, None, backend="triton")
    with pytest.raises(ValueError, match="limit"):
        rms_norm_residual(torch.randn(1, kernels.MAX_HIDDEN + 1), torch.randn(1, kernels.MAX_HIDDEN + 1), backend="triton")
