"""trm-fast: a kernel-optimised trainer and drop-in module for Tiny Recursive Models (TRM)."""
from trm_fast._kernels_path import ensure_kernels_package

ensure_kernels_package()

__version__ = "0.1.0"
