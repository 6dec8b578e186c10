"""Ahead-of-time compilation of the Triton kernels for real GPU targets, without a GPU.

Each kernel module declares `AOT_SPECS`: the signatures (dtypes, constexpr block sizes, warps) that
its launcher really uses. `compile_spec` compiles one for a chosen architecture through Triton's
own compiler (ptxas ships with Triton), which catches what the interpreter lets through: illegal
tile shapes, shared-memory overflow, unsupported dtypes. `python -m trm_fast.kernels._aot` prints
the table of warps and shared memory kept in docs/kernels.md.

Triton's interpreter (TRITON_INTERPRET=1) replaces @triton.jit functions at import time, so
compilation must run in a process where it is off; the test drives this module in a subprocess.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class AOTSpec:
    name: str  # human-readable, unique: "<module>.<kernel>[variant]"
    fn: Callable  # the @triton.jit function
    signature: dict[str, str]  # argument name -> "*bf16", "i32", "fp32", "constexpr", ...
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3


def all_specs() -> list[AOTSpec]:
    import trm_fast.kernels as package

    specs: list[AOTSpec] = []
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"trm_fast.kernels.{module_info.name}")
        specs.extend(getattr(module, "AOT_SPECS", []))
    return specs


def compile_spec(spec: AOTSpec, arch: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton kernel for sm_XX and print a table.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    print("| kernel | arch | warps | stages | shared memory (bytes) | registers |")
    print("|---|---|---|---|---|---|")
    failures = 0
    for spec in all_specs():
        for arch in args.arch:
            try:
                compiled = compile_spec(spec, arch)
                meta = compiled.metadata
                registers = getattr(compiled, "n_regs", None) or "-"
                print(f"| {spec.name} | sm_{arch} | {meta.num_warps} | {meta.num_stages} | {meta.shared} | {registers} |")
            except Exception as error:  # report every failure, not just the first
                failures += 1
                print(f"| {spec.name} | sm_{arch} | FAILED: {type(error).__name__}: {str(error).splitlines()[0][:120]} | | | |")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
