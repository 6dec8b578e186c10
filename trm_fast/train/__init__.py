"""Training layer: ACT loss and metrics, AdamATan2 / sign-SGD / EMA, the run directory (its files,
metrics and checkpoints: run_directory.py), data parallelism, and the loop that ties them together.

    from trm_fast.config import apply_overrides
    from trm_fast.presets import preset
    from trm_fast.train import train
    result = train(apply_overrides(preset("maze-cpu"), ["max_steps=200"]), "runs/try")
"""
from trm_fast.train.ema import EMA
from trm_fast.train.evaluate import evaluate, run_all_steps
from trm_fast.train.loop import Trainer, TrainResult, train
from trm_fast.train.losses import METRIC_NAMES, act_loss, summarise
from trm_fast.train.optim import AdamATan2, PuzzleEmbeddingSignSGD, lr_at_step

__all__ = [
    "EMA", "AdamATan2", "PuzzleEmbeddingSignSGD", "lr_at_step", "act_loss", "summarise", "METRIC_NAMES",
    "evaluate", "run_all_steps", "Trainer", "TrainResult", "train",
]
