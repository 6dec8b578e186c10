"""Ahead-of-time compilation of the Triton kernels for real GPU targets, without a GPU.

Each kernel module (named by an op entry of trm_fast.ops.registry) declares `AOT_SPECS`: the
signatures (dtypes, constexpr block sizes, warps) that its launcher really uses, and which arguments
are multiples of 16 at the real launch shapes.
`compile_spec` compiles one for a chosen architecture through Triton's own compiler (ptxas ships
with Triton) with the specialisation the JIT gives those launches, which catches what the
interpreter lets through: illegal tile shapes, shared-memory overflow, unsupported dtypes.
`launch_problems` then checks what only a launch would reveal (shared memory, registers x threads,
register spills). `python -m trm_fast.kernels._aot` prints the table kept in docs/kernels.md.

Specialisation. At run time the JIT compiles one variant per call signature: it marks a pointer
whose address, and an integer whose value, is a multiple of 16 with `tt.divisibility = 16` (and
turns an integer equal to 1 into a constant, which no spec's launches pass). Those hints decide vectorised loads, async copies
(cp.async) and software pipelining, hence registers and shared memory: compiling without them
describes a kernel that never runs. `AOTSpec.divisible_by_16` names the arguments that carry the
hint at the real launches (default: every pointer, since PyTorch allocations are 16-byte aligned);
`with_divisible` adds the integer arguments (strides, widths) that are multiples of 16 there.

Triton's interpreter (TRITON_INTERPRET=1) replaces @triton.jit functions at import time, so
compilation must run in a process where it is off; the test drives this module in a subprocess.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable


@dataclass(frozen=True)
class AOTSpec:
    name: str  # human-readable, unique: "<module>.<kernel>[variant]"
    fn: Callable  # the @triton.jit function
    signature: dict[str, str]  # argument name -> "*bf16", "i32", "fp32", "constexpr", ...
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    # Arguments that are multiples of 16 at the real launches (pointers: the address; integers: the
    # value), which the JIT marks tt.divisibility=16. None: every pointer argument and no integer.
    divisible_by_16: tuple[str, ...] | None = None
    # Register spills fail the launch check on sm_<arch> unless this maps arch -> the reason they are
    # accepted there (see with_allowed_spills).
    allow_spills: dict[int, str] = field(default_factory=dict)


def with_divisible(spec: AOTSpec, *int_args: str) -> AOTSpec:
    """`spec` with the integer arguments `int_args` marked divisible by 16, besides its pointers.

    For the AOT_SPECS lists: name the integer arguments whose value is a multiple of 16 at the
    launches the spec stands for (e.g. a hidden size of 512, the strides of head_dim-64 tensors).
    """
    for name in int_args:
        kind = spec.signature.get(name)
        if kind is None or not _is_integer(kind):
            raise ValueError(f"{spec.name}: {name!r} is not an integer argument of {spec.fn.__name__} "
                             f"(signature type {kind!r})")
    pointers = tuple(name for name, kind in spec.signature.items() if kind.startswith("*"))
    base = pointers if spec.divisible_by_16 is None else spec.divisible_by_16
    return replace(spec, divisible_by_16=base + tuple(name for name in int_args if name not in base))


def with_allowed_spills(spec: AOTSpec, arch: int, reason: str) -> AOTSpec:
    """`spec` with register spills on sm_<arch> accepted, for `reason` (shown in the table)."""
    if not reason.strip():
        raise ValueError(f"{spec.name}: accepting spills on sm_{arch} needs a reason")
    return replace(spec, allow_spills={**spec.allow_spills, arch: reason})


def _is_integer(kind: str) -> bool:  # the JIT never marks booleans (i1 / u1) or floats
    return re.fullmatch(r"[iu](8|16|32|64)", kind) is not None


def all_specs() -> list[AOTSpec]:
    """The AOT_SPECS of every kernels module an op of trm_fast.ops.registry names, by module name."""
    from trm_fast.ops.registry import OPS

    specs: list[AOTSpec] = []
    for name in sorted({entry.kernels for entry in OPS.values()}):
        specs.extend(getattr(importlib.import_module(f"trm_fast.kernels.{name}"), "AOT_SPECS", []))
    return specs


# Per-block limits a launch must respect (CUDA occupancy tables): opt-in shared memory in bytes,
# 32-bit registers (allocated per warp in units of 256), threads. Compiling without a GPU never
# checks them, so they are checked here.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
MAX_REGISTERS_PER_BLOCK = 65536
MAX_REGISTERS_PER_THREAD = 255
REGISTER_ALLOCATION_UNIT = 256  # registers per warp are rounded up to a multiple of this
MAX_THREADS_PER_BLOCK = 1024


# ----------------------------------------------------------------------------- specialisation
def divisible_arguments(spec: AOTSpec) -> tuple[str, ...]:
    """The arguments compiled with tt.divisibility=16, checked against the signature and the JIT."""
    params = {param.name: param for param in getattr(spec.fn, "params", [])}

    def unspecialised(name: str) -> bool:  # the JIT never marks these, whatever their value
        param = params.get(name)
        return param is not None and bool(getattr(param, "do_not_specialize", False)
                                           or getattr(param, "do_not_specialize_on_alignment", False))

    if spec.divisible_by_16 is None:
        return tuple(name for name, kind in spec.signature.items() if kind.startswith("*") and not unspecialised(name))
    for name in spec.divisible_by_16:
        kind = spec.signature.get(name)
        if kind is None or not (kind.startswith("*") or _is_integer(kind)):
            raise ValueError(f"{spec.name}: divisible_by_16 names {name!r}, which is not a pointer or integer "
                             f"argument (signature type {kind!r})")
        if unspecialised(name):
            raise ValueError(f"{spec.name}: {name!r} is in do_not_specialize(_on_alignment), so the JIT never "
                             "marks it divisible by 16")
    return tuple(spec.divisible_by_16)


def _ast_source(spec: AOTSpec, target):
    """Triton's ASTSource for `spec`, with the divisibility attributes in the installed version's form."""
    import triton
    from triton.compiler import ASTSource

    arg_names = list(spec.fn.arg_names)
    if list(spec.signature) != arg_names:
        raise ValueError(f"{spec.name}: signature {list(spec.signature)} does not list the arguments of "
                         f"{spec.fn.__name__} {arg_names} in order")
    divisible = set(divisible_arguments(spec))
    parameters = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in parameters:
        # Triton >= 3.3: attrs maps each argument's path (its index) to [[attribute, value], ...], as
        # JITFunction._pack_args builds it with backend.parse_attr("D") for a divisible argument.
        try:
            from triton.compiler.compiler import make_backend

            parse_attr = make_backend(target).parse_attr
        except (ImportError, AttributeError):
            parse_attr = None
        attrs = {}
        for index, name in enumerate(arg_names):
            if spec.signature[name] == "constexpr":
                continue
            flag = "D" if name in divisible else ""
            attrs[(index,)] = parse_attr(flag) if parse_attr else ([["tt.divisibility", 16]] if flag else [])
        return ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    if "constants" in parameters:
        # Triton 3.2: an AttrsDescriptor of argument indices; the signature holds the runtime
        # arguments only and the constexprs go to `constants` (as the JIT passes them).
        try:
            from triton.backends.compiler import AttrsDescriptor

            from_hints = AttrsDescriptor.from_hints
        except (ImportError, AttributeError):
            from_hints = None
        if from_hints is not None:
            attrs = from_hints({index: 16 for index, name in enumerate(arg_names) if name in divisible})
            signature = {name: kind for name, kind in spec.signature.items() if kind != "constexpr"}
            return ASTSource(fn=spec.fn, signature=signature, constants=dict(spec.constexprs), attrs=attrs)
    raise RuntimeError(
        f"trm_fast.kernels._aot cannot pass argument specialisations to Triton {triton.__version__}: "
        f"ASTSource{inspect.signature(ASTSource.__init__)} is neither the Triton 3.3+ form (constexprs=, attrs "
        "dict of tt.divisibility lists) nor the 3.2 form (constants=, AttrsDescriptor.from_hints). Compiling "
        "without them would describe kernels that never run: teach _ast_source this version."
    )


# ----------------------------------------------------------------------------- compilation
_PTXAS_LOG_FILE = "trm_fast_ptxas_log.txt"  # kept beside the kernel in Triton's cache
_ptxas_logs: dict[str, str] = {}  # compiled.hash -> ptxas -v output, for this process


def compile_spec(spec: AOTSpec, arch: int = 90):
    """Compile `spec` for sm_<arch> as the JIT would at its real launches; returns Triton's CompiledKernel.

    ptxas's own report (registers, stack frame, spill bytes) is kept for `resource_usage`: Triton
    prints it when asked (knobs.nvidia.dump_ptxas_log) and only when ptxas runs, so it is also
    stored in the kernel's cache entry, and a cached kernel without it is compiled once more.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    source = _ast_source(spec, target)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    knobs = _knobs()
    if knobs is None:  # no way to read ptxas's report: resource_usage falls back to cuobjdump
        return triton.compile(source, target=target, options=options)
    compiled, log = _compile_with_ptxas_log(knobs, source, target, options, always_compile=False)
    if not _has_ptxas_info(log):  # a cache hit: ptxas did not run
        log = _read_cached_log(compiled.hash)
        if log is None:
            compiled, log = _compile_with_ptxas_log(knobs, source, target, options, always_compile=True)
            _write_cached_log(compiled.hash, log)
    else:
        _write_cached_log(compiled.hash, log)
    _ptxas_logs[compiled.hash] = log
    return compiled


