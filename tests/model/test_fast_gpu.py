"""GPU checks of the fast engine: bf16 against the reference, every backend, and CUDA-graph replay."""
import dataclasses

import pytest
import torch

from trm_fast.cuda_graphs import GraphedStep
from trm_fast.model.fast import FastTRM
from trm_fast.model.reference import TRM, TRMConfig

pytestmark = pytest.mark.gpu


def gpu_config(variant: str, **overrides) -> TRMConfig:
    values = dict(
        vocab_size=6, seq_len=64, hidden_size=128, num_heads=2, h_cycles=2, l_cycles=2, puzzle_emb_ndim=128,
        puzzle_emb_len=4, halt_max_steps=4, halt_exploration_prob=0.0, forward_dtype="bfloat16",
    )
    if variant == "mlp_t":
        values.update(mlp_t=True, pos_encodings="none")
    values.update(overrides)
    return TRMConfig(**values)


def make_batch(config, batch_size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "inputs": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32),
    }
    return {key: value.cuda() for key, value in batch.items()}


HALF_ULP = 2.0**-8  # one bf16 rounding, relative


def supervision_steps(model, batch, steps: int = 3, lr: float = 0.05):
    """Logits and gradients of the first supervision step, and each parameter's change after `steps`
    steps of plain SGD (the carry flows from step to step, as in training)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    initial = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    carry, first = model.initial_carry(batch), None
    for _ in range(steps):
        carry, outputs = model(carry, batch)
        optimizer.zero_grad(set_to_none=True)
        outputs["logits"].float().square().mean().backward()
        if first is None:
            first = (outputs["logits"].detach().float(),
                     {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None})
        optimizer.step()
    updates = {name: p.detach().float() - initial[name] for name, p in model.named_parameters()}
    return first[0], first[1], updates


def max_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    return (got - truth).abs().max().item()


@pytest.mark.parametrize("variant", ["attention", "mlp_t"])
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_bf16_fast_engine_tracks_reference(variant, backend):
    """Calibrated as the op-level tests are: against the reference run in fp32 from the same weights,
    the bf16 fast engine errs at most twice as much as the bf16 reference (plus one bf16 rounding of the
    tensor's scale), in the first logits and gradients and in the weights after three steps."""
    config = gpu_config(variant)
    torch.manual_seed(0)
    reference = TRM(config).cuda().train()
    truth_model = TRM(dataclasses.replace(config, forward_dtype="float32")).cuda().train()
    fast = FastTRM(config, backend=backend).cuda().train()
    for model in (truth_model, fast):
        model.load_state_dict(reference.state_dict())
    batch = make_batch(config)
    (truth_logits, truth_grads, truth_updates), (ref_logits, ref_grads, ref_updates), (logits, grads, updates) = (
        supervision_steps(model, batch) for model in (truth_model, reference, fast))

    def check(label, got, bf16_reference, truth):
        bound = 2 * max_error(bf16_reference, truth) + HALF_ULP * truth.abs().max().item() + 1e-7
        assert max_error(got, truth) <= bound, f"{label}: {max_error(got, truth):.3g} > {bound:.3g}"

    assert max_error(ref_logits, truth_logits) > 0, "the bf16 reference computed in fp32"
    check("logits", logits, ref_logits, truth_logits)
    assert grads.keys() == truth_grads.keys() and updates.keys() == truth_updates.keys()
    for name, truth in truth_grads.items():
        check(f"gradient of {name}", grads[name], ref_grads[name], truth)
    for name, truth in truth_updates.items():
        check(f"{name} after 3 steps", updates[name], ref_updates[name], truth)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("micro_batch_size", ["none", "4"])
def test_cuda_graph_replay_matches_eager(backend, micro_batch_size):
    """The trainer's TrainStep, eager and captured whole by GraphedStep, trains the same weights; the
    warm-up's cached blocks are released before capture, so reserved memory is not doubled."""
    from trm_fast import config as config_lib
    from trm_fast.train.step import build_train_step

    cfg = config_lib.apply_overrides(config_lib.preset("maze-cpu"), [
        "model.hidden_size=128", "model.num_heads=2", "model.puzzle_emb_len=4", "model.halt_max_steps=4",
        "model.halt_exploration_prob=0.0", "model.forward_dtype=bfloat16", "global_batch_size=8",
        f"micro_batch_size={micro_batch_size}", f"backend={backend}", "device=cuda",
    ])
    model_config = config_lib.model_config(cfg, vocab_size=6, seq_len=64, num_puzzle_identifiers=2)
    batches = [make_batch(model_config, seed=s) for s in range(6)]
    final = []
    for use_graph in (False, True):
        step = build_train_step(cfg, model_config, torch.device("cuda"))
        step.set_learning_rates(1e-3, 1e-3)
        runner = GraphedStep(step, warmup_steps=2) if use_graph else step
        metrics = [runner(batch).clone() for batch in batches]
        torch.cuda.synchronize()
        final.append((torch.stack(metrics), [p.detach().clone() for p in step.params], step.model.puzzle_emb.weights.clone()))
        if use_graph:
            assert runner.captured
    (eager_metrics, eager_params, eager_table), (graph_metrics, graph_params, graph_table) = final
    torch.testing.assert_close(graph_metrics, eager_metrics, atol=1e-3, rtol=1e-3)
    for eager_param, graph_param in zip(eager_params, graph_params):
        torch.testing.assert_close(graph_param, eager_param, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(graph_table, eager_table)
