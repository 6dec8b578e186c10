"""Evaluation that halts (each example at its own Q-halt decision, slots refilled) and the accuracy
after each supervision step."""
import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from trm_fast.model import TRMConfig, make_model
from trm_fast.train.evaluate import (
    evaluate,
    evaluate_each_step,
    evaluate_with_halting,
    run_all_steps,
    run_with_halting,
)

MAX_STEPS = 5
CONFIG = TRMConfig(vocab_size=6, seq_len=16, hidden_size=32, num_heads=2, h_cycles=2, l_cycles=1, puzzle_emb_len=1,
                   halt_max_steps=MAX_STEPS)


def tiny_model(config=CONFIG, seed=0):
    torch.manual_seed(seed)
    return make_model(config, "fast", "torch").eval()


def forced_halt_step(inputs: torch.Tensor) -> torch.Tensor:
    """The step from which the forced model's q_halt is positive: 1..MAX_STEPS, a function of the example."""
    return (inputs.long().sum(-1) * 7 % MAX_STEPS + 1).to(torch.int32)


class ForcedHalt(torch.nn.Module):
    """A model whose q_halt is positive from step `forced_halt_step(example)` on, negative before."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def initial_carry(self, batch):
        return self.model.initial_carry(batch)

    def forward(self, carry, batch):
        carry, outputs = self.model(carry, batch)
        due = carry.steps >= forced_halt_step(carry.current_data["inputs"])
        outputs = {**outputs, "q_halt_logits": torch.where(due, 4.0, -4.0)}
        return carry, outputs


def examples(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, 6, (count, CONFIG.seq_len), generator=generator, dtype=torch.int32)
    labels = torch.randint(1, 6, (count, CONFIG.seq_len), generator=generator)
    labels[: count // 3] = inputs[: count // 3]  # some labels the model may get right token by token
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(count, dtype=torch.int32),
            "index": torch.arange(count)}


def answers_after_each_step(model, data):
    """[steps, N, L]: every example run all steps in one batch, the answer after each."""
    answers = []
    run_all_steps(model, data, on_step=lambda _step, outputs: answers.append(outputs["logits"].argmax(-1)))
    return torch.stack(answers)


@pytest.mark.parametrize("batch_size", [3, 64])
def test_forced_halting_uses_exactly_k_steps_and_the_answer_of_step_k(batch_size):
    model = ForcedHalt(tiny_model())
    data = examples(23)
    k = forced_halt_step(data["inputs"])
    assert set(k.tolist()) == set(range(1, MAX_STEPS + 1))  # every halting step occurs

    run = run_with_halting(model, data, batch_size)
    assert run.steps.tolist() == k.tolist()
    assert run.halted.all() and (run.q_halt > 0).all()
    every_step = answers_after_each_step(model, data)
    expected = every_step[k.long() - 1, torch.arange(len(k))]
    assert torch.equal(run.answers, expected)
    assert run.example_steps == int(k.sum()) < len(k) * MAX_STEPS


def test_refill_runs_every_example_exactly_once_and_the_batch_shrinks():
    model = ForcedHalt(tiny_model())
    data = examples(30)
    k = forced_halt_step(data["inputs"])
    seen_per_step, stopped_ids, batch_sizes = Counter(), [], []

    def watch(carry, _outputs, stopped):
        held = carry.current_data["index"]
        batch_sizes.append(len(held))
        seen_per_step.update(held.tolist())
        stopped_ids.extend(held[stopped].tolist())
        # A slot holds one example from its first step to its last: its step count is its age.
        assert torch.equal(carry.steps, carry.steps.clamp(max=k[held]))

    run = run_with_halting(model, data, batch_size=8, on_step=watch)
    assert sorted(stopped_ids) == list(range(30))  # every example finished exactly once
    assert seen_per_step == Counter({i: int(k[i]) for i in range(30)})  # and ran exactly its k steps
    assert batch_sizes[0] == 8 and batch_sizes[-1] < 8  # the batch shrinks once nothing is waiting
    assert batch_sizes == sorted(batch_sizes, reverse=True)
    assert run.model_calls == len(batch_sizes)


def test_without_the_q_head_every_example_runs_all_steps():
    model = ForcedHalt(tiny_model())
    data = examples(9)
    run = run_with_halting(model, data, batch_size=4, use_q_head=False)
    assert run.steps.tolist() == [MAX_STEPS] * 9
    assert torch.equal(run.answers, answers_after_each_step(model, data)[-1])


def padded_batches(data, batch_size):
    """Evaluation batches as the loader makes them: the last one padded, `valid` marking real rows."""
    count = len(data["inputs"])
    for start in range(0, count, batch_size):
        rows = torch.arange(start, start + batch_size)
        valid = rows < count
        batch = {key: data[key][rows.clamp(max=count - 1)] for key in ("inputs", "labels", "puzzle_identifiers")}
        batch["labels"] = torch.where(valid[:, None], batch["labels"], -100)
        batch["valid"] = valid
        yield batch


def test_the_per_step_curve_ends_at_the_evaluate_figure_and_each_point_is_a_shorter_run():
    model = tiny_model()
    data = examples(21)
    curve = evaluate_each_step(model, padded_batches(data, 8), torch.device("cpu"), backend="torch")
    assert len(curve.steps) == MAX_STEPS and curve.example_steps == 21 * MAX_STEPS
    final = evaluate(model, padded_batches(data, 8), torch.device("cpu"), backend="torch", prefix="")
    assert curve.final == pytest.approx(final, rel=1e-6)
    assert curve.final["count"] == 21
    # Point s is what a model allowed only s steps reports (same weights, fewer steps).
    for step in (1, 3):
        shorter = make_model(dataclasses.replace(CONFIG, halt_max_steps=step), "fast", "torch").eval()
        shorter.load_state_dict(model.state_dict())
        expected = evaluate(shorter, padded_batches(data, 8), torch.device("cpu"), backend="torch", prefix="")
        assert curve.steps[step - 1] == pytest.approx(expected, rel=1e-6)
    assert len({round(point["accuracy"], 6) for point in curve.steps}) > 1  # the curve moves


def test_halting_evaluation_scores_each_answer_where_it_stopped():
    model = ForcedHalt(tiny_model())
    data = examples(21)
    k = forced_halt_step(data["inputs"])
    result = evaluate_with_halting(model, padded_batches(data, 8), torch.device("cpu"), batch_size=8, backend="torch")
    answers = answers_after_each_step(model, data)[k.long() - 1, torch.arange(21)]
    token_accuracy = (answers == data["labels"]).float().mean(-1)
    assert result.metrics["count"] == 21
    assert result.metrics["accuracy"] == pytest.approx(float(token_accuracy.mean()), rel=1e-5)
    assert result.metrics["exact_accuracy"] == pytest.approx(float((token_accuracy == 1).float().mean()))
    assert result.metrics["steps"] == pytest.approx(float(k.float().mean()))
    assert result.steps_histogram == np.bincount(k.numpy(), minlength=MAX_STEPS + 1)[1:].tolist()
    assert result.example_steps == int(k.sum())
    assert json.loads(json.dumps(result.to_dict()))["steps_histogram"] == {
        str(s): n for s, n in enumerate(result.steps_histogram, 1)}


def test_a_model_that_learnt_q_continue_halts_where_q_halt_beats_it():
    from trm_fast.train.evaluate import halt_decision

    config = dataclasses.replace(CONFIG, no_act_continue=False)
    outputs = {"q_halt_logits": torch.tensor([-1.0, -1.0, 2.0]), "q_continue_logits": torch.tensor([-2.0, 0.0, 3.0])}
    steps = torch.tensor([1, 1, MAX_STEPS])
    assert halt_decision(config, outputs, steps).tolist() == [True, False, True]
    assert halt_decision(CONFIG, outputs, steps).tolist() == [False, False, True]
    assert halt_decision(CONFIG, outputs, steps, use_q_head=False).tolist() == [False, False, True]
