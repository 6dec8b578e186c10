"""Op 8 (fused AdamATan2 + EMA, sign-SGD rows) on CPU: the Triton kernels run in the interpreter.

Tolerances: everything is fp32. One step is a handful of fp32 operations per element (and the
kernel's atan2 is accurate to about 1 ulp), so a single step agrees with exact math to ~1e-6
relative; over several steps the differences stay at a few ulps of the values (rtol 1e-5).
"""
import math

import pytest
import torch
import triton
import triton.language as tl

import trm_fast  # noqa: F401
from tests.op_backends import runs_here
from trm_fast.kernels.optimizer import _atan2
from trm_fast.ops.optimizer import (
    adam_atan2_ema_step_,
    adam_atan2_ema_step_reference_,
    sign_sgd_rows_,
    sign_sgd_rows_reference_,
)

# The Triton kernels run on these CPU tensors only under Triton's interpreter (conftest switches it on
# without a GPU); on a GPU machine they are covered by test_optimizer_gpu.py.
needs_interpreter = runs_here("adam_atan2_ema_step_")
HYPER = dict(beta1=0.9, beta2=0.95, weight_decay=0.1, ema_decay=0.999)
BACKENDS = ("torch", pytest.param("triton", marks=needs_interpreter))


def expected_adam_scalar(p, g, m, v, ema, step, lr, beta1, beta2, weight_decay, ema_decay):
    """The AdamATan2 + EMA formula for one element, in plain Python (float64) math."""
    p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)
    v = v + (1 - beta2) * (g * g - v)
    p = p - lr / (1 - beta1**step) * math.atan2(m, math.sqrt(v) / math.sqrt(1 - beta2**step))
    ema = ema * ema_decay + p * (1 - ema_decay)
    return p, m, v, ema


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tensor_hyper", [False, True])
def test_single_step_matches_hand_computed(backend, tensor_hyper):
    # elements chosen to hit every atan2 quadrant and the m = v = 0 corner
    values = {
        "p": [0.5, -1.25, 2.0, 0.0, 0.3],
        "g": [-0.2, 0.7, 0.0, 1e-3, -3.0],
        "m": [0.03, -0.1, 0.0, 0.0, 0.5],
        "v": [1e-3, 0.02, 0.0, 0.0, 0.25],
        "ema": [0.4, -1.0, 2.0, 0.1, 0.0],
    }
    step, lr = 3, 0.01
    tensors = {name: torch.tensor(vals, dtype=torch.float32) for name, vals in values.items()}
    adam_atan2_ema_step_(
        [tensors["p"]], [tensors["g"]], [tensors["m"]], [tensors["v"]], [tensors["ema"]],
        step=torch.tensor(step) if tensor_hyper else step,
        lr=torch.tensor(lr) if tensor_hyper else lr,
        backend=backend, **HYPER,
    )
    for index in range(5):
        expected = expected_adam_scalar(*(values[name][index] for name in ("p", "g", "m", "v", "ema")), step, lr, **HYPER)
        got = [tensors[name][index].item() for name in ("p", "m", "v", "ema")]
        for name, got_value, expected_value in zip(("p", "m", "v", "ema"), got, expected):
            assert got_value == pytest.approx(expected_value, rel=2e-6, abs=1e-8), (name, index)


