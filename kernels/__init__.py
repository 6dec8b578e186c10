"""Triton kernels of trm-fast, installed as `trm_fast.kernels`.

Each module holds the @triton.jit kernels of one fused op and a launcher that takes torch tensors.
Registration, autograd and backend dispatch live in `trm_fast.ops`; the modules here know nothing
about them. Input validation lives there too: a launcher expects the inputs its public op has
checked (each launcher's docstring says what) and does not check them again. Every module lists the
compile signatures the dispatcher really uses in `AOT_SPECS` (see `_aot.py`), which tests compile
ahead of time for sm_80 and sm_90 without a GPU.
"""
