"""One-shot report: every GPU correctness test, then every benchmark, into one JSON + one markdown table.

    python -m bench.report                 # on a GPU machine (no network needed): paper sizes, < 8 min
    python -m bench.report --tiny --out D  # anywhere: the smallest sizes (how CI checks this script)

Writes <out>/<device>-<date>.json and .md (default out: bench/results/) and <out>/LATEST.md (what
the README shows). Steps, each in its own subprocess with a time limit so one stuck step cannot eat
the machine's time: (1) `pytest -m gpu tests/` (skipped tests are counted, not hidden), (2)
`pytest bench/` (step, eval, ops, in that order of importance) which records its figures after every
benchmark, so a run cut short still reports what it measured.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_FILES = ("bench/bench_step.py", "bench/bench_eval.py", "bench/bench_ops.py")
TRAIN_ENGINES = ("reference", "reference_compiled", "fast_torch", "fast_triton", "fast_cuda", "fast_triton_graphs",
                 "fast_cuda_graphs")
TARGET_CASES = ("maze_att", "sudoku_mlp")
GIB = 1024**3


# ----------------------------------------------------------------------------- derived figures
def derive_ratios(records: list[dict]) -> list[dict]:
    """Adds bandwidth_vs_copy (effective bandwidth / the plain copy's, same run) to memory-bound ops."""
    copy = next((r for r in records if r["group"] == "ops/copy/fwd" and r["variant"] == "plain"), None)
    copy_rate = copy.get("bytes_per_s") if copy else None
    result = []
    for record in records:
        record = dict(record)
        if copy_rate and record.get("bytes_per_s") and record["group"].startswith("ops/"):
            record["bandwidth_vs_copy"] = record["bytes_per_s"] / copy_rate
        result.append(record)
    return result


def check_targets(records: list[dict], on_gpu: bool) -> list[dict]:
    """The issue's targets, each with the figure measured and whether it is met (None: not measured)."""
    targets = []

    def add(name, value, bound, higher_is_better=True):
        met = None if value is None else (value >= bound if higher_is_better else value <= bound)
        targets.append({"target": name, "value": value, "bound": bound, "met": met})

    by_key = {(r["group"], r["variant"]): r for r in records}
    if on_gpu:
        for case in TARGET_CASES:
            fast = [r for (group, variant), r in by_key.items() if group == f"train/{case}" and variant.startswith("fast")]
            best = max(fast, key=lambda r: r.get("ratio_vs_reference") or 0.0, default=None)
            label = f"{case} best fast engine ({best['variant']})" if best else f"{case} best fast engine"
            add(f"{label}: step vs reference_compiled", best and best.get("ratio_vs_reference_compiled"), 1.5)
            add(f"{label}: step vs reference eager", best and best.get("ratio_vs_reference"), 2.5)
            add(f"{label}: MFU", best and best.get("mfu"), 0.5)
            add(f"{label}: peak memory vs reference", best and best.get("memory_ratio_vs_reference"), 0.6, False)
    else:
        for group, variant in by_key:
            if group.startswith("train/") and variant == "fast_torch":
                add(f"{group.split('/')[1]} fast_torch vs reference eager (CPU)", by_key[(group, variant)].get("ratio_vs_reference"), 1.0)
    return targets


# ----------------------------------------------------------------------------- environment
def environment() -> dict:
    import torch

    from trm_fast.ops import resolve_backend_name

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    info = {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()})",
        "device_count": torch.cuda.device_count() if on_gpu else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "op_backends": {},
    }
    for requested in ("auto", "torch", "triton", "cuda"):
        try:
            info["op_backends"][requested] = resolve_backend_name(device, None if requested == "auto" else requested)
        except Exception as error:  # a backend that cannot run here says why
            info["op_backends"][requested] = f"unavailable: {str(error).splitlines()[0]}"
    return info


def device_slug(name: str) -> str:
    name = name.split(" (")[0]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# ----------------------------------------------------------------------------- the two steps
def _run(command: list[str], env: dict, timeout_s: float) -> dict:
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        returncode, output, timed_out = completed.returncode, completed.stdout + completed.stderr, False
    except subprocess.TimeoutExpired as error:
        out = error.stdout or b""
        output = out.decode(errors="replace") if isinstance(out, bytes) else out
        returncode, timed_out = None, True
    return {"command": " ".join(command), "returncode": returncode, "timed_out": timed_out,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-4000:]}


def _junit_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    totals["failed_tests"] = failed[:50]
    return totals


def build_cuda_extension(env: dict, timeout_s: float) -> dict:
    """Build (or load from its cache) the CUDA C++ extension once, before anything needs it, so that
    neither the tests nor the benchmarks spend their time limit compiling it."""
    code = "from trm_fast.ops import cuda_ext; print('CUDA_EXT_AVAILABLE', cuda_ext.available())"
    result = _run([sys.executable, "-c", code], env, timeout_s)
    result["available"] = "CUDA_EXT_AVAILABLE True" in result["output_tail"]
    return result


