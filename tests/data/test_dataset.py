"""Dataset folder format and maze CSV files: round trips, reference compatibility, every bad input."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from trm_fast.data import csv_format as cf
from trm_fast.data import dataset as ds
from trm_fast.data import maze as mz
from trm_fast.data.errors import DataError

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


def write_reference_style(root: Path, split: str, meta: dict, arrays: dict, identifiers=("<blank>",)):
    """Write a split the way the reference builders do (json.dump of the metadata, np.save)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / "dataset.json").write_text(json.dumps(meta))
    for name, value in arrays.items():
        np.save(root / split / f"all__{name}.npy", value)
    (root / "identifiers.json").write_text(json.dumps(list(identifiers)))


def small_arc_like():
    """3 groups; group sizes 2, 1, 3 puzzles; puzzles with 1..3 examples; seq_len 4, vocab 12."""
    rng = np.random.default_rng(0)
    puzzle_sizes = [2, 1, 3, 1, 2, 2]
    puzzle_indices = np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(np.int32)
    examples = int(puzzle_indices[-1])
    labels = rng.integers(0, 12, (examples, 4)).astype(np.uint8)
    return dict(
        inputs=rng.integers(1, 12, (examples, 4)).astype(np.uint8),
        labels=labels,
        puzzle_identifiers=np.array([1, 2, 3, 4, 5, 6], np.int32),
        puzzle_indices=puzzle_indices,
        group_indices=np.array([0, 2, 3, 6], np.int32),
    )


def arc_meta(arrays, **override):
    meta = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=4,
                num_puzzle_identifiers=7, total_groups=3,
                mean_puzzle_examples=len(arrays["inputs"]) / 6, total_puzzles=6, sets=["all"])
    meta.update(override)
    return meta


@pytest.fixture
def arc_folder(tmp_path):
    arrays = small_arc_like()
    write_reference_style(tmp_path, "train", arc_meta(arrays), arrays,
                          identifiers=["<blank>"] + [f"p{i}" for i in range(6)])
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Round trips and reference folders


def test_write_then_load_round_trip(tmp_path):
    arrays = small_arc_like()
    meta = ds.write_split(tmp_path, "train", **arrays, vocab_size=12, num_puzzle_identifiers=7)
    ds.write_identifiers(tmp_path, ["<blank>"] + [f"p{i}" for i in range(6)])
    split = ds.load_split(tmp_path, "train")
    assert split.metadata == meta
    assert meta.total_groups == 3 and meta.total_puzzles == 6 and meta.seq_len == 4
    assert meta.mean_puzzle_examples == pytest.approx(11 / 6)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(split, name), arrays[name])
    assert isinstance(split.inputs, np.memmap) and not split.inputs.flags.writeable
    assert split.inputs.dtype == np.uint8 and split.puzzle_indices.dtype == np.int32
    on_disk = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert list(on_disk) == ["pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len",
                             "num_puzzle_identifiers", "total_groups", "mean_puzzle_examples",
                             "total_puzzles", "sets"]
    assert split.identifiers[1] == "p0"


def test_reference_builder_quirks_load_unchanged(tmp_path):
    """Reference maze builder with aug: 8 puzzles per group, total_puzzles = groups, extra keys and
    files; older builders: no total_puzzles at all."""
    inputs, labels = mz.generate_mazes(3, 6, seed=0)
    grids = inputs.reshape(3, 6, 6)
    aug_in = np.stack([mz.dihedral(g, k).reshape(-1) for g in grids for k in range(8)])
    aug_lb = np.stack([mz.dihedral(g, k).reshape(-1) for g in labels.reshape(3, 6, 6) for k in range(8)])
    arrays = dict(inputs=aug_in, labels=aug_lb, puzzle_identifiers=np.zeros(24, np.int32),
                  puzzle_indices=np.arange(25, dtype=np.int32), group_indices=np.arange(0, 25, 8, dtype=np.int32),
                  aug_dihedral=np.zeros(24, np.int32))
    meta = dict(seq_len=36, vocab_size=6, pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                num_puzzle_identifiers=1, num_aug_identifiers=1, total_groups=3, mean_puzzle_examples=1,
                total_puzzles=3, sets=["all"])
    write_reference_style(tmp_path / "a", "train", meta, arrays)
    split = ds.load_split(tmp_path / "a", "train")
    assert split.metadata.total_puzzles == 3 and split.get_set().num_puzzles == 24
    np.testing.assert_array_equal(split.inputs, aug_in)
    del meta["total_puzzles"]
    write_reference_style(tmp_path / "b", "train", meta, arrays)
    assert ds.load_split(tmp_path / "b", "train").metadata.total_puzzles == -1


