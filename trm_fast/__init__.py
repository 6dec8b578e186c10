"""trm-fast: a kernel-optimised trainer and drop-in module for Tiny Recursive Models (TRM)."""
from trm_fast._kernels_path import ensure_kernels_package

ensure_kernels_package()

__version__ = "0.1.0"

from trm_fast.model.fast import FastTRM  # noqa: E402
from trm_fast.model.reasoner import ReasonerState, RecursiveReasoner  # noqa: E402
from trm_fast.model.reference import TRM, TRMConfig  # noqa: E402
from trm_fast.solver import Solution, Solver, load  # noqa: E402

__all__ = ["FastTRM", "ReasonerState", "RecursiveReasoner", "Solution", "Solver", "TRM", "TRMConfig", "__version__",
           "load"]
