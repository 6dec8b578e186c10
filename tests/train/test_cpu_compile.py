"""The CPU preset trains with torch.compile (inductor's C++ backend) and a bf16 forward where the CPU
has native bf16: the compiled supervision step must compute what the eager one does, or the preset's
speed-up would be measured on a different model."""
import pytest
import torch

from trm_fast import config as config_lib
from trm_fast.model import TRMConfig
from trm_fast.train import step as step_lib
from trm_fast.train.step import build_train_step, runnable_model_config


def tiny_cpu_config(compile_model: bool, forward_dtype: str = "float32"):
    return config_lib.apply_overrides(config_lib.preset("maze-cpu"), [
        "model.hidden_size=32", "model.num_heads=2", "model.halt_max_steps=3", "global_batch_size=4",
        "backend=torch", f"compile={str(compile_model).lower()}", f"model.forward_dtype={forward_dtype}",
    ])


def tiny_batches(count: int):
    generator = torch.Generator().manual_seed(0)
    return [{
        "inputs": torch.randint(1, 6, (4, 16), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, 6, (4, 16), generator=generator),
        "puzzle_identifiers": torch.zeros(4, dtype=torch.int32),
    } for _ in range(count)]


@pytest.mark.parametrize("name", ["maze-cpu", "sudoku-cpu"])
def test_cpu_presets_train_compiled_in_bf16(name):
    cfg = config_lib.preset(name)
    assert cfg.compile and cfg.model.forward_dtype == "bfloat16"


@pytest.mark.parametrize("device, native, expected", [
    ("cpu", False, "float32"), ("cpu", True, "bfloat16"), ("cuda", False, "bfloat16"),
])
def test_low_precision_falls_back_to_float32_only_on_cpus_without_it(monkeypatch, device, native, expected):
    monkeypatch.setattr(step_lib, "cpu_runs_fast", lambda dtype: native)
    config = TRMConfig(vocab_size=6, seq_len=16, forward_dtype="bfloat16")
    messages = []
    got = runnable_model_config(config, torch.device(device), log=messages.append)
    assert got.forward_dtype == expected and config.forward_dtype == "bfloat16"
    assert len(messages) == (1 if expected != "bfloat16" else 0)
    if messages:
        assert "forward_dtype bfloat16" in messages[0] and "float32" in messages[0]
    assert runnable_model_config(TRMConfig(vocab_size=6, seq_len=16), torch.device("cpu"), messages.append).forward_dtype == "float32"


@pytest.mark.parametrize("native, expected", [(False, "float32"), (True, "bfloat16")])
def test_train_step_runs_float32_on_cpus_without_native_bf16(monkeypatch, native, expected):
    # The trainer, benchmarks and tests build their model here: the fallback must happen here too.
    monkeypatch.setattr(step_lib, "cpu_runs_fast", lambda dtype: native)
    cfg = tiny_cpu_config(False, "bfloat16")
    messages = []
    step = build_train_step(cfg, config_lib.model_config(cfg, vocab_size=6, seq_len=16), torch.device("cpu"),
                            log=messages.append)
    assert step.model.config.forward_dtype == expected
    assert any("float32" in message for message in messages) == (not native)


HALF_ULP = 2.0**-8  # one bf16 rounding, relative


def max_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    return (got.float() - truth.float()).abs().max().item()


def mean_weight_error(state: dict, truth: dict) -> float:
    """Mean |difference| over every weight: AdamATan2 moves each weight by about lr whatever its
    gradient, so a step that computes another model shows in how many weights move differently."""
    errors = [(state[key].float() - value.float()).abs().reshape(-1) for key, value in truth.items()
              if value.is_floating_point()]
    return torch.cat(errors).mean().item()


def test_bf16_compiled_step_matches_eager_and_stays_finite(monkeypatch):
    """Calibrated as the op tests are: against the float32 step from the same weights and batches, the
    compiled bf16 step errs at most twice as much as the eager bf16 step (bf16's own error), in the
    first logits and in the weights after the steps; both stay finite."""
    monkeypatch.setattr(step_lib, "cpu_runs_fast", lambda dtype: True)  # bf16 on any CPU, slow or not
    batches = tiny_batches(3)
    runs = {}
    for name, compile_model, dtype in (("eager", False, "bfloat16"), ("compiled", True, "bfloat16"),
                                       ("fp32", False, "float32")):
        torch._dynamo.reset()
        cfg = tiny_cpu_config(compile_model, dtype)
        step = build_train_step(cfg, config_lib.model_config(cfg, vocab_size=6, seq_len=16), torch.device("cpu"))
        assert step.model.config.forward_dtype == dtype
        if name == "fp32":  # the same start: H_init / L_init are kept in the forward dtype, rounded in bf16
            step.model.load_state_dict(runs["eager"][1])
        step.set_learning_rates(1e-3, 1e-3)
        initial = {key: value.clone() for key, value in step.model.state_dict().items()}
        with torch.no_grad():
            _, outputs = step.forward(step.model.initial_carry(batches[0]), batches[0])
        assert outputs["logits"].dtype == getattr(torch, dtype)
        for index, batch in enumerate(batches):  # a bf16 logit of exactly 1.0 once made the stable-max gradient NaN
            torch.manual_seed(index)  # the same halting-exploration draws in every run
            assert torch.isfinite(step(batch)).all()
        assert all(torch.isfinite(p).all() for p in step.model.parameters())
        runs[name] = (outputs["logits"].float(), initial, step.model.state_dict())

    truth_logits, initial, truth_state = runs["fp32"]
    (eager_logits, _, eager_state), (compiled_logits, _, compiled_state) = runs["eager"], runs["compiled"]
    assert all(torch.equal(initial[key].to(value.dtype), value) for key, value in runs["compiled"][1].items())
    scale = truth_logits.abs().max().item()
    bf16_error = max_error(eager_logits, truth_logits)
    assert 0 < bf16_error, "the bf16 run computed in float32"
    assert max_error(compiled_logits, truth_logits) <= 2 * bf16_error + HALF_ULP * scale
    bf16_weight_error = mean_weight_error(eager_state, truth_state)
    assert 0 < bf16_weight_error
    assert mean_weight_error(compiled_state, truth_state) <= 2 * bf16_weight_error


def test_compiled_cpu_step_matches_eager():
    model_config = config_lib.model_config(tiny_cpu_config(False), vocab_size=6, seq_len=16, num_puzzle_identifiers=1)
    batches = tiny_batches(3)

    runs = {}
    for compile_model in (False, True):
        torch._dynamo.reset()
        messages = []
        step = build_train_step(tiny_cpu_config(compile_model), model_config, torch.device("cpu"), log=messages.append)
        step.set_learning_rates(1e-3, 1e-3)
        metrics = []
        for index, batch in enumerate(batches):
            torch.manual_seed(index)  # the same halting-exploration draws in both runs
            metrics.append(step(batch).clone())
        with torch.no_grad():  # logits of the trained weights from a fresh carry
            carry = step.model.initial_carry(batches[0])
            _, outputs = step.forward(carry, batches[0])
        assert messages == [], messages  # a compile failure falls back to eager: it must not have here
        runs[compile_model] = (metrics, outputs["logits"], step.model.state_dict())

    (eager_metrics, eager_logits, eager_state), (compiled_metrics, compiled_logits, compiled_state) = runs[False], runs[True]
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-4)
    for got, expected in zip(compiled_metrics, eager_metrics):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for name, value in compiled_state.items():
        torch.testing.assert_close(value, eager_state[name], rtol=1e-4, atol=1e-5, msg=name)
