"""Loading weights from the reference TRM project and from trm-fast checkpoints.

The reference project saves `torch.save(model.state_dict())` of its compiled loss-head wrapper, so
keys read `_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight`; the file holds the
EMA weights. Our modules use the same names below `inner.`, so loading is prefix stripping plus a
config inferred from the tensor shapes (what shapes cannot tell, such as the recursion depth, comes
from the caller).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from trm_fast.errors import CheckpointError, first_line
from trm_fast.model.reference import TRMConfig, swiglu_width

REFERENCE_PREFIXES = ("_orig_mod.", "model.", "module.")
# The "format" entry of our own checkpoints (trm_fast.train.run_directory writes them).
CHECKPOINT_FORMAT = "trm-fast"


def strip_reference_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in REFERENCE_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def infer_config(state_dict: dict[str, torch.Tensor], **known: Any) -> TRMConfig:
    """A TRMConfig consistent with the tensor shapes; `known` fills what shapes cannot tell
    (seq_len for RoPE models, h_cycles, l_cycles, halt_max_steps, puzzle_emb_len, ...)."""
    embed = state_dict.get("inner.embed_tokens.embedding_weight")
    if embed is None:
        raise CheckpointError("missing inner.embed_tokens.embedding_weight: not a TRM state dict")
    vocab_size, hidden_size = embed.shape
    layer_ids = {int(m.group(1)) for key in state_dict if (m := re.match(r"inner\.L_level\.layers\.(\d+)\.", key))}
    values: dict[str, Any] = dict(vocab_size=int(vocab_size), hidden_size=int(hidden_size), num_layers=len(layer_ids) or 2)

    mlp_t_weight = state_dict.get("inner.L_level.layers.0.mlp_t.gate_up_proj.weight")
    values["mlp_t"] = mlp_t_weight is not None
    puzzle = state_dict.get("inner.puzzle_emb.weights")
    if puzzle is not None:
        values["num_puzzle_identifiers"], values["puzzle_emb_ndim"] = map(int, puzzle.shape)
    else:
        values["puzzle_emb_ndim"] = 0
    if "inner.embed_pos.embedding_weight" in state_dict:
        values["pos_encodings"] = "learned"
        total_len = int(state_dict["inner.embed_pos.embedding_weight"].shape[0])
    elif values["mlp_t"]:
        values["pos_encodings"] = known.get("pos_encodings", "none")
        total_len = int(mlp_t_weight.shape[1])
    else:
        values["pos_encodings"] = known.get("pos_encodings", "rope")
        total_len = None

    gate_up = state_dict.get("inner.L_level.layers.0.mlp.gate_up_proj.weight")
    if gate_up is not None:
        inner_width = gate_up.shape[0] // 2
        expansion = known.get("expansion", 4.0)
        if swiglu_width(int(hidden_size), expansion) != inner_width:
            # Find an expansion reproducing the stored width (the rounding to 256 makes several valid).
            for candidate in (4.0, 2.0, 3.0, 8.0, 1.0, 6.0):
                if swiglu_width(int(hidden_size), candidate) == inner_width:
                    expansion = candidate
                    break
        values["expansion"] = expansion

    values.update({k: v for k, v in known.items() if v is not None})
    if total_len is not None:
        prefix = TRMConfig(**{**values, "seq_len": 1}).prefix_len
        inferred_seq = total_len - prefix
        if "seq_len" in known and known["seq_len"] is not None and known["seq_len"] != inferred_seq:
            raise CheckpointError(f"checkpoint has {total_len} positions, which does not fit seq_len {known['seq_len']} + prefix {prefix}")
        values["seq_len"] = inferred_seq
    if "seq_len" not in values:
        raise CheckpointError("seq_len cannot be inferred from a RoPE attention checkpoint: pass it (e.g. from the dataset)")
    return TRMConfig(**values)


def read_checkpoint_file(path: Path, weights_only: bool = True) -> Any:
    """What a checkpoint file holds (torch.save on CPU, or .safetensors tensors); a missing, truncated
    or corrupt file is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {first_line(str(error))})") from None


def load_any_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights for evaluation from a trm-fast checkpoint (its EMA copy) or a reference-project file.

    Returns (state_dict with our key names, meta). meta has "format" ("trm-fast" | "reference"),
    and for our checkpoints "model_config" (a dict) and the rest of the saved metadata.
    """
    path = Path(path)
    payload = read_checkpoint_file(path, weights_only=False)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        weights = payload.get("ema_model") or payload.get("model")
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path}: trm-fast checkpoint has no model weights")
        meta = {key: value for key, value in payload.items() if key not in ("model", "ema_model", "optimizer")}
        return dict(weights), meta
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict = strip_reference_prefixes(payload)
        if not any(key.startswith("inner.") for key in state_dict):
            raise CheckpointError(f"{path}: no TRM weights found (expected keys like _orig_mod.model.inner.*)")
        return state_dict, {"format": "reference"}
    raise CheckpointError(f"{path}: not a trm-fast checkpoint or a reference TRM state dict")


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a one-line error listing what does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if mismatched:
            key = mismatched[0]
            parts.append(f"shape of {key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)