def _knobs():
    try:
        from triton import knobs
    except ImportError:
        return None
    groups = (getattr(knobs, "nvidia", None), getattr(knobs, "compilation", None))
    if all(hasattr(group, "scope") for group in groups) and hasattr(groups[0], "dump_ptxas_log") \
            and hasattr(groups[1], "always_compile"):
        return knobs
    return None


def _compile_with_ptxas_log(knobs, source, target, options, always_compile: bool):
    import triton

    captured = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(captured):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = always_compile
        compiled = triton.compile(source, target=target, options=options)
    log = captured.getvalue()
    other = [line for line in log.splitlines()
             if line.strip() and "ptxas" not in line and not re.match(r"\s+\d+ bytes stack frame", line)]
    if other:  # anything else Triton printed still shows, away from the table on stdout
        print("\n".join(other), file=sys.stderr)
    return compiled, log


def _has_ptxas_info(log: str | None) -> bool:
    return bool(log) and re.search(r"Used \d+ registers", log) is not None


def _read_cached_log(key: str) -> str | None:
    if key in _ptxas_logs:
        return _ptxas_logs[key]
    try:
        from triton.runtime.cache import get_cache_manager

        path = get_cache_manager(key).get_file(_PTXAS_LOG_FILE)
        if path is None:
            return None
        with open(path) as handle:
            log = handle.read()
    except Exception:
        return None
    return log if _has_ptxas_info(log) else None


