"""TrainConfig presets, overrides (names, types, choices) and JSON round trip."""
import pytest

from trm_fast import config as config_lib
from trm_fast.config import ConfigError, apply_overrides
from trm_fast.presets import preset


def test_presets_have_the_documented_values():
    paper = preset("maze-paper")
    assert (paper.model.hidden_size, paper.model.num_heads, paper.model.h_cycles, paper.model.l_cycles) == (512, 8, 3, 4)
    assert (paper.global_batch_size, paper.lr, paper.weight_decay, paper.puzzle_emb_lr) == (768, 1e-4, 1.0, 1e-4)
    assert (paper.lr_warmup_steps, paper.ema, paper.ema_rate, paper.model.forward_dtype) == (2000, True, 0.999, "bfloat16")
    assert paper.maze.size == 30 and paper.model.halt_max_steps == 16
    cpu = preset("maze-cpu")
    assert cpu.max_minutes is not None and cpu.model.hidden_size <= 128 and cpu.maze.size <= 10
    assert config_lib.default_preset_name(True) == "maze-paper"
    assert config_lib.default_preset_name(False) == "maze-cpu"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("sudoku-huge")


def test_every_preset_and_its_study_overrides_are_valid():
    from trm_fast.presets import PRESETS, STUDY_OVERRIDES

    assert config_lib.preset is preset and config_lib.PRESETS is PRESETS  # the old names still import
    assert set(STUDY_OVERRIDES) <= set(PRESETS)
    for name in PRESETS:
        cfg = preset(name)
        assert cfg.preset == name and cfg is not preset(name)  # a fresh config every call
        config_lib.validate(cfg)
        studied = apply_overrides(preset(name), list(STUDY_OVERRIDES.get(name, ())))
        assert studied.max_steps is not None or name not in STUDY_OVERRIDES


def test_overrides_parse_types():
    cfg = apply_overrides(preset("maze-cpu"), [
        "model.hidden_size=128", "lr=3e-4", "ema=false", "max_minutes=none", "model.forward_dtype=float16",
        "maze.augment=yes", "eval_interval=7",
    ])
    assert cfg.model.hidden_size == 128 and cfg.lr == 3e-4 and cfg.ema is False and cfg.max_minutes is None
    assert cfg.model.forward_dtype == "float16" and cfg.maze.augment is True and cfg.eval_interval == 7


