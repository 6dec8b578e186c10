"""Op 9 on a CUDA device in bf16, every backend, against attention computed in fp32.

Tolerance (the criterion flash-attn's own tests use): a backend's largest error against the fp32
result may be at most twice that of a plain bf16 PyTorch implementation (bf16 matmuls, fp32 softmax,
probabilities rounded to bf16) against the same fp32 result, plus 1e-3. bf16 keeps 8 significant
bits, so both errors are of order 2^-8 times the values; a real bug (a wrong mask, scale or
rescaling) is far outside that.
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.attention import attention, attention_backend_name, attention_reference

pytestmark = pytest.mark.gpu


def _bf16_baseline(q, k, v):
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.float().softmax(-1).to(q.dtype), v)


def _max_error(result, exact):
    return (result.float() - exact.float()).abs().max().item()


@pytest.mark.parametrize("backend", gpu_backends("attention") + [None])
@pytest.mark.parametrize("batch, seq_len", [(16, 97), (2, 916), (1, 37)])
def test_bf16_within_twice_the_error_of_a_bf16_baseline(batch, seq_len, backend):
    num_heads, head_dim = 8, 64
    generator = torch.Generator(device="cuda").manual_seed(0)
    inputs = [torch.randn(batch, num_heads, seq_len, head_dim, device="cuda", generator=generator).bfloat16()
              for _ in range(3)]
    ours = [t.clone().requires_grad_() for t in inputs]
    exact_inputs = [t.float().requires_grad_() for t in inputs]
    baseline_inputs = [t.clone().requires_grad_() for t in inputs]
    print("implementation:", attention_backend_name("cuda", backend, dtype=torch.bfloat16))

    out = attention(*ours, backend=backend)
    exact = attention_reference(*exact_inputs)
    baseline = _bf16_baseline(*baseline_inputs)
    assert out.dtype == torch.bfloat16 and out.shape == exact.shape
    assert _max_error(out, exact) <= 2 * _max_error(baseline, exact) + 1e-3

    grad_out = torch.randn(out.shape, device="cuda", generator=generator).bfloat16()
    grads = torch.autograd.grad(out, ours, grad_out)
    grads_exact = torch.autograd.grad(exact, exact_inputs, grad_out.float())
    grads_baseline = torch.autograd.grad(baseline, baseline_inputs, grad_out)
    for name, grad, grad_exact, grad_baseline in zip("qkv", grads, grads_exact, grads_baseline):
        error, allowed = _max_error(grad, grad_exact), 2 * _max_error(grad_baseline, grad_exact) + 1e-3
        assert error <= allowed, f"grad_{name}: error {error:.3g} > {allowed:.3g}"


def test_triton_fp32_matches_reference_closely():
    # fp32 inputs use ieee fp32 dots in our kernels: agreement to fp32 rounding.
    generator = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 8, 97, 64, device="cuda", generator=generator) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, backend="triton"), attention_reference(q, k, v), rtol=1e-4, atol=1e-5)
