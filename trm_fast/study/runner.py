"""Running a study: every selected run that has not finished is trained (resumed where it has a
checkpoint), one after the other in this process or `jobs` at a time in spawned processes, then
the report is written over every finished run."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from trm_fast import budget as budget_lib
from trm_fast import config as config_lib
from trm_fast.config import TrainConfig
from trm_fast.errors import RunDirectoryError, user_errors
from trm_fast.study.report import build_report, write_outputs
from trm_fast.study.spec import (RunSpec, Study, StudyError, check_study_dir, first_difference,
                                 normalised_config)
from trm_fast.train import run_directory
from trm_fast.train.data import dataset_dir, prepare_dataset
from trm_fast.train.distributed import DistContext
from trm_fast.train.loop import train


@dataclass
class StudyResult:
    study: Study
    outputs: dict  # {"png"|"md"|"json": Path}, empty when nothing finished yet
    report: Optional[dict]
    interrupted: bool = False
    trained: list[str] = field(default_factory=list)  # run directories trained (or resumed) now


def run_state(run: RunSpec) -> str:
    """"finished" (final_eval.json), "resume" (a checkpoint) or "new"."""
    if run_directory.is_finished(run.run_dir):
        return "finished"
    return "resume" if run_directory.latest_checkpoint(run.run_dir) is not None else "new"


def _check_run_config(run: RunSpec) -> None:
    """A run directory must have been made for this run (same config, but for the per-invocation
    max_minutes and, in a run that fills its minutes, the measured max_steps)."""
    saved = run_directory.read_config_values(run.run_dir)
    if saved is None:
        return
    saved = normalised_config(saved, str(run_directory.config_path(run.run_dir)))
    wanted = config_lib.to_dict(run.config)
    for name in ("max_minutes", "max_steps") if budget_lib.fills_time(run.config) else ("max_minutes",):
        saved.pop(name, None)
        wanted.pop(name, None)
    difference = first_difference(saved, wanted)
    if difference:
        raise StudyError(f"{run.run_dir} was trained with another config ({difference}); remove it to retrain")


def _invocation_config(run: RunSpec, state: str) -> TrainConfig:
    """The config of this invocation: with a time budget, a resumed run gets what is left of it, and
    keeps the schedule length it measured (saved in its config.json)."""
    cfg = copy.deepcopy(run.config)
    if state == "resume" and budget_lib.fills_time(cfg) and run_directory.config_path(run.run_dir).is_file():
        cfg.max_steps = config_lib.load_json(run_directory.config_path(run.run_dir)).max_steps
    if state == "resume" and cfg.max_minutes is not None and run_directory.metrics_path(run.run_dir).is_file():
        try:
            spent = run_directory.load_run(run.run_dir).train_seconds / 60
        except RunDirectoryError:
            spent = 0.0
        cfg.max_minutes = max(cfg.max_minutes - spent, 1e-3)
    return cfg


def _prefixed(prefix: str, log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: log(f"{prefix}{line}")


def _train_in_process(run: RunSpec, cfg: TrainConfig, resume: bool, progress: bool, log) -> str:
    result = train(cfg, run.run_dir, resume=resume, progress=progress, log=_prefixed(f"[{run.run_dir.name}] ", log))
    return result.stopped_by


def _worker(cfg_values: dict, run_dir: str, resume: bool, prefix: str, connection) -> None:
    """One run in a child process (--jobs > 1). Its own process group: the study forwards Ctrl-C
    once, so the trainer checkpoints and stops instead of being interrupted twice."""
    try:
        os.setpgrp()
    except OSError:
        pass
    outcome = ("error", "did not start")
    try:
        cfg = config_lib.from_dict(cfg_values)

        def log(line: str) -> None:
            print(prefix + line, flush=True)

        result = train(cfg, run_dir, resume=resume, progress=False, log=log)
        outcome = ("interrupt" if result.stopped_by == "interrupt" else "done", result.stopped_by)
    except KeyboardInterrupt:
        outcome = ("interrupt", "interrupted")
    except Exception as error:  # noqa: BLE001 - reported by the parent as one line
        if not isinstance(error, user_errors()):
            import traceback

            traceback.print_exc()
        outcome = ("error", " ".join(str(error).split()) or type(error).__name__)
    finally:
        try:
            connection.send(outcome)
        finally:
            connection.close()


def _status_line(run: RunSpec) -> Optional[str]:
    """The newest training record of a running run, for the parent's periodic status lines."""
    record = run_directory.latest_training_record(run.run_dir)
    if record is None:
        return None
    return (f"[{run.run_dir.name}] step {record['step']}/{run.config.max_steps or '?'} "
            f"lm_loss {record['train/lm_loss']:.4f} exact {record.get('train/exact_accuracy', 0):.3f} "
            f"({record.get('steps_per_second', 0):.2f} steps/s)")


