"""`trm-fast`: train, evaluate and inspect Tiny Recursive Models from the command line.

    trm-fast train --dataset maze [--preset maze-cpu | --config FILE.json] [--max-minutes 10] [--set lr=3e-4]
    trm-fast eval  --checkpoint runs/x|runs/x/best|maze-cpu [--which best] [--dataset data/maze-... | mazes.csv] [--halt] [--json F] [--image F.png]
    trm-fast eval  --checkpoint runs/x|maze-cpu --maze-styles [--count 500] [--seed 1] [--save-sets DIR] [--json F]
    trm-fast solve --checkpoint runs/x|maze-cpu [--index 3] [--steps] [--image solve.png]
    trm-fast ablate [--preset maze-cpu] [--out DIR] [--only a,b] [--variant NAME:field=value,...] [--seeds K]
    trm-fast plot RUN_DIR [RUN_DIR ...] --image curves.png
    trm-fast data maze --out DIR [--style random] [--size 30] [--csv]
    trm-fast data sudoku --out DIR [--size 9|6|4] [--num-aug 1000] [--min-rating 10] [--csv]
    trm-fast data arc --version 1|2 --out DIR [--num-aug 1000] [--json-dir DIR --prefix arc-agi]
    trm-fast data convert --train train.csv --test test.csv --out DIR   # Maze-Hard / Sudoku-Extreme CSV
    trm-fast presets
    trm-fast config [--preset NAME] [--set FIELD=VALUE ...] [--json FILE.json]

One vocabulary: --dataset names the data, --set FIELD=VALUE changes a config field, --out DIR is a
directory the command writes, --image FILE.png a picture, --json FILE a JSON file, --seed a seed.
Argument parsing and printing only; the work is in trm_fast.train, trm_fast.budget, trm_fast.solver,
trm_fast.study and trm_fast.plots. Expected failures (bad data, config, checkpoint) print one line
`trm-fast: error: ...` on stderr and exit with status 2. Set TRM_FAST_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

PROG = "trm-fast"


class UsageError(Exception):
    """A command-line mistake (exit status 2)."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what happens without it."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings and not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are the single line every other failure uses, and help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def _expected_errors() -> tuple[type, ...]:
    from trm_fast.errors import user_errors

    return (UsageError, *user_errors())


# ----------------------------------------------------------------------------------------------
# train / config


def budget_help() -> str:
    """The rule of trm_fast.budget in the words of the command line (train, ablate and config --help)."""
    from trm_fast import budget
    from trm_fast import config as config_lib

    return ("Length of training: --max-steps N makes the learning-rate schedule N steps long and stops there. "
            "--max-minutes M without --max-steps fills M minutes: during the warm-up the trainer measures its step "
            "rate, sets the schedule to the steps that fit (printed as 'schedule: N steps to fill M min' and saved "
            "in config.json, so --max-steps N reruns it), and stops at M minutes at the latest. Both: N steps, at "
            "most M minutes. Neither: the config's own length (maze-cpu: "
            f"{budget.describe(config_lib.preset('maze-cpu'))}; maze-paper: "
            f"{budget.describe(config_lib.preset('maze-paper'))}). A resumed run keeps its schedule; there "
            "--max-minutes caps this invocation and --max-steps moves the end.")


def _newest_run_with_checkpoint(root: Path) -> Optional[Path]:
    from trm_fast.train.run_directory import latest_checkpoint

    if not root.is_dir():
        return None
    candidates = [d for d in root.iterdir() if d.is_dir() and latest_checkpoint(d) is not None]
    return max(candidates, key=lambda d: latest_checkpoint(d).stat().st_mtime) if candidates else None


def _starting_config(args):
    """The config a new run starts from: --config FILE.json, --preset, or the default preset of the
    data's puzzle kind ("sudoku" or a Sudoku folder -> a Sudoku preset; the paper's with CUDA, the CPU
    one without)."""
    import torch

    from trm_fast import config as config_lib
    from trm_fast.puzzles import kind_of_dataset

    if args.config:
        return config_lib.load_json(args.config)
    kind = kind_of_dataset(args.dataset)
    return config_lib.preset(args.preset or config_lib.default_preset_name(torch.cuda.is_available(),
                                                                           kind.name if kind else None))


