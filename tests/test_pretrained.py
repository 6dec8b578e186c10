"""The models that ship inside the package: they load by name, reproduce the held-out figures their
model.json states, work from the CLI with no training, and the Python API page's example runs."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trm_fast import pretrained
from trm_fast.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("maze-cpu", "sudoku-cpu")


def info(name):
    return json.loads((pretrained.ROOT / name / pretrained.CONFIG_FILE).read_text())


def held_out_cases():
    return [(name, entry["file"]) for name in SHIPPED for entry in info(name)["held_out"]]


def test_both_quick_start_models_ship_small_with_three_held_out_sets():
    assert set(SHIPPED) <= set(pretrained.names())
    for name in SHIPPED:
        folder = pretrained.folder(name)
        assert (folder / pretrained.WEIGHTS_FILE).stat().st_size + (folder / pretrained.CONFIG_FILE).stat().st_size < 1_000_000
        described = info(name)
        assert described["weights"] == "ema" and described["trained"]["command"].startswith("trm-fast train")
        assert len(described["held_out"]) == 3 and described["held_out"][0]["file"] == described["test_data"]
        assert all((folder / entry["file"]).is_file() for entry in described["held_out"])


@pytest.mark.parametrize("name, file", held_out_cases())
def test_shipped_model_reproduces_its_stated_figures(name, file):
    """Within noise: exactly here in float32; a bf16 forward (GPU, CPUs with native bf16) may move a
    few answers, so allow two binomial standard errors of the stated rate plus one example."""
    from trm_fast.solver import load_for_eval
    from trm_fast.train.evaluate import evaluate_each_step

    stated = next(entry for entry in info(name)["held_out"] if entry["file"] == file)
    loaded, source = load_for_eval(name, pretrained.folder(name) / file, backend="torch", device=torch.device("cpu"))
    curve = evaluate_each_step(loaded.model, source.batches(256), torch.device("cpu"), backend="torch")
    count = stated["examples"]
    assert curve.final["count"] == count
    rate = stated["exact_accuracy"]
    noise = 2 * math.sqrt(rate * (1 - rate) / count) + 1 / count
    assert abs(curve.final["exact_accuracy"] - rate) <= noise
    assert abs(curve.final["accuracy"] - stated["accuracy"]) <= noise


def test_solve_a_shipped_model_with_no_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing to find in the working directory: the model and its test set ship
    assert main(["solve", "--checkpoint", "maze-cpu", "--index", "3", "--image", "solve.png", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "maze-cpu" in out and "example 3 of" in out and ("CORRECT" in out) != ("WRONG" in out)
    assert (tmp_path / "solve.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "data").exists()


def test_eval_a_shipped_model_on_the_users_own_mazes(tmp_path, capsys):
    from trm_fast.data import generate_mazes, write_maze_csv

    mazes = write_maze_csv(tmp_path / "mazes.csv", *generate_mazes(20, 7, seed=5, style="random"))
    assert main(["eval", "--checkpoint", "maze-cpu", "--data", str(mazes), "--backend", "torch", "--halt"]) == 0
    out = capsys.readouterr().out
    steps = json.loads((pretrained.ROOT / "maze-cpu" / pretrained.CONFIG_FILE).read_text())["model_config"]["halt_max_steps"]
    assert f"data {mazes}: 20 examples, {steps} supervision steps" in out and "halting: each example stops" in out


def test_the_python_api_page_example_runs_as_written():
    page = (REPO / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1, "docs/python-api.md should hold one python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "solved in" in result.stdout and "supervision steps" in result.stdout


def test_the_readme_example_runs_as_written():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use a trained model"):readme.index("## Command line")]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    *maze_rows, summary = result.stdout.rstrip("\n").split("\n")
    assert [len(row) for row in maze_rows] == [7] * 7 and "S" in "".join(maze_rows) and "G" in "".join(maze_rows)
    assert "supervision steps, q_halt" in summary
