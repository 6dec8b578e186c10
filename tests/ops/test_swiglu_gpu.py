"""Op 4 on a CUDA device in bf16: every backend against the fp32 computation on the same bf16 inputs.

The kernel computes silu(gate) * up in fp32 and rounds once (half a bf16 ulp, 2^-8 relative); the torch
backend rounds silu and the product separately (twice). Gradients are rounded once as well. Allowed:
4 * 2^-8 relative to each element plus 2^-8 of the largest value for cancellation near zero, and no
more than 2x (+ 2^-8 of scale) the torch bf16 backend's own error.
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.swiglu import swiglu, swiglu_reference

pytestmark = pytest.mark.gpu

HALF_ULP = 2.0**-8


def run(backend, gate_up, dim, upstream):
    out = swiglu_reference(gate_up, dim) if backend == "fp32-truth" else swiglu(gate_up, dim, backend=backend)
    (grad,) = torch.autograd.grad(out, gate_up, upstream.to(out.dtype))
    return out.float(), grad.float()


def check(got, truth, torch_error):
    error = (got - truth).abs()
    scale = truth.abs().max().item()
    assert (error <= 4 * HALF_ULP * truth.abs() + HALF_ULP * scale).all(), f"max error {error.max().item():.3g}"
    assert error.max().item() <= 2 * torch_error + HALF_ULP * scale


@pytest.mark.parametrize("backend", gpu_backends("swiglu"))
@pytest.mark.parametrize("shape,dim", [((64, 97, 3072), -1), ((64, 1024, 512), -2), ((2, 6, 97), -2), ((3, 192), -1)])
def test_bf16_matches_fp32_truth(shape, dim, backend):
    generator = torch.Generator(device="cuda").manual_seed(0)
    base = (torch.randn(shape, device="cuda", generator=generator) * 2).bfloat16()
    out_shape = list(shape)
    out_shape[dim] //= 2
    upstream = torch.randn(out_shape, device="cuda", generator=generator).bfloat16().float()  # exact in bf16

    truth_out, truth_grad = run("fp32-truth", base.float().requires_grad_(True), dim, upstream)
    torch_out, torch_grad = run("torch", base.clone().requires_grad_(True), dim, upstream)
    out, grad = run(backend, base.clone().requires_grad_(True), dim, upstream)
    check(out, truth_out, (torch_out - truth_out).abs().max().item())
    check(grad, truth_grad, (torch_grad - truth_grad).abs().max().item())