def run_gpu_tests(env: dict, work_dir: Path, timeout_s: float) -> dict:
    junit = work_dir / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
    result = _run(command, env, timeout_s)
    result.update(_junit_summary(junit))
    return result


def run_benchmarks(env: dict, work_dir: Path, timeout_s: float, extra_args: list[str]) -> tuple[dict, dict]:
    records_path = work_dir / "records.json"
    env = dict(env, TRM_BENCH_RESULTS=str(records_path))
    command = [sys.executable, "-m", "pytest", *BENCH_FILES, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={work_dir / 'pytest_benchmark.json'}", *extra_args]
    result = _run(command, env, timeout_s)
    records = json.loads(records_path.read_text()) if records_path.exists() else {"records": []}
    return result, records


# ----------------------------------------------------------------------------- markdown
def _fmt(value, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    if value is None or value == "":
        return "–"
    return f"{value * scale:{spec}}{suffix}"


def markdown(report: dict) -> str:
    env, bench = report["environment"], report["benchmarks"]
    records = bench.get("records", [])
    absolute = env["device_count"] > 0  # absolute CPU figures are not results: CPU tables show ratios only

    def timing(value, *fmt):
        return _fmt(value, *fmt) if absolute else "–"

    lines = [f"# trm-fast benchmark report: {env['device']}, {env['date']}", ""]
    lines += [
        f"- torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, Python {env['python']}, {env['cpu_count']} CPUs",
        f"- profile `{bench.get('profile')}` ({bench.get('dtype')}), torch.compile backend `{bench.get('compile_backend')}`"
        + (", Triton in its interpreter (CPU: its timings are not performance)" if bench.get("triton_interpreter") else ""),
        f"- op backends (auto): {', '.join(f'{k}={v}' for k, v in env['op_backends'].get('auto', {}).items())}"
        if isinstance(env["op_backends"].get("auto"), dict) else "- op backends (auto): –",
    ]
    build = env.get("cuda_extension_build")
    if build:
        lines.append(f"- CUDA C++ extension: {'available' if build['available'] else 'NOT available'} "
                     f"(build/load {build['seconds']} s{', timed out' if build['timed_out'] else ''})")
    gpu = report["gpu_tests"]
    if gpu.get("skipped_by_request"):
        lines.append("- GPU correctness tests: not run (--skip-gpu-tests)")
    else:
        lines.append(
            f"- GPU correctness tests (`pytest -m gpu tests/`): {gpu.get('passed', '?')} passed, "
            f"{gpu.get('failures', '?')} failed, {gpu.get('errors', '?')} errors, {gpu.get('skipped', '?')} skipped "
            f"in {gpu.get('seconds')} s" + (" (TIMED OUT)" if gpu.get("timed_out") else "")
        )
        for name in gpu.get("failed_tests", []):
            lines.append(f"  - failed: `{name}`")
    lines.append(f"- benchmarks: {bench.get('seconds')} s" + (" (TIMED OUT: partial)" if bench.get("timed_out") else ""))
    lines += [f"- note: {note}" for note in bench.get("notes", [])]
    lines.append("")
    if not absolute:
        lines.append("No GPU: absolute times and rates are left out (they say nothing about the GPU); only ratios are shown.")
    lines.append("Ratios are speed-ups measured in this same run (baseline time / engine time; > 1 is faster); "
                 "memory ratios are peak / the reference's peak (< 1 is smaller).")

    for kind, title in (("train", "Training supervision step"), ("eval", "Evaluation (16 supervision steps)")):
        groups = sorted({r["group"] for r in records if r["group"].startswith(kind + "/")})
        for group in groups:
            rows = [r for r in records if r["group"] == group]
            batch = rows[0].get("batch_size")
            lines += ["", f"## {title}: {group.split('/')[1]} (batch {batch})", ""]
            lines.append("| engine | ms | tokens/s | puzzles/s | peak GiB | MFU | x reference | x reference_compiled | mem x reference |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                lines.append(
                    f"| {r['variant']} | {timing(r['seconds'], '.1f', 1e3)} | {timing(r.get('tokens_per_s'), '.4g')} "
                    f"| {timing(r.get('puzzles_per_s'), '.4g')} | {_fmt(r.get('peak_memory_bytes'), '.2f', 1 / GIB)} "
                    f"| {_fmt(r.get('mfu'), '.1f', 100, '%')} | {_fmt(r.get('ratio_vs_reference'), '.2f')} "
                    f"| {_fmt(r.get('ratio_vs_reference_compiled'), '.2f')} | {_fmt(r.get('memory_ratio_vs_reference'), '.2f')} |"
                )
    op_rows = [r for r in records if r["group"].startswith("ops/")]
    if op_rows:
        lines += ["", "## Ops (fused vs plain PyTorch)", ""]
        lines.append("| op | pass | variant | ms | GB/s | bw / copy | TFLOP/s | x plain | x plain_compiled |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in op_rows:
            _, op, pass_name = r["group"].split("/")
            variant = r["variant"] + (" (interpreter)" if r.get("interpreter") else "")
            lines.append(
                f"| {op} | {pass_name} | {variant} | {timing(r['seconds'], '.3f', 1e3)} | {timing(r.get('bytes_per_s'), '.0f', 1e-9)} "
                f"| {_fmt(r.get('bandwidth_vs_copy'), '.2f')} | {timing(r.get('flop_per_s'), '.1f', 1e-12)} "
                f"| {_fmt(r.get('ratio_vs_plain'), '.2f')} | {_fmt(r.get('ratio_vs_plain_compiled'), '.2f')} |"
            )
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | measured | bound | met |", "|---|---:|---:|---|"]
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {_fmt(t['value'], '.2f')} | {t['bound']} | {met} |")
    lines += ["", "Reproduce: `python -m bench.report` on a GPU machine (`PYTHONPATH=.` from the checkout; no network needed).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smallest sizes, one config (a smoke run; CPU is fine)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="output folder")
    parser.add_argument("--skip-gpu-tests", action="store_true", help="do not run pytest -m gpu tests/")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for everything (each step gets what is left)")
    parser.add_argument("--build-timeout", type=float, default=150.0, help="seconds for building the CUDA extension")
    parser.add_argument("--gpu-tests-timeout", type=float, default=150.0, help="seconds for the GPU tests")
    parser.add_argument("--pytest-args", default="", help="extra arguments for the benchmark run, e.g. '-k train'")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if args.tiny:
        env["TRM_BENCH_PROFILE"] = "tiny"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    if not torch.cuda.is_available():
        # As the root conftest does for pytest: Triton runs in its interpreter without a GPU. Set here
        # too, before triton is imported, so the backends recorded are those the benchmarks ran with.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        env.setdefault("TRITON_INTERPRET", "1")
    deadline = started + args.budget

    def left(cap: float = float("inf")) -> float:
        return max(10.0, min(cap, deadline - time.perf_counter()))

    on_gpu = torch.cuda.is_available()
    cuda_build = None
    if on_gpu and env.get("TRM_FAST_CUDA_EXT", "1") != "0":
        print(f"[report] CUDA extension (limit {left(args.build_timeout):.0f} s) ...", flush=True)
        cuda_build = build_cuda_extension(env, left(args.build_timeout))
        print(f"[report]   available: {cuda_build['available']} ({cuda_build['seconds']} s)", flush=True)
        if not cuda_build["available"]:
            env["TRM_FAST_CUDA_EXT"] = "0"  # no second build attempt inside the tests or benchmarks
            os.environ["TRM_FAST_CUDA_EXT"] = "0"
    info = environment()
    info["cuda_extension_build"] = cuda_build and {k: cuda_build[k] for k in ("available", "seconds", "timed_out")}
    with tempfile.TemporaryDirectory(prefix="trm_bench_") as tmp:
        work_dir = Path(tmp)
        if args.skip_gpu_tests:
            gpu_tests = {"skipped_by_request": True}
        else:
            print(f"[report] GPU correctness tests (limit {left(args.gpu_tests_timeout):.0f} s) ...", flush=True)
            gpu_tests = run_gpu_tests(env, work_dir, left(args.gpu_tests_timeout))
            print(f"[report]   {gpu_tests.get('passed', '?')} passed, {gpu_tests.get('failures', '?')} failed, "
                  f"{gpu_tests.get('skipped', '?')} skipped in {gpu_tests['seconds']} s", flush=True)
        print(f"[report] benchmarks (limit {left():.0f} s) ...", flush=True)
        run, bench = run_benchmarks(env, work_dir, left(), args.pytest_args.split())
        print(f"[report]   {len(bench.get('records', []))} figures in {run['seconds']} s", flush=True)
    bench.update({k: run[k] for k in ("returncode", "timed_out", "seconds", "command")})
    if run["returncode"] not in (0, None):
        bench["output_tail"] = run["output_tail"]
    bench["records"] = derive_ratios(bench.get("records", []))
    report = {
        "environment": info,
        "gpu_tests": gpu_tests,
        "benchmarks": bench,
        "targets": check_targets(bench["records"], on_gpu),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    stem = f"{device_slug(info['device'])}-{_dt.date.today().isoformat()}"
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    table = markdown(report)
    md_path.write_text(table)
    (args.out / "LATEST.md").write_text(table)
    print(table)
    print(f"[report] wrote {json_path} and {md_path} in {report['total_seconds']} s")
    failed = (gpu_tests.get("failures") or 0) + (gpu_tests.get("errors") or 0)
    return 1 if failed or run["returncode"] not in (0, None) else 0


if __name__ == "__main__":
    sys.exit(main())
