"""The markdown table of `python -m bench.report`, built only from the lines of results.jsonl.

Ratios are derived here, from whatever lines exist: a failed or missing baseline leaves the fast
engine's figures in the table with its ratio shown as "–" (never the record dropped).
"""
from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path
from typing import Optional

from bench.report.plan import PARTS, build_plan, estimate_by_part, process_count

GIB = 1024**3
BAD_STATUSES = ("failed", "timeout", "crashed")
STEP_BASELINES = ("reference", "reference_compiled")
OP_BASELINES = ("plain", "plain_compiled")
TARGET_CASES = ("maze_att", "sudoku_mlp")


# ----------------------------------------------------------------------------- reading
def load_results(path: Path) -> list[dict]:
    """Every readable line of a results.jsonl; a line cut short by a kill is skipped (and counted)."""
    records, unreadable = [], 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                unreadable += 1
    if unreadable:
        records.append({"kind": "unreadable_lines", "count": unreadable})
    return records


def device_slug(name: str) -> str:
    name = name.split(" (")[0]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# ----------------------------------------------------------------------------- derived figures
def derive_ratios(records: list[dict]) -> list[dict]:
    """pytest-bench records (group/variant, bench/conftest.py): bandwidth_vs_copy of memory-bound ops
    (effective bandwidth / the plain copy's in the same run)."""
    copy = next((r for r in records if r["group"] == "ops/copy/fwd" and r["variant"] == "plain"), None)
    copy_rate = copy.get("bytes_per_s") if copy else None
    result = []
    for record in records:
        record = dict(record)
        if copy_rate and record.get("bytes_per_s") and record["group"].startswith("ops/"):
            record["bandwidth_vs_copy"] = record["bytes_per_s"] / copy_rate
        result.append(record)
    return result


def _ratio(base: Optional[float], value: Optional[float]) -> Optional[float]:
    if not base or not value:
        return None
    return base / value


def add_ratios(records: list[dict]) -> list[dict]:
    """Report records with the ratios of the same run: time and memory vs the reference engines, MFU
    against the measured matmul, op bandwidth vs the copy (same shape) and the copy ceiling."""
    ceilings = {r.get("name"): r for r in records if r.get("kind") == "ceiling"}
    matmul = (ceilings.get("matmul") or {}).get("flop_per_s")
    copy_ceiling = (ceilings.get("copy") or {}).get("bytes_per_s")
    by_key = {}
    for r in records:
        if r.get("kind") in ("step", "eval"):
            by_key[(r["kind"], r["case"], r["engine"])] = r
        elif r.get("kind") == "op_bandwidth":
            by_key[("op", r["op"], r["pass"], r["variant"])] = r
    op_copy = by_key.get(("op", "copy", "fwd", "plain"), {}).get("bytes_per_s")
    result = []
    for r in records:
        r = dict(r)
        kind = r.get("kind")
        if kind in ("step", "eval"):
            for base_name in STEP_BASELINES:
                base = by_key.get((kind, r["case"], base_name))
                if base_name == r["engine"] or (base_name == "reference_compiled" and r["engine"] == "reference"):
                    continue
                r[f"ratio_vs_{base_name}"] = _ratio(base and base.get("seconds"), r.get("seconds"))
                if base and base.get("max_memory_allocated") and r.get("max_memory_allocated"):
                    r[f"memory_ratio_vs_{base_name}"] = r["max_memory_allocated"] / base["max_memory_allocated"]
        if kind in ("step", "eval", "attention", "op_bandwidth") and matmul and r.get("flop_per_s"):
            r["mfu_measured"] = r["flop_per_s"] / matmul
        if kind == "op_bandwidth":
            for base_name in OP_BASELINES:
                if base_name == r["variant"] or (base_name == "plain_compiled" and r["variant"] == "plain"):
                    continue
                base = by_key.get(("op", r["op"], r["pass"], base_name))
                r[f"ratio_vs_{base_name}"] = _ratio(base and base.get("seconds"), r.get("seconds"))
            if r.get("bytes_per_s"):
                if op_copy:
                    r["bandwidth_vs_copy"] = r["bytes_per_s"] / op_copy
                if copy_ceiling:
                    r["bandwidth_vs_ceiling"] = r["bytes_per_s"] / copy_ceiling
        result.append(r)
    return result