def make_state(shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    exp_avgs = [torch.randn(shape, generator=generator) * 0.01 for shape in shapes]
    exp_avg_sqs = [torch.rand(shape, generator=generator) * 1e-4 for shape in shapes]
    ema = [p.clone() for p in params]
    return params, exp_avgs, exp_avg_sqs, ema


@needs_interpreter
@pytest.mark.parametrize("with_ema", [True, False])
@pytest.mark.parametrize("tensor_hyper", [False, True])
def test_fused_matches_reference_over_steps(with_ema, tensor_hyper):
    shapes = [(7, 5), (2 * 2048 + 5,), (1,), (3, 4, 6)]  # one tensor spans three chunks
    state = make_state(shapes, seed=1)
    ref_state = [[t.clone() for t in tensors] for tensors in state]
    generator = torch.Generator().manual_seed(2)
    for step in range(1, 5):
        grads = [torch.randn(shape, generator=generator) * 0.1 for shape in shapes]
        lr = 1e-2 * step  # a schedule: changes every step
        step_arg, lr_arg = (torch.tensor(float(step)), torch.tensor(lr)) if tensor_hyper else (step, lr)
        for backend, (params, exp_avgs, exp_avg_sqs, ema) in (("triton", state), ("torch", ref_state)):
            adam_atan2_ema_step_(
                params, grads, exp_avgs, exp_avg_sqs, ema if with_ema else None,
                step=step_arg, lr=lr_arg, backend=backend, **HYPER,
            )
    for got_list, expected_list in zip(state, ref_state):
        for got, expected in zip(got_list, expected_list):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    if not with_ema:  # the EMA copies were not passed, so they must be untouched
        for ema, initial in zip(state[3], make_state(shapes, seed=1)[0]):
            assert torch.equal(ema, initial)


@triton.jit
def _atan2_test_kernel(y_ptr, x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < n
    y = tl.load(y_ptr + offsets, mask=mask)
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, _atan2(y, x), mask=mask)


@needs_interpreter
def test_kernel_atan2_matches_torch_in_every_quadrant():
    magnitudes = torch.tensor([0.0, 1e-30, 1e-6, 0.3, 0.41421356, 0.5, 1.0, 2.4, 7.0, 1e4])
    signed = torch.cat([magnitudes, -magnitudes[1:]])
    y, x = torch.meshgrid(signed, signed, indexing="ij")
    y, x = y.reshape(-1).contiguous(), x.reshape(-1).contiguous()
    out = torch.empty_like(y)
    _atan2_test_kernel[(1,)](y, x, out, y.numel(), BLOCK=triton.next_power_of_2(y.numel()))
    torch.testing.assert_close(out, torch.atan2(y, x), rtol=2e-7, atol=1e-7)


def test_validation_errors():
    params, exp_avgs, exp_avg_sqs, _ = make_state([(3,), (4,)], seed=0)
    grads = [torch.zeros(3), torch.zeros(4)]
    kwargs = dict(step=1, lr=1e-3, backend="triton", **HYPER)
    with pytest.raises(TypeError, match="float32"):
        adam_atan2_ema_step_([params[0].half()], [grads[0]], [exp_avgs[0]], [exp_avg_sqs[0]], None, **kwargs)
    with pytest.raises(ValueError, match="has 1 tensors"):
        adam_atan2_ema_step_(params, grads[:1], exp_avgs, exp_avg_sqs, None, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        adam_atan2_ema_step_(params, grads[::-1], exp_avgs, exp_avg_sqs, None, **kwargs)
    with pytest.raises(ValueError, match="one-element"):
        adam_atan2_ema_step_(params, grads, exp_avgs, exp_avg_sqs, None, **{**kwargs, "lr": torch.ones(2)})


# ----------------------------------------------------------------------------- registration
def written_arguments(op) -> set[str]:
    return {arg.name for arg in op._schema.arguments if arg.alias_info is not None and arg.alias_info.is_write}


def test_schemas_declare_exactly_the_arguments_updated_in_place():
    """opcheck fails on an undeclared mutation; this also pins down that nothing else is declared."""
    adam = torch.ops.trm_fast.adam_atan2_ema_step_.default
    assert written_arguments(adam) == {"params", "exp_avgs", "exp_avg_sqs", "ema_params"}
    assert len(adam._schema.returns) == 0
    sign_sgd = torch.ops.trm_fast.sign_sgd_rows_.default
    assert written_arguments(sign_sgd) == {"table"}
    assert len(sign_sgd._schema.returns) == 0


@needs_interpreter
@pytest.mark.parametrize("with_ema", [True, False])
@pytest.mark.parametrize("hyper", ["numbers", "tensors", "tensor_lr"])
def test_adam_opcheck(with_ema, hyper):
    params, exp_avgs, exp_avg_sqs, ema = make_state([(5,), (2, 3), (2048 + 3,)], seed=4)
    grads = [torch.randn_like(p) for p in params]
    step_tensor, step_value = (torch.tensor(2.0), 0.0) if hyper == "tensors" else (None, 2.0)
    lr_tensor, lr_value = (None, 1e-3) if hyper == "numbers" else (torch.tensor(1e-3), 0.0)
    args = (params, grads, exp_avgs, exp_avg_sqs, ema if with_ema else [], step_tensor, step_value, lr_tensor,
            lr_value, 0.9, 0.95, 0.1, 0.999, "triton")
    op = torch.ops.trm_fast.adam_atan2_ema_step_.default
    torch.library.opcheck(op, args)  # runs on copies of the arguments
    # One real call: the declared arguments change in place, the others do not.
    everything = params + exp_avgs + exp_avg_sqs + ema + grads
    before = [t.clone() for t in everything]
    op(*args)
    changed = [not torch.equal(t, old) for t, old in zip(everything, before)]
    n = len(params)
    assert all(changed[:3 * n])  # params and both moments
    assert all(changed[3 * n:4 * n]) if with_ema else not any(changed[3 * n:4 * n])  # the EMA only when given
    assert not any(changed[4 * n:])  # grads are read only


# ----------------------------------------------------------------------------- sign-SGD rows
@pytest.mark.parametrize("backend", BACKENDS)
def test_sign_sgd_sums_duplicate_ids_before_the_sign(backend):
    table = torch.arange(30, dtype=torch.float32).reshape(10, 3) / 10
    initial = table.clone()
    row_ids = torch.tensor([3, 1, 3, 9, 3])
    # id 3: rows 0, 2, 4 sum to [-1, +1, 0]; each alone has other signs
    row_grads = torch.tensor(
        [[1.0, -1.0, 2.0], [0.5, 0.0, -0.5], [1.0, -1.0, -1.0], [-2.0, 3.0, 0.0], [-3.0, 3.0, -1.0]]
    )
    lr, weight_decay = 0.1, 0.5
    sign_sgd_rows_(table, row_ids, row_grads, lr, weight_decay, backend=backend)
    expected = initial.clone()
    decay = 1 - lr * weight_decay
    expected[3] = initial[3] * decay - lr * torch.tensor([-1.0, 1.0, 0.0])
    expected[1] = initial[1] * decay - lr * torch.tensor([1.0, 0.0, -1.0])
    expected[9] = initial[9] * decay - lr * torch.tensor([-1.0, 1.0, 0.0])
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-7)


@needs_interpreter
@pytest.mark.parametrize("ids", ["all_same", "random"])
def test_sign_sgd_triton_matches_reference(ids):
    generator = torch.Generator().manual_seed(7)
    n_rows, dim, n_ids = 12, 1500, 9  # dim > one column block (1024)
    table = torch.randn(n_rows, dim, generator=generator)
    row_ids = torch.zeros(n_ids, dtype=torch.int32) if ids == "all_same" else torch.randint(0, n_rows, (n_ids,), generator=generator, dtype=torch.int32)
    row_grads = torch.randn(n_ids, dim, generator=generator)
    expected = table.clone()
    sign_sgd_rows_reference_(expected, row_ids, row_grads, 1e-2, 1.0)
    sign_sgd_rows_(table, row_ids, row_grads, torch.tensor(1e-2), 1.0, backend="triton")
    torch.testing.assert_close(table, expected, rtol=1e-6, atol=1e-7)


def test_sign_sgd_validation():
    table = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="row_grads"):
        sign_sgd_rows_(table, torch.tensor([0, 1]), torch.zeros(2, 4), 0.1, 0.0, backend="triton")
    with pytest.raises(ValueError, match="row_ids"):
        sign_sgd_rows_(table, torch.tensor([0.0, 1.0]), torch.zeros(2, 3), 0.1, 0.0, backend="triton")
    with pytest.raises(ValueError, match="table"):
        sign_sgd_rows_(table.double(), torch.tensor([0, 1]), torch.zeros(2, 3), 0.1, 0.0, backend="triton")
    with pytest.raises(ValueError, match="one-element"):
        sign_sgd_rows_(table, torch.tensor([0, 1]), torch.zeros(2, 3), torch.ones(2), 0.0, backend="triton")