def _write_cached_log(key: str, log: str) -> None:
    if not _has_ptxas_info(log):
        return
    try:
        from triton.runtime.cache import get_cache_manager

        get_cache_manager(key).put(log, _PTXAS_LOG_FILE, binary=False)
    except Exception:  # an unwritable cache only costs a recompile next time
        pass


# ----------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class ResourceUsage:
    """What one compiled kernel needs per block; None where it could not be read."""
    shared: int  # bytes of shared memory (Triton's metadata)
    registers: int | None  # per thread
    stack: int | None  # bytes of stack frame per thread (where ptxas puts spilled registers)
    spill_stores: int | None  # bytes of spill stores (ptxas -v)
    spill_loads: int | None  # bytes of spill loads (ptxas -v)

    @property
    def spills(self) -> int | None:
        if self.spill_stores is None or self.spill_loads is None:
            return None
        return self.spill_stores + self.spill_loads


def parse_ptxas_log(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from `ptxas -v` output; {} where absent."""
    usage: dict[str, int] = {}
    registers = re.findall(r"Used (\d+) registers", log)
    if registers:
        usage["registers"] = max(int(value) for value in registers)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if frames:
        usage["stack"] = max(int(frame[0]) for frame in frames)
        usage["spill_stores"] = sum(int(frame[1]) for frame in frames)
        usage["spill_loads"] = sum(int(frame[2]) for frame in frames)
    return usage


def resource_usage(compiled) -> ResourceUsage:
    """Shared memory, registers, stack frame and spill bytes of a kernel compiled by `compile_spec`.

    From ptxas's report when compile_spec could record it; otherwise registers and stack frame from
    `cuobjdump --dump-resource-usage` (shipped with Triton next to ptxas) and spills unknown.
    """
    usage = parse_ptxas_log(_read_cached_log(compiled.hash) or "")
    if "registers" not in usage or "stack" not in usage:
        for key, value in _cuobjdump_usage(compiled).items():
            usage.setdefault(key, value)
    return ResourceUsage(shared=compiled.metadata.shared, registers=usage.get("registers"),
                         stack=usage.get("stack"), spill_stores=usage.get("spill_stores"),
                         spill_loads=usage.get("spill_loads"))


def _cuobjdump_usage(compiled) -> dict[str, int]:
    import os
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
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", report)
    return {"registers": int(match[1]), "stack": int(match[2])} if match else {}


def launch_problems(spec: AOTSpec, arch: int, usage: ResourceUsage) -> list[str]:
    """Reasons the kernel could not launch on sm_<arch>, or would spill; [] when it is fine.

    Unknown figures are problems too: a check that cannot read what it checks must not pass.
    """
    problems = []
    threads = spec.num_warps * 32
    if threads > MAX_THREADS_PER_BLOCK:
        problems.append(f"{threads} threads > {MAX_THREADS_PER_BLOCK}")
    shared_limit = MAX_SHARED_BYTES.get(arch)
    if shared_limit is None:
        problems.append(f"no shared-memory limit known for sm_{arch} (add it to MAX_SHARED_BYTES)")
    elif usage.shared > shared_limit:
        problems.append(f"shared memory {usage.shared} B > {shared_limit} B")
    if usage.registers is None:
        problems.append("register count unavailable (neither ptxas's report nor cuobjdump)")
    else:
        per_warp = -(-usage.registers * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
        if usage.registers > MAX_REGISTERS_PER_THREAD:
            problems.append(f"{usage.registers} registers per thread > {MAX_REGISTERS_PER_THREAD}")
        if per_warp * spec.num_warps > MAX_REGISTERS_PER_BLOCK:
            problems.append(f"{usage.registers} registers x {threads} threads ({per_warp} per warp x "
                            f"{spec.num_warps} warps) > {MAX_REGISTERS_PER_BLOCK}")
    if arch not in spec.allow_spills:
        if usage.spills is not None:
            if usage.spills > 0:
                problems.append(f"register spills: {usage.spill_stores} B stores, {usage.spill_loads} B loads "
                                f"(with_allowed_spills(spec, {arch}, reason) accepts them)")
        elif usage.stack is None:
            problems.append("spill bytes unavailable (neither ptxas's report nor cuobjdump)")
        elif usage.stack > 0:  # a Triton kernel's stack frame only holds spilled registers
            problems.append(f"stack frame {usage.stack} B, likely register spills (spill bytes unavailable)")
    return problems


# ----------------------------------------------------------------------------- table
def _cell(value) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton kernel for sm_XX and print a table.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    specs = all_specs()
    print("| kernel | arch | warps | stages | shared memory (bytes) | registers | stack (bytes) "
          "| spill stores / loads (bytes) |")
    print("|---|---|---|---|---|---|---|---|")
    failures = 0
    for spec in specs:
        for arch in args.arch:
            try:
                compiled = compile_spec(spec, arch)
                meta = compiled.metadata
                usage = resource_usage(compiled)
                problems = launch_problems(spec, arch, usage)
                if problems:
                    raise RuntimeError("; ".join(problems))
                spills = f"{_cell(usage.spill_stores)} / {_cell(usage.spill_loads)}"
                if arch in spec.allow_spills and usage.spills != 0:
                    spills += f" (accepted: {spec.allow_spills[arch]})"
                print(f"| {spec.name} | sm_{arch} | {meta.num_warps} | {meta.num_stages} | {usage.shared} "
                      f"| {_cell(usage.registers)} | {_cell(usage.stack)} | {spills} |")
            except Exception as error:  # report every failure, not just the first
                failures += 1
                lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
                # Triton's CompilationError starts with the source position and ends with the cause.
                message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                message = message[:300].replace("|", "/")
                print(f"| {spec.name} | sm_{arch} | FAILED: {type(error).__name__}: {message} | | | | | |")
    if not specs:
        print("no AOT specs found")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