def _train_in_processes(plan: list[tuple[RunSpec, TrainConfig, bool]], jobs: int, log, status_every: float) -> bool:
    """Train the planned runs, `jobs` at a time, each in a spawned process. Returns True when
    interrupted (Ctrl-C: forwarded once to every running run, which checkpoints and stops)."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    pending = list(plan)
    running: dict = {}  # process -> (run, receiving end)
    interrupted = False
    failure: Optional[str] = None
    last_status = time.monotonic()

    def stop_all() -> None:
        for process in running:
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGINT)
                except OSError:
                    pass

    while pending or running:
        try:
            while pending and len(running) < jobs and not interrupted and failure is None:
                run, cfg, resume = pending.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker, name=f"trm-fast-{run.run_dir.name}",
                    args=(config_lib.to_dict(cfg), str(run.run_dir), resume, f"[{run.run_dir.name}] ", sender))
                process.start()
                sender.close()
                running[process] = (run, receiver)
            for process in [p for p in running if not p.is_alive()]:
                process.join()
                run, receiver = running.pop(process)
                outcome = receiver.recv() if receiver.poll() else ("error", f"exited with status {process.exitcode}")
                receiver.close()
                if outcome[0] == "interrupt":
                    interrupted = True
                elif outcome[0] == "error" and failure is None:
                    failure = f"{run.run_dir.name}: {outcome[1]}"
                    stop_all()
            if status_every and time.monotonic() - last_status > status_every and running:
                last_status = time.monotonic()
                for run, _receiver in running.values():
                    line = _status_line(run)
                    if line:
                        log(line)
            time.sleep(0.2)
        except KeyboardInterrupt:
            if not interrupted:
                log("interrupted: the running runs save a checkpoint and stop (run the same command again to resume)")
            interrupted = True
            stop_all()
    if failure is not None:
        raise StudyError(failure)
    return interrupted


def run_study(
    study: Study,
    jobs: Optional[int] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    status_every: float = 60.0,
    command: Optional[str] = None,
) -> StudyResult:
    """Train every selected run that has not finished (resuming those with a checkpoint), then write
    ablation.{json,md,png} over all finished runs of the study."""
    jobs = 1 if jobs is None else jobs
    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {jobs}")
    check_study_dir(study)
    budget = budget_lib.describe(study.base)
    log(f"study {study.out}: {len(study.variants)} variant(s) x {len(study.seeds)} seed(s), {budget} per run, "
        f"base preset {study.base.preset or '-'}")
    plan = []
    for run in study.runs:
        state = run_state(run)
        selected = run in study.selected()
        _check_run_config(run)
        what = {"finished": "finished, reused", "resume": "resumes from its checkpoint", "new": "to train"}[state]
        if not selected and state != "finished":
            what = "skipped (--only)"
        log(f"  {run.run_dir.name:<24} {', '.join(run.variant.overrides) or '(base config)'}: {what}")
        if selected and state != "finished":
            plan.append((run, _invocation_config(run, state), state == "resume"))

    for folder, cfg in {str(dataset_dir(cfg)): cfg for _run, cfg, _resume in plan}.items():
        prepare_dataset(cfg, DistContext())  # built once here, not by concurrent runs

    interrupted = False
    trained = [run.run_dir.name for run, _cfg, _resume in plan]
    if plan and jobs > 1 and len(plan) > 1:
        # Longest first, so the short runs fill in at the end.
        order = sorted(plan, key=lambda item: -_cost_estimate(item[0].config))
        log(f"training {len(plan)} run(s), {min(jobs, len(plan))} at a time (one process each; logs prefixed by run)")
        interrupted = _train_in_processes(order, jobs, log, status_every)
    else:
        for index, (run, cfg, resume) in enumerate(plan, 1):
            log(f"== {index}/{len(plan)} {run.run_dir.name}: {', '.join(run.variant.overrides) or '(base config)'}")
            if _train_in_process(run, cfg, resume, progress, log) == "interrupt":
                interrupted = True
                break
    if interrupted:
        log(f"interrupted: run the same command again to resume ({study.out})")
    report = build_report(study)
    outputs = write_outputs(study, report, command) if report["variants"] else {}
    return StudyResult(study, outputs, report, interrupted, trained)


def _cost_estimate(cfg: TrainConfig) -> float:
    model = cfg.model
    calls = model.h_cycles - 1 + 3  # gradient-free cycles forward, the last one forward + backward
    return (cfg.max_steps or 1) * model.num_layers * (model.l_cycles + 1) * calls * cfg.global_batch_size