@needs_interpreter
@pytest.mark.parametrize("lr", ["number", "tensor"])
@pytest.mark.parametrize("ids_dtype, grads_dtype", [(torch.int64, torch.float32), (torch.int32, torch.float16)])
def test_sign_sgd_opcheck(lr, ids_dtype, grads_dtype):
    generator = torch.Generator().manual_seed(6)
    table = torch.randn(4, 3, generator=generator)
    before = table.clone()
    row_ids = torch.tensor([2, 0, 2], dtype=ids_dtype)
    row_grads = torch.randn(3, 3, generator=generator).to(grads_dtype)
    lr_tensor, lr_value = (torch.tensor(0.1), 0.0) if lr == "tensor" else (None, 0.1)
    args = (table, row_ids, row_grads, lr_tensor, lr_value, 0.01, "triton")
    op = torch.ops.trm_fast.sign_sgd_rows_.default
    torch.library.opcheck(op, args)  # runs on copies of the arguments
    # One real call: rows 0 and 2 of the table change in place; nothing else does.
    inputs_before = (row_ids.clone(), row_grads.clone())
    op(*args)
    assert not torch.equal(table[0], before[0]) and not torch.equal(table[2], before[2])
    assert torch.equal(table[1], before[1]) and torch.equal(table[3], before[3])
    assert torch.equal(row_ids, inputs_before[0]) and torch.equal(row_grads, inputs_before[1])