def test_build_maze_dataset_layout_disjoint_and_augmented(tmp_path):
    out = ds.build_maze_dataset(tmp_path / "maze", size=6, num_train=12, num_test=10, seed=1, augment=True)
    assert out == tmp_path / "maze"
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    train, test = ds.load_split(out, "train"), ds.load_split(out, "test")
    assert train.metadata.total_groups == 12 and train.get_set().num_puzzles == 96
    assert test.metadata.total_groups == 10 and test.get_set().num_puzzles == 10
    for split in (train, test):
        m = split.metadata
        assert (m.vocab_size, m.seq_len, m.pad_id, m.num_puzzle_identifiers) == (6, 36, 0, 1)
    # Group g holds the 8 symmetries of one maze, identity first; each is still a valid maze.
    grids = np.asarray(train.inputs).reshape(12, 8, 6, 6)
    answers = np.asarray(train.labels).reshape(12, 8, 6, 6)
    for g in range(12):
        for k in range(8):
            np.testing.assert_array_equal(grids[g, k], mz.dihedral(grids[g, 0], k))
            assert mz.check_maze_pair(grids[g, k], answers[g, k]) >= mz.default_min_path_length(6)
    # No test maze is a symmetry of a train maze.
    train_keys = {g.tobytes() for g in grids.reshape(-1, 6, 6)}
    test_grids = np.asarray(test.inputs).reshape(-1, 6, 6)
    assert not any(mz.dihedral(t, k).tobytes() in train_keys for t in test_grids for k in range(8))


def test_build_maze_dataset_is_cached_and_rebuilt_on_change(tmp_path):
    out = tmp_path / "maze"
    ds.build_maze_dataset(out, size=6, num_train=5, num_test=4, seed=0)
    marker = out / "train" / "marker.txt"
    marker.write_text("kept while the folder is reused")
    first_inputs = np.load(out / "train" / "all__inputs.npy")
    ds.build_maze_dataset(out, size=6, num_train=5, num_test=4, seed=0)
    assert marker.exists()
    ds.build_maze_dataset(out, size=6, num_train=5, num_test=4, seed=7)
    assert not marker.exists()
    assert json.loads((out / ds.BUILD_INFO_FILE).read_text())["seed"] == 7
    assert not np.array_equal(np.load(out / "train" / "all__inputs.npy"), first_inputs)
    # A damaged folder with a matching record is rebuilt, not trusted.
    os.remove(out / "test" / "all__labels.npy")
    ds.build_maze_dataset(out, size=6, num_train=5, num_test=4, seed=7)
    ds.load_split(out, "test")
    assert [p.name for p in tmp_path.iterdir()] == ["maze"]  # no temp folders left behind


# ---------------------------------------------------------------------------------------------
# Bad folders: one DataError each, naming the file and the field


def corrupt(folder: Path, **changes):
    """Apply metadata / array changes to the arc_folder train split."""
    split_dir = folder / "train"
    meta = json.loads((split_dir / "dataset.json").read_text())
    for key, value in changes.items():
        if key.startswith("meta_"):
            name = key[5:]
            if value is KeyError:
                del meta[name]
            else:
                meta[name] = value
        else:
            np.save(split_dir / f"all__{key}.npy", value)
    (split_dir / "dataset.json").write_text(json.dumps(meta))


