"""AdamATan2 (through the optimizer class), sign-SGD of the puzzle table and the LR schedule,
checked against values computed by hand with Python's math module."""
import copy
import math

import pytest
import torch

from trm_fast.train.ema import EMA
from trm_fast.train.optim import AdamATan2, PuzzleEmbeddingSignSGD, lr_at_step

BACKENDS = ["torch", "triton"]  # triton runs in the interpreter on CPU (conftest)


def adam_atan2_by_hand(p, grads, lr, betas, wd, ema_decay=None):
    """Scalar AdamATan2 over a sequence of gradients; returns (p, ema) after every step."""
    beta1, beta2 = betas
    m = v = 0.0
    ema = p
    history = []
    for step, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = m + (1 - beta1) * (g - m)
        v = v + (1 - beta2) * (g * g - v)
        p = p - lr / (1 - beta1**step) * math.atan2(m, math.sqrt(v) / math.sqrt(1 - beta2**step))
        if ema_decay is not None:
            ema = ema * ema_decay + p * (1 - ema_decay)
        history.append((p, ema))
    return history


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_ema", [False, True])
def test_adam_atan2_matches_hand_computation(backend, use_ema):
    start = [1.0, -2.0, 0.25, 0.0, 3.0]
    grad_steps = [[0.5, -0.1, 0.0, 2.0, -3.0], [-0.2, -0.3, 1e-3, 2.0, 0.5], [0.1, 0.4, -1.0, -2.0, 0.0]]
    lr, wd, betas, decay = 0.05, 0.5, (0.9, 0.95), 0.9
    weight = torch.nn.Parameter(torch.tensor(start))
    model = torch.nn.Module()
    model.weight = weight
    ema = EMA(model, decay) if use_ema else None
    optimizer = AdamATan2([weight], lr=lr, betas=betas, weight_decay=wd, ema=ema, backend=backend)
    for step_index, grads in enumerate(grad_steps):
        weight.grad = torch.tensor(grads)
        optimizer.step()
        for i in range(len(start)):
            expected_p, expected_ema = adam_atan2_by_hand(
                start[i], [g[i] for g in grad_steps[: step_index + 1]], lr, betas, wd, decay if use_ema else None
            )[-1]
            assert weight[i].item() == pytest.approx(expected_p, rel=1e-5, abs=1e-6)
            if use_ema:
                assert ema.shadow["weight"][i].item() == pytest.approx(expected_ema, rel=1e-5, abs=1e-6)
    assert int(optimizer.state[weight]["step"]) == len(grad_steps)


def test_adam_atan2_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = AdamATan2([a], lr=0.01, weight_decay=0.1, backend="torch")
    grads = [torch.randn(4, 3) for _ in range(4)]
    a.grad = grads[0]
    opt_a.step()
    with torch.no_grad():
        b.copy_(a)
    opt_b = AdamATan2([b], lr=0.01, weight_decay=0.1, backend="torch")
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if read back from a file
    for grad in grads[1:]:
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_adam_atan2_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        AdamATan2([torch.nn.Parameter(torch.zeros(2))], lr=-1.0)
    with pytest.raises(TypeError, match="fp32"):
        AdamATan2([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))])


