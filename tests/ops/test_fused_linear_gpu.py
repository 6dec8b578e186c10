"""Op 7 on a CUDA device in bf16 (correctness only; speed is measured by the engine's benchmarks).

hidden: the same fp32 sum rounded once as the reference: bit-identical. Matmul outputs and grads:
the largest error against an fp32 computation on the same bf16 inputs may be at most twice that of
the bf16 reference (cuBLAS, fp32 accumulation, rounded to bf16; qkv then rotated and rounded again),
plus 1e-3: both are rounding errors of order 2^-8 of the values, a tiling or indexing bug is not.
"""
import pytest
import torch

from trm_fast.ops.fused_linear import (
    fused_inject_linear,
    fused_inject_linear_reference,
    fused_inject_qkv_rope,
    fused_inject_qkv_rope_reference,
    fused_linear_available,
)
from trm_fast.ops.rope import rope_tables

pytestmark = pytest.mark.gpu


def _max_error(result, exact):
    return (result.float() - exact.float()).abs().max().item()


def _check(fn, reference_fn, inputs):
    leaves = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16]
    ours = [t.clone().requires_grad_() if i in leaves else t for i, t in enumerate(inputs)]
    baseline = [t.clone().requires_grad_() if i in leaves else t for i, t in enumerate(inputs)]
    exact = [t.float().requires_grad_() if i in leaves else t for i, t in enumerate(inputs)]
    out_ours, out_base, out_exact = fn(*ours), reference_fn(*baseline), reference_fn(*exact)
    torch.testing.assert_close(out_ours[0], out_base[0], rtol=0, atol=0)  # hidden
    for index, (got, base, want) in enumerate(zip(out_ours, out_base, out_exact)):
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert _max_error(got, want) <= 2 * _max_error(base, want) + 1e-3, f"output {index}"
    grads = [torch.randn_like(t, dtype=torch.float32).bfloat16() for t in out_ours]
    pick = lambda args: [args[i] for i in leaves]  # noqa: E731
    grads_ours = torch.autograd.grad(out_ours, pick(ours), grads)
    grads_base = torch.autograd.grad(out_base, pick(baseline), grads)
    grads_exact = torch.autograd.grad(out_exact, pick(exact), [g.float() for g in grads])
    for index, (got, base, want) in enumerate(zip(grads_ours, grads_base, grads_exact)):
        assert _max_error(got, want) <= 2 * _max_error(base, want) + 1e-3, f"grad of input {leaves[index]}"


def test_available_on_this_gpu():
    assert fused_linear_available("cuda") == (torch.cuda.get_device_capability()[0] >= 8)


@pytest.mark.parametrize("out_features, streams", [(1536, 3), (3072, 2), (80, 3)])
def test_inject_linear_bf16(out_features, streams):
    generator = torch.Generator(device="cuda").manual_seed(0)
    state, inject_a, inject_b = (torch.randn(8, 97, 512, device="cuda", generator=generator).bfloat16() for _ in range(3))
    weight = (torch.randn(out_features, 512, device="cuda", generator=generator) / 512**0.5).bfloat16()
    _check(lambda *a: fused_inject_linear(*a, backend="triton"), fused_inject_linear_reference,
           [state, inject_a, inject_b if streams == 3 else None, weight])


@pytest.mark.parametrize("batch, seq_len", [(8, 97), (2, 916)])
def test_inject_qkv_rope_bf16(batch, seq_len):
    num_heads, head_dim, d_model = 8, 64, 512
    generator = torch.Generator(device="cuda").manual_seed(0)
    state, inject_a, inject_b = (torch.randn(batch, seq_len, d_model, device="cuda", generator=generator).bfloat16()
                                 for _ in range(3))
    w_qkv = (torch.randn(3 * d_model, d_model, device="cuda", generator=generator) / d_model**0.5).bfloat16()
    cos, sin = rope_tables(seq_len, head_dim, device="cuda")
    _check(lambda *a: fused_inject_qkv_rope(*a, backend="triton"), fused_inject_qkv_rope_reference,
           [state, inject_a, inject_b, w_qkv, cos, sin, num_heads])
