"""Op 5 on a CUDA device in bf16: every backend against the fp32 computation on the same bf16 inputs.

Like op 1: the add and the result are each rounded to bf16 (2^-8 relative each), so the forward may be
off by 3 * 2^-8 of the largest output and the gradients (computed from the bf16 out) by 8 * 2^-8 of the
largest gradient; and no more than 2x (+ 2^-8 of scale) the torch bf16 backend's own error.
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.token_rms_norm import token_rms_norm_residual, token_rms_norm_residual_reference

pytestmark = pytest.mark.gpu

HALF_ULP = 2.0**-8


def run(backend, residual, delta, upstream):
    if backend == "fp32-truth":
        out = token_rms_norm_residual_reference(residual, delta)
    else:
        out = token_rms_norm_residual(residual, delta, backend=backend)
    grads = torch.autograd.grad(out, [residual, delta], upstream.to(out.dtype))
    return out.float(), [g.float() for g in grads]


@pytest.mark.parametrize("backend", gpu_backends("token_rms_norm_residual"))
@pytest.mark.parametrize("shape", [(64, 97, 512), (8, 916, 512), (2, 4096, 64), (1, 5, 96)])
def test_bf16_matches_fp32_truth(shape, backend):
    generator = torch.Generator(device="cuda").manual_seed(0)
    base = [(torch.randn(shape, device="cuda", generator=generator) * s).bfloat16() for s in (1.0, 0.5)]
    upstream = torch.randn(shape, device="cuda", generator=generator).bfloat16().float()

    def leaves(dtype):
        return [t.to(dtype).requires_grad_(True) for t in base]

    truth_out, truth_grads = run("fp32-truth", *leaves(torch.float32), upstream)
    torch_out, torch_grads = run("torch", *leaves(torch.bfloat16), upstream)
    out, grads = run(backend, *leaves(torch.bfloat16), upstream)

    out_scale, grad_scale = truth_out.abs().max().item(), truth_grads[0].abs().max().item()
    out_error = (out - truth_out).abs().max().item()
    grad_error = max((g - t).abs().max().item() for g, t in zip(grads, truth_grads))
    torch_grad_error = max((g - t).abs().max().item() for g, t in zip(torch_grads, truth_grads))
    assert out_error <= 3 * HALF_ULP * out_scale, f"{backend}: forward error {out_error:.3g}"
    assert grad_error <= 8 * HALF_ULP * grad_scale, f"{backend}: gradient error {grad_error:.3g}"
    assert out_error <= 2 * (torch_out - truth_out).abs().max().item() + HALF_ULP * out_scale
    assert grad_error <= 2 * torch_grad_error + HALF_ULP * grad_scale
