"""Op 7 (matmul with the injection sum in its prologue, and the qkv + RoPE epilogue variant) on CPU:
the Triton kernels run in Triton's interpreter."""

import pytest
import torch

from tests.op_backends import compile_aot_specs, runs_here
from trm_fast.ops.fused_linear import (
    fused_inject_linear,
    fused_inject_linear_reference,
    fused_inject_qkv_rope,
    fused_inject_qkv_rope_reference,
    fused_linear_available,
)
from trm_fast.ops.rope import rope_tables

pytestmark = runs_here("fused_inject_qkv_rope")


def _streams(shape, count, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(count)]


def _weight(out_features, in_features, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(out_features, in_features, generator=generator) / in_features**0.5).to(dtype)


def _compare_with_grads(fn, reference_fn, inputs, rtol, atol):
    """Forward outputs and the grads of every tensor input must match the reference's."""
    theirs = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
    ours = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
    outputs, expected = fn(*ours), reference_fn(*theirs)
    for result, reference in zip(outputs, expected):
        assert result.shape == reference.shape and result.dtype == reference.dtype
        torch.testing.assert_close(result, reference, rtol=rtol, atol=atol)
    grads = [torch.randn_like(t) for t in expected]
    leaves_ours = [t for t in ours if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves_theirs = [t for t in theirs if isinstance(t, torch.Tensor) and t.requires_grad]
    for got, want in zip(torch.autograd.grad(outputs, leaves_ours, grads), torch.autograd.grad(expected, leaves_theirs, grads)):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_reference_is_sum_then_linear():
    state, inject_a, inject_b = _streams((2, 3, 8), 3, dtype=torch.float64)
    weight = _weight(5, 8, dtype=torch.float64)
    hidden, out = fused_inject_linear_reference(state, inject_a, inject_b, weight)
    torch.testing.assert_close(hidden, state + inject_a + inject_b)
    torch.testing.assert_close(out, torch.einsum("bsk,nk->bsn", state + inject_a + inject_b, weight))


@pytest.mark.parametrize("shape, out_features, streams", [((2, 37, 96), 80, 3), ((1, 97, 512), 64, 2), ((5, 16), 24, 3)])
def test_inject_linear_matches_reference_fp32(shape, out_features, streams):
    tensors = _streams(shape, streams)
    inject_b = tensors[2].requires_grad_() if streams == 3 else None
    inputs = [tensors[0].requires_grad_(), tensors[1].requires_grad_(), inject_b,
              _weight(out_features, shape[-1]).requires_grad_()]
    # fp32 dots in ieee precision: only the summation order over K differs from the reference.
    _compare_with_grads(lambda *a: fused_inject_linear(*a, backend="triton"), fused_inject_linear_reference,
                        inputs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "batch, seq_len, d_model, num_heads, head_dim, streams, with_rope",
    [(2, 37, 96, 2, 32, 2, True), (1, 97, 64, 2, 64, 3, True), (1, 9, 48, 3, 32, 3, False), (1, 6, 32, 1, 128, 2, True)],
)
def test_inject_qkv_rope_matches_reference_fp32(batch, seq_len, d_model, num_heads, head_dim, streams, with_rope):
    tensors = [t.requires_grad_() for t in _streams((batch, seq_len, d_model), streams)]
    cos, sin = rope_tables(seq_len, head_dim) if with_rope else (None, None)
    inputs = [tensors[0], tensors[1], tensors[2] if streams == 3 else None,
              _weight(3 * num_heads * head_dim, d_model).requires_grad_(), cos, sin, num_heads]
    _compare_with_grads(lambda *a: fused_inject_qkv_rope(*a, backend="triton"), fused_inject_qkv_rope_reference,
                        inputs, rtol=1e-4, atol=1e-4)


def test_fp16_forward():
    # Same fp32 accumulation; the RoPE epilogue rotates before rounding while the reference rounds
    # qkv to fp16 first: at most a couple of fp16 ulps (~1e-3 relative) apart.
    state, inject_a, inject_b = _streams((1, 37, 64), 3, dtype=torch.float16)
    weight = _weight(3 * 2 * 32, 64, dtype=torch.float16)
    cos, sin = rope_tables(37, 32)
    hidden, out = fused_inject_linear(state, inject_a, inject_b, weight, backend="triton")
    hidden_ref, out_ref = fused_inject_linear_reference(state, inject_a, inject_b, weight)
    torch.testing.assert_close(hidden, hidden_ref, rtol=0, atol=0)  # the same fp32 sum, rounded once
    torch.testing.assert_close(out, out_ref, rtol=2e-3, atol=2e-3)
    outputs = fused_inject_qkv_rope(state, inject_a, inject_b, weight, cos, sin, 2, backend="triton")
    for result, reference in zip(outputs, fused_inject_qkv_rope_reference(state, inject_a, inject_b, weight, cos, sin, 2)):
        assert result.dtype == torch.float16
        torch.testing.assert_close(result, reference, rtol=4e-3, atol=4e-3)


def test_torch_backend_is_sum_then_linear():
    state, inject_a = _streams((1, 4, 8), 2)
    weight = _weight(6, 8)
    hidden, out = fused_inject_linear(state, inject_a, None, weight, backend="torch")
    exact_hidden = state.double() + inject_a.double()
    torch.testing.assert_close(hidden, exact_hidden.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, torch.einsum("bsk,nk->bsn", exact_hidden, weight.double()).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, in_features", [(0, 32), (2, 0)])
def test_qkv_empty_input_matches_reference(batch, in_features):
    """No rows, or K = 0 (a zero product): the Triton path returns what the reference does, without a launch."""
    state, inject_a, inject_b = _streams((batch, 5, in_features), 3)
    w_qkv = _weight(3 * 2 * 32, in_features) if in_features else torch.zeros(3 * 2 * 32, 0)
    cos, sin = rope_tables(5, 32)
    outputs = fused_inject_qkv_rope(state, inject_a, inject_b, w_qkv, cos, sin, 2, backend="triton")
    expected = fused_inject_qkv_rope_reference(state, inject_a, inject_b, w_qkv, cos, sin, 2)
    for result, reference in zip(outputs, expected):
        assert result.shape == reference.shape
        torch.testing.assert_close(result, reference, rtol=0, atol=0)


def test_available():
    assert fused_linear_available("cpu") is True  # the interpreter is on in this test session
    assert fused_linear_available(torch.device("meta")) is False


@pytest.mark.parametrize(
    "make_args, error",
    [
        (lambda s, a, b, w: (s.int(), a, b, w), TypeError),
        (lambda s, a, b, w: (s, a.half(), b, w), TypeError),
        (lambda s, a, b, w: (s, a[:, :3], b, w), ValueError),
        (lambda s, a, b, w: (s, a, b, w[:, :5]), ValueError),
        (lambda s, a, b, w: (s, a, b, w.half()), TypeError),
    ],
)
def test_bad_inputs_raise_clear_errors(make_args, error):
    state, inject_a, inject_b = _streams((1, 4, 8), 3)
    with pytest.raises(error, match="fused_inject_linear"):
        fused_inject_linear(*make_args(state, inject_a, inject_b, _weight(6, 8)), backend="triton")


def test_qkv_bad_inputs_raise_clear_errors():
    state, inject_a = _streams((1, 4, 16), 2)
    cos, sin = rope_tables(4, 8)
    with pytest.raises(ValueError, match="num_heads"):
        fused_inject_qkv_rope(state, inject_a, None, _weight(3 * 2 * 8, 16), cos, sin, 5, backend="triton")
    with pytest.raises(ValueError, match="cos"):
        fused_inject_qkv_rope(state, inject_a, None, _weight(3 * 2 * 8, 16), cos[:3], sin[:3], 2, backend="triton")
    with pytest.raises(ValueError, match="head_dim"):  # 8 is below the smallest dot tile
        fused_inject_qkv_rope(state, inject_a, None, _weight(3 * 2 * 8, 16), cos, sin, 2, backend="triton")


def test_opcheck():
    state, inject_a, inject_b = (t.requires_grad_() for t in _streams((1, 5, 32), 3))
    weight = _weight(48, 32).requires_grad_()
    torch.library.opcheck(torch.ops.trm_fast.fused_inject_linear.default, (state, inject_a, inject_b, weight, "triton"))
    torch.library.opcheck(torch.ops.trm_fast.fused_inject_linear.default, (state, inject_a, None, weight, "triton"))
    cos, sin = rope_tables(5, 32)
    w_qkv = _weight(3 * 1 * 32, 32).requires_grad_()
    torch.library.opcheck(torch.ops.trm_fast.fused_inject_qkv_rope.default,
                          (state, inject_a, inject_b, w_qkv, cos, sin, 1, "triton"))


def test_torch_compile_fullgraph():
    state, inject_a = _streams((1, 5, 32), 2)
    w_qkv = _weight(3 * 1 * 32, 32)
    cos, sin = rope_tables(5, 32)
    compiled = torch.compile(lambda s: fused_inject_qkv_rope(s * 2.0, inject_a, None, w_qkv, cos, sin, 1, backend="triton"),
                             fullgraph=True)
    for result, reference in zip(compiled(state), fused_inject_qkv_rope_reference(state * 2.0, inject_a, None, w_qkv, cos, sin, 1)):
        torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_aot_specs_compile_for_sm80_and_sm90():
    assert compile_aot_specs("fused_linear") == 12
