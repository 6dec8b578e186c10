"""Whole-step CUDA graphs: capture forward, loss, backward, optimizer and EMA once, replay each step.

A TRM supervision step launches thousands of small kernels (T*(n+1) net calls, each a dozen ops,
plus their backward and the optimizer); at the paper's sizes launch overhead is a visible share of
the step. Everything in the step has static shapes and the ACT bookkeeping stays on the device
(no `.item()`, no data-dependent Python branches), so the whole step can be one graph.

Contract for `step_fn(inputs) -> outputs`:
- reads its per-step data only from the `inputs` tensors (copied into static buffers before replay);
- keeps all other state (model, optimizer moments, EMA, ACT carry, lr and step counters) in tensors it
  updates IN PLACE, with learning rate and step count held as device tensors, never Python numbers;
- returns a dict of tensors (metrics), read on the host only when needed;
- does no host synchronisation, and zeroes gradients IN PLACE at its start (`zero_grads_`), never
  setting them to None: backward then accumulates into the same tensors every step, so their
  addresses are the same in the warm-up steps, in the capture and in every replay. The fused
  optimizer caches a table of those addresses, and a captured graph bakes them in.
"""
from __future__ import annotations

from typing import Callable

import torch

StepFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def zero_grads_(tensors) -> None:
    """Zero the existing gradients of `tensors` in place; missing ones are left to backward."""
    grads = [tensor.grad for tensor in tensors if tensor.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


class GraphedStep:
    """Runs `step_fn` eagerly for `warmup_steps` calls (real steps, on a side stream as capture
    requires), then captures it once and replays the graph for every later call.

    The call that triggers capture is executed by replaying the new graph, so every call is exactly
    one real step whether it ran eagerly or from the graph.
    """

    def __init__(self, step_fn: StepFn, warmup_steps: int = 3):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; run with --no-cuda-graphs on CPU")
        if warmup_steps < 1:
            raise ValueError("warmup_steps must be >= 1 (cuDNN/cuBLAS pick their algorithms while warming up)")
        self.step_fn = step_fn
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: dict[str, torch.Tensor] = {}
        self.static_outputs: dict[str, torch.Tensor] = {}
        self.side_stream = torch.cuda.Stream()

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup_steps:
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                outputs = self.step_fn(inputs)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return outputs
        if self.graph is None:
            self._capture(inputs)
        for name, value in inputs.items():
            self.static_inputs[name].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.static_outputs

    def _capture(self, inputs: dict[str, torch.Tensor]) -> None:
        self.static_inputs = {name: value.clone() for name, value in inputs.items()}
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_outputs = self.step_fn(self.static_inputs)
        self.graph = graph
