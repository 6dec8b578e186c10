"""One-shot GPU report: every correctness check and benchmark, streamed into DIR/results.jsonl.

    PYTHONPATH=. python -m bench.report --out DIR --budget-s 480   # on a GPU machine (no network needed)
    python -m bench.report --tiny --out DIR                        # anywhere: the smallest sizes (CI)
    python -m bench.report --summarise DIR                         # the markdown table again, from the lines
    python -m bench.report --plan                                  # the tasks, in order, with H200 estimates

Everything is written as it happens: one JSON line per result (flushed and synced) in
DIR/results.jsonl, the environment first, so a run killed at any moment keeps every finished
result; the markdown table (DIR/<device>-<date>.md and DIR/LATEST.md) is written at the end, and
`--summarise` rebuilds it from the lines. All output of the worker processes goes to DIR/log.txt.

The tasks (bench/report/plan.py, most valuable first) run in worker processes
(bench/report/worker.py) with time limits: a crash, a CUDA error or a timeout is one recorded line
with the last lines of output, and the report goes on with a fresh process. A task that does not
fit the budget left is recorded as skipped for budget. The CUDA extension build and the GPU unit
tests (pytest-xdist, per-test timeout) run beside the correctness part; every timing waits until no
background work is left, so it runs on a quiet GPU.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import fnmatch
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Optional

from bench.report.plan import (
    BUILD_TASK,
    GPU_TESTS_TASK,
    PARTS,
    Task,
    build_plan,
    estimate_by_part,
    process_count,
)
from bench.report.summary import (  # noqa: F401  (re-exported: the tests use them)
    add_ratios,
    check_targets,
    derive_ratios,
    device_slug,
    load_results,
    markdown,
)
from bench.report.worker import MARKER

REPO_ROOT = Path(__file__).resolve().parents[2]

RESULTS_NAME = "results.jsonl"
LOG_NAME = "log.txt"
LOG_LIMIT_BYTES = 8 * 1024**2
TAIL_LINES = 40
BARRIER_GRACE_S = 45.0  # how long timings wait for the background GPU tests before stopping them
WORKER_CLOSE_S = 15.0
TINY_GPU_TEST_PATHS = ("tests/ops/test_swiglu_gpu.py", "tests/model/test_fast_gpu.py")


# ----------------------------------------------------------------------------- output files
class Output:
    """results.jsonl (one flushed, fsynced JSON line per result) and log.txt, shared by threads."""

    def __init__(self, out_dir: Path, run_info: dict):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / RESULTS_NAME
        self.results = open(self.path, "w", encoding="utf-8")
        self.log = open(out_dir / LOG_NAME, "w", encoding="utf-8", errors="replace")
        self.log_bytes = 0
        self.lock = threading.Lock()
        self.run_info = run_info
        self.environment_written = False
        self.count = 0

    def write(self, record: dict) -> None:
        if record.get("kind") == "environment":
            record = {**record, "run": self.run_info}
        line = json.dumps(record, default=str, allow_nan=True)
        with self.lock:
            if record.get("kind") == "environment":
                self.environment_written = True
            self.results.write(line + "\n")
            self.results.flush()
            try:
                os.fsync(self.results.fileno())
            except OSError:
                pass
            self.count += 1

    def log_line(self, label: str, line: str) -> None:
        with self.lock:
            if self.log_bytes > LOG_LIMIT_BYTES:
                return
            text = f"[{label}] {line}\n"
            self.log_bytes += len(text)
            if self.log_bytes > LOG_LIMIT_BYTES:
                text = f"[report] log.txt reached {LOG_LIMIT_BYTES // 1024**2} MiB; nothing more is logged\n"
            self.log.write(text)
            self.log.flush()

    def close(self) -> None:
        self.results.close()
        self.log.close()


# ----------------------------------------------------------------------------- child processes
def _child_setup():  # runs in the child between fork and exec
    os.setpgrp()  # its own process group: a timeout kills it and its children (pytest-xdist workers)
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: it dies with the report, even on SIGKILL


try:
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except Exception:  # pragma: no cover
    _PRCTL = None


class Proc:
    """A child process whose merged stdout/stderr is read by a thread: worker events are handled as
    they arrive (records go straight to results.jsonl), other lines are logged and kept as a tail."""

    def __init__(self, output: Output, argv: list[str], env: dict, label: str, worker: bool, keep_lines: bool = False):
        self.output, self.label, self.worker = output, label, worker
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE if worker else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
            preexec_fn=_child_setup if os.name == "posix" else None,
        )
        self.tail: collections.deque = collections.deque(maxlen=TAIL_LINES)  # of the current task
        self.lines: Optional[list] = [] if keep_lines else None
        self.ended: dict[str, dict] = {}
        self.current: Optional[str] = None
        self.ready = False
        self.eof = False
        self.task_of_record: Optional[str] = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            if self.worker and line.startswith(MARKER):
                try:
                    event = json.loads(line[len(MARKER):])
                except ValueError:
                    event = None
                if event is not None:
                    self._event(event)
                    continue
            self.tail.append(line[:500])
            if self.lines is not None and len(self.lines) < 200_000:
                self.lines.append(line)
            self.output.log_line(self.current or self.label, line)
        self.eof = True

    def _event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "ready":
            self.ready = True
        elif kind == "start":
            self.current = event["task"]
            self.tail.clear()
        elif kind == "record":
            self.output.write({**event["record"], "task": event.get("task")})
        elif kind == "end":
            self.ended[event["task"]] = event

    def send(self, request: dict) -> None:
        self.popen.stdin.write(json.dumps(request) + "\n")
        self.popen.stdin.flush()

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def finish_reading(self, timeout: float = 5.0) -> None:
        """Read what the process wrote before it ended (its end event, its last lines)."""
        self.thread.join(timeout)

    def _kill_group(self) -> None:
        # Its process group: the process and whatever it started (pytest-xdist workers, inductor's
        # compile workers), which could otherwise outlive it and hold the output pipe open.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            if self.popen.poll() is None:
                self.popen.kill()

    def kill(self) -> None:
        self._kill_group()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.finish_reading()

    def close(self) -> None:
        """Let a worker end by itself (EOF on stdin), or kill it; then clear its process group."""
        try:
            if self.popen.stdin:
                self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(timeout=WORKER_CLOSE_S)
        except subprocess.TimeoutExpired:
            pass
        self.finish_reading(2.0)
        self.kill()


# ----------------------------------------------------------------------------- pytest output
_VERBOSE_RESULT = re.compile(r"^(?:\[gw\d+\]\s+\[\s*\d+%\]\s+)?(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+::\S+)")
_VERBOSE_RESULT_SERIAL = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_junit(path: Path) -> Optional[dict]:
    """Counts and failed test names from pytest's junit XML (None when missing or unreadable)."""
    if not path.exists():
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "tests": sum(counts.values()), "failed_tests": failed[:100], "source": "junit"}


