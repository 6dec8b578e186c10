"""Op 10 on a GPU: the CUDA C++ kernels vs the PyTorch references (rms_norm_residual and loss head).

Tolerances: the CUDA kernel rounds at the same points as the reference (the add in the storage dtype,
out, then each injection), so results differ only where a different fp32 summation order moves a value
across a rounding boundary: one ulp of the storage dtype (bf16 2^-8, fp16 2^-11 relative), hence rtol
1e-2 / 2e-3 / 1e-5 with a matching atol. Gradients compare in fp32 against autograd of the reference.
"""
import pytest
import torch

import trm_fast  # noqa: F401
from trm_fast.ops import cuda_ext
from trm_fast.ops.rms_norm_residual import rms_norm_residual_inject_reference, rms_norm_residual_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_ext.available(), reason="CUDA extension not built")]

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def randn(*shape, dtype, misaligned=False):
    if misaligned:  # a contiguous view 2 bytes past a 16-byte boundary: the scalar-load path
        flat = torch.randn(int(torch.tensor(shape).prod()) + 1, device="cuda").to(dtype)
        return flat[1:].view(*shape)
    return torch.randn(*shape, device="cuda").to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [512, 96, 100, 1024])
@pytest.mark.parametrize("n_inject", [0, 1, 2])
def test_rms_norm_residual_fwd_bwd(dtype, hidden, n_inject):
    tol = TOLERANCE[dtype]
    shape = (3, 97, hidden)
    residual, delta = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype, misaligned=hidden == 1024)
    injects = [randn(*shape, dtype=dtype) for _ in range(n_inject)] + [None] * (2 - n_inject)
    out, next_input, rstd = cuda_ext.run("rms_norm_residual_fwd", residual, delta, *injects, 1e-5)
    if n_inject:
        ref_out, ref_next = rms_norm_residual_inject_reference(residual, delta, *injects, eps=1e-5)
        torch.testing.assert_close(next_input, ref_next, rtol=tol, atol=tol)
    else:
        ref_out = rms_norm_residual_reference(residual, delta, eps=1e-5)
        assert next_input.numel() == 0
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    summed = (residual + delta).float()
    torch.testing.assert_close(rstd, torch.rsqrt(summed.square().mean(-1) + 1e-5).reshape(-1), rtol=1e-5, atol=0)

    grad_out = randn(*shape, dtype=dtype)
    grad_next = randn(*shape, dtype=dtype) if n_inject else None
    grad_s = cuda_ext.run("rms_norm_residual_bwd", grad_out, grad_next, out, rstd)
    # autograd of the fp32 normalisation (from the same rounded sum) as the reference gradient
    leaf = summed.clone().requires_grad_()
    normed = leaf * torch.rsqrt(leaf.square().mean(-1, keepdim=True) + 1e-5)
    g = grad_out.float() + (grad_next.float() if grad_next is not None else 0)
    (expected,) = torch.autograd.grad(normed, leaf, g)
    scale = expected.abs().max().item()
    torch.testing.assert_close(grad_s.float(), expected, rtol=4 * tol, atol=4 * tol * scale)


def test_rms_norm_rejects_too_wide_rows():
    x = randn(2, 4096, dtype=torch.float32)
    with pytest.raises(ValueError, match="hidden size"):
        cuda_ext.run("rms_norm_residual_fwd", x, x, None, None, 1e-5)


@pytest.mark.parametrize("stablemax", [True, False])
@pytest.mark.parametrize("labels_dtype", [torch.int32, torch.int64])
def test_loss_head_kernels_direct(stablemax, labels_dtype):
    from trm_fast.ops.loss_head import act_loss_head_reference

    logits = (torch.randn(16, 900, 12, device="cuda") * 3).bfloat16()
    labels = torch.randint(0, 12, (16, 900), device="cuda", dtype=labels_dtype)
    labels[:, ::7] = -100
    q = torch.randn(16, device="cuda")
    lm, q_loss, accuracy, correct, count = cuda_ext.run("loss_head_fwd", logits, labels, q, -100, stablemax)
    leaf = logits.clone().requires_grad_()
    ref = act_loss_head_reference(leaf, labels, q, -100, "stablemax" if stablemax else "softmax")
    torch.testing.assert_close(lm, ref["lm_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_loss, ref["q_halt_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accuracy, ref["token_accuracy"])
    assert torch.equal(correct, ref["seq_correct"]) and torch.equal(count, ref["token_count"])
    weights = torch.rand(16, device="cuda")
    grad = cuda_ext.run("loss_head_bwd", logits, labels, count, weights, -100, stablemax)
    (expected,) = torch.autograd.grad((ref["lm_loss"] * weights).sum(), leaf)
    scale = expected.abs().max().item()
    torch.testing.assert_close(grad.float(), expected.float(), rtol=1e-2, atol=1e-2 * scale)
