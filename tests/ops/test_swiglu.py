"""Op 4 (SwiGLU over dim -1 or dim -2, no copies) on CPU: the Triton kernels run in the interpreter."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.op_backends import runs_here
from trm_fast.kernels import swiglu as kernels
from trm_fast.ops.swiglu import swiglu, swiglu_reference

pytestmark = runs_here("swiglu")

FP32 = dict(atol=1e-5, rtol=1e-5)  # same fp32 math, different sigmoid/exp implementations
FP16 = dict(atol=2e-3, rtol=2e-3)  # one fp16 rounding of results of magnitude < ~4 (+ reference's extra rounding)


def make_gate_up(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 2).to(dtype).requires_grad_(True)


def transposed_truth(gate_up, dim):
    """Independent truth: move the split dim last (as the reference model's transposes do), split there."""
    moved = gate_up.double().movedim(dim, -1)
    size = moved.shape[-1] // 2
    gate, up = moved[..., :size], moved[..., size:]
    return (gate * torch.sigmoid(gate) * up).movedim(-1, dim)


@pytest.mark.parametrize(
    "shape,dim",
    [((1, 192), -1), ((97, 192), -1), ((2, 5, 3072), -1), ((1, 8, 96), -2), ((2, 194, 96), -2), ((2, 6, 97), -2)],
)
def test_forward_and_grads_fp32(shape, dim):
    gate_up = make_gate_up(shape)
    out = swiglu(gate_up, dim, backend="triton")
    expected = swiglu_reference(gate_up, dim)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, **FP32)
    torch.testing.assert_close(out.double(), transposed_truth(gate_up, dim), **FP32)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out, gate_up, upstream)
    (expected_grad,) = torch.autograd.grad(expected, gate_up, upstream)
    torch.testing.assert_close(grad, expected_grad, **FP32)


@pytest.mark.parametrize("dim", [-1, -2])
def test_forward_and_grads_fp16(dim):
    gate_up = make_gate_up((3, 10, 96), torch.float16)
    out = swiglu(gate_up, dim, backend="triton")
    torch.testing.assert_close(out, swiglu_reference(gate_up, dim), **FP16)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
    (grad,) = torch.autograd.grad(out, gate_up, upstream)
    # Truth in fp32 from the same fp16 inputs; the kernel rounds each gradient once to fp16.
    gate_up32 = gate_up.detach().float().requires_grad_(True)
    (truth,) = torch.autograd.grad(swiglu_reference(gate_up32, dim), gate_up32, upstream.float())
    torch.testing.assert_close(grad.float(), truth, **FP16)


def test_backward_kernel_matches_closed_form():
    gate_up = make_gate_up((4, 6, 10)).detach()
    grad_out = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(2))
    grad = kernels.swiglu_bwd(grad_out, gate_up, dim=-2)
    gate, up = gate_up.chunk(2, -2)
    sig = torch.sigmoid(gate)
    expected = torch.cat([grad_out * up * (sig + gate * sig * (1 - sig)), grad_out * F.silu(gate)], -2)
    torch.testing.assert_close(grad, expected, **FP32)


@pytest.mark.parametrize("dim", [-1, -2])
def test_opcheck(dim):
    gate_up = make_gate_up((2, 6, 10))
    torch.library.opcheck(torch.ops.trm_fast.swiglu_fwd.default, (gate_up, dim, "triton"))
    grad_out = torch.randn(swiglu_reference(gate_up, dim).shape)
    torch.library.opcheck(torch.ops.trm_fast.swiglu_bwd.default, (grad_out, gate_up.detach(), dim, "triton"))


def test_torch_compile_fullgraph_token_mlp():
    """mlp_t's shape flow: [2I, S] x [B, S, D] -> [B, 2I, D] -> swiglu over dim -2 -> [B, I, D]."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(12, 7, generator=generator, requires_grad=True)
    hidden = torch.randn(2, 7, 16, generator=generator, requires_grad=True)

    def token_mlp(weight, hidden, backend):
        return swiglu(weight @ hidden, dim=-2, backend=backend)

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        compiled = torch.compile(token_mlp, fullgraph=True, backend="aot_eager")
        out = compiled(weight, hidden, "triton")
    expected = token_mlp(weight, hidden, "torch")
    torch.testing.assert_close(out, expected, **FP32)
    grads = torch.autograd.grad(out.square().sum(), [weight, hidden])
    expected_grads = torch.autograd.grad(expected.square().sum(), [weight, hidden])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_block_config_divides_paper_widths():
    # I = 1536 (channel MLP) must not leave idle lanes: 1536 = 3 * 512.
    assert 1536 % kernels.block_config(1536)["BLOCK"] == 0
    assert kernels.block_config(96)["BLOCK"] == 128  # small rows: one masked block


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(TypeError, match="dtype"):
        swiglu(torch.randn(4, 8).double(), backend="triton")
    with pytest.raises(ValueError, match="even"):
        swiglu(torch.randn(4, 7), backend="triton")
    with pytest.raises(ValueError, match="dim"):
        swiglu(torch.randn(2, 4, 8), dim=0, backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        swiglu(torch.randn(8, 4).t(), backend="triton")


def test_too_many_blocks_per_slice_is_refused_by_the_op(monkeypatch):
    """Grid axis 1 holds one slice's blocks; the op refuses, before launching, what would not fit."""
    assert kernels.fits_grid(65535 * 1024) and not kernels.fits_grid(65535 * 1024 + 1)
    monkeypatch.setattr(kernels, "_MAX_GRID_Y", 1)  # one block per slice: half <= 1024 when it divides
    assert kernels.fits_grid(200) and kernels.fits_grid(1024) and not kernels.fits_grid(300)
    with pytest.raises(ValueError, match="grid"):
        swiglu(torch.randn(2, 600), backend="triton")
    gate_up = torch.randn(3, 5, 2048)
    torch.testing.assert_close(swiglu(gate_up, backend="triton"), swiglu_reference(gate_up), **FP32)