def test_ema_math_and_averaged_copy():
    model = torch.nn.Linear(2, 1, bias=False)
    model.register_buffer("table", torch.zeros(3))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(model, decay=0.75)
    values = [[3.0, -2.0], [5.0, 0.0]]
    expected = [1.0, 2.0]
    for new in values:
        with torch.no_grad():
            model.weight.copy_(torch.tensor([new]))
            model.table.add_(1.0)
        ema.update(model)
        expected = [0.75 * e + 0.25 * n for e, n in zip(expected, new)]
    assert ema.shadow["weight"].flatten().tolist() == pytest.approx(expected)
    averaged = ema.averaged_copy(model)
    assert averaged.weight.flatten().tolist() == pytest.approx(expected)
    assert model.weight.flatten().tolist() == values[-1]  # live model untouched
    state = ema.model_state_dict(model)
    assert state["weight"].flatten().tolist() == pytest.approx(expected)
    assert state["table"].tolist() == [2.0, 2.0, 2.0]  # buffers come from the live model
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.75 and torch.equal(other.shadow["weight"], ema.shadow["weight"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sign_sgd_updates_only_used_rows_with_summed_duplicates(backend):
    table = torch.tensor([[1.0, -1.0], [0.5, 0.5], [2.0, 0.0], [-3.0, 1.0]])
    ids = torch.tensor([2, 0, 2], dtype=torch.int32)
    # row 2 appears twice: its grads sum to (0.1 - 0.3, -0.2 + 0.5) = (-0.2, 0.3)
    grads = torch.tensor([[0.1, -0.2], [0.0, -4.0], [-0.3, 0.5]])
    lr, wd = 0.1, 0.5
    PuzzleEmbeddingSignSGD(table, lr=lr, weight_decay=wd, backend=backend).step(ids, grads)
    decay = 1 - lr * wd
    expected = [
        [1.0 * decay - lr * 0.0, -1.0 * decay - lr * -1.0],  # sign(0) = 0
        [0.5, 0.5],  # unused
        [2.0 * decay - lr * -1.0, 0.0 * decay - lr * 1.0],
        [-3.0, 1.0],  # unused
    ]
    assert table.tolist() == [pytest.approx(row) for row in expected]


def test_sign_sgd_reads_a_device_scalar_learning_rate_at_each_step():
    table = torch.zeros(2, 1)
    lr = torch.tensor(0.5)
    optimizer = PuzzleEmbeddingSignSGD(table, lr=lr, weight_decay=0.0, backend="torch")
    optimizer.step(torch.tensor([0], dtype=torch.int32), torch.tensor([[1.0]]))
    lr.fill_(0.25)  # what the trainer's schedule does between (captured) steps
    optimizer.step(torch.tensor([0], dtype=torch.int32), torch.tensor([[1.0]]))
    assert table.flatten().tolist() == [-0.75, 0.0]


def test_sign_sgd_uses_gathered_rows():
    table = torch.zeros(3, 1)

    def gather(ids, rows):  # pretend a second rank used row 0 (grad -3) and row 1 (grad 2)
        return torch.cat([ids, torch.tensor([0, 1])]), torch.cat([rows, torch.tensor([[-3.0], [2.0]])])

    optimizer = PuzzleEmbeddingSignSGD(table, lr=0.5, weight_decay=0.0, backend="torch", gather_rows=gather)
    optimizer.step(torch.tensor([0]), torch.tensor([[1.0]]))
    assert table.flatten().tolist() == [0.5, -0.5, 0.0]


def test_lr_schedule_warmup_then_constant_or_cosine():
    base, warmup, total = 1e-3, 10, 110
    assert lr_at_step(0, base, warmup, total) == 0.0
    assert lr_at_step(5, base, warmup, total) == pytest.approx(base * 5 / 10)
    assert lr_at_step(1, base, warmup, total) == pytest.approx(base / 10)
    for step in (10, 50, 110, 500):  # min_ratio 1: constant after warmup (the reference's setting)
        assert lr_at_step(step, base, warmup, total, min_ratio=1.0) == pytest.approx(base)
    # cosine from base at the end of warmup down to base * min_ratio at `total`
    assert lr_at_step(10, base, warmup, total, min_ratio=0.1) == pytest.approx(base)
    halfway = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at_step(60, base, warmup, total, min_ratio=0.1) == pytest.approx(halfway)
    assert lr_at_step(110, base, warmup, total, min_ratio=0.1) == pytest.approx(base * 0.1)
    assert lr_at_step(0, base, 0, total, min_ratio=1.0) == pytest.approx(base)  # no warmup


def test_capturable_adam_atan2_matches_the_default_path():
    """The CUDA-graph mode keeps step and lr in tensors; it must compute the same updates."""
    from trm_fast.train.optim import AdamATan2

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    results = []
    for capturable in (False, True):
        params = [p.clone().requires_grad_(True) for p in start]
        optimizer = AdamATan2(params, lr=0.0, weight_decay=0.1, backend="torch", capturable=capturable)
        generator = torch.Generator().manual_seed(1)
        for step in range(1, 6):
            optimizer.set_lr(1e-2 * step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        results.append([p.detach().clone() for p in params])
        if capturable:
            assert optimizer.param_groups[0]["step_tensor"].item() == 5
            reloaded = AdamATan2([p.detach().clone().requires_grad_(True) for p in params], lr=0.0, capturable=True)
            reloaded.load_state_dict(optimizer.state_dict())
            assert reloaded.param_groups[0]["step_tensor"].item() == 5
    for default, captured in zip(*results):
        torch.testing.assert_close(captured, default)
