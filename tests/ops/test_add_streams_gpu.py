"""Op 2 on a CUDA device in bf16: every backend against the exact (float64) sum rounded once.

Summing in fp32 and rounding once leaves at most half a bf16 ulp (2^-8 relative) of error per element;
the torch backend accumulates in fp32 the same way, so both must be within that bound. (Not checkable
under Triton's CPU interpreter: it truncates fp32 -> bf16 instead of rounding to nearest.)
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.add_streams import add_streams

pytestmark = pytest.mark.gpu

HALF_ULP = 2.0**-8


@pytest.mark.parametrize("backend", gpu_backends("add_streams"))
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shape", [(64, 97, 512), (1, 5, 96)])
def test_bf16_matches_exact_sum(shape, count, backend):
    generator = torch.Generator(device="cuda").manual_seed(0)
    tensors = [
        torch.randn(shape, device="cuda", generator=generator).bfloat16().requires_grad_(True) for _ in range(count)
    ]
    out = add_streams(*tensors, backend=backend)
    exact = sum(t.detach().double() for t in tensors)
    assert out.dtype == torch.bfloat16
    error = (out.double() - exact).abs()
    # (1 + 2^-14): the fp32 sum itself may round once when the terms' exponents are far apart.
    assert (error <= HALF_ULP * (1 + 2**-14) * exact.abs()).all(), f"max error {error.max().item():.3g}"
    upstream = torch.randn(shape, device="cuda", generator=generator).bfloat16()
    for grad in torch.autograd.grad(out, tensors, upstream):
        assert torch.equal(grad, upstream)
