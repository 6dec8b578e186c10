"""Op 7 on a CUDA device: the fused Triton kernels against the plain-PyTorch references, in bf16 at the
paper's attention shapes (hidden 512, 8 heads of 64, 916 and 97 tokens), forward and backward.

The spec is `fused_inject_linear_reference` / `fused_inject_qkv_rope_reference`: the injection sum, then
F.linear, then (qkv) the RoPE reference, in plain PyTorch. The fused op and the reference get the same
bf16 inputs and the same upstream gradients; nothing here restates the kernels' formulas. Checks:
- hidden = state + inject_a (+ inject_b): both sides add in fp32 in that order and round once, so the
  fused hidden equals the reference's bit for bit.
- every other output and every gradient differs from the bf16 reference by rounding only (bf16 results
  of fp32-accumulated matmuls; the reference also rounds qkv before RoPE, the kernel rotates its fp32
  accumulator): their difference, in norm, is below one bf16 ulp (2^-7 relative) of the reference.
  An indexing, tiling or rotation bug errs by O(1) of the values.
- no element may be much less accurate than the reference's: against the truth (the same reference run
  in float64 on the same inputs), the fused op's largest error is at most twice the bf16 reference's,
  plus half a bf16 ulp of the largest value. This catches a bug confined to a few rows, which the norm
  would dilute.
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

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

D_MODEL, NUM_HEADS, HEAD_DIM = 512, 8, 64
BF16_ULP = 2.0**-7  # relative spacing of bf16 numbers (8 significant bits)
HALF_ULP = 2.0**-8


def needs_fused_kernels():
    if not fused_linear_available("cuda"):
        pytest.skip("the fused-linear kernels need an sm_80+ GPU")


def randn(*shape, generator, scale=1.0):
    return (torch.randn(*shape, device="cuda", generator=generator) * scale).bfloat16()


def outputs_and_grads(fn, leaves, extra, upstream, dtype):
    """fn's outputs and the gradients of its tensor leaves (None leaves skipped), computed in `dtype`."""
    inputs = [None if t is None else t.detach().to(dtype).requires_grad_() for t in leaves]
    outputs = fn(*inputs, *extra)
    grads = torch.autograd.grad(outputs, [t for t in inputs if t is not None], [u.to(dtype) for u in upstream])
    return [o.detach() for o in outputs], list(grads)


def assert_matches_reference(label, fused, reference, truth):
    assert fused.dtype == reference.dtype == torch.bfloat16, f"{label}: dtype {fused.dtype}"
    assert fused.shape == reference.shape == truth.shape, f"{label}: shape {tuple(fused.shape)}"
    fused, reference, truth = fused.double(), reference.double(), truth.double()
    assert torch.isfinite(fused).all(), f"{label}: non-finite values"
    relative = ((fused - reference).norm() / reference.norm().clamp_min(1e-30)).item()
    assert relative <= BF16_ULP, f"{label}: differs from the reference by {relative:.3g} (relative norm)"
    fused_error = (fused - truth).abs().max().item()
    reference_error = (reference - truth).abs().max().item()
    bound = 2 * reference_error + HALF_ULP * truth.abs().max().item()
    assert fused_error <= bound, f"{label}: max error {fused_error:.3g}, reference's {reference_error:.3g}"


def check_against_reference(fused_fn, reference_fn, leaves, extra, output_names):
    generator = torch.Generator(device="cuda").manual_seed(7)
    shapes = [o.shape for o in reference_fn(*leaves, *extra)]
    upstream = [randn(*shape, generator=generator) for shape in shapes]
    fused_out, fused_grads = outputs_and_grads(fused_fn, leaves, extra, upstream, torch.bfloat16)
    ref_out, ref_grads = outputs_and_grads(reference_fn, leaves, extra, upstream, torch.bfloat16)
    truth_out, truth_grads = outputs_and_grads(reference_fn, leaves, extra, upstream, torch.float64)

    assert torch.equal(fused_out[0], ref_out[0]), "hidden differs from the reference's fp32 sum rounded once"
    for name, fused, reference, truth in zip(output_names[1:], fused_out[1:], ref_out[1:], truth_out[1:]):
        assert_matches_reference(name, fused, reference, truth)
    leaf_names = [name for name, t in zip(("state", "inject_a", "inject_b", "weight"), leaves) if t is not None]
    assert len(fused_grads) == len(leaf_names)
    for name, fused, reference, truth in zip(leaf_names, fused_grads, ref_grads, truth_grads):
        assert_matches_reference(f"grad of {name}", fused, reference, truth)


def test_available_on_this_gpu():
    assert fused_linear_available("cuda") == (torch.cuda.get_device_capability()[0] >= 8)


@pytest.mark.parametrize("out_features, streams", [(3 * D_MODEL, 3), (3072, 2), (80, 3)])
def test_inject_linear_bf16_matches_reference(out_features, streams):
    needs_fused_kernels()
    generator = torch.Generator(device="cuda").manual_seed(0)
    state, inject_a, inject_b = (randn(2, 916, D_MODEL, generator=generator) for _ in range(3))
    weight = randn(out_features, D_MODEL, generator=generator, scale=D_MODEL**-0.5)
    check_against_reference(
        lambda *args: fused_inject_linear(*args, backend="triton"),
        fused_inject_linear_reference,
        [state, inject_a, inject_b if streams == 3 else None, weight],
        (),
        ("hidden", "out"),
    )


@pytest.mark.parametrize("batch, seq_len, rope", [(2, 916, True), (2, 916, False), (8, 97, True)])
def test_inject_qkv_rope_bf16_matches_reference(batch, seq_len, rope):
    needs_fused_kernels()
    generator = torch.Generator(device="cuda").manual_seed(0)
    state, inject_a, inject_b = (randn(batch, seq_len, D_MODEL, generator=generator) for _ in range(3))
    w_qkv = randn(3 * NUM_HEADS * HEAD_DIM, D_MODEL, generator=generator, scale=D_MODEL**-0.5)
    cos, sin = rope_tables(seq_len, HEAD_DIM, device="cuda") if rope else (None, None)
    check_against_reference(
        lambda *args: fused_inject_qkv_rope(*args, backend="triton"),
        fused_inject_qkv_rope_reference,
        [state, inject_a, inject_b, w_qkv],
        (cos, sin, NUM_HEADS),
        ("hidden", "q", "k", "v"),
    )
