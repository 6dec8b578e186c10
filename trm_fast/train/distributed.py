"""Data parallelism: one process per device, started by torchrun (or directly for tests).

Every rank holds the whole model and a slice of the global batch. After backward the gradients are
summed over ranks in one flat all-reduce (the loss is already divided by the GLOBAL batch size, so a
sum is the global gradient), every rank then applies the same optimizer step. NCCL on CUDA, gloo
on CPU. One process without torchrun skips all of it.
"""
from __future__ import annotations

import datetime
import io
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from trm_fast.config import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def init_distributed(requested_device: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK) or run alone."""
    device = pick_device(requested_device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        initialised_here = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        initialised_here=initialised_here,
    )


def shutdown(context: DistContext) -> None:
    if context.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, context: DistContext) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not context.enabled:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def all_reduce_gradients(params: list[torch.Tensor], context: DistContext) -> None:
    """Sum the gradients of `params` over ranks with one collective (absent grads count as zero)."""
    if not context.enabled:
        return
    grads = []
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def gather_rows(ids: torch.Tensor, rows: torch.Tensor, context: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (ids [B], rows [B, D]) concatenated in rank order (equal B on every rank)."""
    if not context.enabled:
        return ids, rows
    all_ids = [torch.empty_like(ids) for _ in range(context.world_size)]
    all_rows = [torch.empty_like(rows) for _ in range(context.world_size)]
    dist.all_gather(all_ids, ids.contiguous())
    dist.all_gather(all_rows, rows.contiguous())
    return torch.cat(all_ids), torch.cat(all_rows)


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank if `flag` is True on any rank (a host sync; call it rarely)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj: Any, context: DistContext) -> Optional[list]:
    """Every rank's `obj` (tensors and plain containers) on rank 0, None elsewhere."""
    if not context.enabled:
        return [obj]
    # Sent as torch.save bytes: gather_object's own pickling of tensors is not reliable across versions.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object(buffer.getvalue(), gathered, dst=0)
    if not context.is_main:
        return None
    return [torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True) for blob in gathered]


def broadcast_object(obj: Any, context: DistContext) -> Any:
    if not context.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()
