"""Sum of two or three same-shaped streams in one pass: out = a + b (+ c), accumulated in fp32.

TRM adds its states before every recursion call (z + y + x, y + z); unfused, the three-way sum
writes and rereads an intermediate [B, S, D] tensor. Elementwise over the flat contiguous storage.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels._aot import AOTSpec


def block_config(numel: int) -> dict:
    """Elements per program and warps (shared by the launcher and the AOT specs)."""
    block = 2048 if numel >= 2048 else max(128, triton.next_power_of_2(numel))
    return {"BLOCK": block, "num_warps": 8 if block >= 2048 else 4}


@triton.jit
def add_streams_kernel(
    a_ptr, b_ptr, c_ptr, out_ptr,
    numel,
    HAS_C: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    total = tl.load(a_ptr + offsets, mask=mask).to(tl.float32) + tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    if HAS_C:
        total += tl.load(c_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=mask)


def add_streams(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel on contiguous tensors of one shape, dtype and device (checked by trm_fast.ops.add_streams)."""
    out = torch.empty_like(a)
    numel = a.numel()
    if numel == 0:
        return out
    config = block_config(numel)
    grid = (triton.cdiv(numel, config["BLOCK"]),)
    add_streams_kernel[grid](
        a, b, c if c is not None else a, out, numel,
        HAS_C=c is not None, BLOCK=config["BLOCK"], num_warps=config["num_warps"],
    )
    return out


def _aot_specs(dtype: str = "bf16", numel: int = 768 * 97 * 512) -> list[AOTSpec]:
    config = block_config(numel)
    tensor = f"*{dtype}"
    return [
        AOTSpec(
            name=f"add_streams[{dtype},inputs={2 + int(has_c)}]",
            fn=add_streams_kernel,
            signature={"a_ptr": tensor, "b_ptr": tensor, "c_ptr": tensor, "out_ptr": tensor, "numel": "i32",
                       "HAS_C": "constexpr", "BLOCK": "constexpr"},
            constexprs={"HAS_C": has_c, "BLOCK": config["BLOCK"]},
            num_warps=config["num_warps"],
        )
        for has_c in (False, True)
    ]


from trm_fast.kernels._aot import with_divisible  # noqa: E402  (the AOT specs' own helper)

# numel = B * S * 512 is a multiple of 16 at every batch size.
AOT_SPECS: list[AOTSpec] = [with_divisible(spec, "numel") for spec in _aot_specs("bf16")]