def build_train_config(args) -> tuple[object, Optional[Path]]:
    """The TrainConfig and run directory the `train` (or `config`) arguments describe."""
    from trm_fast import budget
    from trm_fast import config as config_lib
    from trm_fast.train import run_directory

    resume = getattr(args, "resume", False)
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else None
    if resume and run_dir is None:
        run_dir = _newest_run_with_checkpoint(Path("runs"))
        if run_dir is None:
            raise UsageError("--resume without --run-dir: no run with a checkpoint under ./runs")
    if resume:
        if args.preset or args.config:
            raise UsageError("--preset/--config cannot change a resumed run (its config.json is used); use --set")
        config_path = run_directory.config_path(run_dir)
        if not config_path.is_file():
            raise UsageError(f"--resume: {run_dir} has no {config_path.name}")
        cfg = config_lib.load_json(config_path)
    else:
        cfg = _starting_config(args)
    if args.dataset is not None:
        cfg.dataset = args.dataset
    for name in ("data_dir", "seed", "device", "backend"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    config_lib.apply_overrides(cfg, args.set or [])
    if resume:  # the schedule was set when the run started
        if args.max_steps is not None:
            cfg.max_steps = args.max_steps
        if args.max_minutes is not None:
            cfg.max_minutes = args.max_minutes
    else:
        budget.apply_budget(cfg, args.max_steps, args.max_minutes)
    config_lib.validate(cfg)
    return cfg, run_dir


def _print_gpu_estimate(cfg) -> None:
    """On a GPU, what the run is about to cost before it starts (a paper preset runs for many hours)."""
    import torch

    from trm_fast import budget
    from trm_fast import config as config_lib
    from trm_fast.puzzles import DEFAULT_KIND, kind_of_dataset
    from trm_fast.train.distributed import pick_device

    if pick_device(cfg.device).type != "cuda" or os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 says it
        return
    found = kind_of_dataset(cfg.dataset)
    kind = found.name if found is not None else DEFAULT_KIND
    quick = f"trm-fast train --dataset {kind} --preset {config_lib.default_preset_name(False, kind)}"
    print(budget.gpu_run_notice(cfg, torch.cuda.get_device_name(), quick), flush=True)


def cmd_train(args) -> int:
    from trm_fast.train.loop import train

    cfg, run_dir = build_train_config(args)
    if not args.resume:
        _print_gpu_estimate(cfg)
    result = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    if result.stopped_by == "interrupt":
        return 130
    return 0


def config_lines(cfg) -> list[str]:
    """Every config field as `field=value`, each a valid `--set` argument (dotted names for groups)."""
    import dataclasses

    def text(value) -> str:
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def flat(holder, prefix: str) -> list[str]:
        lines = []
        for field in dataclasses.fields(holder):
            value = getattr(holder, field.name)
            if dataclasses.is_dataclass(value):
                lines += flat(value, f"{prefix}{field.name}.")
            else:
                lines.append(f"{prefix}{field.name}={text(value)}")
        return lines

    return flat(cfg, "")


def cmd_config(args) -> int:
    from trm_fast import config as config_lib

    cfg, _ = build_train_config(args)
    print("\n".join(config_lines(cfg)))
    if args.json:
        config_lib.save_json(cfg, args.json)
        print(f"wrote {args.json} (start a run from it: trm-fast train --config {args.json})", file=sys.stderr)
    return 0


def preset_summary(cfg) -> str:
    """One line about a preset: data, model, batch, length, device."""
    from trm_fast import budget
    from trm_fast.puzzles import get_kind

    model = cfg.model
    kind = get_kind(cfg.dataset)
    data = kind.describe_settings(kind.settings(cfg)) if kind is not None else f"dataset {cfg.dataset}"
    block = "MLP over tokens" if model.mlp_t else "attention"
    return (f"{data}; width {model.hidden_size}, {model.num_layers} layers ({block}), T={model.h_cycles} "
            f"n={model.l_cycles}, {model.forward_dtype}; batch {cfg.global_batch_size}; {budget.describe(cfg)}; "
            f"device {cfg.device}")


def cmd_presets(args) -> int:
    from trm_fast import config as config_lib
    from trm_fast.puzzles import KINDS

    width = max(len(name) for name in config_lib.PRESETS)
    defaults = {config_lib.default_preset_name(cuda, kind): f"default for {kind} {'with' if cuda else 'without'} CUDA"
                for cuda in (True, False) for kind in KINDS}
    for name in config_lib.PRESETS:
        note = f" ({defaults[name]})" if name in defaults else ""
        print(f"{name:<{width}}  {preset_summary(config_lib.preset(name))}{note}")
    return 0


# ----------------------------------------------------------------------------------------------
# eval / solve


def load_model_for_eval(args, device):
    """(model in eval mode on the chosen engine and backend, eval data source, description of the
    checkpoint) from the `eval`/`solve` arguments."""
    from trm_fast.solver import load_for_eval

    loaded, source = load_for_eval(args.checkpoint, args.dataset, settings=args.model_set or [], engine=args.engine,
                                   backend=args.backend, weights=args.weights, device=device, log=print,
                                   which=args.which)
    return loaded.model, source, loaded.description


def _device(name: Optional[str]):
    from trm_fast.train.distributed import pick_device

    return pick_device(name or "auto")


def _print_step_curve(curve) -> None:
    print(f"accuracy after each supervision step (every example runs all {len(curve.steps)}):")
    print("  step     exact     token  q-halt acc.")
    for step, metrics in enumerate(curve.steps, 1):
        print(f"  {step:4d}  {metrics['exact_accuracy']:8.2%}  {metrics['accuracy']:8.2%}  {metrics['q_halt_accuracy']:8.2%}")


def _print_halting_comparison(curve, halting, max_steps: int) -> None:
    final = curve.final
    rows = [
        ("exact accuracy", f"{final['exact_accuracy']:.2%}", f"{halting.metrics['exact_accuracy']:.2%}"),
        ("token accuracy", f"{final['accuracy']:.2%}", f"{halting.metrics['accuracy']:.2%}"),
        ("mean supervision steps", f"{max_steps:.2f}", f"{halting.metrics['steps']:.2f}"),
        ("example-steps (compute)", f"{curve.example_steps:,}",
         f"{halting.example_steps:,} ({halting.example_steps / max(curve.example_steps, 1):.1%})"),
        ("GFLOP", f"{curve.flops / 1e9:,.2f}", f"{halting.flops / 1e9:,.2f}"),
        ("wall time", f"{curve.seconds:.2f}s", f"{halting.seconds:.2f}s ({halting.seconds / max(curve.seconds, 1e-9):.2f}x)"),
    ]
    print(f"halting: each example stops at its own Q-halt decision or after {max_steps} steps; stopped examples' "
          "slots take waiting ones")
    print(f"  {'':24s}  {'all steps':>12s}  {'halting':>12s}")
    for name, everything, halted in rows:
        print(f"  {name:24s}  {everything:>12s}  {halted:>12s}")
    print("  stopped after step: " + "  ".join(f"{step}: {count}" for step, count in enumerate(halting.steps_histogram, 1)))


def _print_votes(voted, final) -> None:
    """The voting evaluation's figures (ARC: trm_fast.train.arc_eval.ArcResult) and where its files are."""
    metrics = voted.metrics
    print(f"voted over the augmented copies: {voted.predictions} predictions for {len(voted.tasks)} tasks "
          f"({voted.unmatched} matched no test input), {voted.seconds:.1f}s")
    print(f"  pass@1 {metrics['pass@1']:.4f}  pass@2 {metrics['pass@2']:.4f} (ARC Prize metric)")
    larger = [f"pass@{k} {value:.4f}" for k, value in
              sorted(((int(name.split("@")[1]), value) for name, value in metrics.items()), key=lambda item: item[0])
              if k > 2]
    if larger:
        print("  " + "  ".join(larger))
    print(f"  per-example exact accuracy (each augmented copy on its own, last step) {final['exact_accuracy']:.4f}")
    if voted.baselines:
        print("  baselines (no model, scored as pass@1): " + "  ".join(
            f"{name.replace('_', ' ')} {value:.4f}" for name, value in voted.baselines.items()))
    if voted.files:
        print(f"wrote {voted.files['submission']} and {voted.files['results']}")


def cmd_eval_maze_styles(args) -> int:
    """`eval --maze-styles`: the table of trm_fast.train.maze_styles."""
    import json

    from trm_fast.train import maze_styles

    clashing = [flag for flag, value in (("--dataset", args.dataset), ("--limit", args.limit), ("--image", args.image),
                                         ("--out", args.out)) if value is not None]
    if clashing:
        raise UsageError(f"--maze-styles makes its own mazes and prints a table; it does not take {', '.join(clashing)}")
    try:
        report = maze_styles.evaluate_maze_styles(
            args.checkpoint, count=500 if args.count is None else args.count, seed=1 if args.seed is None else args.seed,
            device=_device(args.device), engine=args.engine, backend=args.backend, weights=args.weights,
            which=args.which, settings=args.model_set or [], batch_size=args.batch_size, loss_type=args.loss_type,
            save_sets=args.save_sets)
    except maze_styles.NotAMazeRun as error:
        raise UsageError(str(error)) from None
    print(f"checkpoint {report.checkpoint}")
    print(f"{report.size}x{report.size} mazes, none equal up to symmetry to any of the {report.excluded:,} training and "
          f"test mazes of {report.data}; held-out seed {report.seed}. exact/token: after all {report.halt_max_steps} "
          "supervision steps; halting: each maze stops at its own Q-halt decision")
    print(maze_styles.markdown_table(report.rows))
    for row in report.rows:
        if row["note"]:
            print(f"{row['style']}: {row['note']}")
    saved = [row["file"] for row in report.rows if row.get("file")]
    if saved:
        print(f"wrote {', '.join(saved)} (trm-fast eval --checkpoint {args.checkpoint} --dataset FILE --halt "
              "reproduces a row)")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    import json

    from trm_fast.train.evaluate import evaluate_each_step, evaluate_with_halting

    if args.maze_styles:
        return cmd_eval_maze_styles(args)
    for flag, value in (("--count", args.count), ("--seed", args.seed), ("--save-sets", args.save_sets)):
        if value is not None:
            raise UsageError(f"{flag} goes with --maze-styles")
    if args.image:
        from trm_fast.plots import check_image_path

        check_image_path(args.image)
    device = _device(args.device)
    model, source, description = load_model_for_eval(args, device)
    max_steps = model.config.halt_max_steps
    batch_size = args.batch_size
    curve = evaluate_each_step(model, source.batches(batch_size, args.limit), device, loss_type=args.loss_type,
                               backend=args.backend)
    halting, halting_skipped, all_steps_note = None, None, None
    if source.needs_all_steps:
        all_steps_note = (f"{source.name}: its answers are voted over every supervision step, so "
                          + (f"--halt runs all {max_steps}" if args.halt else f"every example runs all {max_steps}"))
        halting_skipped = all_steps_note if args.halt else None
    elif args.halt:
        halting = evaluate_with_halting(model, source.batches(batch_size, args.limit), device, batch_size,
                                        loss_type=args.loss_type, backend=args.backend)
    kind = source.puzzle_kind
    out_dir = Path(args.out) if args.out else None
    if out_dir is None and source.needs_all_steps:  # where a voting kind writes its files by default
        from trm_fast.solver import find_checkpoint

        out_dir = kind.vote_out_dir(find_checkpoint(args.checkpoint, args.which))
    voted = kind.vote(model, source, device, batch_size, args.limit, out_dir)
    final = curve.final
    print(f"checkpoint {description}")
    if all_steps_note:
        print(all_steps_note)
    _print_step_curve(curve)
    print(f"data {source.name}: {int(final['count'])} examples, {max_steps} supervision steps, {curve.seconds:.1f}s")
    print(f"exact accuracy {final['exact_accuracy']:.4f}  token accuracy {final['accuracy']:.4f}  "
          f"q-halt accuracy {final['q_halt_accuracy']:.4f}  lm_loss {final['lm_loss']:.4f}")
    if halting is not None:
        _print_halting_comparison(curve, halting, max_steps)
    if voted is not None:
        _print_votes(voted, final)
    if args.json:
        report = {"checkpoint": description, "data": source.name, "examples": int(final["count"]),
                  "halt_max_steps": max_steps, "all_steps": curve.to_dict(),
                  "halting": halting.to_dict() if halting is not None else None, "halting_skipped": halting_skipped}
        if voted is not None:
            report["votes"] = {**voted.summary(), "files": dict(voted.files)}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.image:
        from trm_fast import plots

        figure = plots.step_accuracy_figure(curve.steps, halting.metrics if halting is not None else None,
                                            title=f"{source.name} - {description}")
        print(f"wrote {plots.save_figure(figure, args.image)}")
    return 0


def cmd_solve(args) -> int:
    import torch

    from trm_fast.ops.loss_head import IGNORE_INDEX
    from trm_fast.train.evaluate import batch_to_device, run_all_steps

    if args.image:
        from trm_fast.plots import check_image_path

        check_image_path(args.image)
    device = _device(args.device)
    model, source, description = load_model_for_eval(args, device)
    if not 0 <= args.index < source.num_examples:
        raise UsageError(f"--index {args.index} is out of range: {source.name} has {source.num_examples} examples")
    example = source.example(args.index)
    batch = batch_to_device({k: torch.as_tensor(v)[None] for k, v in example.items()}, device)
    answers: list[tuple[object, float]] = []

    def record(step_index: int, outputs: dict) -> None:
        answers.append((outputs["logits"][0].argmax(-1).cpu().numpy(), float(outputs["q_halt_logits"][0])))

    run_all_steps(model, batch, on_step=record)
    labels = example["labels"]
    labelled = labels != IGNORE_INDEX
    print(f"checkpoint {description}")
    print(f"example {args.index} of {source.name}")
    print("question:")
    print(source.render(example["inputs"]))
    if source.puzzle_kind.marks_note:
        print(source.puzzle_kind.marks_note)
    if args.steps:
        for step_index, (answer, q_halt) in enumerate(answers[:-1]):
            correct = bool((answer[labelled] == labels[labelled]).all())
            print(f"after step {step_index + 1} (q_halt {q_halt:+.2f}, {'correct' if correct else 'wrong'}):")
            print(source.render(answer, marks=labelled & (answer != labels)))
    answer, q_halt = answers[-1]
    wrong = int((answer[labelled] != labels[labelled]).sum())
    print(f"model answer after {len(answers)} steps (q_halt {q_halt:+.2f}):")
    print(source.render(answer, marks=labelled & (answer != labels)))
    if wrong:
        print("expected:")
        print(source.render(labels))
        print(f"WRONG: {wrong} of {int(labelled.sum())} cells differ")
    else:
        print("CORRECT")
    if args.image:
        from trm_fast import plots

        figure = plots.solve_figure(
            example["inputs"], [answer for answer, _ in answers], [q for _, q in answers], labels,
            vocab_size=source.metadata.vocab_size, ignore_index=IGNORE_INDEX,
            title=plots.solve_title(source.name, args.index, args.checkpoint),
            kind=source.kind, shape=source.geometry)
        print(f"wrote {plots.save_figure(figure, args.image)}")
    return 0


# ----------------------------------------------------------------------------------------------
# data


def cmd_data_convert(args) -> int:
    from trm_fast.data import load_split
    from trm_fast.puzzles import kind_of_csv

    folder, kind = kind_of_csv(Path(args.train)).convert_csv(args)
    train, test = load_split(folder, "train"), load_split(folder, "test")
    print(f"wrote {folder}: {train.get_set().num_examples} train + {test.get_set().num_examples} test {kind} "
          f"(reference layout; train on it with: trm-fast train --dataset {folder})")
    return 0


# ----------------------------------------------------------------------------------------------
# ablate / plot


def _split_names(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [name for name in text.split(",")]


def cmd_ablate(args) -> int:
    import shlex

    from trm_fast import study as study_lib

    study = study_lib.make_study(
        out=args.out, preset=args.preset, variants=args.variant, only=_split_names(args.only), seeds=args.seeds,
        sets=args.set, max_steps=args.max_steps, max_minutes=args.max_minutes, dataset=args.dataset,
        data_dir=args.data_dir, device=args.device, backend=args.backend, seed=args.seed,
    )
    command = "trm-fast " + shlex.join(args.argv) if args.argv is not None else None
    result = study_lib.run_study(study, jobs=args.jobs, progress=not args.no_progress, command=command)
    if result.outputs:
        print(study_lib.markdown_table(result.report))
        print("wrote " + ", ".join(str(path) for path in result.outputs.values()))
    return 130 if result.interrupted else 0


def cmd_plot(args) -> int:
    from trm_fast import plots
    from trm_fast.train.run_directory import load_runs

    plots.check_image_path(args.image)
    runs = load_runs(args.run_dirs)
    print(f"wrote {plots.save_figure(plots.runs_figure(runs), args.image)}")
    return 0


# ----------------------------------------------------------------------------------------------


def _add_run_config_arguments(parser, for_study: bool = False) -> None:
    """The options that build a run's config, shared by train, config and ablate."""
    from trm_fast import config as config_lib
    from trm_fast.puzzles import KINDS

    what = "base config" if for_study else "config"
    parser.add_argument("--dataset", default=None, metavar="|".join([*KINDS, "DIR"]),
                        help=" or ".join(f'"{name}"' for name in KINDS) + " (built-in generators, nothing to download) "
                             "or a reference-layout dataset folder (trm-fast data ... builds one); default: the preset's")
    origin = parser.add_mutually_exclusive_group()
    origin.add_argument("--preset", choices=sorted(config_lib.PRESETS), default=None,
                        help=f"the {what} to start from (trm-fast presets lists them); default: maze-paper / "
                             "sudoku-paper with CUDA, maze-cpu / sudoku-cpu without, by --dataset")
    if not for_study:
        origin.add_argument("--config", default=None, metavar="FILE.json",
                            help="start from a saved config (a run's config.json, or trm-fast config --json FILE.json) "
                                 "instead of a preset; default: a preset")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help=f"change a field of the {what}, repeatable, e.g. --set model.hidden_size=128 --set lr=3e-4; "
                             "trm-fast config --preset NAME lists every field; default: the config unchanged")
    parser.add_argument("--cache-dir", "--data-dir", dest="data_dir", default=None, metavar="DIR",
                        help="folder where the built-in generator writes the data and finds it again on the next "
                             "run with the same settings (ignored for a dataset folder); default: "
                             "data/<name from the generator settings>")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="training seed (weights, data order, halting exploration"
                             + (", the first of --seeds K" if for_study else "")
                             + "); the generated data has its own (--set maze.seed=S); default: the config's (0)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="schedule length in steps" + (" per variant" if for_study else "") + "; default: the config's (see below)")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="time budget in minutes" + (" per variant" if for_study else "") + "; default: the config's (see below)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to train; default: the config's (auto for the paper presets: CUDA when present)")
    parser.add_argument("--backend", choices=("auto", "torch", "triton", "cuda"), default=None,
                        help="implementation of the fast engine's fused ops; default: the config's (auto)")


def make_parser() -> argparse.ArgumentParser:
    import trm_fast

    parser = _Parser(prog=PROG, description="Train and run Tiny Recursive Models (TRM).")
    parser.add_argument("--version", action="version", version=f"{PROG} {trm_fast.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{train,eval,solve,ablate,plot,data,presets,config}",
                                     parser_class=_Parser)

    train = commands.add_parser("train", help="train a model (resumable)",
                                description="Train a model. trm-fast config takes the same options and prints the "
                                            "resolved config: every field --set accepts.",
                                epilog=budget_help())
    _add_run_config_arguments(train)
    train.add_argument("--run-dir", "--out", dest="run_dir", default=None, metavar="DIR",
                       help="run directory to write (config.json, metrics.jsonl, checkpoints/, final_eval.json); "
                            "default: runs/<preset>-<date>-<time>")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir (default: the newest under runs/) from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    for name, helptext in (("eval", "exact/token accuracy of a checkpoint, after each supervision step and halting"),
                           ("solve", "show the model solving one example")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--checkpoint", required=True,
                         help="a shipped model (maze-cpu, sudoku-cpu), an exported model folder, a run directory "
                              "(its newest checkpoint; RUN_DIR/best: its best, as --which best), a checkpoint file or "
                              "a reference-project state dict")
        sub.add_argument("--which", choices=("newest", "best"), default="newest",
                         help="which checkpoint of a run directory: the newest, or the best periodic evaluation's "
                              "(best.json)")
        sub.add_argument("--dataset", "--data", dest="dataset", default=None,
                         help="dataset folder (test split), maze / Sudoku CSV, or a built-in name (arc: the checkpoint's ARC data); default: the checkpoint's own test "
                              "data (a run's dataset, a shipped model's held-out test set)")
        sub.add_argument("--weights", choices=("ema", "raw"), default=None,
                         help="the EMA or the raw weights of a run that has both; default: EMA when the run has them")
        sub.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="where the model runs; auto: the GPU when there is one")
        sub.add_argument("--engine", choices=("fast", "reference"), default="fast",
                         help="fast (fused ops) or reference (the plain spec model)")
        sub.add_argument("--backend", choices=("auto", "torch", "triton", "cuda"), default=None,
                         help="implementation of the fast engine's fused ops; default: auto")
        sub.add_argument("--set", "--model-set", dest="model_set", action="append", metavar="FIELD=VALUE",
                         help="model settings the weights cannot tell (reference checkpoints), e.g. l_cycles=4; default: what the checkpoint says")
        if name == "eval":
            sub.add_argument("--batch-size", type=int, default=256, help="examples run at a time")
            sub.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only; default: all of them")
            sub.add_argument("--loss-type", choices=("stablemax", "softmax"), default="stablemax",
                             help="the loss reported as lm_loss")
            sub.add_argument("--halt", action="store_true",
                             help="also run every example until its own Q-halt decision (halted examples' slots "
                                  "take waiting ones) and compare accuracy, steps, compute and time with all steps")
            sub.add_argument("--json", metavar="FILE", default=None, help="write every figure into this JSON file; default: none written")
            sub.add_argument("--maze-styles", action="store_true",
                             help="a maze model on new mazes of every held-out style (generators written apart "
                                  "from the built-in one, docs/data.md) and of its own generator with another seed, "
                                  "none equal to a training or test maze: one table row per style")
            sub.add_argument("--count", type=int, default=None, metavar="N",
                             help="--maze-styles: mazes per style (default: 500)")
            sub.add_argument("--seed", type=int, default=None, metavar="S",
                             help="--maze-styles: seed of the held-out mazes (default: 1)")
            sub.add_argument("--save-sets", metavar="DIR", default=None,
                             help="--maze-styles: also write each set as a Maze-Hard CSV file DIR/<style>.csv; "
                                  "default: none written")
            sub.add_argument("--out", metavar="DIR", default=None,
                             help="where data voted over augmented copies (ARC) writes submission.json and "
                                  "arc_results.json; default: RUN/arc_eval beside the checkpoint's run directory "
                                  "(a checkpoint file: beside it)")
            sub.add_argument("--image", "--plot", dest="image", metavar="FILE.png", default=None,
                             help="draw the accuracy after each supervision step (and the halting result); default: no picture")
            sub.set_defaults(handler=cmd_eval)
        else:
            sub.add_argument("--index", type=int, default=0, help="which example of the data")
            sub.add_argument("--steps", action="store_true", help="show the answer after every supervision step")
            sub.add_argument("--image", metavar="FILE.png", default=None,
                             help="also draw the question and the answer after every supervision step into an image; default: no picture")
            sub.set_defaults(handler=cmd_solve)


    from trm_fast import study as study_lib

    ablate = commands.add_parser(
        "ablate", help="the tutorial's ablation study: variants of one config trained side by side, compared",
        description="Train variants of one base config (default: the tutorial's baseline, no-ema, less-recursion, "
                    "bigger-brain) and write ablation.png, ablation.md and ablation.json into --out. Running the "
                    "same command again reuses finished runs and resumes unfinished ones. The base is the preset "
                    "with the study's schedule: 600 steps per variant on CPU, 1000 on a GPU.",
        epilog=budget_help() + " Here the budget applies to each variant.")
    _add_run_config_arguments(ablate, for_study=True)
    ablate.add_argument("--out", default=None, metavar="DIR", help="study directory to write; default: runs/ablation-<preset>")
    ablate.add_argument("--only", default=None, metavar="A,B",
                        help="train only these variants now (the others stay for a later run); default: all")
    ablate.add_argument("--variant", action="append", metavar="NAME:FIELD=VALUE,...",
                        help="a variant as overrides of the base config (repeatable; replaces the default ones; "
                             f"a built-in name alone is that variant: {', '.join(study_lib.DEFAULT_VARIANT_NAMES)}; "
                             f"Sudoku: {', '.join(v.name for v in study_lib.SUDOKU_VARIANTS)}); "
                             "default: the built-in variants of the dataset")
    ablate.add_argument("--seeds", type=int, default=1, metavar="K", help="train every variant with K seeds")
    ablate.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs trained at a time, each in its own process (more only with idle cores)")
    ablate.add_argument("--no-progress", action="store_true", help="no progress bar")
    ablate.set_defaults(handler=cmd_ablate)

    plot = commands.add_parser("plot", help="draw training curves of run directories (loss, exact accuracy, lr)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (a study directory: all its runs)")
    plot.add_argument("--image", "--out", dest="image", required=True, metavar="FILE.png",
                      help="picture to write (.png, .pdf or .svg); --out is its former name and still works")
    plot.set_defaults(handler=cmd_plot)

    from trm_fast.puzzles import KINDS

    data = commands.add_parser("data", help="build a dataset folder (generated, ARC-AGI, or from Maze-Hard / Sudoku-Extreme CSV)")
    kinds = data.add_subparsers(dest="kind", metavar="{" + ",".join([*KINDS, "convert"]) + "}", parser_class=_Parser,
                                required=True)
    for kind in KINDS.values():
        kind.add_data_command(kinds)
    convert = kinds.add_parser(
        "convert", help="a dataset folder from Maze-Hard or Sudoku-Extreme CSV files (source,question,answer,rating)",
        description="Turn a train and a test CSV file (Maze-Hard: '# SGo' grids; Sudoku-Extreme: digits and '.') "
                    "into a reference-layout dataset folder that `trm-fast train --dataset DIR` trains on. The kind "
                    "is read from the files.")
    convert.add_argument("--train", required=True, metavar="FILE.csv", help="training CSV file")
    convert.add_argument("--test", required=True, metavar="FILE.csv", help="test CSV file")
    convert.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    convert.add_argument("--augment", action="store_true", help="mazes: add the 8 dihedral images of every training maze")
    convert.add_argument("--num-aug", type=int, default=0, metavar="N",
                         help="Sudoku: augmented copies of every training puzzle (the reference's 1k-aug-1000 set: 1000)")
    convert.add_argument("--subsample", type=int, default=None, metavar="N",
                         help="Sudoku: train on N puzzles drawn at random (the reference's 1k set: 1000); default: all")
    convert.add_argument("--seed", type=int, default=0, help="Sudoku: seed of the subsample and the augmentation")
    convert.set_defaults(handler=cmd_data_convert)

    presets = commands.add_parser("presets", help="list the presets, one line each")
    presets.set_defaults(handler=cmd_presets)

    config = commands.add_parser(
        "config", help="print the resolved config: every field --set accepts, with its value",
        description="Print the config that `trm-fast train` would run with the same options, one FIELD=VALUE "
                    "line per field; every line is a valid --set argument.", epilog=budget_help())
    _add_run_config_arguments(config)
    config.add_argument("--json", default=None, metavar="FILE.json",
                        help="also write the config as JSON, for trm-fast train --config FILE.json; default: print only")
    config.set_defaults(handler=cmd_config, resume=False)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    debug = os.environ.get("TRM_FAST_DEBUG", "0") not in ("", "0")
    try:
        parser = make_parser()
        args = parser.parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the boundary that turns expected errors into one line
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError) and not debug:
            print(f"{PROG}: error: out of GPU memory; split the batch further (--set micro_batch_size=N keeps the "
                  "global batch), add --set recompute=true, or spread it over more GPUs with torchrun "
                  "(the last checkpoint, if any, is intact: --resume)", file=sys.stderr)
            return 2
        if debug or not isinstance(error, _expected_errors()):
            raise
        message = " ".join(str(error).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