BAD_FOLDERS = {
    "missing field": (dict(meta_seq_len=KeyError), r"dataset\.json: missing field 'seq_len'"),
    "field type": (dict(meta_vocab_size="12"), r"dataset\.json: field 'vocab_size' must be an integer"),
    "sets": (dict(meta_sets=[]), r"dataset\.json: field 'sets'"),
    "pad range": (dict(meta_pad_id=12), r"dataset\.json: field 'pad_id' must lie in \[0, vocab_size=12\)"),
    "seq_len": (dict(meta_seq_len=5), r"all__inputs\.npy: rows have 4 tokens but dataset\.json field 'seq_len' is 5"),
    "vocab range": (dict(meta_vocab_size=11), r"all__inputs\.npy: row \d+ position \d+ holds 11, expected a token in \[0, 11\)"),
    "total_groups": (dict(meta_total_groups=4), r"dataset\.json: field 'total_groups' is 4 but group_indices describe 3"),
    "total_puzzles": (dict(meta_total_puzzles=5), r"dataset\.json: field 'total_puzzles' is 5 but puzzle_indices describe 6"),
    "mean examples": (dict(meta_mean_puzzle_examples=1.0), r"dataset\.json: field 'mean_puzzle_examples' is 1\.0"),
    "identifier range": (dict(meta_num_puzzle_identifiers=3), r"all__puzzle_identifiers\.npy: values 1\.\.6 fall outside"),
    "labels shape": (dict(labels=np.zeros((10, 4), np.uint8)), r"all__labels\.npy: shape \(10, 4\) differs from inputs"),
    "puzzle_indices start": (dict(puzzle_indices=np.array([1, 2, 5, 6, 7, 9, 11], np.int32)), r"all__puzzle_indices\.npy: must start with 0"),
    "puzzle_indices order": (dict(puzzle_indices=np.array([0, 2, 2, 6, 7, 9, 11], np.int32)), r"all__puzzle_indices\.npy: must be strictly increasing"),
    "puzzle_indices end": (dict(puzzle_indices=np.array([0, 2, 3, 6, 7, 9, 10], np.int32)), r"all__puzzle_indices\.npy: last entry is 10 but there are 11 examples"),
    "group_indices end": (dict(group_indices=np.array([0, 2, 3, 5], np.int32)), r"all__group_indices\.npy: last entry is 5 but there are 6 puzzles"),
    "index dtype": (dict(group_indices=np.array([0.0, 2, 3, 6])), r"all__group_indices\.npy: expected a 1-D integer array"),
    "identifiers length": (dict(puzzle_identifiers=np.ones(5, np.int32)), r"all__puzzle_identifiers\.npy: has 5 entries but puzzle_indices describes 6"),
    "inputs rank": (dict(inputs=np.ones(44, np.uint8)), r"all__inputs\.npy: expected a 2-D integer array"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_gives_one_line_data_error(arc_folder, case):
    changes, pattern = BAD_FOLDERS[case]
    corrupt(arc_folder, **changes)
    with pytest.raises(DataError) as info:
        ds.load_split(arc_folder, "train")
    message = str(info.value)
    assert "\n" not in message
    assert str(arc_folder / "train") in message
    assert re.search(pattern, message), message


def test_label_values_may_be_the_ignore_id_but_nothing_else_out_of_range(arc_folder):
    labels = small_arc_like()["labels"].copy()
    labels[3, 2] = 200
    corrupt(arc_folder, labels=labels)
    with pytest.raises(DataError, match=r"all__labels\.npy: row 3 position 2 holds 200"):
        ds.load_split(arc_folder, "train")
    corrupt(arc_folder, meta_ignore_label_id=200)
    assert ds.load_split(arc_folder, "train").labels[3, 2] == 200


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "pickled"])
def test_unreadable_npy_gives_data_error(arc_folder, damage):
    path = arc_folder / "train" / "all__inputs.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"this is not an npy file at all")
    elif damage == "missing":
        path.unlink()
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": (not a readable .npy|file is missing)"):
        ds.load_split(arc_folder, "train")


