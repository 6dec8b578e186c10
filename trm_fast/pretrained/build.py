"""Make a shipped model from a finished run: its final EMA weights and config (`export_model`), the
held-out sets it is measured on (`write_held_out_sets`: the run's own test split, another seed,
another style), and its figures on them (`measure`), recorded in its model.json.

    python -m trm_fast.pretrained.build maze-cpu /work/runs/maze-cpu-ship [--out trm_fast/pretrained]
    python -m trm_fast.pretrained.build sudoku-cpu /work/runs/sudoku-cpu-ship

Every held-out set is a CSV in the model's folder; the seeds and filters that made it are in
HELD_OUT below and in model.json, so it can be made again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from trm_fast import pretrained
from trm_fast.data import load_split
from trm_fast.puzzles import get_kind, kind_of_folder

TEST_FILE = "test.csv"

# name -> (file, description) of each held-out set; the first is the run's own test split.
HELD_OUT = {
    "maze-cpu": [
        (TEST_FILE, "the run's test split: 500 7x7 random-wall mazes, generator seed 0 on its own stream, none "
                    "equal to a training maze up to the 8 symmetries"),
        ("seed1-random.csv", "another seed: the first 500 of generate_mazes(1000, 7, seed=1, stream=1, "
                             "style='random') that equal no training or test maze up to symmetry"),
        ("seed1-corridors.csv", "another style: the first 500 of generate_mazes(1000, 7, seed=1, stream=1, "
                                "style='corridors') that equal no training or test maze up to symmetry"),
    ],
    "sudoku-cpu": [
        (TEST_FILE, "the run's test split: 500 6x6 Sudoku (2x3 boxes), generator seed 0, none equivalent to a "
                    "training puzzle under the Sudoku symmetries"),
        ("seed1.csv", "another seed: the first 500 of generate_sudokus(600, 6, seed=1) equivalent to no "
                      "training or test puzzle"),
        ("seed1-guess.csv", "another kind: the first 300 of generate_sudokus(400, 6, seed=1, min_rating=1) "
                            "(puzzles that singles cannot solve: at least one guess) equivalent to no training or "
                            "test puzzle"),
    ],
}


def export_model(run_dir: str | Path, out_dir: str | Path, name: str, command: Optional[str] = None) -> Path:
    """Write a run's final EMA weights (model.safetensors, float32) and model.json: the model config,
    the puzzle format, the test set file name and how it was trained. Returns the folder."""
    from safetensors.torch import save_file

    from trm_fast.solver import read_checkpoint

    checkpoint = read_checkpoint(run_dir, "ema")
    train = checkpoint.meta.get("train_config") or {}
    dataset = train.get("dataset")
    kind = get_kind(dataset)
    if kind is not None:
        puzzle = kind.puzzle_info(train[kind.settings_field])
    else:
        raise ValueError(f"{run_dir}: only runs on the built-in maze or Sudoku data can be exported, not {dataset!r}")
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    weights = {key: value.detach().to(torch.float32).contiguous() for key, value in checkpoint.state_dict.items()}
    save_file(weights, str(out / pretrained.WEIGHTS_FILE))
    (out / pretrained.WEIGHTS_FILE).chmod(0o644)  # safetensors writes it private; it ships to everyone
    final_eval_path = Path(run_dir) / "final_eval.json"
    final_eval = json.loads(final_eval_path.read_text()) if final_eval_path.is_file() else None
    info = {
        "format": pretrained.FORMAT,
        "version": pretrained.VERSION,
        "name": name,
        "weights": "ema",
        "model_config": checkpoint.saved_model_config,
        "puzzle": puzzle,
        "test_data": TEST_FILE,
        "trained": {"command": command, "steps": checkpoint.meta.get("step"), "preset": train.get("preset"),
                    "train_config": train, "final_eval": final_eval},
        "held_out": [],
    }
    write_info(out, info)
    return out


def write_info(folder: Path, info: dict) -> None:
    (folder / pretrained.CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")


def write_held_out_sets(folder: Path, name: str, run_data_dir: str | Path, log: Callable[[str], None] = print) -> None:
    """The CSV files of HELD_OUT[name] in `folder`, from the run's dataset folder (its test split,
    and its training split to keep the other sets apart from it), as the data's puzzle kind makes them."""
    train, test = load_split(run_data_dir, "train"), load_split(run_data_dir, "test")
    kind = kind_of_folder(run_data_dir)
    if kind is None:
        raise ValueError(f"{run_data_dir}: no held-out sets for data of no known puzzle kind")
    kind.write_held_out_sets(Path(folder), train, test, Path(run_data_dir), TEST_FILE, log)