def parse_pytest_output(lines: list[str]) -> dict:
    """The same from `pytest -v` output (with or without xdist), as far as it got: what a killed run leaves."""
    outcome = {}
    for line in lines:
        match = _VERBOSE_RESULT.match(line.strip())
        if match:
            status, name = match.groups()
        else:
            match = _VERBOSE_RESULT_SERIAL.match(line.strip())
            if not match:
                continue
            name, status = match.groups()
        # A test that errors in teardown after passing is reported twice: the worse outcome wins.
        if outcome.get(name) not in ("FAILED", "ERROR"):
            outcome[name] = status
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
           "XFAIL": "skipped"}
    for status in outcome.values():
        counts[key[status]] += 1
    failed = [name for name, status in outcome.items() if status in ("FAILED", "ERROR")]
    return {**counts, "tests": len(outcome), "failed_tests": failed[:100], "source": "output"}


# ----------------------------------------------------------------------------- the run
# The extension as the workers will load it: the installed module, else the JIT build into the cache
# folder (cuda_ext._jit_load, under its lock). A failed build prints its error with the log's tail.
BUILD_CODE = """
import importlib, time
begin = time.perf_counter()
from trm_fast.ops import cuda_ext
ok = False
try:
    importlib.import_module(cuda_ext.INSTALLED_MODULE)
    ok = True
    print("the installed extension", cuda_ext.INSTALLED_MODULE, flush=True)
except ImportError:
    try:
        cuda_ext._jit_load()
        ok = True
    except Exception as error:
        print(f"{type(error).__name__}: {error}", flush=True)
print("CUDA_EXT_AVAILABLE", ok, round(time.perf_counter() - begin, 1), flush=True)
"""


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else None
    except Exception:
        return None


