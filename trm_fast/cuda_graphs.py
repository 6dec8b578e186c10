"""Whole-step CUDA graphs: capture forward, loss, backward, optimizer and EMA once, replay each step.

A TRM supervision step launches thousands of small kernels (T*(n+1) net calls, each a dozen ops,
plus their backward and the optimizer); at the paper's sizes launch overhead is a visible share of
the step. Everything in the step has static shapes and the ACT bookkeeping stays on the device
(no `.item()`, no data-dependent Python branches), so the whole step can be one graph.

Contract for `step_fn(inputs) -> outputs`:
- reads its per-step data only from the `inputs` tensors (copied into static buffers before replay);
- keeps all other state (model, optimizer moments, EMA, ACT carry, lr and step counters) in tensors it
  updates IN PLACE, with learning rate and step count held as device tensors, never Python numbers;
- returns tensors (metrics), read on the host only when needed;
- does no host synchronisation, and zeroes gradients IN PLACE at its start (`zero_grads_`), never
  setting them to None: backward then accumulates into the same tensors every step, so their
  addresses are the same in the warm-up steps, in the capture and in every replay. The fused
  optimizer caches a table of those addresses, and a captured graph bakes them in.
"""
from __future__ import annotations

import gc
from typing import Any, Callable, Optional

import torch

StepFn = Callable[[dict[str, torch.Tensor]], Any]


def zero_grads_(tensors) -> None:
    """Zero the existing gradients of `tensors` in place; missing ones are left to backward."""
    grads = [tensor.grad for tensor in tensors if tensor.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


class CudaGraphs:
    """The device side of GraphedStep: a side stream for warm-up, the allocator, torch.cuda.CUDAGraph."""

    def __init__(self):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; run with cuda_graphs=false on CPU")
        self.side_stream = torch.cuda.Stream()

    def warm_up(self, fn: Callable[[], Any]) -> Any:
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            outputs = fn()
        torch.cuda.current_stream().wait_stream(self.side_stream)
        return outputs

    def release_cached_blocks(self) -> None:
        """Hand the warm-up's freed blocks back to the device: the graph allocates from a private
        pool, and without this the reserved memory would hold both."""
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()

    def capture(self, fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        """Record `fn` (its kernels are not run) and return the graph and its static outputs."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn()
        return graph, outputs

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


class GraphedStep:
    """Runs `step_fn` eagerly for `warmup_steps` calls (real steps, on a side stream as capture
    requires), then captures it once and replays the graph for every later call.

    The call that triggers capture is executed by replaying the new graph, so every call is exactly
    one real step whether it ran eagerly or from the graph. `graphs` is the device side
    (CudaGraphs; the CPU tests pass a stand-in that records and replays eagerly).
    """

    def __init__(self, step_fn: StepFn, warmup_steps: int = 3, graphs: Optional[CudaGraphs] = None):
        if warmup_steps < 1:
            raise ValueError("warmup_steps must be >= 1 (cuDNN/cuBLAS pick their algorithms while warming up)")
        self.graphs = graphs if graphs is not None else CudaGraphs()
        self.step_fn = step_fn
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.graph = None
        self.static_inputs: dict[str, torch.Tensor] = {}
        self.static_outputs: Any = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Any:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup_steps:
            return self.graphs.warm_up(lambda: self.step_fn(inputs))
        if self.graph is None:
            self.static_inputs = {name: value.clone() for name, value in inputs.items()}
            self.graphs.release_cached_blocks()
            self.graph, self.static_outputs = self.graphs.capture(lambda: self.step_fn(self.static_inputs))
        for name, value in inputs.items():
            self.static_inputs[name].copy_(value, non_blocking=True)
        self.graphs.replay(self.graph)
        return self.static_outputs
