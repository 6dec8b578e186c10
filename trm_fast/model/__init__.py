"""The TRM model: the readable reference (`reference`), the fused engine (`fast`), the generic
`RecursiveReasoner`, and loading of reference-project checkpoints (`compat`)."""
from typing import Optional

from trm_fast.model.fast import FastTRM
from trm_fast.model.reference import TRM, ACTCarry, PuzzleRows, TRMConfig

ENGINES = ("fast", "reference")


def make_model(config: TRMConfig, engine: str = "fast", backend: Optional[str] = None, **fast_options) -> TRM:
    """The engine that runs `config`; both share parameters and checkpoints. `backend` picks the fused
    ops' implementation ("auto"/None = best available); `fast_options` (recompute, fused_linear) are
    options of the fast engine."""
    if engine == "reference":
        return TRM(config)
    if engine != "fast":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return FastTRM(config, backend=None if backend in (None, "auto") else backend, **fast_options)


__all__ = ["ENGINES", "TRM", "TRMConfig", "ACTCarry", "FastTRM", "PuzzleRows", "make_model"]