class Runner:
    def __init__(self, tasks: list[Task], out_dir: Path, budget_s: float, tiny: bool, on_gpu: bool,
                 max_task_s: Optional[float] = None, argv: Optional[list[str]] = None):
        self.tasks, self.out_dir, self.budget_s, self.tiny, self.on_gpu = tasks, out_dir, budget_s, tiny, on_gpu
        self.max_task_s = max_task_s
        self.task_ids = {task.id for task in tasks}
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.work_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"trm_report_{os.getpid()}"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        run_info = {
            "argv": argv or sys.argv[1:], "budget_s": budget_s, "tiny": tiny,
            "started": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "git_commit": _git("rev-parse", "--short", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
        }
        self.output = Output(out_dir, run_info)
        self.status: dict[str, str] = {}  # task id -> final status
        self.background: dict[str, tuple[Task, Proc, float]] = {}  # running: task, process, deadline
        self.pending_background: list[Task] = []
        self.worker: Optional[Proc] = None
        self.worker_key: Optional[str] = None
        self.all_procs: list[Proc] = []
        self.done_count = 0

    # --------------------------------------------------------------- helpers
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, text: str) -> None:
        print(f"[report {time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env["TRM_REPORT_TINY"] = "1" if self.tiny else "0"
        cpus = str(os.cpu_count() or 1)
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", cpus)  # inductor compiles its kernels on every core
        env.setdefault("MAX_JOBS", cpus)
        if not self.on_gpu:
            env.setdefault("TRITON_INTERPRET", "1")  # Triton's interpreter, set before triton is imported
            env.setdefault("OMP_NUM_THREADS", "1")
        if os.environ.get("TRM_FAST_CUDA_EXT") != "0":
            # Only the build task builds the extension: no worker may start a second (slow) build.
            env["TRM_FAST_CUDA_EXT"] = "1" if self.status.get(BUILD_TASK) == "ok" else "0"
        return env

    def record_task(self, task: Task, status: str, **fields) -> None:
        self.status[task.id] = status
        self.done_count += 1
        record = {"kind": "task", "task": task.id, "part": task.part, "status": status,
                  **{key: value for key, value in fields.items() if value is not None}}
        if status == "ok":
            record.pop("output_tail", None)
        self.output.write(record)
        extra = f" ({str(fields.get('error') or '').strip().splitlines()[-1][:160]})" if fields.get("error") else ""
        seconds = fields.get("wall_s")
        self.say(f"{self.done_count}/{len(self.tasks)} {task.id}: {status}"
                 + (f" in {seconds:.1f} s" if seconds is not None else "") + extra + f"; {self.left():.0f} s left")

    def precheck(self, task: Task) -> Optional[str]:
        """Why the task cannot run on this machine at all (recorded as unavailable), or None."""
        if task.needs_gpu and not self.on_gpu:
            return "needs a CUDA device"
        if task.id == BUILD_TASK and os.environ.get("TRM_FAST_CUDA_EXT") == "0":
            return "the CUDA extension is switched off (TRM_FAST_CUDA_EXT=0)"
        if task.needs_build and self.status.get(BUILD_TASK) != "ok":
            return f"the CUDA extension is not available ({BUILD_TASK}: {self.status.get(BUILD_TASK, 'not run')})"
        return None

    def deps_done(self, task: Task) -> bool:
        return all(dep in self.status or dep not in self.task_ids for dep in task.after)

    def limit_for(self, task: Task) -> float:
        limit = min(task.limit_s, self.left())
        return min(limit, self.max_task_s) if self.max_task_s else limit

    def budget_allows(self, task: Task) -> bool:
        return self.left() >= task.estimate(self.tiny)

    def skip_for_budget(self, task: Task) -> None:
        self.record_task(task, "skipped_for_budget", estimate_s=task.estimate(self.tiny), left_s=round(self.left(), 1))

    # --------------------------------------------------------------- background command tasks
    def _command(self, task: Task) -> tuple[list[str], dict, bool]:
        env = self.env()
        if task.id == BUILD_TASK:
            env.pop("TRM_FAST_CUDA_EXT", None)
            cpus = os.cpu_count() or 1
            if "--threads" not in env.get("NVCC_APPEND_FLAGS", ""):  # nvcc compiles the sm_80/sm_90 targets in parallel
                env["NVCC_APPEND_FLAGS"] = (env.get("NVCC_APPEND_FLAGS", "") + f" --threads {min(4, cpus)}").strip()
            return [sys.executable, "-c", BUILD_CODE], env, False
        if task.id == GPU_TESTS_TASK:
            # The dry run collects two GPU test files (all skip on CPU): the pipeline, not the whole suite.
            paths = list(TINY_GPU_TEST_PATHS) if self.tiny else ["tests/"]
            argv = [sys.executable, "-m", "pytest", "-m", "gpu", *paths, "-v", "-rfE", "-p", "no:cacheprovider",
                    f"--junitxml={self.work_dir / 'gpu_tests.xml'}"]
            if importlib.util.find_spec("xdist") is not None:
                workers = max(1, min(12, (os.cpu_count() or 2) - 4))  # leave cores to the foreground
                argv += ["-n", str(workers)]
            if importlib.util.find_spec("pytest_timeout") is not None:
                argv += ["--timeout", "90" if self.on_gpu else "120"]
            return argv, env, True
        raise ValueError(task.id)

    def launch_background(self, task: Task) -> None:
        reason = self.precheck(task)
        if reason:
            self.record_task(task, "unavailable", error=reason)
            return
        if not self.budget_allows(task):
            self.skip_for_budget(task)
            return
        argv, env, keep = self._command(task)
        junit = self.work_dir / "gpu_tests.xml"
        if task.id == GPU_TESTS_TASK and junit.exists():
            junit.unlink()
        proc = Proc(self.output, argv, env, task.id, worker=False, keep_lines=keep)
        self.all_procs.append(proc)
        self.background[task.id] = (task, proc, time.monotonic() + self.limit_for(task))
        self.say(f"started {task.id} in the background (limit {self.limit_for(task):.0f} s)")

    def finish_background(self, task_id: str, timed_out: bool, note: Optional[str] = None) -> None:
        task, proc, _ = self.background.pop(task_id)
        if not timed_out:
            proc.finish_reading()
        proc.kill()  # a timeout's whole process group, or what an ended one left behind
        wall = time.monotonic() - proc.started
        returncode = proc.popen.returncode
        tail = list(proc.tail)
        fields = {"wall_s": round(wall, 1), "returncode": returncode, "output_tail": tail, "background": True}
        if note:
            fields["note"] = note
        if task.id == BUILD_TASK:
            text = "\n".join(tail)
            available = "CUDA_EXT_AVAILABLE True" in text
            self.output.write({"kind": "build", "task": task.id, "available": available, "seconds": round(wall, 1)})
            status = "timeout" if timed_out else ("ok" if available else "failed")
            if status != "ok":
                fields["error"] = "the CUDA extension did not build or load" + (" in time" if timed_out else "")
            self.record_task(task, status, **fields)
        elif task.id == GPU_TESTS_TASK:
            summary = parse_junit(self.work_dir / "gpu_tests.xml")
            if summary is None or timed_out:
                summary = parse_pytest_output(proc.lines or [])
            self.output.write({"kind": "gpu_tests", "task": task.id, **summary, "returncode": returncode,
                               "timed_out": timed_out, "seconds": round(wall, 1),
                               "paths": list(TINY_GPU_TEST_PATHS) if self.tiny else ["tests/"]})
            if timed_out:
                status = "timeout"
            elif returncode in (0, 5):  # 5: nothing collected
                status = "ok"
            else:
                status = "failed"
                fields["error"] = (f"{summary['failed']} failed, {summary['errors']} errors: "
                                   + ", ".join(summary["failed_tests"][:5]))
            self.record_task(task, status, **fields)

    def poll_background(self) -> None:
        now = time.monotonic()
        for task_id, (task, proc, deadline) in list(self.background.items()):
            if proc.exited():
                self.finish_background(task_id, timed_out=False)
            elif now > deadline or now > self.deadline:
                self.finish_background(task_id, timed_out=True, note="time limit")
        for task in list(self.pending_background):
            if self.deps_done(task):
                self.pending_background.remove(task)
                self.launch_background(task)

    def quiet_barrier(self) -> None:
        """Before a timing: no background work left (the build is waited for, the GPU tests get a grace)."""
        barrier_start = time.monotonic()
        announced = False
        while self.background or self.pending_background:
            if not announced:
                self.say("waiting for background work before timing: " + ", ".join(
                    list(self.background) + [t.id for t in self.pending_background]))
                announced = True
            self.poll_background()
            now = time.monotonic()
            if GPU_TESTS_TASK in self.background:
                # The GPU tests get a grace from the barrier (or from their start, if they start during it).
                grace_end = max(barrier_start, self.background[GPU_TESTS_TASK][1].started) + BARRIER_GRACE_S
                if now > grace_end:
                    self.finish_background(GPU_TESTS_TASK, timed_out=True, note=(
                        f"stopped after a {BARRIER_GRACE_S:.0f} s grace so the timings run on a quiet GPU"))
            if now > self.deadline:
                for task_id in list(self.background):
                    self.finish_background(task_id, timed_out=True, note="budget")
                for task in self.pending_background:
                    self.skip_for_budget(task)
                self.pending_background.clear()
            time.sleep(0.1)

    # --------------------------------------------------------------- worker tasks
    def close_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker, self.worker_key = None, None

    def run_worker_task(self, task: Task) -> None:
        dispatched = time.monotonic()
        limit = self.limit_for(task)
        if self.worker is not None and (self.worker_key != task.process or self.worker.exited()):
            self.close_worker()
        started_worker = self.worker is None
        if started_worker:
            argv = [sys.executable, "-m", "bench.report.worker"]
            self.worker = Proc(self.output, argv, self.env(), task.process or task.id, worker=True)
            self.output.log_line("report", f"worker {self.worker.popen.pid} started for {task.process} ({task.id})")
            self.all_procs.append(self.worker)
            self.worker_key = task.process
        worker = self.worker
        worker.tail.clear()
        try:
            worker.send({"task": task.id, "fn": task.fn, "args": task.args})
        except (BrokenPipeError, OSError):
            pass  # it died already: seen below as a crash
        end, timed_out = None, False
        while True:
            end = worker.ended.get(task.id)
            if end is not None:
                break
            if worker.exited():
                worker.finish_reading(2.0)  # its end event may still be in the pipe
                end = worker.ended.get(task.id)
                break
            if time.monotonic() - dispatched > limit:
                timed_out = True
                break
            self.poll_background()
            time.sleep(0.05)
        if task.id == "env" and not self.output.environment_written:  # the environment line comes first, always
            self.output.write({"kind": "environment", "error": "the environment task ended without its record"})
        fields = {"wall_s": round(time.monotonic() - dispatched, 2), "limit_s": round(limit, 1), "process": task.process,
                  "pid": worker.popen.pid, "new_process": started_worker}
        if end is not None:
            status = end["status"]
            fields.update(seconds=end.get("seconds"), error=end.get("error"), output_tail=list(worker.tail))
            if status == "failed":
                self.close_worker()  # the worker exits by itself after a failure
        else:
            if timed_out:
                worker.kill()
                status = "timeout"
                fields["error"] = f"no result within {limit:.0f} s" + (
                    " (the budget left)" if limit < min(task.limit_s, self.max_task_s or task.limit_s) else "")
            else:
                worker.kill()  # gone already; this clears what it started
                status = "crashed"
                fields["returncode"] = worker.popen.poll()
                fields["error"] = f"the worker process ended (exit code {worker.popen.returncode}) during the task"
            fields["output_tail"] = list(worker.tail)
            self.worker, self.worker_key = None, None
        self.record_task(task, status, **fields)

    # --------------------------------------------------------------- main loop
    def run(self) -> None:
        self.say(f"{len(self.tasks)} tasks, budget {self.budget_s:.0f} s, writing {self.output.path}")
        timing_started = False
        for task in self.tasks:
            self.poll_background()
            if task.background:
                if self.deps_done(task):
                    self.launch_background(task)
                else:
                    self.pending_background.append(task)
                continue
            if task.after and not self.deps_done(task):
                self.say(f"{task.id} waits for {', '.join(task.after)}")
                while not self.deps_done(task) and self.left() > 0:
                    self.poll_background()
                    time.sleep(0.1)
                if not self.deps_done(task):
                    self.skip_for_budget(task)
                    continue
            reason = self.precheck(task)
            if reason:
                self.record_task(task, "unavailable", error=reason)
                continue
            if task.timing:
                if not timing_started:
                    self.close_worker()  # its memory is released before the first timing
                timing_started = True
                self.quiet_barrier()
            if task.id != "env" and not self.budget_allows(task):  # the environment line always comes first
                self.skip_for_budget(task)
                continue
            self.run_worker_task(task)
        self.close_worker()
        for task in list(self.pending_background):  # dependencies that never finished
            self.pending_background.remove(task)
            self.record_task(task, "skipped_for_budget", error="its dependencies did not finish")
        while self.background:
            self.poll_background()
            time.sleep(0.1)
        self.output.write({"kind": "run_end", "seconds": round(time.monotonic() - self.started, 1),
                           "budget_s": self.budget_s, "statuses": dict(collections.Counter(self.status.values()))})

    def abort(self) -> None:
        for proc in self.all_procs:
            if proc.popen.poll() is None:
                proc.kill()


# ----------------------------------------------------------------------------- CLI
def select(tasks: list[Task], only: Optional[str]) -> list[Task]:
    """Tasks whose id matches one of the comma-separated globs (the environment always runs)."""
    if not only:
        return tasks
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = {t.id for t in tasks if t.id == "env" or any(fnmatch.fnmatchcase(t.id, p) for p in patterns)}
    chosen |= {dep for t in tasks if t.id in chosen for dep in t.after}  # e.g. the CUDA extension build
    return [t for t in tasks if t.id in chosen]


def plan_table(tasks: list[Task], tiny: bool) -> str:
    lines = [f"{'task':48s} {'part':>4s} {'est s':>6s} {'limit':>6s}  process / flags"]
    for task in tasks:
        flags = [f for f, on in (("background", task.background), ("timing", task.timing), ("gpu", task.needs_gpu),
                                 ("needs-build", task.needs_build)) if on]
        lines.append(f"{task.id:48s} {task.part:4d} {task.estimate(tiny):6.0f} {task.limit_s:6.0f}  "
                     f"{task.process or '-'} {' '.join(flags)}")
    totals = estimate_by_part(tasks, tiny)
    beside = estimate_by_part(tasks, tiny, background=True)
    lines.append("")
    for part, name in PARTS.items():
        lines.append(f"part {part} ({name}): ~{totals[part]:.0f} s"
                     + (f" (+ ~{beside[part]:.0f} s in the background, beside part 2)" if beside[part] else ""))
    lines.append(f"total: ~{sum(totals.values()):.0f} s in the foreground; {process_count(tasks)} processes "
                 f"({'CPU dry run' if tiny else 'H200'} estimates; the budget skips what does not fit)")
    return "\n".join(lines)


def cuda_device_present() -> bool:
    """Whether a CUDA device is there, without initialising CUDA in this process (and on a Linux box
    without NVIDIA device files, without importing torch at all)."""
    if sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia*")):
        return False
    import torch

    return torch.cuda.is_available()


def write_summary(source: Path) -> tuple[Path, str]:
    """Markdown from a results.jsonl (or a folder holding one): <device>-<date>.md and LATEST.md beside it."""
    path = source / RESULTS_NAME if source.is_dir() else source
    records = load_results(path)
    text = markdown(records)
    env = next((r for r in records if r.get("kind") == "environment"), {})
    if source.is_dir():
        date = (env.get("run") or {}).get("started", "")[:10] or _dt.date.today().isoformat()
        stem = f"{device_slug(env.get('device', 'device'))}-{date}"
        md_path = source / f"{stem}.md"
    else:
        md_path = path.with_suffix(".md")
    md_path.write_text(text)
    (md_path.parent / "LATEST.md").write_text(text)
    return md_path, text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for results.jsonl, log.txt and the markdown table")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole report (default 480)")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (a dry run; implied without a GPU)")
    parser.add_argument("--summarise", "--summarize", type=Path, metavar="PATH",
                        help="rebuild the markdown from PATH (a results.jsonl or the folder holding it) and exit")
    parser.add_argument("--plan", action="store_true", help="print the tasks with their estimates and exit")
    parser.add_argument("--only", help="comma-separated task-id globs to run (e.g. 'correctness/*,step/maze_att/*')")
    parser.add_argument("--max-task-s", type=float, help="cap every task's time limit (seconds)")
    args = parser.parse_args(argv)

    if args.summarise:
        md_path, text = write_summary(args.summarise)
        print(text)
        print(f"[report] wrote {md_path} and {md_path.parent / 'LATEST.md'}")
        return 0
    if args.plan:
        print(plan_table(select(build_plan(args.tiny), args.only), args.tiny))
        return 0
    if args.out is None:
        parser.error("--out DIR is required (or --summarise / --plan)")

    on_gpu = cuda_device_present()
    tiny = args.tiny or not on_gpu
    if not args.tiny and not on_gpu:
        print("[report] no CUDA device: running the --tiny dry run", flush=True)
    tasks = select(build_plan(tiny), args.only)
    runner = Runner(tasks, args.out, args.budget_s, tiny, on_gpu, args.max_task_s, argv if argv is not None else sys.argv[1:])

    def terminate(signum, frame):  # the device's time limit, Ctrl-C: children go, the lines stay
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    interrupted = False
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
        runner.say("interrupted: stopping the child processes; every finished result is in results.jsonl")
    finally:
        runner.abort()
        runner.output.close()
        shutil.rmtree(runner.work_dir, ignore_errors=True)
    md_path, text = write_summary(args.out)
    print(text)
    runner.say(f"wrote {args.out / RESULTS_NAME} and {md_path}")
    bad = [task for task, status in runner.status.items() if status in ("failed", "timeout", "crashed")]
    return 1 if bad or interrupted else 0

