"""The training loop: scheduling, logging, evaluation and checkpoints around `TrainStep`.

Per step (reference: pretrain.py train_batch):
    batch <- sampler (this rank's slice of the global batch)
    set the scheduled learning rates; metric_sums += TrainStep(batch)   (see step.py)
`TrainStep` is the whole supervision + optimizer step (micro-batches, ACT carries, AdamATan2 + EMA,
sign-SGD); with cuda_graphs=true a `GraphedStep` captures that same object. Metrics stay on the
device and are read only at logging steps, where tokens/s and (on a GPU) model FLOP utilisation
are logged too. The run directory (config.json, metrics.jsonl, checkpoints/, final_eval.json) is
written and read through run_directory.py; `resume=True` continues from the newest checkpoint
exactly (bit-identical on CPU). After each periodic evaluation whose cfg.best_metric beats the best
so far, the checkpoint of that step (saved then if it is not a checkpoint step) is recorded in
best.json and kept beside the newest keep_checkpoints ones (`trm-fast eval --which best`).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from trm_fast import budget as budget_lib
from trm_fast import config as config_lib
from trm_fast.config import ConfigError, TrainConfig
from trm_fast import flops as flops_lib
from trm_fast import memory as memory_lib
from trm_fast import tracking
from trm_fast.cuda_graphs import GraphedStep
from trm_fast.model import TRM, FastTRM, TRMConfig, make_model
from trm_fast.train import arc_eval
from trm_fast.train import distributed as dist_lib
from trm_fast.train import run_directory
from trm_fast.train.data import RunData, open_run_data
from trm_fast.train.evaluate import MODEL_KEYS, batch_to_device, evaluate
from trm_fast.train.losses import METRIC_NAMES, summarise
from trm_fast.train.optim import lr_at_step
from trm_fast.train.step import build_train_step, fast_options, local_batch_size


# Held-out exact accuracies whose first crossing is logged with the wall time since the trainer was
# created ("time_to/exact_90": seconds, in the metrics record of that evaluation).
TIME_TO_EXACT = (0.5, 0.8, 0.9)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str  # "max_steps" | "schedule_end" | "max_minutes" | "interrupt"
    final_eval: Optional[dict]
    last_train: Optional[dict]


def schedule_length(cfg: TrainConfig, data: RunData) -> int:
    """Total optimizer steps the LR schedule spans: `epochs` as in the reference, capped by max_steps."""
    from_epochs = budget_lib.steps_from_epochs(cfg, data.batches_per_epoch)
    return min(from_epochs, cfg.max_steps) if cfg.max_steps is not None else from_epochs


class _StopSignal:
    """First Ctrl-C asks the loop to stop after the current step (it then checkpoints); a second one
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Optional[str | os.PathLike] = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.created = time.monotonic()  # time to accuracy counts from here: data, model build and compile
        self.time_to: dict[str, float] = {}  # TIME_TO_EXACT name -> seconds, once reached
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.progress_enabled = progress
        self.context = dist_lib.init_distributed(cfg.device)
        self.device = self.context.device
        self._log = log
        ctx = self.context
        if run_dir is None:  # rank 0 names it, so every rank agrees
            name = f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = dist_lib.broadcast_object(str(Path("runs") / name), ctx)
        self.run_dir = Path(run_dir)
        self.tracker = tracking.open_tracker(cfg.tracking, self.run_dir, config_lib.to_dict(cfg)) if ctx.is_main else tracking.Tracker()
        self.local_batch_size = local_batch_size(cfg, ctx.world_size)

        resume_path = run_directory.checkpoint_to_resume(self.run_dir) if resume else None

        self.data = open_run_data(cfg, self.context, self.local_batch_size)
        # ARC data: evaluations also vote over the augmentations and log pass@k (arc_eval)
        self.votes = arc_eval.is_arc_folder(self.data.folder)
        if cfg.best_metric.startswith("pass@") and not self.votes:
            raise ConfigError(f"best_metric={cfg.best_metric} needs ARC data (test_puzzles.json and identifiers.json "
                              f"in {self.data.folder}); choose exact_accuracy, accuracy, lm_loss or loss")

        metadata = self.data.metadata
        model_config = config_lib.model_config(cfg, metadata.vocab_size, metadata.seq_len, metadata.num_puzzle_identifiers)
        self.use_cuda_graphs = cfg.cuda_graphs and self.device.type == "cuda"
        if self.use_cuda_graphs and ctx.world_size > 1:
            raise ConfigError("cuda_graphs=true supports one process; the gradient all-reduce is not captured")
        self.train_step = build_train_step(cfg, model_config, self.device, ctx, self._micro_batch_size(model_config), log=self.log)
        self.model, self.ema = self.train_step.model, self.train_step.ema
        run_directory.seed_everything(cfg.seed + ctx.rank)  # per-rank exploration streams, as in the reference
        self.run_step = GraphedStep(self.train_step) if self.use_cuda_graphs else self.train_step
        self.total_steps = schedule_length(cfg, self.data)
        self.step = 0
        self.last_eval: Optional[dict] = None
        self.best: Optional[dict] = None  # run_directory.best_record of the best periodic evaluation so far
        if resume_path is not None:
            run_directory.restore_checkpoint(self, resume_path)

    # ------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.context.is_main:
            self._log(message)
            sys.stdout.flush()

    def _micro_batch_size(self, model_config: TRMConfig) -> int:
        """micro_batch_size, or when unset the trainer's choice (trm_fast.memory.micro_batch_for)."""
        try:
            micro, message = memory_lib.micro_batch_for(model_config, self.cfg, self.local_batch_size, self.device)
        except ValueError as error:
            raise ConfigError(f"micro_batch_size: {error}; try recompute=true or a smaller model") from None
        if message:
            self.log(message)
        return micro

    def lr(self, base_lr: float) -> float:
        cfg = self.cfg
        return lr_at_step(self.step, base_lr, cfg.lr_warmup_steps, self.total_steps, cfg.lr_min_ratio)

    def ema_state_dict(self) -> dict:
        if self.ema is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return self.ema.model_state_dict(self.model)

    def eval_model(self) -> TRM:
        """A separate model holding the weights evaluation uses (EMA when enabled)."""
        with torch.random.fork_rng(devices=[]):  # building it must not move the training RNG
            model = make_model(self.model.config, self.cfg.engine, self.cfg.backend, **fast_options(self.cfg))
        model.load_state_dict(self.ema_state_dict())
        model.to(self.device)
        model.eval()
        return model

    # ------------------------------------------------------------------------------------------
    def advance(self, batch: dict) -> torch.Tensor:
        """One optimizer step at the scheduled learning rates; returns the metric sums (on device)."""
        self.step += 1
        self.train_step.set_learning_rates(self.lr(self.cfg.lr), self.lr(self.cfg.puzzle_emb_lr))
        return self.run_step(batch)

    def run_evaluation(self, limit: Optional[int], prefix: str = "eval/") -> dict:
        """The metrics of the EMA weights on the first `limit` test examples (None: all); on ARC data
        with the vote's pass@k too (the final one writes submission.json and arc_results.json)."""
        cfg = self.cfg
        batches = self.data.eval_batches(cfg.eval_batch_size or cfg.global_batch_size, limit)
        options = dict(loss_type=cfg.loss_type, backend=cfg.backend, context=self.context, prefix=prefix)
        if self.votes:
            return arc_eval.evaluate_and_vote(self.eval_model(), batches, self.device, self.data.folder,
                                              blank_identifier_id=self.data.metadata.blank_identifier_id,
                                              out_dir=self.run_dir if prefix == "test/" else None, **options)
        return evaluate(self.eval_model(), batches, self.device, **options)

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[Path]:
        """Collective (every rank calls it); the path written, on rank 0."""
        return run_directory.save_checkpoint(self)

    def _append_metrics(self, record: dict) -> None:
        if self.context.is_main:
            run_directory.append_metrics(self.run_dir, record)
            self.tracker.log(record)

    def run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.context
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            run_directory.write_config(self.run_dir, cfg)
            if self.best is not None:  # a run killed between its checkpoint and best.json: repair it
                run_directory.write_best(self.run_dir, self.best)
            self.tracker.start(self.step)
        dist_lib.barrier(ctx)

        end_step = self.total_steps
        start_time = time.monotonic()
        deadline = start_time + cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
        fit = budget_lib.ScheduleFit.for_run(cfg, self.step, end_step, start_time, deadline)  # None: length given
        self.log(
            f"training {sum(p.numel() for p in self.train_step.params):,} parameters on {ctx.world_size} x {self.device.type}, "
            f"global batch {cfg.global_batch_size} ({self.train_step.num_micro_batches} micro-batch(es) of "
            f"{self.train_step.micro_batch_size} per process), steps {self.step}->"
            + (f"(set at step {fit.decide_at} to fill the time)" if fit is not None else f"{end_step}")
            + (f" (at most {cfg.max_minutes:g} min)" if cfg.max_minutes is not None else "")
            + f", run dir {self.run_dir}"
        )
        if isinstance(self.model, FastTRM):
            report = self.model.backend_report(self.device)
            self.log("engine fast, op backends: " + ", ".join(f"{op}={name}" for op, name in report.items())
                     + (", CUDA graphs on" if self.use_cuda_graphs else ""))
        else:
            self.log("engine reference (plain PyTorch)")
        progress = None
        if ctx.is_main and self.progress_enabled:
            from tqdm import tqdm

            progress = tqdm(total=end_step, initial=self.step, dynamic_ncols=True, desc="train", file=sys.stderr)

        metric_sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float32, device=self.device)
        last_log_time, last_log_step = time.monotonic(), self.step
        step_seconds = 0.0  # inside TrainStep since the last log (on a CPU, where the step is synchronous)
        last_train: Optional[dict] = None
        stopped_by = "max_steps" if cfg.max_steps is not None and cfg.max_steps <= end_step else "schedule_end"
        checkpoint_interval = cfg.checkpoint_interval or cfg.eval_interval
        saved_at = self.step if self.step > 0 else None

        with _StopSignal() as stop_signal:
            while self.step < end_step:
                batch = batch_to_device(next(self.data.sampler), self.device)
                step_began = time.perf_counter()
                metric_sums += self.advance({key: batch[key] for key in MODEL_KEYS})
                step_seconds += time.perf_counter() - step_began
                if progress is not None:
                    progress.update(1)
                if fit is not None and (length := fit.observe(self.step, time.monotonic())) is not None:
                    end_step = self.total_steps = self._set_schedule_length(fit, length, progress)
                    fit = None

                at_log_step = self.step % cfg.log_interval == 0 or self.step == end_step
                if at_log_step:
                    dist_lib.all_reduce_sum(metric_sums, ctx)
                    now = time.monotonic()
                    last_train = summarise(metric_sums.cpu(), prefix="train/")
                    steps_per_second = (self.step - last_log_step) / max(now - last_log_time, 1e-9)
                    throughput = self.throughput(steps_per_second)
                    record = {"step": self.step, **last_train, "train/lr": self.lr(cfg.lr),
                              "steps_per_second": steps_per_second, **throughput, "elapsed_s": now - start_time}
                    if self.device.type == "cpu":  # the loop's share of the time: sampling, logging, evaluations
                        record["outside_step_share"] = max(1.0 - step_seconds / max(now - last_log_time, 1e-9), 0.0)
                    self._append_metrics(record)
                    if progress is not None:
                        postfix = dict(loss=f"{last_train['train/loss']:.4f}", exact=f"{last_train['train/exact_accuracy']:.3f}",
                                       tok_s=f"{throughput['tokens_per_second']:,.0f}")
                        if "mfu" in throughput:
                            postfix["mfu"] = f"{throughput['mfu']:.1%}"
                        progress.set_postfix(postfix)
                    metric_sums.zero_()
                    last_log_time, last_log_step, step_seconds = now, self.step, 0.0

                new_best = False
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < end_step:
                    self.last_eval = self.run_evaluation(cfg.eval_examples)
                    new_best = self._update_best(self.last_eval)
                    reached = self._time_to_accuracy(self.last_eval)
                    self._append_metrics({"step": self.step, **self.last_eval, **self._best_fields(), **reached})
                    self._write(progress, self._eval_line("eval", self.last_eval) + (" (best so far)" if new_best else "")
                                + _reached_text(reached))
                if new_best or (checkpoint_interval and self.step % checkpoint_interval == 0 and self.step < end_step):
                    self.save_checkpoint()
                    saved_at = self.step

                # Stop requests: checked every step alone; with several ranks only at logging steps,
                # where all ranks agree through one collective.
                out_of_time = time.monotonic() > deadline
                if ctx.enabled:
                    if not at_log_step:
                        continue
                    interrupted = dist_lib.any_rank(stop_signal.requested, ctx)
                    out_of_time = dist_lib.any_rank(out_of_time, ctx)
                else:
                    interrupted = stop_signal.requested
                if interrupted:
                    stopped_by = "interrupt"
                    break
                if out_of_time:
                    stopped_by = "max_minutes"
                    break

            if progress is not None:
                progress.close()
            if saved_at != self.step:
                path = self.save_checkpoint()
                if path is not None:
                    self.log(f"saved checkpoint {path}")

            final_eval = None
            if stopped_by != "interrupt":
                final_eval = self.run_evaluation(limit=None, prefix="test/")
                self.last_eval = final_eval
                self._append_metrics({"step": self.step, "final": True, **final_eval, **self._best_fields(),
                                      **self._time_to_accuracy(final_eval)})
                if ctx.is_main:
                    run_directory.write_final_eval(self.run_dir, self.step, final_eval, self.best)
                self.log(self._eval_line("held-out test (EMA weights, all steps)" if self.ema else "held-out test", final_eval))
            else:
                self.log(f"interrupted at step {self.step}; resume with --resume --run-dir {self.run_dir}")
            if self.best is not None:
                self.log(f"best periodic evaluation: step {self.best['step']}, {self.best['metric']} {self.best['value']:.4f} "
                         f"({self.run_dir / self.best['file']}; trm-fast eval --checkpoint {self.run_dir} --which best)")
        dist_lib.barrier(ctx)
        return TrainResult(self.run_dir, self.step, stopped_by, final_eval, last_train)

    def _update_best(self, metrics: dict) -> bool:
        """Record a periodic evaluation as the best when its cfg.best_metric beats the best so far
        (every rank decides alike: the figures are reduced over all of them)."""
        name = "eval/" + self.cfg.best_metric
        value = float(metrics[name])
        if not run_directory.is_better(value, self.best, self.cfg.best_metric):
            return False
        self.best = run_directory.best_record(self.step, name, value)
        return True

    def _time_to_accuracy(self, metrics: dict) -> dict:
        """The TIME_TO_EXACT thresholds this evaluation reached first: {"time_to/exact_80": seconds}."""
        exact = float(next(value for name, value in metrics.items() if name.endswith("/exact_accuracy")))
        newly = {}
        for threshold in TIME_TO_EXACT:
            name = f"time_to/exact_{round(threshold * 100)}"
            if exact >= threshold and name not in self.time_to:
                self.time_to[name] = newly[name] = time.monotonic() - self.created
        return newly

    def _best_fields(self) -> dict:
        """eval/best_<metric> and eval/best_step of the metrics record (none before a best exists)."""
        if self.best is None:
            return {}
        return {"eval/best_" + self.cfg.best_metric: self.best["value"], "eval/best_step": self.best["step"]}

    def _set_schedule_length(self, fit: budget_lib.ScheduleFit, length: int, progress) -> int:
        """Fix the measured schedule length (trm_fast.budget) and record it where a rerun finds it."""
        length = dist_lib.broadcast_object(length, self.context)  # rank 0's measurement: every rank agrees
        self.cfg.max_steps = length
        if self.context.is_main:
            run_directory.write_config(self.run_dir, self.cfg)
        self._append_metrics({"step": self.step, "schedule_steps": length})
        self._write(progress, fit.message(length, self.cfg.max_minutes))
        if progress is not None:
            progress.total = length
            progress.refresh()
        return length

    def throughput(self, steps_per_second: float) -> dict:
        """Grid tokens per second over all processes and, on a GPU with a known peak, model FLOP
        utilisation (trm_fast.flops against the data-sheet peak of the activation dtype)."""
        config, global_batch = self.model.config, self.cfg.global_batch_size
        result = {"tokens_per_second": steps_per_second * global_batch * config.seq_len}
        if self.device.type == "cuda":
            peak = flops_lib.peak_flops(torch.cuda.get_device_name(self.device), config.forward_dtype)
            step_flops = flops_lib.train_step_flops(config, global_batch)
            mfu = flops_lib.model_flop_utilisation(step_flops * steps_per_second, 1.0, None if peak is None else peak * self.context.world_size)
            if mfu is not None:
                result["mfu"] = mfu
        return result

    def _write(self, progress, line: str) -> None:
        if not self.context.is_main:
            return
        if progress is not None:
            progress.write(line)
        else:
            self._log(line)

    def _eval_line(self, label: str, metrics: dict) -> str:
        prefix = next(iter(metrics)).split("/")[0] + "/"
        return (
            f"step {self.step} {label}: exact {metrics[prefix + 'exact_accuracy']:.4f} "
            f"token {metrics[prefix + 'accuracy']:.4f} q-halt {metrics[prefix + 'q_halt_accuracy']:.4f} "
            f"lm_loss {metrics[prefix + 'lm_loss']:.4f} on {int(metrics[prefix + 'count'])} examples"
            + "".join(f" {name} {metrics[prefix + name]:.4f}" for name in ("pass@1", "pass@2") if prefix + name in metrics)
        )

    def close(self) -> None:
        self.tracker.close()
        dist_lib.shutdown(self.context)


def _reached_text(reached: dict) -> str:
    """" (first >= 50%, 80% exact after 6.2 min)" for newly reached TIME_TO_EXACT thresholds."""
    if not reached:
        return ""
    shares = ", ".join(name.rsplit("_", 1)[1] + "%" for name in reached)
    return f" (first >= {shares} exact after {max(reached.values()) / 60:.1f} min)"


def train(
    cfg: TrainConfig,
    run_dir: Optional[str | os.PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume) a run in `run_dir`; returns where it stopped and the final evaluation.

    `cfg` is a finished config: a preset, apply_overrides' result, or one whose fields were set by hand
    and then passed to trm_fast.config.validate (the trainer does not check it again)."""
    trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, log=log)
    try:
        return trainer.run()
    finally:
        trainer.close()
