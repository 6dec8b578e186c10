"""The CPU preset trains with torch.compile (inductor's C++ backend): the compiled supervision step must
compute what the eager one does, or the preset's speed-up would be measured on a different model."""
import torch

from trm_fast import config as config_lib
from trm_fast.train.step import build_train_step


def tiny_cpu_config(compile_model: bool):
    return config_lib.apply_overrides(config_lib.preset("maze-cpu"), [
        "model.hidden_size=32", "model.num_heads=2", "model.halt_max_steps=3", "global_batch_size=4",
        "backend=torch", f"compile={str(compile_model).lower()}",
    ])


def test_cpu_preset_trains_compiled():
    assert config_lib.preset("maze-cpu").compile


def test_compiled_cpu_step_matches_eager():
    model_config = config_lib.model_config(tiny_cpu_config(False), vocab_size=6, seq_len=16, num_puzzle_identifiers=1)
    generator = torch.Generator().manual_seed(0)
    batches = [{
        "inputs": torch.randint(1, 6, (4, 16), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, 6, (4, 16), generator=generator),
        "puzzle_identifiers": torch.zeros(4, dtype=torch.int32),
    } for _ in range(3)]

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
