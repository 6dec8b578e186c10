"""The TRM model: the readable reference (`reference`), the fused engine (`fast`), the generic
`RecursiveReasoner`, and loading of reference-project checkpoints (`compat`)."""
from trm_fast.model.reference import TRM, ACTCarry, TRMConfig

__all__ = ["TRM", "TRMConfig", "ACTCarry"]
