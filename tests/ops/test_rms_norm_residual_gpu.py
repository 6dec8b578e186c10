"""Op 1 on a CUDA device in bf16: every backend (torch, triton, cuda when built) against fp32 truth.

The fp32 truth is the reference run in fp32 on the same bf16 inputs. Each bf16 rounding costs up
to 2^-8 of the value (half a bf16 ulp); next_input goes through three of them (out, + inject_a,
+ inject_b, as in the unfused bf16 code), so the forward may be off by 4 * 2^-8 of the largest output
and the gradients, computed from the bf16 out, by 8 * 2^-8 of the largest gradient. A wrong formula
errs by O(1) of that scale. Each backend must also stay within 2x (+ 2^-8 of scale) of the torch bf16
backend's own error: a kernel may not be less accurate than the code it replaces.
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.rms_norm_residual import (
    rms_norm_residual,
    rms_norm_residual_inject,
    rms_norm_residual_inject_reference,
    rms_norm_residual_reference,
)

pytestmark = pytest.mark.gpu

HALF_ULP = 2.0**-8  # worst relative rounding error of one bf16 cast


def run(backend, tensors, num_inject, upstream):
    residual, delta, *injects = tensors
    injects = injects + [None] * (2 - len(injects))
    if backend == "fp32-truth":
        if num_inject == 0:
            outputs = (rms_norm_residual_reference(residual, delta),)
        else:
            outputs = rms_norm_residual_inject_reference(residual, delta, injects[0], injects[1])
    elif num_inject == 0:
        outputs = (rms_norm_residual(residual, delta, backend=backend),)
    else:
        outputs = rms_norm_residual_inject(residual, delta, injects[0], injects[1], backend=backend)
    grads = torch.autograd.grad(outputs, tensors, [u.to(outputs[0].dtype) for u in upstream])
    return [o.float() for o in outputs], [g.float() for g in grads]


def max_error(got, want):
    return max((g - w).abs().max().item() for g, w in zip(got, want))


@pytest.mark.parametrize("backend", gpu_backends("rms_norm_residual"))
@pytest.mark.parametrize("num_inject", [0, 1, 2])
@pytest.mark.parametrize("shape", [(64, 97, 512), (8, 916, 512), (1, 5, 96)])
def test_bf16_matches_fp32_truth(shape, num_inject, backend):
    generator = torch.Generator(device="cuda").manual_seed(0)
    base = [torch.randn(shape, device="cuda", generator=generator) * scale for scale in (1.0, 0.5, 2.0, 1.0)]
    base = base[: 2 + num_inject]
    upstream = [  # representable in bf16, so every backend sees the same upstream gradient
        torch.randn(shape, device="cuda", generator=generator).bfloat16().float() for _ in range(1 if num_inject == 0 else 2)
    ]

    def leaves(dtype):
        return [t.to(torch.bfloat16).to(dtype).requires_grad_(True) for t in base]

    truth_out, truth_grads = run("fp32-truth", leaves(torch.float32), num_inject, upstream)
    torch_out, torch_grads = run("torch", leaves(torch.bfloat16), num_inject, upstream)
    got_out, got_grads = run(backend, leaves(torch.bfloat16), num_inject, upstream)

    out_scale = max(t.abs().max().item() for t in truth_out)
    grad_scale = max(t.abs().max().item() for t in truth_grads)
    out_error, grad_error = max_error(got_out, truth_out), max_error(got_grads, truth_grads)
    assert out_error <= 4 * HALF_ULP * out_scale, f"{backend}: forward error {out_error:.3g}"
    assert grad_error <= 8 * HALF_ULP * grad_scale, f"{backend}: gradient error {grad_error:.3g}"
    assert out_error <= 2 * max_error(torch_out, truth_out) + HALF_ULP * out_scale
    assert grad_error <= 2 * max_error(torch_grads, truth_grads) + HALF_ULP * grad_scale


@pytest.mark.parametrize("backend", [name for name in gpu_backends("rms_norm_residual") if name != "torch"])
@pytest.mark.parametrize("num_inject", [0, 2])
def test_opcheck_with_cuda_tensors(num_inject, backend):
    """The registered ops on the GPU: the C++ kernels (backend "cuda") sit behind the same schema and fake."""
    generator = torch.Generator(device="cuda").manual_seed(1)
    tensors = [
        torch.randn(3, 5, 96, device="cuda", generator=generator).bfloat16().requires_grad_(True)
        for _ in range(2 + num_inject)
    ]
    injects = tensors[2:] + [None] * (2 - num_inject)
    torch.library.opcheck(
        torch.ops.trm_fast.rms_norm_residual_fwd.default, (tensors[0], tensors[1], *injects, 1e-5, backend)
    )
    residual, delta = (t.detach() for t in tensors[:2])
    out, _, rstd = torch.ops.trm_fast.rms_norm_residual_fwd(residual, delta, None, None, 1e-5, backend)
    grad_out, grad_next = (torch.randn(out.shape, device="cuda", generator=generator).bfloat16() for _ in range(2))
    torch.library.opcheck(
        torch.ops.trm_fast.rms_norm_residual_bwd.default,
        (grad_out, grad_next if num_inject else None, out, rstd, backend),
    )
