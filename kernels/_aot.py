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


# Per-block limits a launch must respect (CUDA occupancy tables): opt-in shared memory in bytes and
# 32-bit registers. Compiling without a GPU never checks them, so they are checked here.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
MAX_REGISTERS_PER_BLOCK = 65536


def compile_spec(spec: AOTSpec, arch: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(compiled) -> dict[str, int]:
    """Registers per thread, stack and local (spill) bytes read from the cubin; {} if unavailable.

    The compiled kernel only learns its register count when loaded on a GPU, so ask cuobjdump
    (shipped with Triton next to ptxas) instead.
    """
    import os
    import re
    import subprocess
    import tempfile

    try:
        import triton.backends.nvidia as nvidia_backend

        tool = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "cuobjdump")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "kernel.cubin")
            with open(path, "wb") as handle:
                handle.write(compiled.asm["cubin"])
            report = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                                    timeout=60).stdout
    except Exception:
        return {}
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", report)
    if not match:
        return {}
    return {"registers": int(match[1]), "stack": int(match[2]), "local": int(match[3])}


def launch_problems(spec: AOTSpec, compiled, arch: int, usage: dict[str, int]) -> list[str]:
    """Reasons the kernel could not launch on sm_<arch>, which only a real launch would reveal."""
    problems = []
    shared_limit = MAX_SHARED_BYTES.get(arch)
    if shared_limit is not None and compiled.metadata.shared > shared_limit:
        problems.append(f"shared memory {compiled.metadata.shared} B > {shared_limit} B")
    registers = usage.get("registers")
    if registers is not None and registers * spec.num_warps * 32 > MAX_REGISTERS_PER_BLOCK:
        problems.append(f"{registers} registers x {spec.num_warps * 32} threads > {MAX_REGISTERS_PER_BLOCK}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton kernel for sm_XX and print a table.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    specs = all_specs()
    print("| kernel | arch | warps | stages | shared memory (bytes) | registers | spill (bytes) |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for spec in specs:
        for arch in args.arch:
            try:
                compiled = compile_spec(spec, arch)
                meta = compiled.metadata
                usage = resource_usage(compiled)
                problems = launch_problems(spec, compiled, arch, usage)
                if problems:
                    raise RuntimeError("; ".join(problems))
                registers = usage.get("registers", "-")
                spill = usage.get("local", "-")
                print(f"| {spec.name} | sm_{arch} | {meta.num_warps} | {meta.num_stages} | {meta.shared} | {registers} | {spill} |")
            except Exception as error:  # report every failure, not just the first
                failures += 1
                lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
                # Triton's CompilationError starts with the source position and ends with the cause.
                message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                message = message[:200].replace("|", "/")
                print(f"| {spec.name} | sm_{arch} | FAILED: {type(error).__name__}: {message} | | | | |")
    if not specs:
        print("no AOT specs found")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