def measure(folder: Path, file: str, device: str = "cpu", backend: Optional[str] = "torch") -> dict:
    """The model's figures on one held-out file: all steps and halting."""
    from trm_fast.solver import load_for_eval
    from trm_fast.train.evaluate import evaluate_each_step, evaluate_with_halting

    loaded, source = load_for_eval(folder, folder / file, backend=backend, device=torch.device(device))
    curve = evaluate_each_step(loaded.model, source.batches(256), torch.device(device), backend=backend)
    halting = evaluate_with_halting(loaded.model, source.batches(256), torch.device(device), 256, backend=backend)
    return {"examples": int(curve.final["count"]), "exact_accuracy": curve.final["exact_accuracy"],
            "accuracy": curve.final["accuracy"],
            "exact_accuracy_per_step": [point["exact_accuracy"] for point in curve.steps],
            "halting": {"exact_accuracy": halting.metrics["exact_accuracy"], "accuracy": halting.metrics["accuracy"],
                        "mean_steps": halting.metrics["steps"], "steps_histogram": halting.steps_histogram}}


def build(name: str, run_dir: str | Path, out_root: str | Path = pretrained.ROOT, command: Optional[str] = None,
          log: Callable[[str], None] = print) -> Path:
    """Export `run_dir` as the shipped model `name`, write its held-out sets and record its figures."""
    from trm_fast.solver import read_checkpoint

    if name not in HELD_OUT:
        raise ValueError(f"no held-out sets defined for {name!r} (known: {', '.join(HELD_OUT)})")
    data_dir = read_checkpoint(run_dir, "ema").data_path
    folder = export_model(run_dir, out_root, name, command)
    write_held_out_sets(folder, name, data_dir, log)
    info = json.loads((folder / pretrained.CONFIG_FILE).read_text())
    info["held_out"] = []
    for file, description in HELD_OUT[name]:
        figures = measure(folder, file)
        log(f"{name} on {file}: exact {figures['exact_accuracy']:.2%}, token {figures['accuracy']:.2%}; halting: exact "
            f"{figures['halting']['exact_accuracy']:.2%} in {figures['halting']['mean_steps']:.2f} steps on average")
        info["held_out"].append({"file": file, "description": description, **figures})
    write_info(folder, info)
    return folder


def figures_table(folder: Path) -> str:
    """The held-out figures of an exported model as a markdown table (docs/pretrained.md)."""
    info = json.loads((folder / pretrained.CONFIG_FILE).read_text())
    lines = ["| held-out set | examples | exact (all steps) | token | exact, halting | mean steps, halting |",
             "|---|---:|---:|---:|---:|---:|"]
    for entry in info["held_out"]:
        halting = entry["halting"]
        lines.append(f"| `{entry['file']}`: {entry['description']} | {entry['examples']} | "
                     f"**{entry['exact_accuracy']:.1%}** | {entry['accuracy']:.2%} | {halting['exact_accuracy']:.1%} | "
                     f"{halting['mean_steps']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm_fast.pretrained.build", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(HELD_OUT))
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=str(pretrained.ROOT), help="folder that receives <name>/")
    parser.add_argument("--command", default=None, help="the training command, recorded in model.json")
    args = parser.parse_args(argv)
    folder = build(args.name, args.run_dir, args.out, args.command)
    print(figures_table(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
