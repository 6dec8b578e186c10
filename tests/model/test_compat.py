"""Reference-project checkpoints (keys `_orig_mod.model.inner.*`) load unchanged."""
import pytest
import torch

from trm_fast.model.compat import CheckpointError, infer_config, load_any_state_dict, load_model_weights, strip_reference_prefixes
from trm_fast.model.fast import FastTRM
from trm_fast.model.reference import TRM, TRMConfig

# The names the reference project's modules produce (models/recursive_reasoning/trm.py, layers.py).
REFERENCE_LAYER_KEYS = [
    "self_attn.qkv_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
]
REFERENCE_TOP_KEYS = [
    "embed_tokens.embedding_weight",
    "lm_head.weight",
    "q_head.weight",
    "q_head.bias",
    "H_init",
    "L_init",
    "puzzle_emb.weights",
]


def reference_style_state_dict(config: TRMConfig, seed=0) -> dict:
    """A state dict under the reference project's exact names, built by hand from shapes."""
    generator = torch.Generator().manual_seed(seed)
    width, vocab = config.hidden_size, config.vocab_size
    inner = 4 * width * 2 // 3
    inner = -(inner // -256) * 256
    shapes = {
        "embed_tokens.embedding_weight": (vocab, width),
        "lm_head.weight": (vocab, width),
        "q_head.weight": (2, width),
        "q_head.bias": (2,),
        "H_init": (width,),
        "L_init": (width,),
        "puzzle_emb.weights": (config.num_puzzle_identifiers, config.puzzle_emb_ndim),
    }
    for layer in range(config.num_layers):
        shapes[f"L_level.layers.{layer}.self_attn.qkv_proj.weight"] = (3 * width, width)
        shapes[f"L_level.layers.{layer}.self_attn.o_proj.weight"] = (width, width)
        shapes[f"L_level.layers.{layer}.mlp.gate_up_proj.weight"] = (2 * inner, width)
        shapes[f"L_level.layers.{layer}.mlp.down_proj.weight"] = (width, inner)
    # std 0.1, a trained model's scale: std-1 weights make the 24 chained layers chaotic, so two correct
    # engines would part ways on rounding alone.
    return {f"_orig_mod.model.inner.{name}": 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def test_every_reference_name_exists_in_our_model():
    config = TRMConfig(vocab_size=6, seq_len=16, hidden_size=64, num_heads=4, puzzle_emb_ndim=64)
    ours = set(TRM(config).state_dict())
    expected = {f"inner.{k}" for k in REFERENCE_TOP_KEYS}
    expected |= {f"inner.L_level.layers.{i}.{k}" for i in range(2) for k in REFERENCE_LAYER_KEYS}
    assert ours == expected


def test_reference_checkpoint_loads_and_predicts(tmp_path):
    config = TRMConfig(vocab_size=6, seq_len=16, hidden_size=64, num_heads=4, puzzle_emb_ndim=64, num_puzzle_identifiers=3)
    reference = reference_style_state_dict(config)
    path = tmp_path / "step_1000"
    torch.save(reference, path)

    state_dict, meta = load_any_state_dict(path)
    assert meta["format"] == "reference"
    inferred = infer_config(state_dict, seq_len=16, h_cycles=3, l_cycles=4)
    assert (inferred.vocab_size, inferred.hidden_size, inferred.num_layers) == (6, 64, 2)
    assert (inferred.num_puzzle_identifiers, inferred.puzzle_emb_ndim, inferred.mlp_t) == (3, 64, False)

    model_config = TRMConfig(**{**inferred.to_dict(), "num_heads": 4, "halt_exploration_prob": 0.0})
    model = TRM(model_config)
    load_model_weights(model, state_dict)
    for key, value in reference.items():
        torch.testing.assert_close(model.state_dict()[key.removeprefix("_orig_mod.model.")], value)

    # It predicts: one supervision step of the fast engine (what `trm-fast eval` runs) from the same file
    # computes what the reference engine computes, and both answer with the checkpoint's weights.
    fast = FastTRM(model_config, backend="torch")
    load_model_weights(fast, state_dict)
    generator = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(1, 6, (2, 16), generator=generator, dtype=torch.int32),
             "labels": torch.randint(1, 6, (2, 16), generator=generator),
             "puzzle_identifiers": torch.tensor([0, 2], dtype=torch.int32)}
    predictions = {}
    for name, engine in (("reference", model), ("fast", fast), ("fresh", TRM(model_config))):
        with torch.no_grad():
            _, outputs = engine.eval()(engine.initial_carry(batch), batch)
        predictions[name] = outputs
    assert predictions["reference"]["logits"].shape == (2, 16, 6)
    for key in ("logits", "q_halt_logits"):
        torch.testing.assert_close(predictions["fast"][key], predictions["reference"][key], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(predictions["fresh"]["logits"], predictions["reference"]["logits"], atol=1e-2)


def test_mlp_t_checkpoint_infers_sequence_length():
    config = TRMConfig(vocab_size=11, seq_len=81, hidden_size=64, mlp_t=True, pos_encodings="none", puzzle_emb_ndim=64)
    state_dict = {f"_orig_mod.model.{k}": v for k, v in TRM(config).state_dict().items()}
    inferred = infer_config(strip_reference_prefixes(state_dict))
    assert inferred.mlp_t and inferred.seq_len == 81 and inferred.pos_encodings == "none"


def test_prefix_stripping_handles_all_wrappers():
    keys = {"_orig_mod.model.inner.H_init": 1, "model.inner.L_init": 2, "module._orig_mod.model.inner.q_head.bias": 3}
    assert set(strip_reference_prefixes(keys)) == {"inner.H_init", "inner.L_init", "inner.q_head.bias"}


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_any_state_dict(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read") as error:
        load_any_state_dict(corrupt)
    assert "\n" not in str(error.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="no TRM weights"):
        load_any_state_dict(foreign)

    config = TRMConfig(vocab_size=6, seq_len=16, hidden_size=64, num_heads=4, puzzle_emb_ndim=64)
    wrong_width = TRMConfig(vocab_size=6, seq_len=16, hidden_size=32, num_heads=4, puzzle_emb_ndim=32)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_weights(TRM(config), TRM(wrong_width).state_dict())