def test_bad_json_files_give_data_error(arc_folder):
    meta_path = arc_folder / "train" / "dataset.json"
    with pytest.raises(DataError, match=re.escape(str(arc_folder / "test" / "dataset.json")) + ": file is missing"):
        ds.load_split(arc_folder, "test")
    (arc_folder / "identifiers.json").write_text(json.dumps(["<blank>", "only-one"]))
    with pytest.raises(DataError, match=r"identifiers\.json: lists 2 names but dataset\.json field 'num_puzzle_identifiers' is 7"):
        ds.load_split(arc_folder, "train")
    meta_path.write_text("{not json")
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON"):
        ds.load_split(arc_folder, "train")


def test_write_split_refuses_inconsistent_arrays(tmp_path):
    arrays = small_arc_like()
    arrays["group_indices"] = np.array([0, 2, 3, 7], np.int32)
    with pytest.raises(DataError, match=r"all__group_indices\.npy: last entry is 7"):
        ds.write_split(tmp_path, "train", **arrays, vocab_size=12, num_puzzle_identifiers=7)
    assert not (tmp_path / "train").exists()


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_round_trip_and_conversion(tmp_path):
    inputs, labels, lengths = mz.generate_mazes(6, 7, seed=3, return_lengths=True)
    path = cf.write_maze_csv(tmp_path / "train.csv", inputs, labels)
    lines = path.read_text().splitlines()
    assert lines[0] == "source,question,answer,rating" and len(lines) == 7
    records = cf.read_maze_csv(path)
    assert records.size == 7 and len(records) == 6
    np.testing.assert_array_equal(records.inputs, inputs)
    np.testing.assert_array_equal(records.labels, labels)
    assert records.ratings == [str(n) for n in lengths] and records.sources == ["trm-fast"] * 6
    # Character mapping as in the reference builder: "# SGo" -> 1..5.
    row = lines[1].split(",")[1]
    np.testing.assert_array_equal(inputs[0], ["# SGo".index(ch) + 1 for ch in row])

    cf.write_maze_csv(tmp_path / "test.csv", inputs[:2], labels[:2])
    out = cf.convert_maze_csv(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "folder", augment=True)
    train = ds.load_split(out, "train")
    np.testing.assert_array_equal(np.asarray(train.inputs)[::8], inputs)
    assert train.metadata.total_groups == 6 and ds.load_split(out, "test").metadata.total_puzzles == 2


def maze_row(size=5):
    """A valid 5x5 question/answer pair as strings."""
    question = ["S   #", "### #", "    #", " ####", "    G"]
    answer = ["Sooo#", "###o#", "oooo#", "o####", "ooooG"]
    return "".join(question), "".join(answer)


def write_rows(path, rows, header="source,question,answer,rating"):
    text = header + "\n" + "".join(",".join(r) + "\n" for r in rows)
    path.write_text(text)
    return path


def test_valid_hand_made_row_reads(tmp_path):
    q, a = maze_row()
    records = cf.read_maze_csv(write_rows(tmp_path / "ok.csv", [("x", q, a, "12")]))
    assert mz.render_maze(records.labels[0]) == "\n".join(a[i:i + 5] for i in range(0, 25, 5))
    assert mz.shortest_path_count(records.inputs[0]) == (14, 1)
    assert mz.check_maze_pair(records.inputs[0], records.labels[0]) == 14


