"""GPU checks of the fast engine: bf16 against the reference, every backend, and CUDA-graph replay."""
import pytest
import torch

from trm_fast.cuda_graphs import GraphedStep, zero_grads_
from trm_fast.model.fast import FastTRM
from trm_fast.model.reference import TRM, TRMConfig
from trm_fast.ops import act_loss_head, adam_atan2_ema_step_

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


def build_training_step(model, batch_size):
    params = [p for p in model.parameters()]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    ema = [p.detach().clone() for p in params]
    step_count = torch.zeros((), device="cuda")
    lr = torch.full((), 1e-3, device="cuda")
    state = {}

    def step(inputs):
        zero_grads_(params)
        carry, outputs = model(state["carry"], inputs)
        losses = act_loss_head(outputs["logits"], carry.current_data["labels"], outputs["q_halt_logits"])
        loss = (losses["lm_loss"].sum() + 0.5 * losses["q_halt_loss"].sum()) / batch_size
        loss.backward()
        step_count.add_(1)
        adam_atan2_ema_step_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, ema, step=step_count, lr=lr,
                             beta1=0.9, beta2=0.95, weight_decay=0.1, ema_decay=0.999)
        state["carry"].copy_(carry)
        return {"loss": loss.detach()}

    return step, state, params


def test_cuda_graph_replay_matches_eager():
    config = gpu_config("attention")
    batches = [make_batch(config, seed=s) for s in range(6)]
    final = []
    for use_graph in (False, True):
        torch.manual_seed(0)
        model = FastTRM(config).cuda().train()
        step, state, params = build_training_step(model, batch_size=8)
        state["carry"] = model.initial_carry(batches[0])
        runner = GraphedStep(step, warmup_steps=2) if use_graph else step
        losses = [runner(batch)["loss"].clone() for batch in batches]
        torch.cuda.synchronize()
        final.append((torch.stack(losses), [p.detach().clone() for p in params]))
        if use_graph:
            assert runner.captured
    (eager_losses, eager_params), (graph_losses, graph_params) = final
    torch.testing.assert_close(graph_losses, eager_losses, atol=1e-3, rtol=1e-3)
    for eager_param, graph_param in zip(eager_params, graph_params):
        torch.testing.assert_close(graph_param, eager_param, atol=1e-3, rtol=1e-3)
