"""The command line's vocabulary and self-description: help and defaults on every option, `presets`,
`config` (every field --set accepts, and a file --config starts from), the time-budget flags of train
and ablate, aliases kept for old scripts, `data convert`, and the GPU run's estimate before it starts."""
import argparse
import json

import numpy as np
import pytest

from tests.cli_helpers import one_error_line
from trm_fast import cli, config as config_lib
from trm_fast.cli import build_train_config, main, make_parser

def _subparsers(parser, prefix=()):
    """(command words, parser) of every subcommand, nested ones (data maze, ...) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_option_has_help_and_shows_its_default():
    commands = dict(_subparsers(make_parser()))
    assert {"train", "ablate", "plot", "data", "data maze", "data sudoku", "data convert", "presets",
            "config"} <= {" ".join(words) for words in commands}
    for words, sub in commands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            name = "/".join(action.option_strings)
            assert action.help, f"{' '.join(words)} {name} has no help"
            if action.default is not None and action.default is not False:
                assert f"default: {action.default}" in text or "default" in action.help, \
                    f"{' '.join(words)} {name} does not show its default"
            else:
                assert action.nargs == 0 or "default" in action.help or action.required, \
                    f"{' '.join(words)} {name}: the help does not say what happens without it"


def test_train_and_ablate_help_state_the_budget_rule():
    for command in ("train", "ablate"):
        text = dict(_subparsers(make_parser()))[(command,)].format_help().replace("\n", " ")
        text = " ".join(text.split())
        assert "--max-minutes M without --max-steps fills M minutes" in text
        assert "maze-cpu: fills 13.5 min" in text  # from the preset itself


def test_presets_lists_every_preset_in_one_line(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(config_lib.PRESETS)
    maze_cpu = next(line for line in lines if line.startswith("maze-cpu "))
    assert "7x7 random-wall mazes" in maze_cpu and "fills 13.5 min" in maze_cpu and "without CUDA" in maze_cpu


def test_config_prints_every_field_as_a_set_argument_and_writes_a_file_train_starts_from(tmp_path, capsys):
    path = tmp_path / "mine.json"
    assert main(["config", "--preset", "sudoku-cpu", "--set", "lr=3e-4", "--seed", "7", "--max-minutes", "20",
                 "--json", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "lr=0.0003" in lines and "seed=7" in lines and "model.mlp_t=true" in lines and "max_steps=none" in lines
    # every line is a --set argument, and together they give the same config from any other preset
    rebuilt = config_lib.apply_overrides(config_lib.preset("maze-paper"), lines)
    assert config_lib.to_dict(rebuilt) == json.loads(path.read_text())
    args = make_parser().parse_args(["train", "--config", str(path), "--set", "model.hidden_size=32"])
    cfg, _ = build_train_config(args)
    assert cfg.preset == "sudoku-cpu" and cfg.lr == 3e-4 and cfg.seed == 7 and cfg.model.hidden_size == 32
    assert cfg.max_minutes == 20 and cfg.max_steps is None
    assert main(["train", "--config", str(path), "--preset", "maze-cpu"]) == 2
    one_error_line(capsys, "not allowed with argument --config")
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 2
    one_error_line(capsys, "none.json: cannot read config")


def _train_config(*argv):
    return build_train_config(make_parser().parse_args(["train", "--preset", "maze-cpu", *argv]))[0]


def test_train_max_minutes_and_max_steps_mean_what_they_say():
    assert (_train_config().max_steps, _train_config().max_minutes) == (None, 13.5)  # fills 13.5 minutes
    fill = _train_config("--max-minutes", "30")
    assert (fill.max_steps, fill.max_minutes) == (None, 30)  # fills 30 minutes instead
    steps = _train_config("--max-steps", "20000")
    assert (steps.max_steps, steps.max_minutes) == (20000, None)  # 20,000 steps, not 13.5 minutes
    both = _train_config("--max-steps", "800", "--max-minutes", "5")
    assert (both.max_steps, both.max_minutes) == (800, 5)


def test_a_resumed_run_keeps_its_schedule(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = config_lib.preset("maze-cpu")
    saved.max_steps, saved.max_minutes = 1234, 30  # a length measured to fill 30 minutes
    config_lib.save_json(saved, run_dir / "config.json")
    resume = lambda *argv: build_train_config(  # noqa: E731
        make_parser().parse_args(["train", "--resume", "--run-dir", str(run_dir), *argv]))[0]
    assert (resume("--max-minutes", "5").max_steps, resume("--max-minutes", "5").max_minutes) == (1234, 5)
    assert resume("--max-steps", "2000").max_steps == 2000


def test_ablate_follows_the_same_rule():
    from trm_fast import study as study_lib

    fill = study_lib.make_study(out="unused", cuda_available=False, max_minutes=60)
    assert (fill.base.max_steps, fill.base.max_minutes) == (None, 60)  # no longer the 600-step default
    assert all(run.config.max_steps is None and run.config.max_minutes == 60 for run in fill.runs)
    both = study_lib.make_study(out="unused", cuda_available=False, max_steps=300, max_minutes=9, seed=5)
    assert (both.base.max_steps, both.base.max_minutes, both.seeds) == (300, 9, [5])
    default = study_lib.make_study(out="unused", cuda_available=False)
    assert (default.base.max_steps, default.base.max_minutes) == (600, None)


def test_old_flag_names_still_work():
    parser = make_parser()
    for flag in ("--cache-dir", "--data-dir"):
        assert parser.parse_args(["train", flag, "d"]).data_dir == "d"
        assert parser.parse_args(["ablate", flag, "d"]).data_dir == "d"
    for flag in ("--image", "--out"):
        assert parser.parse_args(["plot", "runs/a", flag, "c.png"]).image == "c.png"
    assert parser.parse_args(["train", "--out", "runs/x"]).run_dir == "runs/x"


def test_data_convert_turns_csv_files_into_a_training_folder(tmp_path, capsys):
    from trm_fast.data import load_split

    assert main(["data", "maze", "--out", str(tmp_path / "m"), "--size", "6", "--num-train", "12", "--num-test", "4",
                 "--csv"]) == 0
    assert main(["data", "convert", "--train", str(tmp_path / "m" / "train.csv"), "--test",
                 str(tmp_path / "m" / "test.csv"), "--out", str(tmp_path / "mc"), "--augment"]) == 0
    assert f"trm-fast train --dataset {tmp_path / 'mc'}" in capsys.readouterr().out
    built, converted = load_split(tmp_path / "m", "train"), load_split(tmp_path / "mc", "train")
    assert converted.get_set().num_examples == 8 * 12  # the 8 dihedral images of every maze
    assert np.array_equal(np.asarray(converted.inputs)[::8], np.asarray(built.inputs))
    assert np.array_equal(load_split(tmp_path / "mc", "test").labels, load_split(tmp_path / "m", "test").labels)

    assert main(["data", "sudoku", "--out", str(tmp_path / "s"), "--size", "4", "--num-train", "6", "--num-test", "3",
                 "--num-aug", "0", "--csv"]) == 0
    assert main(["data", "convert", "--train", str(tmp_path / "s" / "train.csv"), "--test",
                 str(tmp_path / "s" / "test.csv"), "--out", str(tmp_path / "sc"), "--num-aug", "2",
                 "--subsample", "4"]) == 0
    assert "4 x 3" not in capsys.readouterr().out
    assert load_split(tmp_path / "sc", "train").get_set().num_examples == 4 * 3  # 4 puzzles, each + 2 copies
    assert main(["data", "convert", "--train", str(tmp_path / "s" / "train.csv"), "--test",
                 str(tmp_path / "s" / "test.csv"), "--out", str(tmp_path / "x"), "--augment"]) == 2
    one_error_line(capsys, "--augment is for maze CSV files")
    assert main(["data", "convert", "--train", str(tmp_path / "m" / "train.csv"), "--test",
                 str(tmp_path / "m" / "test.csv"), "--out", str(tmp_path / "y"), "--num-aug", "3"]) == 2
    one_error_line(capsys, "--num-aug and --subsample are for Sudoku CSV files")


def test_a_gpu_run_prints_its_estimated_duration_before_it_starts(monkeypatch, capsys):
    import torch

    from trm_fast.train import distributed, loop

    started = []
    monkeypatch.setattr(distributed, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(loop, "train", lambda cfg, *a, **k: started.append(capsys.readouterr().out) or
                        loop.TrainResult(None, 0, "max_steps", None, None))
    assert cli.main(["train", "--dataset", "maze", "--preset", "maze-paper"]) == 0
    printed = started[0]
    assert printed.startswith("maze-paper: 65104 steps (50000 epochs), about ") and " h on NVIDIA H100" in printed
    assert "trm-fast train --dataset maze --preset maze-cpu" in printed
    assert cli.main(["train", "--dataset", "sudoku", "--preset", "sudoku-paper", "--max-minutes", "45"]) == 0
    assert started[1].strip() == "sudoku-paper: fills 45 min on NVIDIA H100 80GB HBM3"


def test_a_study_run_that_filled_its_minutes_resumes_on_its_measured_schedule(tmp_path):
    from trm_fast import study as study_lib
    from trm_fast.study import runner

    study = study_lib.make_study(out=tmp_path / "study", cuda_available=False, max_minutes=60, only=["baseline"])
    run = study.runs[0]
    run.run_dir.mkdir(parents=True)
    measured = config_lib.from_dict(config_lib.to_dict(run.config))
    measured.max_steps = 777  # what the trainer wrote into config.json after its warm-up
    config_lib.save_json(measured, run.run_dir / "config.json")
    runner._check_run_config(run)  # the measured length is not "another config"
    assert runner._invocation_config(run, "resume").max_steps == 777
    assert runner._invocation_config(run, "new").max_steps is None
    measured.lr = 0.5
    config_lib.save_json(measured, run.run_dir / "config.json")
    with pytest.raises(study_lib.StudyError, match="lr: 0.5 there"):
        runner._check_run_config(run)
