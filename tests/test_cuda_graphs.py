"""CUDA-graph capture: the CPU side of the contract (the replay itself is checked in tests/model/test_fast_gpu.py)."""
import pytest
import torch

from trm_fast.cuda_graphs import GraphedStep


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_graphed_step_refuses_to_run_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphedStep(lambda inputs: inputs, parameters=[])
