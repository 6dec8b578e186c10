"""The puzzle-kind table (trm_fast.puzzles): a kind added to KINDS is picked up by the generic code
(dataset folders, building, CLI choices, eval sources, default presets) without naming it anywhere
else; every registered kind reads back the text it writes; no generic module tells kinds apart by
name."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trm_fast import cli
from trm_fast import config as config_lib
from trm_fast.data import load_split
from trm_fast.data.dataset import building_folder, write_identifiers, write_split
from trm_fast.puzzles import KINDS, PuzzleKind, get_kind, kind_of_csv, kind_of_data, kind_of_folder
from trm_fast.solver import PuzzleFormat
from trm_fast.train.data import dataset_dir, folder_kind, open_eval_source, prepare_dataset
from trm_fast.train.distributed import DistContext

ROOT = Path(__file__).resolve().parents[1]
TOY_VOCAB, TOY_SIDE = 7, 2


def _toy_examples(count: int, seed: int) -> dict:
    """`count` 2x2 grids of tokens 1..6 whose answer is the question itself, one group each."""
    inputs = np.random.default_rng(seed).integers(1, TOY_VOCAB, size=(count, TOY_SIDE * TOY_SIDE), dtype=np.uint8)
    return dict(inputs=inputs, labels=inputs.copy(), puzzle_identifiers=np.zeros(count, np.int32),
                puzzle_indices=np.arange(count + 1, dtype=np.int32), group_indices=np.arange(count + 1, dtype=np.int32))


class ToyKind(PuzzleKind):
    """A fourth kind written only here: copy a 2x2 grid. Its text is the base class's token ids."""

    name = "toy"
    settings_field = "maze"  # reuses the maze settings (it needs only counts and a seed)
    default_presets = ("maze-paper", "sudoku-cpu")
    guess_rank = -1  # first: its CSV header is its own, while its digit rows would pass for Sudoku
    built: list = []

    def cache_name(self, settings) -> str:
        return f"toy-train{settings.num_train}-seed{settings.seed}"

    def build(self, folder, settings, log=print):
        self.built.append(Path(folder))
        with building_folder(Path(folder), {"kind": "toy", "seed": settings.seed}) as tmp:
            for split, count in (("train", settings.num_train), ("test", settings.num_test)):
                write_split(tmp, split, **_toy_examples(count, settings.seed), vocab_size=TOY_VOCAB)
            write_identifiers(tmp, ["<blank>"])
        return Path(folder)

    def small_settings(self):
        return config_lib.MazeSettings(num_train=3, num_test=2)

    def guess_shape(self, vocab_size, seq_len):
        return vocab_size == TOY_VOCAB and seq_len == TOY_SIDE * TOY_SIDE, None

    def is_csv(self, path) -> bool:
        return path.is_file() and path.read_text().startswith("toy")

    def read_csv(self, path):
        rows = [line.split(",")[1] for line in path.read_text().splitlines()[1:]]
        inputs = np.array([[int(ch) for ch in row] for row in rows], np.uint8)
        arrays = _toy_examples(len(inputs), 0) | dict(inputs=inputs, labels=inputs.copy())
        return inputs, inputs.copy(), arrays, TOY_VOCAB, None

    def add_data_command(self, kinds) -> None:
        toy = kinds.add_parser("toy", help="toy grids to copy")
        toy.add_argument("--out", required=True)
        toy.set_defaults(handler=lambda args: print(f"wrote {self.build(args.out, self.small_settings())}") or 0)


@pytest.fixture
def toy_kind():
    """ToyKind registered in KINDS for one test; the table is restored afterwards."""
    saved = dict(KINDS)
    kind = KINDS["toy"] = ToyKind()
    kind.built = []
    yield kind
    KINDS.clear()
    KINDS.update(saved)


def test_the_table_holds_the_builtin_kinds_in_cli_order():
    assert list(KINDS) == ["maze", "sudoku", "arc"] == list(config_lib.BUILTIN_DATASETS)
    assert get_kind("maze") is KINDS["maze"] and get_kind("data/some-folder") is None and get_kind(None) is None
    assert config_lib.default_preset_name(False, "sudoku") == "sudoku-cpu"
    assert config_lib.default_preset_name(True, None) == "maze-paper"


def test_a_new_kind_names_its_cache_and_is_built_by_prepare_dataset(toy_kind, tmp_path):
    cfg = config_lib.preset("maze-cpu")
    cfg.dataset = "toy"
    assert dataset_dir(cfg) == Path("data") / "toy-train{}-seed{}".format(cfg.maze.num_train, cfg.maze.seed)
    cfg.data_dir = str(tmp_path / "toy")
    cfg.maze.num_train, cfg.maze.num_test = 3, 2
    folder = prepare_dataset(cfg, DistContext(), log=None)
    assert folder == tmp_path / "toy" and toy_kind.built == [folder]
    assert load_split(folder, "train").get_set().num_examples == 3
    assert kind_of_folder(folder) is toy_kind and folder_kind(folder) == "toy"
    assert "toy" in config_lib.BUILTIN_DATASETS