def check_targets(records: list[dict], on_gpu: bool) -> list[dict]:
    """The issue's targets (per target case, the best fast engine), each with the figure measured and
    whether it is met (None: not measured). `records` are report records after `add_ratios`."""
    targets = []

    def add(name, value, bound, higher_is_better=True):
        met = None if value is None else (value >= bound if higher_is_better else value <= bound)
        targets.append({"target": name, "value": value, "bound": bound, "met": met})

    steps = [r for r in records if r.get("kind") == "step"]
    if on_gpu:
        for case in TARGET_CASES:
            fast = [r for r in steps if r["case"] == case and r["engine"].startswith("fast")]
            best = max(fast, key=lambda r: r.get("ratio_vs_reference") or (1 / r["seconds"] if r.get("seconds") else 0),
                       default=None)
            label = f"{case} best fast engine ({best['engine']})" if best else f"{case} best fast engine"
            add(f"{label}: step vs reference_compiled", best and best.get("ratio_vs_reference_compiled"), 1.5)
            add(f"{label}: step vs reference eager", best and best.get("ratio_vs_reference"), 2.5)
            add(f"{label}: MFU", best and best.get("mfu_spec"), 0.5)
            add(f"{label}: peak memory vs reference", best and best.get("memory_ratio_vs_reference"), 0.6, False)
    else:
        for r in steps:
            if r["engine"] == "fast_torch":
                add(f"{r['case']} fast_torch vs reference eager (CPU)", r.get("ratio_vs_reference"), 1.0)
    return targets


# ----------------------------------------------------------------------------- markdown
def _fmt(value, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value * scale:{spec}}{suffix}"


def _err(value) -> str:
    return _fmt(value, ".1e")


def _first_line(text: Optional[str], limit: int = 200) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    # A traceback's last line says what happened; a plain message its first.
    line = lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    return line.replace("|", "/")[:limit]