@pytest.mark.parametrize("override, message", [
    ("model.hiden_size=3", "unknown config field 'model.hiden_size' (did you mean 'hidden_size'?)"),
    ("learning_rate=1", "unknown config field 'learning_rate'"),
    ("lr=fast", "lr: expected a number, got 'fast'"),
    ("model.hidden_size=1.5", "model.hidden_size: expected an integer"),
    ("ema=maybe", "ema: expected true/false"),
    ("max_steps=abc", "max_steps: expected an integer or none"),
    ("device=tpu", "device: expected one of auto, cpu, cuda"),
    ("model=3", "model is a group"),
    ("lr.x=3", "lr has no sub-fields"),
    ("lr", "not of the form field=value"),
    ("global_batch_size=0", "global_batch_size must be >= 1"),
    ("model.num_heads=5", "not divisible by model.num_heads 5"),
    ("model.puzzle_emb_ndim=100", "model.puzzle_emb_ndim 100 does not fit in model.puzzle_emb_len 1"),
])
def test_bad_overrides_give_clear_errors(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(preset("maze-cpu"), [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_round_trip(tmp_path):
    cfg = apply_overrides(preset("maze-cpu"), ["model.l_cycles=3", "seed=5"])
    config_lib.save_json(cfg, tmp_path / "config.json")
    assert config_lib.load_json(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text('{"model": {"depth": 3}}')
    with pytest.raises(ConfigError, match="model.depth"):
        config_lib.load_json(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read config"):
        config_lib.load_json(tmp_path / "broken.json")


def test_model_config_fills_the_data_fields():
    model_config = config_lib.model_config(preset("maze-paper"), vocab_size=6, seq_len=900, num_puzzle_identifiers=1)
    assert model_config.hidden_size == 512 and model_config.seq_len == 900 and model_config.forward_dtype == "bfloat16"
    assert model_config.puzzle_emb_ndim == 512  # follows hidden_size unless set
    cfg = apply_overrides(preset("maze-cpu"), ["model.hidden_size=96", "model.num_heads=3"])
    assert config_lib.model_config(cfg, 6, 49, 1).puzzle_emb_ndim == 96


def test_model_settings_are_trm_config_fields_with_its_defaults():
    """One definition: the run's architecture settings are TRMConfig's, less what the data decides."""
    import dataclasses

    from trm_fast.model.reference import TRMConfig

    settings = {f.name: f.default for f in dataclasses.fields(config_lib.ModelSettings)}
    trm = {f.name: f.default for f in dataclasses.fields(TRMConfig) if f.name not in config_lib.DATA_FIELDS}
    assert settings == trm


def test_parse_fields_types_and_rejects_like_set():
    from trm_fast.model.reference import TRMConfig

    assert config_lib.parse_fields(TRMConfig, ["l_cycles=6", "mlp_t=true", "puzzle_emb_ndim=none"]) == {
        "l_cycles": 6, "mlp_t": True, "puzzle_emb_ndim": None}
    with pytest.raises(ConfigError, match="l_cycles: expected an integer"):
        config_lib.parse_fields(TRMConfig, ["l_cycles=six"])
    with pytest.raises(ConfigError, match="unknown config field 'l_cycle'.*did you mean 'l_cycles'"):
        config_lib.parse_fields(TRMConfig, ["l_cycle=6"])
    with pytest.raises(ConfigError, match="not of the form field=value"):
        config_lib.parse_fields(TRMConfig, ["l_cycles"])


@pytest.mark.parametrize("override, message", [
    ("micro_batch_size=0", "micro_batch_size must be >= 1"),
    ("recompute=true", "recompute=true needs engine=fast"),
    ("fused_linear=true", "fused_linear=true needs engine=fast"),
])
def test_step_options_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("maze-cpu"), ["engine=reference", override])


def test_maze_style_is_a_checked_choice_and_names_its_own_data_folder():
    from trm_fast.train.data import dataset_dir

    assert preset("maze-cpu").maze.style == preset("maze-paper").maze.style == "random"  # Maze-Hard's style
    corridors = apply_overrides(preset("maze-cpu"), ["maze.style=corridors"])
    random_walls = apply_overrides(preset("maze-cpu"), ["maze.wall_share_max=0.45"])
    assert dataset_dir(random_walls) != dataset_dir(corridors) and "random0.3-0.45" in dataset_dir(random_walls).name
    assert "random" not in dataset_dir(corridors).name
    with pytest.raises(ConfigError, match="maze.style: expected one of corridors, random, mixed"):
        apply_overrides(preset("maze-cpu"), ["maze.style=spiral"])
    with pytest.raises(ConfigError, match="wall_share_min/max"):
        apply_overrides(preset("maze-cpu"), ["maze.wall_share_min=0.6"])


def test_validate_runs_once_where_a_config_is_finished(monkeypatch, tmp_path, tiny_config):
    """apply_overrides validates; reading a config back and starting a trainer do not check it again."""
    from trm_fast.study import make_study
    from trm_fast.train.loop import Trainer

    checked = []
    real_validate = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda cfg: checked.append(cfg.preset) or real_validate(cfg))
    cfg = tiny_config("seed=2")
    assert len(checked) == 1
    config_lib.save_json(cfg, tmp_path / "config.json")
    resumed = config_lib.apply_overrides(config_lib.load_json(tmp_path / "config.json"), [])
    assert resumed == cfg and len(checked) == 2
    Trainer(resumed, tmp_path / "run", progress=False, log=lambda _line: None).close()
    assert len(checked) == 2
    checked.clear()
    study = make_study(out=tmp_path / "study", cuda_available=False, sets=["seed=1"], max_steps=5)
    assert len(checked) == 1 + len(study.variants)  # the base once, then each variant's overrides
