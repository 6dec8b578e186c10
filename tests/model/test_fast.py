"""The fast engine computes the reference model's function: same outputs, carry and gradients."""
import copy

import pytest
import torch

from trm_fast.model.fast import FastTRM, recursion_plan
from trm_fast.model.reference import TRM, TRMConfig

VARIANTS = {
    "attention": dict(pos_encodings="rope"),
    "mlp_t": dict(mlp_t=True, pos_encodings="none"),
}


def small_config(variant: str, **overrides) -> TRMConfig:
    values = dict(
        vocab_size=6, seq_len=14, hidden_size=48, num_heads=3, h_cycles=2, l_cycles=2,
        puzzle_emb_ndim=48, puzzle_emb_len=2, halt_max_steps=4, halt_exploration_prob=0.0,
    )
    values.update(VARIANTS[variant])
    values.update(overrides)
    return TRMConfig(**values)


def make_batch(config: TRMConfig, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32),
    }


def twin_models(config: TRMConfig, backend: str):
    torch.manual_seed(0)
    reference = TRM(config).train()
    with torch.no_grad():  # non-trivial puzzle rows and Q head so every path carries signal
        reference.inner.puzzle_emb.weights.normal_()
        reference.inner.q_head.weight.normal_(std=0.1)
    fast = FastTRM(config, backend=backend).train()
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def run_two_steps(model, batch):
    """Two supervision steps (the second continues the carry), loss on the second."""
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    carry, outputs = model(carry, batch)
    loss = outputs["logits"].float().square().mean() + outputs["q_halt_logits"].square().sum()
    loss.backward()
    return carry, outputs


def assert_close_scaled(actual, expected, rel, name=""):
    """max |actual - expected| <= rel * max |expected|: the recursion sums in a different order, so
    fp32 rounding differences grow with the magnitude of the whole tensor, not of each element."""
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert error <= rel * scale + 1e-7, f"{name}: max error {error:.3g} > {rel} * {scale:.3g}"


def compare(config, backend, rel):
    reference, fast = twin_models(config, backend)
    batch = make_batch(config)
    ref_carry, ref_out = run_two_steps(reference, batch)
    fast_carry, fast_out = run_two_steps(fast, batch)
    for key in ("logits", "q_halt_logits", "q_continue_logits"):
        assert_close_scaled(fast_out[key], ref_out[key], rel, key)
    assert_close_scaled(fast_carry.y_answer, ref_carry.y_answer, rel, "y_answer")
    assert_close_scaled(fast_carry.z_latent, ref_carry.z_latent, rel, "z_latent")
    assert torch.equal(fast_carry.steps, ref_carry.steps) and torch.equal(fast_carry.halted, ref_carry.halted)
    ref_params = dict(reference.named_parameters())
    for name, param in fast.named_parameters():
        assert param.grad is not None, name
        assert_close_scaled(param.grad, ref_params[name].grad, rel, name)
    assert_close_scaled(fast_carry.puzzle_rows.values.grad, ref_carry.puzzle_rows.values.grad, rel, "puzzle rows")


def test_recursion_plan_matches_the_reference_schedule():
    plan = recursion_plan(3, 2)
    assert [kind for kind, _ in plan] == ["z", "z", "y"] * 3
    assert [grad for _, grad in plan] == [False] * 6 + [True] * 3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_torch_backend_matches_reference_fp32(variant):
    # fp32: only the order of the injection additions differs; ~30 chained layers amplify the
    # 1e-7 rounding of that reordering to ~1e-5 of the largest gradient.
    compare(small_config(variant), "torch", rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_triton_backend_matches_reference_under_interpreter(variant):
    # Tiny sizes: every Triton kernel runs in the interpreter, one program at a time.
    config = small_config(variant, seq_len=6, hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, h_cycles=2, l_cycles=1)
    compare(config, "triton", rel=5e-4)


def test_learned_positions_and_deeper_recursion_match():
    compare(small_config("attention", pos_encodings="learned", h_cycles=3, l_cycles=3), "torch", rel=1e-4)


def test_checkpoints_interchange_both_ways():
    config = small_config("attention")
    reference, fast = twin_models(config, "torch")
    assert list(fast.state_dict()) == list(reference.state_dict())
    back = TRM(config)
    back.load_state_dict(fast.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_evaluation_predictions_are_identical():
    config = small_config("attention")
    reference, fast = twin_models(config, "torch")
    batch = make_batch(config, batch_size=4)
    predictions = []
    for model in (reference, fast):
        model.eval()
        with torch.no_grad():
            carry = model.initial_carry(batch)
            for _ in range(config.halt_max_steps):
                carry, outputs = model(carry, batch)
        predictions.append(outputs["logits"].argmax(-1))
    assert torch.equal(predictions[0], predictions[1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_without_graph_breaks(backend):
    config = small_config("attention", seq_len=6, hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, h_cycles=2, l_cycles=1)
    _, fast = twin_models(config, backend)
    eager = copy.deepcopy(fast)
    batch = make_batch(config)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    carry = fast.initial_carry(batch)
    _, compiled_out = compiled(carry, batch)
    _, eager_out = eager(eager.initial_carry(batch), batch)
    torch.testing.assert_close(compiled_out["logits"], eager_out["logits"], atol=1e-5, rtol=1e-5)
    compiled_out["logits"].sum().backward()
    assert fast.inner.lm_head.weight.grad is not None


def train_losses(engine: str, model_config: TRMConfig, batches, steps):
    """The trainer's own step (TrainStep: stable-max ACT loss, AdamATan2 + EMA, sign-SGD puzzle rows)
    built from the CPU preset; returns the loss of every step."""
    from trm_fast import config as config_lib
    from trm_fast.train.losses import summarise
    from trm_fast.train.step import build_train_step

    cfg = config_lib.apply_overrides(config_lib.preset("maze-cpu"), [
        f"engine={engine}", "backend=torch", f"global_batch_size={batches[0]['inputs'].shape[0]}",
        "weight_decay=0.1", "puzzle_emb_weight_decay=0.1", "ema_rate=0.999",
    ])
    step = build_train_step(cfg, model_config, torch.device("cpu"))
    step.set_learning_rates(1e-3, 1e-3)
    torch.manual_seed(1)  # same exploration draws for both engines
    return torch.tensor([summarise(step(batches[index % len(batches)]))["loss"] for index in range(1, steps + 1)])


def test_thirty_training_steps_follow_the_reference_loss_curve():
    config = small_config("attention", halt_exploration_prob=0.1)
    batches = [make_batch(config, batch_size=4, seed=seed) for seed in range(5)]
    reference_curve, fast_curve = (train_losses(engine, config, batches, steps=30) for engine in ("reference", "fast"))
    assert reference_curve[-5:].mean() < reference_curve[:5].mean()  # it is training
    torch.testing.assert_close(fast_curve, reference_curve, rtol=1e-3, atol=1e-4)
