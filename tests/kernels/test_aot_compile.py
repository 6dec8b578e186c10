"""Every Triton kernel compiles for sm_80 and sm_90 with the signatures its launcher really uses.

The specs come from each kernels module's AOT_SPECS (discovered automatically). Compilation runs in
a subprocess with TRITON_INTERPRET=0: the interpreter, which conftest.py switches on for CPU-only
machines, replaces @triton.jit functions at import and they could not be compiled in this process.
The launch check (shared memory, registers x threads, spills) is also tested on made-up resource
records, so that it is proven able to fail without compiling anything.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trm_fast.kernels._aot import (
    MAX_REGISTERS_PER_BLOCK,
    MAX_SHARED_BYTES,
    AOTSpec,
    ResourceUsage,
    all_specs,
    divisible_arguments,
    launch_problems,
    parse_ptxas_log,
    with_allowed_spills,
    with_divisible,
)
from trm_fast.ops.registry import OPS

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCHES = ("sm_80", "sm_90")
# Kernels the ops depend on (trm_fast.ops.registry); an empty or truncated spec list must fail the test.
REQUIRED_PREFIXES = tuple(prefix for entry in OPS.values() for prefix in entry.aot_specs)


def _compile_env() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def aot_table():
    result = subprocess.run(
        [sys.executable, "-m", "trm_fast.kernels._aot", "--arch", "80", "90"],
        cwd=REPO_ROOT, env=_compile_env(), capture_output=True, text=True, timeout=900,
    )
    rows = []
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("sm_"):
            rows.append(cells)
    return result, rows


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(aot_table):
    result, rows = aot_table
    failed = sorted({f"{cells[0]} ({cells[1]}): {cells[2]}" for cells in rows if cells[2].startswith("FAILED")})
    assert not failed, "kernels that failed to compile:\n" + "\n".join(failed)
    assert result.returncode == 0, f"_aot exited with {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    compiled = {}
    for name, arch, *_ in rows:
        compiled.setdefault(name, set()).add(arch)
    missing_arch = sorted(name for name, arches in compiled.items() if arches != set(ARCHES))
    assert not missing_arch, f"not compiled for both {ARCHES}: {missing_arch}"
    # Registers, stack frame and spill bytes were read, not left unknown (Triton 3.2 cannot show ptxas's
    # report, so there only cuobjdump's registers and stack frame).
    from trm_fast.kernels._aot import _knobs

    spills = r"\d+ / \d+" if _knobs() is not None else r"(\d+|-) / (\d+|-)"
    unread = sorted(f"{cells[0]} ({cells[1]}): {cells[5:8]}" for cells in rows
                    if not (cells[5].isdigit() and cells[6].isdigit() and re.match(spills, cells[7])))
    assert not unread, "resources not read:\n" + "\n".join(unread)


@pytest.mark.slow
def test_specs_cover_every_kernels_module(aot_table):
    _, rows = aot_table
    names = {cells[0] for cells in rows}
    for prefix in REQUIRED_PREFIXES:
        assert any(name.startswith(prefix) for name in names), f"no AOT spec named {prefix}*"
    kernel_modules = sorted(
        path.stem for path in (REPO_ROOT / "kernels").glob("*.py") if not path.stem.startswith("_")
    )
    assert kernel_modules == sorted({entry.kernels for entry in OPS.values()}), "a kernels module without an op entry"
    for module in kernel_modules:
        assert any(name.split(".")[0].split("[")[0] == module for name in names), (
            f"kernels/{module}.py declares no AOT_SPECS (or its names do not start with '{module}')"
        )


@pytest.mark.slow
def test_attention_is_compiled_with_the_jits_specialisation(aot_table):
    """The compiled attention forward is the one the JIT runs: with its pointers and strides known to be
    multiples of 16, K/V tiles are fetched with cp.async (none without the hints) and q with 16-byte loads.
    Runs after the table, so the kernel comes from Triton's cache."""
    script = (
        "from trm_fast.kernels._aot import all_specs, compile_spec\n"
        "spec = next(s for s in all_specs() if s.name == 'attention.attention_fwd_kernel[bf16,S=97,hd=64]')\n"
        "ptx = compile_spec(spec, 80).asm['ptx']\n"
        "print('cp.async', ptx.count('cp.async.cg') + ptx.count('cp.async.ca'), 'ld.global.v4', ptx.count('ld.global.v4'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=_compile_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"(cp\.async|ld\.global\.v4) (\d+)", result.stdout))
    assert int(counts["cp.async"]) > 0, result.stdout
    assert int(counts["ld.global.v4"]) > 0, result.stdout


def _spec(num_warps: int = 4, **overrides) -> AOTSpec:
    def kernel(x_ptr, n, scale, BLOCK):  # stands in for a @triton.jit function: only the spec is checked
        pass

    signature = {"x_ptr": "*bf16", "n": "i32", "scale": "fp32", "BLOCK": "constexpr"}
    return AOTSpec("fake.kernel[test]", kernel, signature, {"BLOCK": 128}, num_warps=num_warps, **overrides)


def _usage(shared=0, registers=32, stack=0, spill_stores=0, spill_loads=0) -> ResourceUsage:
    return ResourceUsage(shared=shared, registers=registers, stack=stack, spill_stores=spill_stores,
                         spill_loads=spill_loads)


def test_launch_check_passes_a_kernel_within_the_limits():
    # 128 registers x 512 threads fills the 65536 registers exactly; shared memory at the limit.
    assert launch_problems(_spec(num_warps=16), 90, _usage(shared=MAX_SHARED_BYTES[90], registers=128)) == []


def test_launch_check_fails_a_kernel_over_the_limits():
    usage = _usage(shared=MAX_SHARED_BYTES[80] + 1, registers=255, stack=64, spill_stores=40, spill_loads=24)
    problems = launch_problems(_spec(num_warps=16), 80, usage)
    assert len(problems) == 3, problems
    shared, registers, spills = problems
    assert f"shared memory {MAX_SHARED_BYTES[80] + 1} B > {MAX_SHARED_BYTES[80]} B" in shared
    assert "255 registers x 512 threads" in registers and str(MAX_REGISTERS_PER_BLOCK) in registers
    assert "spills: 40 B stores, 24 B loads" in spills
    # One over each limit at a time fails alone.
    assert len(launch_problems(_spec(num_warps=16), 90, _usage(registers=129))) == 1
    assert launch_problems(_spec(num_warps=32), 90, _usage(registers=64)) == []  # 1024 threads, 65536 registers
    assert len(launch_problems(_spec(num_warps=32), 90, _usage(registers=72))) == 1
    assert len(launch_problems(_spec(num_warps=64), 90, _usage(registers=16))) == 1  # 2048 threads > 1024
    assert len(launch_problems(_spec(), 90, _usage(spill_stores=4, spill_loads=0))) == 1


def test_launch_check_fails_when_it_cannot_read_what_it_checks():
    unknown = ResourceUsage(shared=0, registers=None, stack=None, spill_stores=None, spill_loads=None)
    problems = launch_problems(_spec(), 90, unknown)
    assert any("register count unavailable" in problem for problem in problems), problems
    assert any("spill bytes unavailable" in problem for problem in problems), problems
    # Spill bytes unknown (cuobjdump fallback): a stack frame means spills in a Triton kernel.
    stack_only = ResourceUsage(shared=0, registers=40, stack=16, spill_stores=None, spill_loads=None)
    assert any("stack frame 16 B" in problem for problem in launch_problems(_spec(), 90, stack_only))
    assert any("no shared-memory limit known for sm_75" in problem
               for problem in launch_problems(_spec(), 75, _usage()))


def test_spills_pass_only_where_a_spec_gives_the_reason():
    spec = with_allowed_spills(_spec(), 80, "measured, to retune")
    spilling = _usage(stack=16, spill_stores=8, spill_loads=8)
    assert launch_problems(spec, 80, spilling) == []
    assert len(launch_problems(spec, 90, spilling)) == 1
    with pytest.raises(ValueError, match="needs a reason"):
        with_allowed_spills(_spec(), 80, " ")


def test_ptxas_report_is_parsed():
    log = (
        "ptxas info    : 11 bytes gmem\n"
        "ptxas info    : Compiling entry function 'inject_linear_kernel' for 'sm_80'\n"
        "ptxas info    : Function properties for inject_linear_kernel\n"
        "    96 bytes stack frame, 116 bytes spill stores, 96 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 96 bytes cumulative stack size, 472 bytes cmem[0]\n"
    )
    assert parse_ptxas_log(log) == {"registers": 255, "stack": 96, "spill_stores": 116, "spill_loads": 96}
    assert parse_ptxas_log("") == {}


def test_divisibility_hints_follow_the_specs():
    spec = _spec()
    assert divisible_arguments(spec) == ("x_ptr",)  # default: the pointers
    assert divisible_arguments(with_divisible(spec, "n")) == ("x_ptr", "n")
    for wrong in ("scale", "BLOCK", "missing"):  # floats and constexprs never carry it; typos are caught
        with pytest.raises(ValueError):
            with_divisible(spec, wrong)
    specs = {spec.name: spec for spec in all_specs()}
    for spec in specs.values():
        marked = divisible_arguments(spec)
        assert all(name in marked for name, kind in spec.signature.items() if kind.startswith("*")), spec.name
    # Attention at head_dim 64: every stride is a multiple of 16; num_heads 8 and seq_len 97 are not.
    attention = divisible_arguments(specs["attention.attention_fwd_kernel[bf16,S=97,hd=64]"])
    assert {"stride_qb", "stride_qh", "stride_qs", "stride_os"} <= set(attention)
    assert "seq_len" not in attention and "num_heads" not in attention


def test_hints_reach_the_compiler_source():
    """What compile_spec hands to Triton carries tt.divisibility exactly on the marked arguments."""
    from triton.backends.compiler import GPUTarget

    from trm_fast.kernels._aot import _ast_source

    spec = next(s for s in all_specs() if s.name == "attention.attention_fwd_kernel[bf16,S=97,hd=64]")
    source = _ast_source(spec, GPUTarget("cuda", 80, 32))
    names = list(spec.signature)
    attrs = source.attrs
    if isinstance(attrs, dict):  # Triton >= 3.3: {(index,): [["tt.divisibility", 16], ...]}
        hinted = {names[key[0]] for key, values in attrs.items() if ["tt.divisibility", 16] in values}
    else:  # Triton 3.2: AttrsDescriptor of indices
        hinted = {names[index] for index in attrs.arg_properties["tt.divisibility"]}
    assert hinted == set(divisible_arguments(spec))


def test_spec_names_are_unique():
    names = [spec.name for spec in all_specs()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"duplicate AOT spec names: {duplicates}"
