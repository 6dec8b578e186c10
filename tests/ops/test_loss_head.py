"""Op 6 (fused ACT loss head) on CPU: the Triton kernels run in Triton's interpreter here.

Tolerances: the reference computes in float64, the kernels in fp32. Per-token CE has a relative
error of a few fp32 ulps (log of a sum of <= 12 terms), and lm_loss sums <= 97 of them, so 1e-5
relative (plus 1e-6 absolute for near-zero losses) holds with a wide margin; gradients are single
fp32 expressions per element (rtol 1e-5, atol 1e-7). fp16 logits: the gradient is stored in fp16,
so it can differ by one fp16 rounding (2^-11 relative).
"""
import math

import pytest
import torch

import trm_fast  # noqa: F401  (registers trm_fast.kernels)
from tests.op_backends import runs_here
from trm_fast.kernels.loss_head import MAX_VOCAB
from trm_fast.ops.loss_head import (
    act_loss_head,
    act_loss_head_reference,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)

# The Triton kernels run on these CPU tensors only under Triton's interpreter (conftest switches it on
# without a GPU); on a GPU machine they are covered by test_loss_head_gpu.py.
needs_interpreter = runs_here("act_loss_head")
IGNORE = -100
LOSS_TYPES = ("stablemax", "softmax")
METRICS = ("lm_loss", "q_halt_loss", "token_accuracy", "seq_correct", "token_count")


