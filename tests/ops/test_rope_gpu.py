"""Op 3 on a CUDA device in bf16, every backend, against the rotation done in fp32 on the same inputs.

Both the kernel and the reference rotate in fp32 and round once to bf16: results are within one bf16
ulp (2^-7 relative) of the fp32 rotation (half an ulp, plus one more where fused multiply-adds move a
value across a rounding boundary). The backward is the same linear map transposed: same bound.
"""
import pytest
import torch

from tests.op_backends import gpu_backends
from trm_fast.ops.rope import rope_qkv, rope_qkv_reference, rope_tables

pytestmark = pytest.mark.gpu

ULP = 2.0**-7


@pytest.mark.parametrize("backend", gpu_backends("rope_qkv") + [None])
@pytest.mark.parametrize("batch, seq_len", [(64, 97), (2, 916), (1, 5)])
def test_bf16_matches_fp32_rotation(batch, seq_len, backend):
    num_heads, head_dim = 8, 64
    generator = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(batch, seq_len, 3 * num_heads * head_dim, device="cuda", generator=generator).bfloat16()
    cos, sin = rope_tables(seq_len, head_dim, device="cuda")
    qkv.requires_grad_(True)
    outputs = rope_qkv(qkv, cos, sin, num_heads, backend=backend)
    exact_input = qkv.detach().float().requires_grad_(True)
    exact = rope_qkv_reference(exact_input, cos, sin, num_heads)
    for result, expected in zip(outputs, exact):
        assert result.dtype == torch.bfloat16 and result.is_contiguous()
        torch.testing.assert_close(result.float(), expected, rtol=ULP, atol=1e-5)
    grads = [torch.randn_like(t, dtype=torch.float32).bfloat16() for t in outputs]
    (grad_qkv,) = torch.autograd.grad(outputs, qkv, grads)
    (grad_exact,) = torch.autograd.grad(exact, exact_input, [g.float() for g in grads])
    torch.testing.assert_close(grad_qkv.float(), grad_exact, rtol=ULP, atol=1e-5)