def test_csv_with_utf8_byte_order_mark_reads(tmp_path):
    """Spreadsheet programs save "CSV UTF-8" with a byte-order mark and CRLF line ends."""
    q, a = maze_row()
    inputs, labels = mz.generate_mazes(2, 7, seed=5)
    rows = [("sheet", q, a, "14")]
    text = "source,question,answer,rating\r\n" + "".join(",".join(r) + "\r\n" for r in rows)
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    records = cf.read_maze_csv(path)
    assert len(records) == 1 and records.size == 5
    assert records.sources == ["sheet"] and records.ratings == ["14"]
    np.testing.assert_array_equal(records.inputs[0], cf.maze_string_to_tokens(q))
    np.testing.assert_array_equal(records.labels[0], cf.maze_string_to_tokens(a))

    # A BOM'd pair converts to a dataset folder like any other.
    for name, count in (("train", 2), ("test", 1)):
        plain = cf.write_maze_csv(tmp_path / f"plain_{name}.csv", inputs[:count], labels[:count])
        (tmp_path / f"{name}.csv").write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    out = cf.convert_maze_csv(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "folder")
    np.testing.assert_array_equal(np.asarray(ds.load_split(out, "train").inputs), inputs)


def replace_at(text, pos, ch):
    return text[:pos] + ch + text[pos + 1:]


q0, a0 = maze_row()
BAD_ROWS = {
    "bad character": ((q0.replace(" ", "x", 1), a0), r"line 2 field 'question': character 'x' at position 1"),
    "non-ascii": ((q0, a0.replace("o", "ö", 1)), r"line 2 field 'answer': character 'ö'"),
    "wrong length": ((q0, a0[:-1]), r"line 2 field 'answer': has 24 characters, expected 25 \(5x5\)"),
    "non-square": ((q0[:-1], a0[:-1]), r"line 2 field 'question': has 24 characters, which is not N\*N"),
    "missing S": ((q0.replace("S", " "), a0.replace("S", "o")), r"line 2 field 'question': expected exactly one 'S' cell, found 0"),
    "two G": ((replace_at(q0, 3, "G"), replace_at(a0, 3, "G")), r"line 2 field 'question': expected exactly one 'G' cell, found 2"),
    "S moved": ((q0, "oSoo#" + a0[5:]), r"line 2: answer moves S or G away"),
    "wall moved": ((q0, replace_at(a0, 4, "o")), r"line 2: answer cell \(row 0, col 4\) is 'o' but the question has '#'"),
    "path broken": ((q0, replace_at(a0, 12, " ")), r"line 2: the answer's 'o' cells do not connect S to G"),
    "wrong field count": ((q0, a0, "5", "extra"), r"line 2: expected 4 fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_csv_row_gives_data_error_with_file_and_line(tmp_path, case):
    fields, pattern = BAD_ROWS[case]
    row = ("src",) + fields + (("7",) if len(fields) == 2 else ())
    path = write_rows(tmp_path / "bad.csv", [row])
    with pytest.raises(DataError) as info:
        cf.read_maze_csv(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert re.search(pattern, message), message


def test_extra_off_path_cells_and_header_are_checked(tmp_path):
    q, a = maze_row()
    # An 'o' branching off the S->G path (row 1, col 4 opened in the question).
    q2 = replace_at(q, 9, " ")
    a2 = replace_at(a, 9, "o")
    path = write_rows(tmp_path / "extra.csv", [("s", q2, a2, "1")])
    with pytest.raises(DataError, match=r"line 2: the answer marks 14 'o' cells but its S->G path uses 13"):
        cf.read_maze_csv(path)
    with pytest.raises(DataError, match=r"bad\.csv line 1: expected the header source,question,answer,rating"):
        cf.read_maze_csv(write_rows(tmp_path / "bad.csv", [("s", q, a, "1")], header="q,a"))
    with pytest.raises(DataError, match=r"line 3 field 'question': has 16 characters, expected 25"):
        cf.read_maze_csv(write_rows(tmp_path / "mixed.csv", [("s", q, a, "1"), ("s", "S" + " " * 14 + "G", a, "1")]))
    with pytest.raises(DataError, match=r"missing"):
        cf.read_maze_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"token 0 at position 0 has no maze character"):
        cf.write_maze_csv(tmp_path / "w.csv", np.zeros((1, 25), np.uint8), np.zeros((1, 25), np.uint8))
