"""Experiment tracking: TensorBoard and W&B (offline) receive every metrics.jsonl record with its keys
and step, a resumed run continues the same tracking run, and a missing package is a one-line error
before training starts."""
import json
import struct
import sys

import pytest

from tests.cli_helpers import one_error_line, train_args
from trm_fast import config as config_lib
from trm_fast import tracking
from trm_fast.cli import main
from trm_fast.train import run_directory as ckpt

TINY_SETS = [
    "maze.size=6", "maze.num_train=48", "maze.num_test=8", "compile=false", "model.forward_dtype=float32",
    "model.hidden_size=32", "model.num_heads=2", "model.h_cycles=2", "model.l_cycles=1", "model.puzzle_emb_len=1",
    "model.halt_max_steps=3", "global_batch_size=8", "lr_warmup_steps=2", "log_interval=2", "eval_interval=2",
    "eval_examples=8", "checkpoint_interval=2", "eval_batch_size=8",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tracking-data")


def train_tiny(data_dir, run_dir, steps, *sets, resume=False):
    args = train_args("maze", data_dir, run_dir, [] if resume else TINY_SETS + list(sets), steps,
                      preset=None if resume else "maze-cpu")
    assert main(args + (["--resume"] if resume else [])) == 0


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def restart_from_first_checkpoint(run_dir):
    """Leave only the oldest checkpoint, as if the run had been interrupted right after it."""
    (first_step, _), *later = ckpt.list_checkpoints(run_dir)
    for _, path in later:
        path.unlink()
    return first_step


# ----------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_gets_every_record_and_a_resumed_run_replaces_the_rest(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train_tiny(data_dir, run_dir, 4, "tracking.library=tensorboard")
    first_session = read_metrics(run_dir)
    assert restart_from_first_checkpoint(run_dir) == 2
    train_tiny(data_dir, run_dir, 6, resume=True)
    second_session = read_metrics(run_dir)[len(first_session):]

    # metrics.jsonl keeps both sessions' records of step 4; TensorBoard only the resumed session's.
    resumed_at = second_session[0]["step"]
    assert resumed_at == 4 and any(r["step"] == 4 and r.get("final") for r in first_session)
    expected = {}
    for record in [r for r in first_session if r["step"] < resumed_at] + second_session:
        for key, value in record.items():
            if key != "step":
                expected[key, record["step"]] = float(value)
    assert ("eval/exact_accuracy", 2) in expected and ("test/exact_accuracy", 6) in expected
    assert ("test/exact_accuracy", 4) not in expected and ("final", 6) in expected

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {}
    for tag in events.Tags()["scalars"]:
        steps = [event.step for event in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: the interrupted run's events at {steps} were not purged"
        logged.update({(tag, event.step): event.value for event in events.Scalars(tag)})
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key
    assert "config/text_summary" in events.Tags()["tensors"]  # the training config, as text


# ----------------------------------------------------------------------------------------------
# Weights & Biases, offline


def wandb_records(path):
    """The protobuf records of an offline W&B run file (run-<id>.wandb: a 7-byte header, then
    LevelDB-log blocks of 32 KiB holding [crc32, length, kind] + data chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left_in_block = block - position % block
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left_in_block < 7 or (length == 0 and kind == 0):  # block padding
            position += left_in_block
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return wandb_dir


def test_wandb_offline_gets_every_record_and_a_resumed_run_continues_it(data_dir, tmp_path, wandb_offline):
    import wandb

    run_dir = tmp_path / "run"
    train_tiny(data_dir, run_dir, 4, "tracking.library=wandb", "tracking.project=trm-test")
    run_id = json.loads((run_dir / tracking.STATE_FILE).read_text())["wandb_run_id"]
    train_tiny(data_dir, run_dir, 6, resume=True)
    wandb.teardown()  # W&B's service process writes the run files asynchronously: wait until it has

    run_files = sorted(wandb_offline.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    assert [path.name for path in run_files] == [f"run-{run_id}.wandb"] * 2  # one W&B run, two sessions
    rows, runs = {}, []
    for path in run_files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
                runs.append((record.run.run_id, record.run.project, record.run.display_name, config["global_batch_size"]))
            elif kind == "history":
                # Keys with a '/' come in nested_key rather than key.
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                rows.setdefault(record.history.step.num, {}).update(
                    {key: value for key, value in row.items() if not key.startswith("_")})
    assert runs == [(run_id, "trm-test", "run", 8)] * 2

    expected = {}  # W&B merges the records of one step (training, evaluation, final) into one row
    for record in read_metrics(run_dir):
        expected.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k != "step"})
    assert sorted(expected) == [2, 4, 6] and expected[6]["final"] is True
    assert rows == expected


def test_wandb_files_go_into_the_run_directory_unless_wandb_dir_is_set(tmp_path, wandb_offline, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_DIR")
    run_dir = tmp_path / "run"
    tracker = tracking.open_tracker(config_lib.TrackingSettings(library="wandb", run_name="mine"), run_dir, {"lr": 0.5})
    tracker.start(0)
    tracker.log({"step": 3, "train/loss": 0.25})
    tracker.close()
    wandb.teardown()
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert run.display_name == "mine" and run.project == "trm-fast"
    assert {item.key: json.loads(item.value_json) for item in run.config.update}["lr"] == 0.5
    (history,) = [record.history for record in records if record.WhichOneof("record_type") == "history"]
    assert history.step.num == 3
    assert {"/".join(item.nested_key): json.loads(item.value_json) for item in history.item}["train/loss"] == 0.25
    assert not list(wandb_offline.iterdir())


def test_wandb_refusing_to_start_is_one_line(tmp_path, wandb_offline, monkeypatch):
    import wandb

    def refuse(**_kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setattr(wandb, "init", refuse)
    tracker = tracking.open_tracker(config_lib.TrackingSettings(library="wandb"), tmp_path / "run", {})
    with pytest.raises(tracking.TrackingError) as raised:
        tracker.start(0)
    message = str(raised.value)
    assert "\n" not in message and "api_key not configured" in message and "WANDB_MODE=offline" in message


# ----------------------------------------------------------------------------------------------
# Off, missing, misnamed


@pytest.mark.parametrize("library", ["tensorboard", "wandb"])
def test_a_missing_package_stops_before_training(library, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, library, None)  # `import library` now fails as if not installed
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    assert main(train_args("maze", data_dir, run_dir, TINY_SETS + [f"tracking.library={library}"], 2,
                           preset="maze-cpu")) == 2
    one_error_line(capsys, f"tracking.library={library} needs the {library} package: pip install {library}")
    assert not data_dir.exists() and not run_dir.exists()  # nothing built, nothing trained


def test_no_tracking_by_default_writes_nothing(tmp_path):
    settings = config_lib.preset("maze-cpu").tracking
    assert settings.library == "none"
    tracker = tracking.open_tracker(settings, tmp_path, {})
    tracker.start(0)
    tracker.log({"step": 1, "train/loss": 0.5})
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_library_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="tracking.library: expected one of none, tensorboard, wandb"):
        config_lib.apply_overrides(config_lib.preset("maze-cpu"), ["tracking.library=mlflow"])
    with pytest.raises(config_lib.ConfigError, match="tracking.project must not be empty"):
        config_lib.apply_overrides(config_lib.preset("maze-cpu"), ["tracking.project= "])
