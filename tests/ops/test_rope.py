"""Op 3 (rope_qkv) on CPU: the Triton kernels run in Triton's interpreter (see conftest.py)."""
import pytest
import torch

from tests.op_backends import compile_aot_specs, runs_here
from trm_fast.ops.rope import rope_qkv, rope_qkv_backward, rope_qkv_reference, rope_tables

pytestmark = runs_here("rope_qkv")


def _inputs(batch, seq_len, num_heads, head_dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, seq_len, 3 * num_heads * head_dim, generator=generator).to(dtype)
    cos, sin = rope_tables(seq_len, head_dim)
    return qkv, cos, sin


@pytest.mark.parametrize("implementation", ["reference", "torch backend"])
def test_reference_matches_complex_rotation(implementation):
    """The spec, and the torch backend that dispatches to it, checked against an independent
    formulation: pairs (d, d + hd/2) rotated as complex numbers by position * theta^(-2d/hd)."""
    batch, seq_len, num_heads, head_dim = 2, 7, 3, 8
    qkv, cos, sin = _inputs(batch, seq_len, num_heads, head_dim)
    if implementation == "reference":
        q, k, v = rope_qkv_reference(qkv, cos, sin, num_heads)
    else:
        q, k, v = rope_qkv(qkv, cos, sin, num_heads, backend="torch")
    half = head_dim // 2
    heads = qkv.view(batch, seq_len, 3, num_heads, head_dim).double()
    angle = torch.arange(seq_len, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    rotation = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]  # [1, S, 1, half]
    for part, result in ((0, q), (1, k)):
        x = heads[:, :, part]
        rotated = torch.complex(x[..., :half], x[..., half:]) * rotation
        expected = torch.cat((rotated.real, rotated.imag), dim=-1).transpose(1, 2)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, heads[:, :, 2].transpose(1, 2).float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "batch, seq_len, num_heads, head_dim, with_rope",
    [(2, 37, 2, 32, True), (1, 97, 2, 64, True), (1, 9, 1, 48, True), (2, 5, 3, 16, False)],
)
def test_triton_matches_reference_fp32(batch, seq_len, num_heads, head_dim, with_rope):
    qkv, cos, sin = _inputs(batch, seq_len, num_heads, head_dim)
    if not with_rope:
        cos = sin = None
    qkv_triton = qkv.clone().requires_grad_()
    qkv_reference = qkv.clone().requires_grad_()
    outputs = rope_qkv(qkv_triton, cos, sin, num_heads, backend="triton")
    expected = rope_qkv_reference(qkv_reference, cos, sin, num_heads)
    for result, reference in zip(outputs, expected):
        assert result.shape == (batch, num_heads, seq_len, head_dim) and result.is_contiguous()
        torch.testing.assert_close(result, reference, rtol=1e-6, atol=1e-6)
    grads = [torch.randn_like(t) for t in expected]
    (grad_triton,) = torch.autograd.grad(outputs, qkv_triton, grads)
    (grad_reference,) = torch.autograd.grad(expected, qkv_reference, grads)
    torch.testing.assert_close(grad_triton, grad_reference, rtol=1e-6, atol=1e-6)


def test_triton_fp16_matches_reference():
    # Both round the same fp32 rotation to fp16 once: at most one fp16 ulp apart.
    qkv, cos, sin = _inputs(2, 37, 2, 32, dtype=torch.float16)
    for result, reference in zip(rope_qkv(qkv, cos, sin, 2, backend="triton"), rope_qkv_reference(qkv, cos, sin, 2)):
        assert result.dtype == torch.float16
        torch.testing.assert_close(result, reference, rtol=1e-3, atol=1e-3)


def test_backward_is_the_transpose_of_forward():
    """<rope(x), g> == <x, rope_backward(g)> for random x, g: the backward kernel is the adjoint."""
    qkv, cos, sin = _inputs(1, 11, 2, 16, dtype=torch.float64)
    q, k, v = rope_qkv_reference(qkv, cos.double(), sin.double(), 2)
    grads = [torch.randn_like(t).float() for t in (q, k, v)]
    grad_qkv = rope_qkv_backward(*grads, cos, sin, "triton").double()
    forward_side = sum((out * grad.double()).sum() for out, grad in zip((q, k, v), grads))
    torch.testing.assert_close((qkv * grad_qkv).sum(), forward_side, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "make_args, error",
    [
        (lambda qkv, cos, sin: (qkv.int(), cos, sin, 2), TypeError),
        (lambda qkv, cos, sin: (qkv[0], cos, sin, 2), ValueError),
        (lambda qkv, cos, sin: (qkv, cos, sin, 5), ValueError),
        (lambda qkv, cos, sin: (qkv, cos.half(), sin, 2), TypeError),
        (lambda qkv, cos, sin: (qkv, cos[:-1], sin[:-1], 2), ValueError),
        (lambda qkv, cos, sin: (qkv, cos, None, 2), ValueError),
    ],
)
def test_bad_inputs_raise_clear_errors(make_args, error):
    qkv, cos, sin = _inputs(1, 6, 2, 8)
    with pytest.raises(error, match="rope_qkv"):
        rope_qkv(*make_args(qkv, cos, sin), backend="triton")


def test_opcheck():
    qkv, cos, sin = _inputs(1, 6, 2, 16)
    torch.library.opcheck(torch.ops.trm_fast.rope_qkv.default, (qkv.requires_grad_(), cos, sin, 2, "triton"))
    torch.library.opcheck(torch.ops.trm_fast.rope_qkv.default, (qkv, None, None, 2, "triton"))
    grads = rope_qkv_reference(qkv.detach(), cos, sin, 2)
    torch.library.opcheck(torch.ops.trm_fast.rope_qkv_backward.default, (*grads, cos, sin, "triton"))


def test_torch_compile_fullgraph():
    qkv, cos, sin = _inputs(1, 6, 2, 16)
    compiled = torch.compile(lambda x: rope_qkv(x * 2.0, cos, sin, 2, backend="triton"), fullgraph=True)
    for result, reference in zip(compiled(qkv), rope_qkv_reference(qkv * 2.0, cos, sin, 2)):
        torch.testing.assert_close(result, reference, rtol=1e-6, atol=1e-6)


def test_aot_specs_compile_for_sm80_and_sm90():
    assert compile_aot_specs("rope", timeout_s=300) == 4
