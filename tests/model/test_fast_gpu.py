"""GPU checks of the fast engine: bf16 against the reference, every backend, and CUDA-graph replay."""
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


@pytest.mark.parametrize("variant", ["attention", "mlp_t"])
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_bf16_fast_engine_tracks_reference(variant, backend):
    config = gpu_config(variant)
    torch.manual_seed(0)
    reference = TRM(config).cuda().train()
    fast = FastTRM(config, backend=backend).cuda().train()
    fast.load_state_dict(reference.state_dict())
    batch = make_batch(config)
    results = []
    for model in (reference, fast):
        carry = model.initial_carry(batch)
        carry, outputs = model(carry, batch)
        outputs["logits"].float().square().mean().backward()
        results.append((outputs["logits"].float(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}))
    (ref_logits, ref_grads), (fast_logits, fast_grads) = results
    # bf16 keeps 8 mantissa bits; ~10 chained post-norm layers keep errors at a few bf16 ulps of the
    # tensor's scale, so compare relative to the largest magnitude.
    scale = ref_logits.abs().max()
    assert (fast_logits - ref_logits).abs().max() <= 0.05 * scale
    for name, grad in ref_grads.items():
        assert (fast_grads[name] - grad).abs().max() <= 0.1 * grad.abs().max() + 1e-6, name


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