def make_inputs(batch, seq_len, vocab, dtype=torch.float32, seed=0, labels_dtype=torch.int64):
    """Logits on both sides of 0 (both stable-max branches), some ignored labels, and in a batch of
    >= 3: one sequence fully correct (seq_correct True) and one with no labels at all."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, seq_len, vocab, generator=generator) * 3).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    labels[torch.rand(batch, seq_len, generator=generator) < 0.2] = IGNORE
    if batch >= 3:
        labels[1] = torch.where(labels[1] == IGNORE, labels[1], logits[1].float().argmax(-1))
        labels[2] = IGNORE
    q_halt = torch.randn(batch, generator=generator) * 4
    return logits, labels.to(labels_dtype), q_halt


def assert_outputs_close(got, expected):
    torch.testing.assert_close(got["lm_loss"], expected["lm_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["q_halt_loss"], expected["q_halt_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["token_accuracy"], expected["token_accuracy"], rtol=1e-6, atol=1e-7)
    assert torch.equal(got["seq_correct"], expected["seq_correct"])
    assert torch.equal(got["token_count"], expected["token_count"])
    for key in METRICS:
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].shape == expected[key].shape, key


def weighted_grads(outputs, logits, q_halt, lm_weights, q_weights):
    total = (outputs["lm_loss"] * lm_weights).sum() + (outputs["q_halt_loss"] * q_weights).sum()
    return torch.autograd.grad(total, (logits, q_halt))


# ----------------------------------------------------------------------------- reference sanity
def test_stablemax_reference_matches_its_definition():
    logits = torch.tensor([[-2.0, 0.0, 1.5]])
    s = [1 / 3, 1.0, 2.5]
    expected = -math.log(2.5 / sum(s))
    got = stablemax_cross_entropy(logits, torch.tensor([2]))
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-12
    assert stablemax_cross_entropy(logits, torch.tensor([IGNORE])).item() == 0.0
    expected_softmax = -math.log(math.exp(1.5) / sum(math.exp(v) for v in (-2.0, 0.0, 1.5)))
    assert abs(softmax_cross_entropy(logits, torch.tensor([2])).item() - expected_softmax) < 1e-12


def test_stablemax_gradient_is_finite_where_a_logit_equals_one():
    # bf16 logits hit 1.0 exactly; the masked branch 1/(1-x) must not turn the gradient into NaN.
    logits = torch.tensor([[1.0, -0.5, 3.0], [0.25, 1.0, 1.0]], dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([0, 2])
    stablemax_cross_entropy(logits, labels).sum().backward()
    assert torch.isfinite(logits.grad).all(), logits.grad
    # d CE / d x_j = s'(x_j) (1/sum(s) - [j == y] / s_y), with s'(x) = 1 for x >= 0 and 1/(1-x)^2 below.
    s = [2.0, 1 / 1.5, 4.0]
    expected = [1 / sum(s) - 1 / 2.0, (1 / 1.5) ** 2 / sum(s), 1 / sum(s)]
    torch.testing.assert_close(logits.grad[0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-2, atol=1e-3)

def test_reference_seq_correct_and_counts():
    logits, labels, q_halt = make_inputs(4, 9, 6)
    out = act_loss_head_reference(logits, labels, q_halt)
    assert out["seq_correct"][1] and out["seq_correct"][2]  # all correct / vacuously correct
    assert out["token_count"][2] == 0 and out["lm_loss"][2] == 0
    assert torch.equal(out["token_count"], (labels != IGNORE).sum(-1).to(torch.int32))


# ----------------------------------------------------------------------------- triton vs reference
@needs_interpreter
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("shape", [(1, 1, 6), (4, 9, 6), (3, 37, 11), (2, 97, 12)])
def test_forward_and_gradients_match_reference(shape, loss_type):
    logits, labels, q_halt = make_inputs(*shape, seed=sum(shape))
    weights = torch.rand(shape[0]) + 0.5, torch.rand(shape[0]) + 0.5
    leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    got = act_loss_head(leaves[0], labels, leaves[1], IGNORE, loss_type, backend="triton")
    ref_leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    expected = act_loss_head_reference(ref_leaves[0], labels, ref_leaves[1], IGNORE, loss_type)
    assert_outputs_close(got, expected)
    grads = weighted_grads(got, *leaves, *weights)
    expected_grads = weighted_grads(expected, *ref_leaves, *weights)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-5, atol=1e-7)


@needs_interpreter
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fp16_logits_int32_labels(loss_type):
    logits, labels, q_halt = make_inputs(3, 21, 12, dtype=torch.float16, seed=5, labels_dtype=torch.int32)
    leaf = logits.clone().requires_grad_()
    ref_leaf = logits.clone().requires_grad_()
    got = act_loss_head(leaf, labels, q_halt, loss_type=loss_type, backend="triton")
    expected = act_loss_head_reference(ref_leaf, labels, q_halt, loss_type=loss_type)
    assert_outputs_close(got, expected)
    (grad,) = torch.autograd.grad(got["lm_loss"].sum(), leaf)
    (expected_grad,) = torch.autograd.grad(expected["lm_loss"].sum(), ref_leaf)
    assert grad.dtype == torch.float16
    torch.testing.assert_close(grad, expected_grad, rtol=2e-3, atol=1e-5)


@needs_interpreter
def test_argmax_ties_pick_the_first_index_like_torch():
    logits = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]])
    for labels, expected_correct in (([1, 0], 2), ([2, 3], 0)):
        got = act_loss_head(logits, torch.tensor([labels]), torch.zeros(1), backend="triton")
        assert got["token_accuracy"].item() == expected_correct / 2


@needs_interpreter
def test_only_q_halt_gradient():
    logits, labels, q_halt = make_inputs(3, 5, 6)
    logits.requires_grad_()
    q_halt.requires_grad_()
    got = act_loss_head(logits, labels, q_halt, backend="triton")
    got["q_halt_loss"].sum().backward()
    target = got["seq_correct"].float()
    torch.testing.assert_close(q_halt.grad, torch.sigmoid(q_halt.detach()) - target)
    assert logits.grad is None or torch.count_nonzero(logits.grad) == 0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda l, y, q: (l.long(), y, q), TypeError),
        (lambda l, y, q: (l, y.float(), q), TypeError),
        (lambda l, y, q: (l, y[:, :-1], q), ValueError),
        (lambda l, y, q: (l, y, q[:-1]), ValueError),
        (lambda l, y, q: (l[0], y, q), ValueError),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, error):
    with pytest.raises(error, match="act_loss_head"):
        act_loss_head(*mutate(*make_inputs(2, 4, 6)), backend="triton")


def test_bad_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        act_loss_head(*make_inputs(2, 4, 6), loss_type="focal")


@needs_interpreter
def test_vocab_over_the_triton_limit():
    with pytest.raises(ValueError, match="limit"):
        act_loss_head(*make_inputs(1, 2, MAX_VOCAB + 1), backend="triton")


# ----------------------------------------------------------------------------- registration
@needs_interpreter
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype, labels_dtype", [(torch.float32, torch.int64), (torch.float16, torch.int32)])
def test_opcheck(loss_type, dtype, labels_dtype):
    logits, labels, q_halt = make_inputs(3, 7, 6, dtype=dtype, labels_dtype=labels_dtype)
    torch.library.opcheck(
        torch.ops.trm_fast.act_loss_head_fwd.default,
        (logits.requires_grad_(), labels, q_halt.requires_grad_(), IGNORE, loss_type, "triton"),
    )
    count = (labels != IGNORE).sum(-1).to(torch.int32)
    torch.library.opcheck(
        torch.ops.trm_fast.act_loss_head_bwd.default,
        (logits.detach(), labels, count, torch.rand(3), IGNORE, loss_type, "triton"),
    )


@needs_interpreter
def test_torch_compile_fullgraph():
    logits, labels, q_halt = make_inputs(3, 11, 6, seed=3)

    def total_loss(head, x, q):
        out = head(x, labels, q)
        return out["lm_loss"].sum() + 0.5 * out["q_halt_loss"].sum(), out["token_accuracy"]

    triton_head = lambda x, labels, q: act_loss_head(x, labels, q, backend="triton")  # noqa: E731
    compiled = torch.compile(lambda x, q: total_loss(triton_head, x, q), fullgraph=True, backend="aot_eager")
    leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    loss, accuracy = compiled(*leaves)
    loss.backward()
    ref_leaves = [logits.clone().requires_grad_(), q_halt.clone().requires_grad_()]
    ref_loss, ref_accuracy = total_loss(act_loss_head_reference, *ref_leaves)  # the spec, not the op again
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accuracy, ref_accuracy, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(leaves[0].grad, ref_leaves[0].grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(leaves[1].grad, ref_leaves[1].grad, rtol=1e-5, atol=1e-7)
