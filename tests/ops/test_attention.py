"""Op 9 (attention) on CPU: dispatch logic, and our Triton flash attention in the interpreter."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from tests.op_backends import compile_aot_specs, runs_here
from trm_fast.ops._backend import BackendUnavailable
from trm_fast.ops.attention import attention, attention_backend_name, attention_reference

# The module, not the `attention` function that trm_fast.ops re-exports under the same name.
attention_module = importlib.import_module("trm_fast.ops.attention")
needs_triton = runs_here("attention")


def _qkv(batch, num_heads, seq_len, head_dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, num_heads, seq_len, head_dim, generator=generator).to(dtype) for _ in range(3)]


def test_reference_matches_sdpa():
    q, k, v = _qkv(2, 3, 19, 16, dtype=torch.float64)
    # The spec written out: softmax over keys of q.k / sqrt(hd), weights applied to v.
    expected = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / 4.0, -1), v)
    torch.testing.assert_close(attention_reference(q, k, v), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), expected, rtol=1e-12, atol=1e-12)
    fp32 = attention(q.float(), k.float(), v.float(), backend="torch")
    torch.testing.assert_close(fp32, expected.float(), rtol=1e-5, atol=1e-5)


ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}  # relative spacing of values in [1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_sdpa_attends_low_precision_inputs_in_fp32(dtype):
    """PyTorch's CPU flash-attention backward is slow in bf16: the op upcasts, attends in fp32 and casts
    back, so the output is the exact (fp64) attention of the same inputs rounded once: within half an
    ulp of the output's scale, plus fp32's own error. Gradients likewise, against fp64 autograd."""
    inputs = _qkv(2, 4, 50, 16, dtype=dtype)
    q, k, v = [t.clone().requires_grad_() for t in inputs]
    out = attention(q, k, v, backend="torch")
    assert out.dtype == dtype and out.shape == q.shape
    exact_inputs = [t.double().requires_grad_() for t in inputs]
    exact = torch.softmax(exact_inputs[0] @ exact_inputs[1].transpose(-1, -2) / 4.0, -1) @ exact_inputs[2]
    half_ulp = ULP[dtype] / 2 * exact.abs().max().item()
    assert (out.double() - exact).abs().max().item() <= half_ulp * (1 + 1e-3)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, [q, k, v], upstream)
    exact_grads = torch.autograd.grad(exact, exact_inputs, upstream.double())
    for grad, exact_grad in zip(grads, exact_grads):
        assert grad.dtype == dtype
        assert (grad.double() - exact_grad).abs().max().item() <= ULP[dtype] / 2 * exact_grad.abs().max().item() * 1.01


@needs_triton
@pytest.mark.parametrize("batch, num_heads, seq_len, head_dim, seed", [
    (1, 2, 97, 64, 0), (2, 2, 37, 32, 0), (1, 1, 5, 16, 0),
    # S = 916 (30x30 grid + 16 prefix): 15 key blocks, the last one 20 keys wide.
    pytest.param(1, 1, 916, 64, 1, marks=pytest.mark.slow, id="paper-length-916"),
])
def test_triton_forward_and_grads_match_sdpa_fp32(batch, num_heads, seq_len, head_dim, seed):
    inputs = _qkv(batch, num_heads, seq_len, head_dim, seed=seed)
    ours = [t.clone().requires_grad_() for t in inputs]
    theirs = [t.clone().requires_grad_() for t in inputs]
    out = attention(*ours, backend="triton")
    expected = F.scaled_dot_product_attention(*theirs)
    # fp32 throughout (ieee dots): only summation order differs from SDPA.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    for ours_grad, their_grad in zip(torch.autograd.grad(out, ours, grad_out), torch.autograd.grad(expected, theirs, grad_out)):
        torch.testing.assert_close(ours_grad, their_grad, rtol=1e-4, atol=1e-5)


@needs_triton
def test_triton_fp16_forward():
    # fp16 inputs and probabilities (p is rounded to fp16 before P @ V), fp32 accumulation:
    # errors of a few fp16 ulps of values of order 1.
    q, k, v = _qkv(1, 2, 37, 32, dtype=torch.float16)
    out = attention(q, k, v, backend="triton")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), attention_reference(q.float(), k.float(), v.float()), rtol=0, atol=4e-3)


@needs_triton
def test_triton_takes_strided_views_and_returns_projection_friendly_layout():
    """q, k, v as views of a [B, S, 3, H, hd] projection (no copies); the output's transpose(1, 2)
    is contiguous, so reshaping it for the output projection is free."""
    batch, seq_len, num_heads, head_dim = 2, 21, 2, 16
    qkv = torch.randn(batch, seq_len, 3, num_heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = attention(q, k, v, backend="triton")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert out.transpose(1, 2).is_contiguous()


def test_backend_names(monkeypatch):
    fake = lambda *args, **kwargs: None  # noqa: E731
    cuda = torch.device("cuda")
    monkeypatch.setattr(attention_module, "_device_capability_major", lambda device: 9)
    monkeypatch.setattr(attention_module, "_flash_attn_3_func", fake)
    monkeypatch.setattr(attention_module, "_flash_attn_2_func", fake)
    assert attention_backend_name(cuda) == "flash_attn_3"
    assert attention_backend_name(cuda, "cuda", dtype=torch.bfloat16) == "flash_attn_3"
    assert attention_backend_name(cuda, dtype=torch.float32) == "sdpa"  # flash-attn has no fp32
    assert attention_backend_name(cuda, "torch") == "sdpa"
    monkeypatch.setattr(attention_module, "_device_capability_major", lambda device: 8)  # FA3 needs Hopper
    assert attention_backend_name(cuda) == "flash_attn_2"
    monkeypatch.setattr(attention_module, "_flash_attn_3_func", None)
    monkeypatch.setattr(attention_module, "_device_capability_major", lambda device: 9)
    assert attention_backend_name(cuda) == "flash_attn_2"
    monkeypatch.setattr(attention_module, "_flash_attn_2_func", None)
    assert attention_backend_name(cuda) == "sdpa"
    assert attention_backend_name("cpu") == "sdpa"
    with pytest.raises(BackendUnavailable):
        attention_backend_name("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        attention_backend_name("cpu", "bogus")


@needs_triton
def test_backend_name_triton_and_environment(monkeypatch):
    assert attention_backend_name("cpu", "triton") == "triton"
    monkeypatch.setenv("TRM_FAST_BACKEND", "triton")
    assert attention_backend_name("cpu") == "triton"


@pytest.mark.parametrize("returns_lse", [False, True])
def test_flash_attn_call_uses_bshd_views(monkeypatch, returns_lse):
    """The flash-attn path hands [B, S, H, hd] views over and transposes the result back."""
    seen = {}

    def fake_flash_attn(q, k, v, causal=False):
        seen.update(shape=tuple(q.shape), causal=causal, last_stride=q.stride(-1))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return (out, torch.zeros(1)) if returns_lse else out

    q, k, v = _qkv(2, 3, 11, 8)
    out = attention_module._run_flash_attn(fake_flash_attn, q, k, v)
    assert seen == {"shape": (2, 11, 3, 8), "causal": False, "last_stride": 1}
    torch.testing.assert_close(out, attention_reference(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_args, error",
    [
        (lambda q, k, v: (q.int(), k, v), TypeError),
        (lambda q, k, v: (q, k.double(), v), TypeError),
        (lambda q, k, v: (q[0], k[0], v[0]), ValueError),
        (lambda q, k, v: (q, k[:, :, :3], v), ValueError),
    ],
)
def test_bad_inputs_raise_clear_errors(make_args, error):
    q, k, v = _qkv(1, 2, 5, 16)
    with pytest.raises(error, match="attention"):
        attention(*make_args(q, k, v), backend="torch")


@needs_triton
def test_triton_rejects_unsupported_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        attention(*_qkv(1, 1, 4, 24), backend="triton")


@needs_triton
def test_opcheck():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 19, 16))
    torch.library.opcheck(torch.ops.trm_fast.attention.default, (q, k, v, "triton"))
    out, lse = torch.ops.trm_fast.attention(q.detach(), k.detach(), v.detach(), "triton")
    # lse is the base-2 log-sum-exp of the scaled scores
    expected_lse = torch.logsumexp(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) / math.log(2)
    torch.testing.assert_close(lse, expected_lse.detach(), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.trm_fast.attention_backward.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, "triton"))


@needs_triton
def test_torch_compile_fullgraph():
    q, k, v = _qkv(1, 2, 19, 16)
    compiled = torch.compile(lambda q, k, v: attention(q * 0.5, k, v, backend="triton"), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention_reference(q * 0.5, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_aot_specs_compile_for_sm80_and_sm90():
    assert compile_aot_specs("attention") == 10