def test_a_new_kind_is_a_cli_dataset_choice_and_data_command(toy_kind, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    train_help = " ".join(capsys.readouterr().out.split())
    assert "--dataset maze|sudoku|arc|toy|DIR" in train_help and '"maze" or "sudoku" or "arc" or "toy" (built-in' in train_help
    with pytest.raises(SystemExit):
        cli.main(["data", "--help"])
    assert "{maze,sudoku,arc,toy,convert}" in capsys.readouterr().out
    assert cli.main(["data", "toy", "--out", str(tmp_path / "made")]) == 0
    assert f"wrote {tmp_path / 'made'}" in capsys.readouterr().out
    assert kind_of_folder(tmp_path / "made") is toy_kind
    cfg, _ = cli.build_train_config(cli.make_parser().parse_args(["config", "--dataset", "toy"]))
    assert cfg.dataset == "toy" and cfg.preset == ToyKind.default_presets[0 if torch.cuda.is_available() else 1]


def test_eval_sources_of_a_new_kind_are_recognised(toy_kind, tmp_path):
    folder = toy_kind.build(tmp_path / "toy", toy_kind.small_settings())
    source = open_eval_source(folder)
    assert source.kind == "toy" and source.puzzle_kind is toy_kind and source.num_examples == 2
    csv = tmp_path / "toy.csv"
    csv.write_text("toy,grid\nx,1234\nx,6543\n")
    assert kind_of_csv(csv) is toy_kind
    source = open_eval_source(csv)
    assert source.kind == "toy" and source.example(1)["inputs"].tolist() == [6, 5, 4, 3]
    assert source.render(source.example(0)["inputs"]) == " 1  2\n 3  4"
    # No record: the metadata alone tells the kind, in guess order.
    (folder / "trm_fast_build.json").unlink()
    assert kind_of_data(folder, load_split(folder, "test").metadata) == ("toy", None)


def test_without_the_new_kind_its_data_is_token_grids(tmp_path):
    folder = ToyKind().build(tmp_path / "toy", ToyKind().small_settings())
    assert "toy" not in KINDS and folder_kind(folder) is None
    assert open_eval_source(folder).kind == "grid"


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_reads_back_the_text_it_writes(name, tmp_path):
    kind = KINDS[name]
    folder = kind.build(tmp_path / name, kind.small_settings(), log=None)
    test = load_split(folder, "test")
    found, shape = kind_of_data(folder, test.metadata)
    assert found == name
    fmt = PuzzleFormat(name, test.metadata.seq_len, test.metadata.vocab_size, shape)
    for question in test.inputs:
        text = fmt.text(question)
        tokens, single = fmt.encode(text)
        assert single and tokens[0].tolist() == question.tolist(), text
        rows, _ = fmt.encode(text.split("\n"))  # the same puzzle as a list of rows
        assert rows[0].tolist() == question.tolist()
        assert fmt.encode_values(fmt.grid(question), "grid").tolist() == question.tolist()


def test_generic_modules_do_not_tell_kinds_apart_by_name():
    """Only the kinds (trm_fast/puzzles) and their data libraries may compare a name with a kind."""
    comparison = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](maze|sudoku)["']|["'](maze|sudoku)["']\s*(==|!=)""")
    found = []
    for path in sorted((ROOT / "trm_fast").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("trm_fast/puzzles/", "trm_fast/data/")):
            continue
        found += [f"{relative}:{number}" for number, line in enumerate(path.read_text().splitlines(), 1)
                  if comparison.search(line)]
    assert found == []


def test_solve_pictures_of_a_new_kind_are_drawn_by_it(toy_kind, monkeypatch):
    from trm_fast import plots

    drawn = []
    monkeypatch.setattr(ToyKind, "draw_panel", lambda self, axes, tokens, *rest: drawn.append(list(tokens)))
    grid = np.array([1, 2, 3, 4])
    plots.solve_figure(grid, [grid, grid], [-1.0, 1.0], grid, vocab_size=TOY_VOCAB, kind="toy")
    assert drawn == [[1, 2, 3, 4]] * 4  # question, two steps, expected


def test_data_of_no_known_kind_reads_back_as_token_ids():
    fmt = PuzzleFormat("grid", 4, TOY_VOCAB)
    assert fmt.text(np.array([1, 2, 3, 6])) == "1 2\n3 6"
    assert fmt.encode("1 2\n3 6")[0].tolist() == [[1, 2, 3, 6]]
