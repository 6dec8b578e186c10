"""`trm-fast` end to end on a tiny config: train -> eval -> solve, and one-line errors for bad input."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import one_error_line, train_args
from trm_fast.cli import main

TINY_SETS = [
    "maze.size=6", "maze.num_train=48", "maze.num_test=8", "compile=false", "model.forward_dtype=float32", "model.hidden_size=32", "model.num_heads=2",
    "model.h_cycles=2", "model.l_cycles=1", "model.puzzle_emb_len=1",
    "model.halt_max_steps=3", "global_batch_size=8", "lr_warmup_steps=2", "log_interval=2",
    "eval_interval=none", "checkpoint_interval=none", "eval_batch_size=8",
]


def tiny_train_args(data_dir, run_dir, *extra):
    return train_args("maze", data_dir, run_dir, TINY_SETS, 3, *extra, preset="maze-cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(tiny_train_args(root / "data", root / "run")) == 0
    return root


def test_train_eval_solve(trained_run, capsys):
    run_dir = trained_run / "run"
    assert (run_dir / "final_eval.json").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir), "--device", "cpu", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "exact accuracy" in out and "token accuracy" in out and "8 examples" in out

    assert main(["solve", "--checkpoint", str(run_dir), "--index", "2", "--steps", "--device", "cpu", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "question:" in out and "after step 1" in out and "after step 2" in out
    assert "model answer after 3 steps" in out
    assert ("CORRECT" in out) != ("WRONG" in out)
    assert "S" in out and "G" in out  # the maze is drawn with its characters


@pytest.mark.parametrize("engine, backend", [("fast", "torch"), ("fast", "triton"), ("reference", None)])
def test_eval_and_solve_run_the_chosen_engine_and_backend(trained_run, engine, backend, monkeypatch, capsys):
    """`eval` and `solve` run the model of the chosen engine, and its ops on the chosen backend: the
    Triton kernels are launched with --backend triton and never otherwise."""
    import trm_fast.cli as cli
    from trm_fast.kernels import rms_norm_residual as rms_kernels
    from trm_fast.model import FastTRM

    loaded = []  # (model, its forward calls) per command
    load_model_for_eval = cli.load_model_for_eval

    def load_and_count(args, device):
        model, source, description = load_model_for_eval(args, device)
        calls, forward = [], model.forward
        model.forward = lambda *inputs, **options: calls.append(1) or forward(*inputs, **options)
        loaded.append((model, calls))
        return model, source, description

    launches = []
    launch = rms_kernels.rms_norm_residual_fwd
    monkeypatch.setattr(cli, "load_model_for_eval", load_and_count)
    monkeypatch.setattr(rms_kernels, "rms_norm_residual_fwd", lambda *args: launches.append(1) or launch(*args))
    chosen = ["--engine", engine, "--device", "cpu"] + (["--backend", backend] if backend else [])
    for command in (["eval", "--limit", "2"], ["solve", "--index", "1"]):
        launches.clear()
        assert main([*command, "--checkpoint", str(trained_run / "run"), *chosen]) == 0, command
        model, calls = loaded[-1]
        assert isinstance(model, FastTRM) == (engine == "fast"), command
        assert f"engine {engine}" in capsys.readouterr().out
        assert calls, f"{command[0]} did not run the loaded model"
        if engine == "fast":
            assert model.backend == backend
        assert bool(launches) == (backend == "triton"), (command, len(launches))


def test_eval_engines_agree(trained_run, capsys):
    lines = []
    for engine in ("reference", "fast"):
        assert main(["eval", "--checkpoint", str(trained_run / "run"), "--engine", engine, "--backend", "torch"]) == 0
        lines.append(capsys.readouterr().out.splitlines()[-1])
    assert lines[0].startswith("exact accuracy") and lines[0] == lines[1]


def test_eval_on_a_maze_csv_matches_the_folder(trained_run, tmp_path, capsys):
    from trm_fast.data import load_split, write_maze_csv

    test = load_split(trained_run / "data", "test")
    csv_path = write_maze_csv(tmp_path / "test.csv", test.inputs, test.labels)
    run_dir = str(trained_run / "run")
    assert main(["eval", "--checkpoint", run_dir, "--data", str(csv_path), "--backend", "torch"]) == 0
    from_csv = capsys.readouterr().out.splitlines()
    assert main(["eval", "--checkpoint", run_dir, "--data", str(trained_run / "data"), "--backend", "torch"]) == 0
    from_folder = capsys.readouterr().out.splitlines()
    assert from_csv[-1].startswith("exact accuracy") and from_csv[-1] == from_folder[-1]
    assert "8 examples" in from_csv[-2]


def test_resume_extends_a_finished_run(trained_run, capsys):
    args = ["train", "--run-dir", str(trained_run / "run"), "--resume", "--max-steps", "5", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_00000003.pt" in out


@pytest.mark.parametrize("argv, expected", [
    (["train", "--set", "model.hiden_size=3"], "unknown config field 'model.hiden_size'"),
    (["train", "--set", "lr=fast"], "lr: expected a number"),
    (["train", "--preset", "nope"], "invalid choice"),
    (["train", "--max-steps", "x"], "invalid int value"),
    (["eval"], "--checkpoint"),
    (["eval", "--checkpoint", "/nonexistent/ckpt.pt"], "not found"),
    (["frobnicate"], "invalid choice"),
    (["eval", "--checkpoint", "x.pt", "--model-set", "depth=3"], "unknown config field 'depth'"),
])
def test_bad_arguments_give_one_line(argv, expected, capsys):
    assert main(argv) == 2
    one_error_line(capsys, expected)


def test_bad_files_give_one_line(trained_run, tmp_path, capsys):
    run_dir = trained_run / "run"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert main(["eval", "--checkpoint", str(corrupt)]) == 2
    one_error_line(capsys, "cannot read checkpoint")

    bad_csv = tmp_path / "mazes.csv"
    bad_csv.write_text("source,question,answer,rating\nx,###,###,1\n")
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(bad_csv)]) == 2
    one_error_line(capsys, str(bad_csv))

    assert main(["solve", "--checkpoint", str(run_dir), "--index", "999"]) == 2
    one_error_line(capsys, "out of range")

    assert main(["train", "--run-dir", str(tmp_path / "nothing"), "--resume"]) == 2
    one_error_line(capsys, "config.json")

    assert main(tiny_train_args(tmp_path / "data", tmp_path / "run2", "--dataset", str(tmp_path / "missing"))) == 2
    one_error_line(capsys, "missing")


def test_reference_state_dict_checkpoint_evaluates(trained_run, tmp_path, capsys):
    """A reference-project file (EMA weights under _orig_mod.model.*) loads through the compat loader."""
    from trm_fast.train.run_directory import latest_checkpoint, load_checkpoint

    payload = load_checkpoint(latest_checkpoint(trained_run / "run"))
    reference_file = tmp_path / "step_3"
    torch.save({f"_orig_mod.model.{k}": v for k, v in payload["ema_model"].items()}, reference_file)
    data_dir = payload["data"]["dir"]
    argv = ["eval", "--checkpoint", str(reference_file), "--data", data_dir, "--device", "cpu", "--backend", "torch",
            "--model-set", "h_cycles=2", "--model-set", "l_cycles=1", "--model-set", "halt_max_steps=3",
            "--model-set", "puzzle_emb_len=1", "--model-set", "num_heads=2"]
    assert main(argv) == 0
    reference_out = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(trained_run / "run"), "--device", "cpu", "--backend", "torch"]) == 0
    ours_out = capsys.readouterr().out
    pick = lambda text: [line for line in text.splitlines() if line.startswith("exact accuracy")]  # noqa: E731
    assert pick(reference_out) == pick(ours_out)  # same weights, same numbers


def test_console_entry_point_exit_status_and_stderr(tmp_path):
    """Through a real process: no traceback, one line, status 2."""
    process = subprocess.run(
        [sys.executable, "-m", "trm_fast.cli", "eval", "--checkpoint", str(tmp_path / "none.pt")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.strip().startswith("trm-fast: error: ") and "Traceback" not in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


def test_gpu_out_of_memory_is_one_line_with_a_remedy(monkeypatch, capsys):
    import torch

    from trm_fast import cli

    def run_out_of_memory(_args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    parser = cli.make_parser()
    original_parse = parser.parse_args

    def parse_with_oom(argv):
        args = original_parse(argv)
        args.handler = run_out_of_memory
        return args

    monkeypatch.setattr(parser, "parse_args", parse_with_oom)
    monkeypatch.setattr(cli, "make_parser", lambda: parser)
    code = cli.main(["train", "--dataset", "maze"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "out of GPU memory" in error and "micro_batch_size" in error


def test_data_maze_writes_a_folder_and_csv_files_that_read_back(tmp_path, capsys):
    from trm_fast.data import load_split, read_maze_csv, shortest_path_count

    out = tmp_path / "random-8"
    assert main(["data", "maze", "--out", str(out), "--size", "8", "--num-train", "20", "--num-test", "10", "--csv"]) == 0
    printed = capsys.readouterr().out
    assert "20 train + 10 test 8x8 random-style mazes" in printed and "S" in printed and "o" in printed
    test = load_split(out, "test")
    records = read_maze_csv(out / "test.csv")  # validates every row (path, characters, S/G)
    assert len(records) == 10 and (records.inputs == test.inputs).all()
    assert all(shortest_path_count(grid, 8)[1] == 1 for grid in records.inputs)
    assert main(["data", "maze", "--out", str(tmp_path / "x"), "--style", "spiral"]) == 2
    one_error_line(capsys, "invalid choice")
