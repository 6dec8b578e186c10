"""ARC as the third puzzle kind: a folder built from hand-made tasks trains through the CLI, `trm-fast
eval` votes over it (pass@1/pass@2, submission.json, arc_results.json), a folder laid out as the
reference's build_arc_dataset.py writes it is recognised and evaluates, `solve --image` draws one
panel per step, and `--dataset arc` names its cache folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_helpers import train_args
from tests.data.test_arc import small_task_set
from trm_fast import cli
from trm_fast.cli import main
from trm_fast.puzzles import KINDS, kind_of_folder
from trm_fast.puzzles.arc import ArcKind
from trm_fast.solver import PuzzleFormat
from trm_fast.train.data import dataset_dir, open_eval_source

CANVAS = 8
TINY_SETS = [
    "compile=false", "model.forward_dtype=float32", "model.hidden_size=32", "model.num_heads=2",
    "model.h_cycles=1", "model.l_cycles=1", "model.puzzle_emb_len=1", "model.halt_max_steps=2",
    "global_batch_size=8", "lr_warmup_steps=2", "log_interval=5", "eval_interval=none", "checkpoint_interval=none",
    "eval_batch_size=16", "max_minutes=none", "num_threads=1",
]
DEVICE = ["--device", "cpu", "--backend", "torch"]
REFERENCE_SETS = ["--set", "h_cycles=1", "--set", "l_cycles=1", "--set", "halt_max_steps=2", "--set", "puzzle_emb_len=1",
                  "--set", "num_heads=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder built by `trm-fast data arc --json-dir` from five hand-made tasks, and a 20-step run on it."""
    root = tmp_path_factory.mktemp("arc")
    small_task_set(root, np.random.default_rng(8))
    folder = root / "arc-data"
    assert main(["data", "arc", "--json-dir", str(root), "--num-aug", "2", "--canvas", str(CANVAS),
                 "--out", str(folder)]) == 0
    assert main(train_args(str(folder), root / "unused", root / "run", TINY_SETS, 20, preset="maze-cpu")) == 0
    return root, folder


def test_a_built_folder_is_arc_and_trains(trained):
    root, folder = trained
    assert kind_of_folder(folder) is KINDS["arc"]
    source = open_eval_source(folder)
    assert source.kind == "arc" and source.needs_all_steps
    assert (root / "run" / "checkpoints").is_dir()


def test_eval_votes_prints_pass_at_k_and_writes_both_files(trained, capsys):
    root, folder = trained
    report = root / "eval.json"
    assert main(["eval", "--checkpoint", str(root / "run"), *DEVICE, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "voted over every supervision step" in line]
    assert len(notes) == 1 and "every example runs all 2" in notes[0]
    assert "pass@1 " in out and "pass@2 " in out and "(ARC Prize metric)" in out and "pass@5 " in out
    assert "per-example exact accuracy" in out
    out_dir = root / "run" / "arc_eval"  # default: beside the run
    assert f"wrote {out_dir / 'submission.json'} and {out_dir / 'arc_results.json'}" in out
    submission = json.loads((out_dir / "submission.json").read_text())
    assert sorted(submission) == ["ev00", "ev01"] and len(submission["ev01"]) == 2
    assert set(submission["ev00"][0]) == {"attempt_1", "attempt_2"}
    results = json.loads((out_dir / "arc_results.json").read_text())
    votes = json.loads(report.read_text())["votes"]
    assert votes["pass@2"] == results["pass@2"] and "pass@1" in votes and votes["files"]["submission"]
    # --out DIR, and --dataset arc: the run's own built-in data is its folder
    assert main(["eval", "--checkpoint", str(root / "run"), *DEVICE, "--out", str(root / "elsewhere")]) == 0
    assert (root / "elsewhere" / "submission.json").is_file() and (root / "elsewhere" / "arc_results.json").is_file()


def write_reference_folder(folder: Path, side: int = CANVAS) -> Path:
    """A test split laid out as the reference's build_arc_dataset.py writes it: dataset.json and
    all__*.npy per split, identifiers.json and test_puzzles.json at the root; no trm_fast_build.json."""
    tasks = {"aa": ([[1, 2], [3, 4]], [[4, 3], [2, 1]]), "bb": ([[5, 5, 5]], [[6], [6], [6]])}
    identifiers = ["<blank>", "aa", "bb", "aa|||t1|||0213456789"]
    rows = [(1, *tasks["aa"]), (2, *tasks["bb"])]
    mapping = np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])
    rows.append((3, np.rot90(mapping[np.array(tasks["aa"][0])], 1), np.rot90(mapping[np.array(tasks["aa"][1])], 1)))

    def canvas(grid):
        grid = np.asarray(grid)
        out = np.zeros((side, side), np.uint8)
        out[:grid.shape[0], :grid.shape[1]] = grid + 2
        out[grid.shape[0], :grid.shape[1]] = 1
        out[:grid.shape[0], grid.shape[1]] = 1
        return out.reshape(-1)

    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "all__inputs.npy", np.stack([canvas(i) for _p, i, _o in rows]))
        np.save(folder / split / "all__labels.npy", np.stack([canvas(o) for _p, _i, o in rows]))
        np.save(folder / split / "all__puzzle_identifiers.npy", np.array([1, 2, 3], np.int32))
        np.save(folder / split / "all__puzzle_indices.npy", np.array([0, 1, 2, 3], np.int32))
        np.save(folder / split / "all__group_indices.npy", np.array([0, 2, 3], np.int32))
        (folder / split / "dataset.json").write_text(json.dumps({
            "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": side * side,
            "num_puzzle_identifiers": len(identifiers), "total_groups": 2, "mean_puzzle_examples": 1.0,
            "total_puzzles": 3, "sets": ["all"]}))
    (folder / "identifiers.json").write_text(json.dumps(identifiers))
    (folder / "test_puzzles.json").write_text(json.dumps(
        {task: {"train": [], "test": [{"input": i, "output": o}]} for task, (i, o) in tasks.items()}))
    return folder


