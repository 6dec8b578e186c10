"""CUDA-graph capture: the CPU side of the contract (the replay itself is checked in tests/model/test_fast_gpu.py)."""
import pytest
import torch

from trm_fast.cuda_graphs import GraphedStep, zero_grads_


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
