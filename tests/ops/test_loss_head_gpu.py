"""Op 6 on a GPU: every backend with bf16 logits at the paper shapes vs the float64 reference.

Tolerances: outputs are fp32 reductions of fp32 per-token CE over <= 900 tokens (relative error
~1e-6, so rtol 1e-5); gradients are stored in bf16, so they may differ from the fp64 reference by one
bf16 rounding (2^-8 relative): rtol 1e-2, with an atol of 1e-2 x the largest gradient for entries that
round near zero.
"""
import pytest
import torch

import trm_fast  # noqa: F401
from tests.op_backends import gpu_backends
from trm_fast.ops.loss_head import act_loss_head, act_loss_head_reference

pytestmark = pytest.mark.gpu

IGNORE = -100


def make_inputs(batch, seq_len, vocab, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(batch, seq_len, vocab, device="cuda", generator=generator) * 3).bfloat16()
    labels = torch.randint(0, vocab, (batch, seq_len), device="cuda", generator=generator, dtype=torch.int32)
    labels[torch.rand(batch, seq_len, device="cuda", generator=generator) < 0.1] = IGNORE
    labels[1] = torch.where(labels[1] == IGNORE, labels[1], logits[1].float().argmax(-1).int())
    labels[2] = IGNORE
    q_halt = torch.randn(batch, device="cuda", generator=generator) * 4
    return logits, labels, q_halt


@pytest.mark.parametrize("backend", gpu_backends("act_loss_head"))
@pytest.mark.parametrize("loss_type", ["stablemax", "softmax"])
@pytest.mark.parametrize("shape", [(64, 900, 6), (32, 900, 12), (48, 81, 11)])
def test_bf16_matches_fp64_reference(shape, loss_type, backend):
    logits, labels, q_halt = make_inputs(*shape, seed=shape[2])
    leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    ref_leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    got = act_loss_head(leaves[0], labels, leaves[1], IGNORE, loss_type, backend=backend)
    expected = act_loss_head_reference(ref_leaves[0], labels, ref_leaves[1], IGNORE, loss_type)
    torch.testing.assert_close(got["lm_loss"], expected["lm_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["q_halt_loss"], expected["q_halt_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["token_accuracy"], expected["token_accuracy"], rtol=1e-6, atol=1e-7)
    assert torch.equal(got["seq_correct"], expected["seq_correct"])
    assert torch.equal(got["token_count"], expected["token_count"])
    assert bool(expected["seq_correct"][1]) and bool(expected["seq_correct"][2])
    weights = torch.rand(shape[0], device="cuda") + 0.5
    grads = torch.autograd.grad((got["lm_loss"] * weights).sum() + got["q_halt_loss"].sum(), leaves)
    ref_grads = torch.autograd.grad((expected["lm_loss"] * weights).sum() + expected["q_halt_loss"].sum(), ref_leaves)
    scale = ref_grads[0].abs().max().item()
    torch.testing.assert_close(grads[0].float(), ref_grads[0].float(), rtol=1e-2, atol=1e-2 * scale)
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in gpu_backends("act_loss_head") if b != "torch"])
def test_compiled_fullgraph_on_gpu(backend):
    logits, labels, q_halt = make_inputs(8, 97, 11, seed=1)

    def total(x, q):
        out = act_loss_head(x, labels, q, backend=backend)
        return out["lm_loss"].sum() + 0.5 * out["q_halt_loss"].sum()

    leaf = logits.clone().requires_grad_()
    ref_leaf = logits.clone().requires_grad_()
    torch.compile(total, fullgraph=True)(leaf, q_halt).backward()
    total(ref_leaf, q_halt).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("backend", [name for name in gpu_backends("act_loss_head") if name != "torch"])
@pytest.mark.parametrize("loss_type", ["stablemax", "softmax"])
def test_opcheck_with_cuda_tensors(loss_type, backend):
    """The registered ops on the GPU: the C++ kernels (backend "cuda") sit behind the same schema and fake."""
    logits, labels, q_halt = make_inputs(4, 9, 6)
    torch.library.opcheck(
        torch.ops.trm_fast.act_loss_head_fwd.default,
        (logits.requires_grad_(), labels, q_halt.requires_grad_(), IGNORE, loss_type, backend),
    )
    count = (labels != IGNORE).sum(-1).to(torch.int32)
    grad_lm_loss = torch.rand(4, device="cuda")
    torch.library.opcheck(
        torch.ops.trm_fast.act_loss_head_bwd.default,
        (logits.detach(), labels, count, grad_lm_loss, IGNORE, loss_type, backend),
    )
