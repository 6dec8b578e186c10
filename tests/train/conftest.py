"""Tiny training configs shared by the training-layer tests (hidden 32, 6x6 mazes, a few steps)."""
import pytest

from trm_fast import config as config_lib

TINY_OVERRIDES = [
    "maze.size=6", "maze.num_train=64", "maze.num_test=12", "maze.seed=1", "compile=false",
    "model.hidden_size=32", "model.num_heads=2", "model.h_cycles=2", "model.l_cycles=1",
    "model.puzzle_emb_len=1", "model.halt_max_steps=4",
    "model.forward_dtype=float32",
    "global_batch_size=8", "lr=3e-3", "puzzle_emb_lr=3e-3", "lr_warmup_steps=2", "weight_decay=0.1",
    "puzzle_emb_weight_decay=0.1", "ema_rate=0.9", "log_interval=2", "eval_interval=none",
    "eval_batch_size=8", "checkpoint_interval=none", "max_minutes=none", "max_steps=6",
    "device=cpu", "backend=torch",
]


def make_tiny_config(data_dir, *extra):
    cfg = config_lib.preset("maze-cpu")
    return config_lib.apply_overrides(cfg, TINY_OVERRIDES + [f"data_dir={data_dir}", *extra])


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """The tiny maze dataset, generated once per session (the trainer reuses a built folder)."""
    from trm_fast.train.data import prepare_dataset
    from trm_fast.train.distributed import DistContext

    data_dir = tmp_path_factory.mktemp("tiny-maze")
    prepare_dataset(make_tiny_config(data_dir), DistContext())
    return data_dir


@pytest.fixture
def tiny_config(tiny_data_dir):
    """tiny_config("max_steps=10", ...) -> a TrainConfig on the shared tiny dataset."""
    return lambda *extra: make_tiny_config(tiny_data_dir, *extra)