def markdown(records: list[dict]) -> str:
    records = add_ratios(records)
    env = next((r for r in records if r.get("kind") == "environment"), {})
    run = env.get("run") or {}
    tasks = [r for r in records if r.get("kind") == "task"]
    task_status = {t["task"]: t for t in tasks}
    run_end = next((r for r in records if r.get("kind") == "run_end"), None)
    absolute = bool(env.get("device_count")) and not env.get("tiny")
    ceilings = {r.get("name"): r for r in records if r.get("kind") == "ceiling"}

    def timing(value, *fmt):
        return _fmt(value, *fmt) if absolute else "–"

    lines = [f"# trm-fast report: {env.get('device', 'unknown device')}, {run.get('started', '?')}", ""]
    if env.get("error"):
        lines.append(f"- environment: **{env['error']}**")
    lines.append(
        f"- torch {env.get('torch', '?')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, Python {env.get('python')}, "
        f"{env.get('cpu_count')} CPUs; commit {run.get('git_commit')}{' (uncommitted changes)' if run.get('git_dirty') else ''}"
        + ("; **--tiny dry run**" if env.get("tiny") or run.get("tiny") else "")
    )
    matmul, copy = ceilings.get("matmul"), ceilings.get("copy")
    if matmul or copy:
        parts = []
        if matmul:
            parts.append(f"{matmul.get('dtype')} matmul {'x'.join(map(str, matmul.get('shape', [])))}: "
                         f"{timing(matmul.get('flop_per_s'), '.0f', 1e-12, ' TFLOP/s')}")
        if copy:
            parts.append(f"device copy: {timing(copy.get('bytes_per_s'), '.2f', 1e-12, ' TB/s')} (read + write)")
        lines.append("- ceilings measured in this run: " + "; ".join(parts))
    backends = (env.get("op_backends") or {}).get("auto")
    if isinstance(backends, dict):
        lines.append("- op backends (auto, at start): " + ", ".join(f"{k}={v}" for k, v in backends.items()))
    build = next((r for r in records if r.get("kind") == "build"), None)
    build_task = task_status.get("build/cuda_ext")
    if build or build_task:
        state = ("built / loaded" if build and build.get("available") else
                 f"**{(build_task or {}).get('status', 'not built')}**")
        detail = f" in {build['seconds']} s" if build else ""
        reason = _first_line((build_task or {}).get("error"))
        lines.append(f"- CUDA C++ extension: {state}{detail}" + (f" ({reason})" if reason and state != "built / loaded" else ""))
    micro = env.get("trainer_micro_batch") or {}
    if micro:
        lines.append("- trainer micro-batch (free memory at start): " + ", ".join(
            f"{case} {m.get('micro_batch', '?')} of {m.get('global_batch')}" for case, m in micro.items()))
    counts = collections.Counter(t["status"] for t in tasks)
    lines.append(
        f"- {len(tasks)} tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + (f"; {run_end['seconds']} s of a {run_end['budget_s']:.0f} s budget" if run_end else
           "; **the run did not finish** (no end line: killed or still running); every finished result is below")
    )
    unreadable = next((r for r in records if r.get("kind") == "unreadable_lines"), None)
    if unreadable:
        lines.append(f"- {unreadable['count']} unreadable line(s) (cut short by a kill) skipped")
    lines.append("")
    if not absolute:
        lines.append("No GPU figures: a dry run (tiny shapes, Triton in its interpreter); absolute times and rates "
                     "are left out, ratios are shown only to prove the pipeline. The task timings at the end size the GPU run.")
        lines.append("")
    lines.append("Ratios are measured in this same run (baseline time / this time; > 1 is faster); memory ratios are "
                 "peak allocated / the reference's (< 1 is smaller). MFU (spec): model FLOPs / data-sheet peak; "
                 "MFU (matmul): / the matmul ceiling above.")

    bad = [t for t in tasks if t["status"] in BAD_STATUSES]
    lines += ["", f"## Failures ({len(bad)})", ""]
    if not bad:
        lines.append("None.")
    for t in bad:
        tail = [line for line in (t.get("output_tail") or []) if line.strip()][-1:]
        lines.append(f"- `{t['task']}`: **{t['status']}** after {t.get('wall_s', '?')} s: {_first_line(t.get('error'))}"
                     + (f" (last output: `{tail[0].strip()[:160].replace('`', '')}`)" if tail else ""))
    gpu_tests = next((r for r in records if r.get("kind") == "gpu_tests"), None)
    if gpu_tests:
        for name in gpu_tests.get("failed_tests", []):
            lines.append(f"- GPU test failed: `{name}`")

    _correctness_section(lines, records)
    for case in ("maze_att", "sudoku_mlp", "sudoku_att"):
        _step_section(lines, records, tasks, "step", case, timing)
    _attention_section(lines, records, timing)
    _ops_section(lines, records, timing)
    if gpu_tests:
        lines += ["", f"## GPU unit tests (`pytest -m gpu {' '.join(gpu_tests.get('paths') or ['tests/'])}`)", ""]
        lines.append(f"{gpu_tests.get('passed')} passed, {gpu_tests.get('failed')} failed, {gpu_tests.get('errors')} errors, "
                     f"{gpu_tests.get('skipped')} skipped of {gpu_tests.get('tests')} in {gpu_tests.get('seconds')} s"
                     + (" (**stopped**: counts from the output so far)" if gpu_tests.get("timed_out") else "")
                     + f" (from {gpu_tests.get('source')})")
    for case in ("maze_att", "sudoku_mlp"):
        _step_section(lines, records, tasks, "eval", case, timing)
    targets = check_targets(records, absolute)
    if targets:
        lines += ["", "## Targets", "", "| target | measured | bound | met |", "|---|---:|---:|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {_fmt(t['value'], '.2f')} | {t['bound']} | {met} |")
    _not_run_section(lines, tasks)
    _timing_section(lines, tasks, bool(env.get("tiny") or run.get("tiny")))
    lines += ["", "Reproduce: `PYTHONPATH=. python -m bench.report --out DIR --budget-s 480` on a GPU machine "
              "(README, Benchmarks); `python -m bench.report --summarise DIR` rebuilds this table from DIR/results.jsonl.", ""]
    return "\n".join(lines)


