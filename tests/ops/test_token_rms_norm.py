"""Op 5 (residual add + RMSNorm over the token axis, dim -2) on CPU: kernels run in the interpreter."""
import warnings

import pytest
import torch

from tests.op_backends import runs_here
from trm_fast.kernels import token_rms_norm as kernels
from trm_fast.ops.token_rms_norm import token_rms_norm_residual, token_rms_norm_residual_reference

pytestmark = runs_here("token_rms_norm_residual")

FP32 = dict(atol=2e-5, rtol=1e-5)
FP32_GRAD = dict(atol=5e-5, rtol=1e-4)
FP16 = dict(atol=4e-3, rtol=2e-3)  # about one fp16 ulp of normalised values (|x| < 5)
FP16_GRAD = dict(atol=2e-2, rtol=1e-2)


def make_inputs(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator) * scale).to(dtype).requires_grad_(True) for scale in (1.0, 0.5)]


def transposed_truth(residual, delta, eps=1e-5):
    """Independent truth: the reference model's route, transpose to [B, D, S] and normalise the last dim."""
    summed = (residual + delta).double().transpose(-1, -2)
    normed = summed / torch.sqrt(summed.square().mean(-1, keepdim=True) + eps)
    return normed.transpose(-1, -2).to(residual.dtype)


def check_case(shape, dtype, tolerances, grad_tolerances):
    residual, delta = make_inputs(shape, dtype)
    out = token_rms_norm_residual(residual, delta, backend="triton")
    expected = token_rms_norm_residual_reference(residual, delta)
    torch.testing.assert_close(out, expected, **tolerances)
    torch.testing.assert_close(out, transposed_truth(residual, delta), **tolerances)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, [residual, delta], upstream)
    expected_grads = torch.autograd.grad(expected, [residual, delta], upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **grad_tolerances)


@pytest.mark.parametrize("shape", [(1, 97, 96), (2, 97, 96), (3, 5, 40), (1, 916, 16)])
def test_forward_and_grads_fp32(shape):
    check_case(shape, torch.float32, FP32, FP32_GRAD)


def test_forward_and_grads_fp16():
    check_case((2, 97, 48), torch.float16, FP16, FP16_GRAD)


def test_long_sequence_loops_over_token_chunks(monkeypatch):
    """The two-pass variant (sequences too long for one register tile), forced on a small shape."""
    real_config = kernels.block_config

    def small_tiles(seq, hidden):
        config = real_config(seq, hidden)
        return {**config, "BLOCK_S": 16, "SINGLE_TILE": False}

    monkeypatch.setattr(kernels, "block_config", small_tiles)
    check_case((2, 75, 40), torch.float32, FP32, FP32_GRAD)
    assert not kernels.block_config(75, 40)["SINGLE_TILE"]


def test_block_config_at_paper_shapes():
    for seq in (97, 916):
        config = kernels.block_config(seq, 512)
        assert config["SINGLE_TILE"] and config["BLOCK_S"] >= seq and config["BLOCK_D"] >= 16
    assert not kernels.block_config(4096, 512)["SINGLE_TILE"]


def test_rstd_per_column():
    residual, delta = (t.detach() for t in make_inputs((2, 9, 24)))
    _, rstd = kernels.token_rms_norm_fwd(residual, delta, 1e-5)
    summed = residual + delta
    torch.testing.assert_close(rstd, torch.rsqrt(summed.square().mean(-2) + 1e-5), atol=1e-6, rtol=1e-5)


def test_opcheck():
    residual, delta = make_inputs((2, 9, 24))
    torch.library.opcheck(torch.ops.trm_fast.token_rms_norm_residual_fwd.default, (residual, delta, 1e-5, "triton"))
    out, rstd = kernels.token_rms_norm_fwd(residual.detach(), delta.detach(), 1e-5)
    grad_out = torch.randn(out.shape)
    torch.library.opcheck(torch.ops.trm_fast.token_rms_norm_residual_bwd.default, (grad_out, out, rstd, "triton"))


def test_torch_compile_fullgraph():
    residual, delta = make_inputs((2, 11, 24))
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        compiled = torch.compile(token_rms_norm_residual, fullgraph=True, backend="aot_eager")
        out = compiled(residual, delta, 1e-5, "triton")
    expected = token_rms_norm_residual_reference(residual, delta)
    torch.testing.assert_close(out, expected, **FP32)
    grads = torch.autograd.grad(out.square().sum(), [residual, delta])
    expected_grads = torch.autograd.grad(expected.square().sum(), [residual, delta])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **FP32_GRAD)


def test_bad_inputs_raise_one_line_errors():
    residual = torch.randn(2, 5, 8)
    with pytest.raises(TypeError, match="dtype"):
        token_rms_norm_residual(residual.double(), residual.double(), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        token_rms_norm_residual(residual, residual.half(), backend="triton")
    with pytest.raises(ValueError, match="shape"):
        token_rms_norm_residual(residual, torch.randn(2, 5, 7), backend="triton")
    with pytest.raises(ValueError, match="S, D > 0"):
        token_rms_norm_residual(torch.randn(8), torch.randn(8), backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        token_rms_norm_residual(torch.randn(2, 8, 5).transpose(1, 2), residual, backend="triton")