@needs_interpreter
def test_compiled_step_fullgraph():
    params, exp_avgs, exp_avg_sqs, ema = make_state([(6,), (2, 5)], seed=9)
    grads = [torch.randn_like(p) for p in params]
    ref = [[t.clone() for t in tensors] for tensors in (params, exp_avgs, exp_avg_sqs, ema)]
    step, lr = torch.tensor(3.0), torch.tensor(1e-2)

    def optimizer_step(params, exp_avgs, exp_avg_sqs, ema):
        adam_atan2_ema_step_(params, grads, exp_avgs, exp_avg_sqs, ema, step=step, lr=lr, backend="triton", **HYPER)

    torch.compile(optimizer_step, fullgraph=True, backend="aot_eager")(params, exp_avgs, exp_avg_sqs, ema)
    adam_atan2_ema_step_reference_(ref[0], grads, ref[1], ref[2], ref[3], step=step, lr=lr, **HYPER)
    for got_list, expected_list in zip((params, exp_avgs, exp_avg_sqs, ema), ref):
        for got, expected in zip(got_list, expected_list):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@needs_interpreter
def test_tensors_below_the_first_parameter_in_memory():
    """The kernel finds tensors as offsets from params[0]; negative offsets must work too."""
    params = sorted([torch.randn(5000), torch.randn(7)], key=lambda t: -t.data_ptr())
    grads = [torch.randn_like(p) for p in params]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    ref = [[p.clone() for p in params]] + [[t.clone() for t in s] for s in state]
    adam_atan2_ema_step_(params, grads, *state, None, step=1, lr=0.1, backend="triton", **HYPER)
    adam_atan2_ema_step_reference_(ref[0], grads, ref[1], ref[2], None, step=1, lr=0.1, **HYPER)
    for got, expected in zip(params + state[0] + state[1], ref[0] + ref[1] + ref[2]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