def _correctness_section(lines: list, records: list) -> None:
    rows = [r for r in records if r.get("kind") == "correctness"]
    if rows:
        lines += ["", "## Correctness: one supervision step, fast engine vs reference (same weights and batch)", ""]
        lines.append("Relative error = max |fast - reference| / max |reference| per tensor. bf16 floor: the bf16 "
                     "reference's own error against an fp32 reference run from the same weights.")
        lines.append("")
        lines.append("| case | backend | dtype | batch | logits | q_halt | q_continue | y (carry) | z (carry) | loss "
                     "| worst gradient | bf16 floor logits / grad | within tolerance |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
        for r in rows:
            e = r.get("errors", {})
            floor = r.get("noise_floor")
            floor_text = f"{_err(floor['errors'].get('logits'))} / {_err(floor['max_grad_error'])}" if floor else "–"
            ok = "yes" if r.get("within_tolerance") else "**no**"
            if not r.get("halted_agree", True):
                ok += " (halting differs)"
            lines.append(
                f"| {r['case']} | {r['backend']} | {r.get('dtype')} | {r.get('batch_size')} | {_err(e.get('logits'))} "
                f"| {_err(e.get('q_halt'))} | {_err(e.get('q_continue'))} | {_err(e.get('y_answer'))} | {_err(e.get('z_latent'))} "
                f"| {_err(e.get('loss'))} | {_err(r.get('max_grad_error'))} (`{r.get('worst_grad')}`) | {floor_text} | {ok} |"
            )
    ops = [r for r in records if r.get("kind") == "op_correctness"]
    if ops:
        lines += ["", "## Correctness: fused ops, forward and backward, vs the plain op in fp32", ""]
        lines.append("| op | backend | dtype | shapes | max error | worst tensor | plain op in its dtype (floor) "
                     "| integer mismatches | within tolerance |")
        lines.append("|---|---|---|---|---:|---|---:|---:|---|")
        for r in ops:
            errors = r.get("errors") or {}
            worst = max(errors, key=errors.get) if errors else None
            floor = max((r.get("noise_floor") or {}).values(), default=None)
            shapes = " ".join("x".join(map(str, s)) for s in (r.get("shapes") or [])[:3])
            lines.append(f"| {r['op']} | {r['backend']} | {r.get('dtype')} | {shapes} | {_err(r.get('max_error'))} | {worst or '–'} "
                         f"| {_err(floor)} | {r.get('integer_mismatches', 0)} | {'yes' if r.get('within_tolerance') else '**no**'} |")


def _step_section(lines: list, records: list, tasks: list, kind: str, case: str, timing) -> None:
    rows = [r for r in records if r.get("kind") == kind and r.get("case") == case]
    prefix = "step" if kind == "step" else "eval"
    problems = [t for t in tasks if t["task"].startswith(f"{prefix}/{case}/") and t["status"] in BAD_STATUSES]
    if not rows and not problems:
        return
    first = rows[0] if rows else {}
    if kind == "step":
        title = (f"## Training step: {case} (global batch {first.get('batch_size', '?')}, "
                 f"micro-batch {first.get('micro_batch_size', '?')}, {first.get('dtype', '?')})")
    else:
        title = f"## Evaluation: {case} (batch {first.get('batch_size', '?')}, {first.get('supervision_steps', '?')} supervision steps)"
    lines += ["", title, ""]
    lines.append("| engine | ms | tokens/s | puzzles/s | x reference | x reference_compiled | MFU (spec) | MFU (matmul) "
                 "| max alloc GiB | max reserved GiB | mem x reference | first call s | compile s | micro-batch |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        micro = r.get("micro_batch_size")
        if r.get("oom_retries"):
            micro = f"{micro} (after {r['oom_retries']} OOM)"
        lines.append(
            f"| {r['engine']} | {timing(r.get('seconds'), '.1f', 1e3)} | {timing(r.get('tokens_per_s'), '.4g')} "
            f"| {timing(r.get('puzzles_per_s'), '.4g')} | {_fmt(r.get('ratio_vs_reference'), '.2f')} "
            f"| {_fmt(r.get('ratio_vs_reference_compiled'), '.2f')} | {_fmt(r.get('mfu_spec'), '.1f', 100, '%')} "
            f"| {timing(r.get('mfu_measured'), '.1f', 100, '%')} "
            f"| {_fmt(r.get('max_memory_allocated'), '.2f', 1 / GIB)} | {_fmt(r.get('max_memory_reserved'), '.2f', 1 / GIB)} "
            f"| {_fmt(r.get('memory_ratio_vs_reference'), '.2f')} | {timing(r.get('first_step_s', r.get('first_s')), '.1f')} "
            f"| {timing(r.get('compile_s'), '.1f')} | {micro if micro is not None else '–'} |"
        )
    for t in problems:
        lines.append(f"| {t['task'].rsplit('/', 1)[1]} | **{t['status']}** | | | | | | | | | | | | |")


def _attention_section(lines: list, records: list, timing) -> None:
    rows = [r for r in records if r.get("kind") == "attention"]
    if not rows:
        return
    shape = "x".join(map(str, rows[0].get("shape", [])))
    lines += ["", f"## Attention backends ({shape}, {rows[0].get('dtype')}; backward counted as 2x forward)", ""]
    lines.append("| backend | pass | ms | TFLOP/s | MFU (matmul) | error vs fp32 |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for r in rows:
        lines.append(f"| {r['backend']}{' (interpreter)' if r.get('interpreter') else ''} | {r['pass']} "
                     f"| {timing(r.get('seconds'), '.3f', 1e3)} | {timing(r.get('flop_per_s'), '.1f', 1e-12)} "
                     f"| {timing(r.get('mfu_measured'), '.1f', 100, '%')} | {_err(r.get('rel_error_vs_fp32'))} |")


def _ops_section(lines: list, records: list, timing) -> None:
    rows = [r for r in records if r.get("kind") == "op_bandwidth"]
    if not rows:
        return
    lines += ["", "## Ops: time and bandwidth (fused vs plain PyTorch)", ""]
    lines.append("Bandwidth = the minimum bytes the op must move / its time; x copy: vs a plain copy of the same "
                 "size in this run; x ceiling: vs the large device copy above.")
    lines.append("")
    lines.append("| op | pass | variant | ms | GB/s | x copy | x ceiling | TFLOP/s | x plain | x plain_compiled |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    order = {"plain": 0, "plain_compiled": 1, "fused_triton": 2, "fused_cuda": 3}
    for r in sorted(rows, key=lambda r: (r["op"], r["pass"], order.get(r["variant"], 9))):
        lines.append(
            f"| {r['op']} | {r['pass']} | {r['variant']}{' (interpreter)' if r.get('interpreter') else ''} "
            f"| {timing(r.get('seconds'), '.3f', 1e3)} | {timing(r.get('bytes_per_s'), '.0f', 1e-9)} "
            f"| {_fmt(r.get('bandwidth_vs_copy'), '.2f')} | {timing(r.get('bandwidth_vs_ceiling'), '.2f')} "
            f"| {timing(r.get('flop_per_s'), '.1f', 1e-12)} | {_fmt(r.get('ratio_vs_plain'), '.2f')} "
            f"| {_fmt(r.get('ratio_vs_plain_compiled'), '.2f')} |"
        )


def _not_run_section(lines: list, tasks: list) -> None:
    skipped = [t for t in tasks if t["status"] in ("skipped_for_budget", "unavailable")]
    if not skipped:
        return
    lines += ["", f"## Not run ({len(skipped)})", ""]
    groups = collections.defaultdict(list)
    for t in skipped:
        reason = "skipped for budget" if t["status"] == "skipped_for_budget" else f"unavailable: {_first_line(t.get('error'))}"
        groups[reason].append(t["task"])
    for reason, ids in groups.items():
        lines.append(f"- {reason}: " + ", ".join(f"`{i}`" for i in ids))


def _timing_section(lines: list, tasks: list, tiny: bool) -> None:
    """Per part: tasks run, worker processes started, wall seconds here, and the H200 plan's figures."""
    if not tasks:
        return
    gpu_plan = build_plan(tiny=False)
    estimates = estimate_by_part(gpu_plan)
    background = estimate_by_part(gpu_plan, background=True)
    planned = collections.Counter(t.part for t in gpu_plan)
    lines += ["", "## Task timings (this run; they size the GPU budget)", ""]
    lines.append("| part | tasks here (GPU plan) | ok | not ok | not run | processes started | wall s | wall s beside | "
                 "H200 estimate s (beside) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for part, name in PARTS.items():
        mine = [t for t in tasks if t.get("part") == part]
        if not mine and not planned.get(part):
            continue
        fg = sum(t.get("wall_s") or 0 for t in mine if not t.get("background"))
        bg = sum(t.get("wall_s") or 0 for t in mine if t.get("background"))
        lines.append(
            f"| {part}. {name} | {len(mine)} ({planned.get(part, 0)}) | {sum(t['status'] == 'ok' for t in mine)} "
            f"| {sum(t['status'] in BAD_STATUSES for t in mine)} "
            f"| {sum(t['status'] in ('skipped_for_budget', 'unavailable') for t in mine)} "
            f"| {sum(bool(t.get('new_process')) for t in mine) + sum(bool(t.get('background')) for t in mine)} "
            f"| {fg:.1f} | {bg:.1f} | {estimates.get(part, 0):.0f}" + (f" ({background[part]:.0f})" if background.get(part) else "")
            + " |"
        )
    fg_total = sum(t.get("wall_s") or 0 for t in tasks if not t.get("background"))
    lines.append(f"| all | {len(tasks)} ({len(gpu_plan)}) | {sum(t['status'] == 'ok' for t in tasks)} "
                 f"| {sum(t['status'] in BAD_STATUSES for t in tasks)} "
                 f"| {sum(t['status'] in ('skipped_for_budget', 'unavailable') for t in tasks)} "
                 f"| {sum(bool(t.get('new_process')) for t in tasks) + sum(bool(t.get('background')) for t in tasks)} "
                 f"({process_count(gpu_plan)} in the GPU plan) | {fg_total:.1f} | | {sum(estimates.values()):.0f} |")
    ran = [t for t in tasks if t.get("wall_s") is not None]
    slowest = sorted(ran, key=lambda t: -(t.get("wall_s") or 0))[:5]
    if slowest:
        lines.append("")
        lines.append("Slowest tasks: " + ", ".join(f"`{t['task']}` {t['wall_s']:.1f} s" for t in slowest))
