"""CUDA-graph capture of the training step, checked on CPU: GraphedStep's warm-up, capture and replay
bookkeeping drive the real TrainStep through a stand-in for the device side that records the step
instead of running it at capture (as a CUDA graph does) and replays it eagerly, checking that every
tensor the step keeps state in has kept its address (what a replayed graph relies on). The replay on
a GPU is checked in tests/model/test_fast_gpu.py."""
import pytest
import torch

from trm_fast import config as config_lib
from trm_fast.cuda_graphs import GraphedStep, zero_grads_
from trm_fast.train.step import build_train_step


class EagerGraphs:
    """CPU stand-in for CudaGraphs. Capture runs the step once to learn its outputs, then restores
    every state tensor and the RNG, so capturing has no effect (a CUDA graph only records)."""

    def __init__(self, state_tensors):
        self.state_tensors = state_tensors
        self.warm_ups = self.releases = self.captures = self.replays = 0

    def warm_up(self, fn):
        self.warm_ups += 1
        return fn()

    def release_cached_blocks(self):
        self.releases += 1

    def capture(self, fn):
        self.captures += 1
        tensors = self.state_tensors()
        saved, rng = [t.detach().clone() for t in tensors], torch.get_rng_state()
        outputs = fn()
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
        torch.set_rng_state(rng)
        # Hold the state tensors as a graph's private pool holds its memory, so a tensor the step
        # allocates later can never land on a captured address by the allocator's reuse.
        self.captured_state = self.state_tensors()
        self.addresses = [t.data_ptr() for t in self.captured_state]
        return fn, outputs

    def replay(self, graph):
        self.replays += 1
        new_outputs = graph()
        addresses = [t.data_ptr() for t in self.state_tensors()]
        if addresses != self.addresses:
            raise RuntimeError("the step reallocated state a captured graph holds by address")
        self.outputs_of_last_replay = new_outputs


def tiny_step(**overrides):
    cfg = config_lib.apply_overrides(config_lib.preset("maze-cpu"), [
        "model.hidden_size=32", "model.num_heads=2", "model.halt_max_steps=3", "backend=torch",
        # Eager and float32: exact replay comparisons, independent of which inductor kernels a cache holds.
        "model.forward_dtype=float32", "compile=false", "global_batch_size=4", *[f"{k}={v}" for k, v in overrides.items()],
    ])
    model_config = config_lib.model_config(cfg, vocab_size=6, seq_len=9, num_puzzle_identifiers=3)
    step = build_train_step(cfg, model_config, torch.device("cpu"))
    step.set_learning_rates(1e-3, 1e-3)
    return step


def batches(count):
    generator = torch.Generator().manual_seed(0)
    return [{
        "inputs": torch.randint(1, 6, (4, 9), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, 6, (4, 9), generator=generator),
        "puzzle_identifiers": torch.randint(0, 3, (4,), generator=generator, dtype=torch.int32),
    } for _ in range(count)]


@pytest.mark.parametrize("micro_batch_size", ["none", "2"])
def test_graphed_train_step_trains_exactly_like_the_eager_step(micro_batch_size):
    data = batches(6)
    eager = tiny_step(micro_batch_size=micro_batch_size)
    eager_metrics = []
    for batch in data:
        torch.manual_seed(len(eager_metrics))  # exploration draws, the same in both runs
        eager_metrics.append(eager(batch).clone())

    step = tiny_step(micro_batch_size=micro_batch_size)
    graphs = EagerGraphs(step.state_tensors)
    graphed = GraphedStep(step, warmup_steps=2, graphs=graphs)
    graphed_metrics = []
    for batch in data:
        torch.manual_seed(len(graphed_metrics))
        outputs = graphed(batch)
        graphed_metrics.append((graphs.outputs_of_last_replay if graphed.captured else outputs).clone())

    assert (graphs.warm_ups, graphs.releases, graphs.captures, graphs.replays) == (2, 1, 1, 4)
    assert graphed.static_inputs["inputs"] is not data[-1]["inputs"]  # replays read the static copies
    for got, expected in zip(graphed_metrics, eager_metrics):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for (name, value), expected in zip(step.model.state_dict().items(), eager.model.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(step.puzzle_lr, eager.puzzle_lr)


def test_replay_detects_a_step_that_reallocates_its_state():
    """The stand-in's address check can fail: a step that replaces its carry instead of writing it
    in place would break a real graph silently."""
    step = tiny_step()
    graphs = EagerGraphs(step.state_tensors)
    graphed = GraphedStep(step, warmup_steps=1, graphs=graphs)
    data = batches(2)
    graphed(data[0])
    original_copy = type(step.carries[0]).copy_

    def replace_instead_of_copy(carry, source):
        carry.y_answer = source.y_answer.clone()
        original_copy(carry, source)

    type(step.carries[0]).copy_ = replace_instead_of_copy
    try:
        with pytest.raises(RuntimeError, match="reallocated"):
            graphed(data[1])
    finally:
        type(step.carries[0]).copy_ = original_copy


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_graphed_step_refuses_to_run_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphedStep(lambda inputs: inputs)


def test_gradients_keep_their_addresses_across_steps():
    """A captured graph and the fused optimizer's pointer table rely on fixed gradient tensors:
    zero_grads_ zeroes in place and backward then accumulates into the same storage."""
    weight = torch.randn(4, 3, requires_grad=True)
    untouched = torch.randn(2, requires_grad=True)  # no gradient yet: left to backward
    addresses = []
    for step in range(3):
        zero_grads_([weight, untouched])
        (weight * (step + 1)).sum().backward()
        addresses.append(weight.grad.data_ptr())
        torch.testing.assert_close(weight.grad, torch.full_like(weight, step + 1.0))
    assert len(set(addresses)) == 1
    assert untouched.grad is None