def test_a_reference_built_folder_is_recognised_as_arc_and_evaluates_a_reference_checkpoint(trained, tmp_path, capsys):
    from trm_fast.train.run_directory import latest_checkpoint, load_checkpoint

    root, _folder = trained
    folder = write_reference_folder(tmp_path / "reference-arc")
    assert not (folder / "trm_fast_build.json").exists()
    assert kind_of_folder(folder) is KINDS["arc"] and open_eval_source(folder).kind == "arc"
    (folder / "test_puzzles.json").unlink()  # without its files it is no ARC folder
    assert kind_of_folder(folder) is not KINDS["arc"]
    write_reference_folder(tmp_path / "again")
    folder = tmp_path / "again"

    payload = load_checkpoint(latest_checkpoint(root / "run"))
    reference_file = tmp_path / "ckpt" / "step_20"
    reference_file.parent.mkdir()
    torch.save({f"_orig_mod.model.{k}": v for k, v in payload["ema_model"].items()}, reference_file)
    assert main(["eval", "--checkpoint", str(reference_file), "--dataset", str(folder), *DEVICE, *REFERENCE_SETS]) == 0
    out = capsys.readouterr().out
    assert "pass@1 " in out and "pass@2 " in out
    assert "3 predictions for 2 tasks (0 matched no test input)" in out  # the augmented copy found its task
    submission = json.loads((tmp_path / "ckpt" / "arc_eval" / "submission.json").read_text())
    assert sorted(submission) == ["aa", "bb"]


def test_a_reference_built_folder_trains_and_evaluates(tmp_path, capsys):
    folder = write_reference_folder(tmp_path / "reference-arc")
    run = tmp_path / "run"
    assert main(train_args(str(folder), tmp_path / "unused", run, TINY_SETS, 6, preset="maze-cpu")) == 0
    assert main(["eval", "--checkpoint", str(run), *DEVICE]) == 0
    out = capsys.readouterr().out
    assert "3 predictions for 2 tasks (0 matched no test input)" in out
    assert sorted(json.loads((run / "arc_eval" / "submission.json").read_text())) == ["aa", "bb"]


def test_solve_image_draws_one_panel_per_step(trained, tmp_path, capsys, monkeypatch):
    root, _folder = trained
    drawn = []
    real = ArcKind.draw_panel
    monkeypatch.setattr(ArcKind, "draw_panel", lambda self, axes, tokens, *rest: drawn.append(1) or real(self, axes, tokens, *rest))
    image = tmp_path / "solve.png"
    assert main(["solve", "--checkpoint", str(root / "run"), *DEVICE, "--index", "1", "--steps", "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert image.read_bytes().startswith(b"\x89PNG") and len(drawn) == 2 + 2  # question, 2 steps, expected
    question = out.split("question:\n")[1].splitlines()
    assert question[0] and set(question[0]) <= set("0123456789")  # the grid as stored: colour digits


def test_the_text_round_trip_and_integer_grids():
    fmt = PuzzleFormat("arc", CANVAS * CANVAS, 12)
    grid = np.array([[0, 1, 2], [9, 8, 7]])
    tokens = fmt.encode_values(grid, "grid")
    assert tokens.reshape(CANVAS, CANVAS)[:2, :3].tolist() == (grid + 2).tolist()
    assert tokens.reshape(CANVAS, CANVAS)[2, :3].tolist() == [1, 1, 1]  # the EOS border
    assert fmt.text(tokens) == "012\n987" and fmt.grid(tokens).tolist() == grid.tolist()
    assert fmt.encode("012\n987")[0][0].tolist() == tokens.tolist()
    assert fmt.encode(["0 1 2", "9 8 7"])[0][0].tolist() == tokens.tolist()
    batch, single = fmt.encode([grid.tolist(), [[3]]])
    assert not single and batch.shape == (2, CANVAS * CANVAS)
    from trm_fast.data.errors import DataError

    with pytest.raises(DataError, match="does not fit"):
        fmt.encode(np.zeros((CANVAS + 1, 2), np.int64))
    with pytest.raises(DataError, match="colour digit"):
        fmt.encode("01x")


def test_dataset_arc_resolves_to_its_cache_folder():
    args = cli.make_parser().parse_args(["config", "--dataset", "arc", "--preset", "maze-cpu", "--set", "arc.canvas=10",
                                         "--set", "arc.max_tasks=3"])
    cfg, _ = cli.build_train_config(args)
    assert cfg.dataset == "arc" and dataset_dir(cfg) == Path("data") / "arc1-canvas10-aug1000-seed42-max3"
    assert "arc" in KINDS and KINDS["arc"].default_presets == ("arc-paper", "arc-cpu")
