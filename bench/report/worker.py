"""Worker process of `python -m bench.report`: runs tasks one at a time as the parent sends them.

Protocol (stdout lines starting with MARKER carry JSON; anything else is output the parent keeps
the tail of):
    parent -> stdin   {"task": id, "fn": name, "args": {...}}   one line per task; EOF ends the worker
    worker -> stdout  MARKER {"event": "ready"}                 imports done
                      MARKER {"event": "start", "task": id}
                      MARKER {"event": "record", "record": {...}}   each result, as soon as measured
                      MARKER {"event": "end", "task": id, "status": "ok"|"failed"|"unavailable", ...}
After a failed task the worker exits, so the next task runs in a fresh process: a CUDA error (an
illegal memory access, say) poisons every later CUDA call of the process it happened in.

Fault hooks for testing the report (TRM_REPORT_FAULT="<task glob>=<action>[;...]"): `fail` raises
in the task, `exit` ends the process at once (a crash), `sleep:<s>` sleeps first, `hang` never returns.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
import traceback

MARKER = "@@trm-report@@ "
FAULT_ENV = "TRM_REPORT_FAULT"


def send(event: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(event, default=_jsonable, allow_nan=True) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def fault_actions(task_id: str, spec: str | None = None) -> list[str]:
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    actions = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        pattern, _, action = item.partition("=")
        if fnmatch.fnmatchcase(task_id, pattern.strip()):
            actions.append(action.strip())
    return actions


def apply_faults(task_id: str) -> None:
    for action in fault_actions(task_id):
        print(f"[fault hook] {task_id}: {action} ({FAULT_ENV})", flush=True)
        if action == "fail":
            raise RuntimeError(f"deliberate failure of {task_id} ({FAULT_ENV})")
        if action == "exit":
            sys.stdout.flush()
            os._exit(17)
        if action == "hang":
            while True:
                time.sleep(3600)
        if action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))


def _exit_with_parent() -> None:
    """End this worker when the report dies (its stdin would only close after the current task)."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    _exit_with_parent()
    from bench.report.tasks import TASKS, Context, Unavailable

    tiny = os.environ.get("TRM_REPORT_TINY") == "1"
    current = {"task": None}

    def emit(record: dict) -> None:
        send({"event": "record", "task": current["task"], "record": record})

    ctx = Context(emit, tiny)
    send({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        task_id = current["task"] = request["task"]
        send({"event": "start", "task": task_id})
        begin = time.perf_counter()
        status, error = "ok", None
        try:
            apply_faults(task_id)
            TASKS[request["fn"]](ctx, request.get("args", {}))
        except Unavailable as reason:
            status, error = "unavailable", str(reason)
        except BaseException as failure:  # noqa: BLE001 - every failure is a recorded result
            status = "failed"
            error = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__))[-6000:]
            print(error, flush=True)
        send({"event": "end", "task": task_id, "status": status, "error": error,
              "seconds": round(time.perf_counter() - begin, 3)})
        if status == "failed":
            return 0  # a fresh process for the next task
    return 0


if __name__ == "__main__":
    sys.exit(main())
