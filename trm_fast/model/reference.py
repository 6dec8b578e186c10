"""The reference Tiny Recursive Model (TRM), readable top to bottom: the spec the fast engine must match.

Semantics follow the public TRM code (arXiv 2510.04871, SamsungSAILMontreal/TinyRecursiveModels),
which is what the published numbers came from; where the paper differs, the code wins. Parameter
and buffer names match that project so its checkpoints load unchanged (see `compat.py`).

One network (`inner.L_level`, 2 post-norm blocks) updates both states:
    z_latent = net(z_latent + y_answer + x)   n times      ("z_L" in the reference code)
    y_answer = net(y_answer + z_latent)       once          ("z_H")
repeated T times per supervision step, the first T-1 without gradients. An ACT wrapper carries the
states across supervision (= optimizer) steps and decides per slot when to halt.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TRMConfig:
    vocab_size: int
    seq_len: int  # grid tokens, without the puzzle prefix
    num_puzzle_identifiers: int = 1
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    num_layers: int = 2  # "L_layers"
    h_cycles: int = 3  # T
    l_cycles: int = 4  # n
    pos_encodings: str = "rope"  # rope | learned | none
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    puzzle_emb_ndim: Optional[int] = None  # None = hidden_size (the reference); 0 disables it
    puzzle_emb_len: int = 16  # prefix tokens; 0 means ceil(puzzle_emb_ndim / hidden_size)
    mlp_t: bool = False  # TRM-MLP: token-mixing SwiGLU instead of attention
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    no_act_continue: bool = True  # False adds the Q-continue target (one extra no-grad pass)
    forward_dtype: str = "float32"  # bfloat16 on GPU

    def __post_init__(self):
        if self.puzzle_emb_ndim is None:
            self.puzzle_emb_ndim = self.hidden_size
        if self.pos_encodings not in ("rope", "learned", "none"):
            raise ValueError(f"pos_encodings must be rope, learned or none, got {self.pos_encodings!r}")
        if self.forward_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"forward_dtype must be float32, bfloat16 or float16, got {self.forward_dtype!r}")
        if not self.mlp_t and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("vocab_size", "seq_len", "hidden_size", "num_layers", "h_cycles", "l_cycles", "halt_max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def prefix_len(self) -> int:
        if self.puzzle_emb_len:
            return self.puzzle_emb_len
        return -(self.puzzle_emb_ndim // -self.hidden_size)  # ceil division

    @property
    def total_len(self) -> int:
        return self.seq_len + self.prefix_len

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TRMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TRMConfig field(s): {', '.join(unknown)}")
        return cls(**values)


def swiglu_width(width: int, expansion: float) -> int:
    """Hidden width of a SwiGLU: expansion * width * 2/3, rounded UP to a multiple of 256."""
    return -(round(expansion * width * 2 / 3) // -256) * 256


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal truncated at +-2 sigma, rescaled so the result really has standard deviation `std`."""
    # Truncation at 2 sigma shrinks the std by this factor: sqrt(1 - 2*2*phi(2) / (2*Phi(2) - 1)).
    truncation_std = 0.8796256610342398
    with torch.no_grad():
        nn.init.trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0)
        return tensor.mul_(std / truncation_std)


def rms_norm(hidden: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """Weightless RMSNorm computed in fp32 and cast back."""
    as_float = hidden.float()
    normed = as_float * torch.rsqrt(as_float.square().mean(dim, keepdim=True) + eps)
    return normed.to(hidden.dtype)


class CastedLinear(nn.Module):
    """fp32 weights cast to the activation dtype at use; truncated LeCun-normal init."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(inputs.dtype) if self.bias is not None else None
        return F.linear(inputs, self.weight.to(inputs.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


@dataclass
class PuzzleRows:
    """The puzzle-embedding rows one training batch reads: a gradient leaf and the ids it holds.

    The table itself is a buffer (sign-SGD updates it, not autograd). Each batch slice that trains
    (a data-parallel rank, a micro-batch) owns one PuzzleRows, carried in its ACT carry; the forward
    refills it in place, so torch.compile and CUDA graphs see fixed tensors, and the optimizer step
    reads `ids` and `values.grad` from it explicitly.
    """

    values: torch.Tensor  # fp32 [B, W], requires_grad
    ids: torch.Tensor  # int32 [B]

    @classmethod
    def allocate(cls, batch_size: int, width: int, device) -> "PuzzleRows":
        values = torch.zeros(batch_size, width, device=device, requires_grad=True)
        return cls(values, torch.zeros(batch_size, dtype=torch.int32, device=device))


class PuzzleEmbedding(nn.Module):
    """Per-puzzle vectors in a zero-initialised table that is a buffer, not a Parameter.

    Training (with `rows`) copies the batch's rows into `rows.values`, a leaf that receives their
    gradient; the trainer then updates only those rows of `weights` by sign-SGD. Without `rows`, or
    without gradients, the rows are read from the table directly.
    """

    def __init__(self, num_identifiers: int, embedding_dim: int, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num_identifiers, embedding_dim), persistent=True)

    @property
    def width(self) -> int:
        return self.weights.shape[1]

    def forward(self, ids: torch.Tensor, rows: "PuzzleRows | None" = None) -> torch.Tensor:
        if rows is None or not (self.training and torch.is_grad_enabled()):
            return self.weights[ids].to(self.cast_to)
        with torch.no_grad():
            rows.values.copy_(self.weights[ids])
            rows.ids.copy_(ids)
        return rows.values.to(self.cast_to)


class RotaryEmbedding(nn.Module):
    """cos/sin tables [positions, head_dim] in the rotate-half layout: cat(freqs, freqs)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inverse_frequencies = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inverse_frequencies)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos_cached", angles.cos(), persistent=False)
        self.register_buffer("sin_cached", angles.sin(), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: [B, S, H, hd]; rotation in fp32 (the dtype of cos/sin), cast back."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q32, k32 = q.to(cos.dtype), k.to(cos.dtype)
    q_rot = q32 * cos + rotate_half(q32) * sin
    k_rot = k32 * cos + rotate_half(k32) * sin
    return q_rot.to(q.dtype), k_rot.to(k.dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, cos_sin) -> torch.Tensor:
        batch, seq, width = hidden.shape
        qkv = self.qkv_proj(hidden).view(batch, seq, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)
        if cos_sin is not None:
            q, k = apply_rope(q, k, *cos_sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, seq, width))


class SwiGLU(nn.Module):
    def __init__(self, width: int, expansion: float):
        super().__init__()
        inner = swiglu_width(width, expansion)
        self.gate_up_proj = CastedLinear(width, 2 * inner, bias=False)
        self.down_proj = CastedLinear(inner, width, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(hidden).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm: h = rms(h + mix(h)); h = rms(h + swiglu(h)). `mix` is attention or, for TRM-MLP,
    a SwiGLU over the token axis normalised over tokens."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.use_mlp_t = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.total_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, hidden: torch.Tensor, cos_sin) -> torch.Tensor:
        if self.use_mlp_t:
            tokens_last = hidden.transpose(1, 2)  # [B, D, S]
            tokens_last = rms_norm(tokens_last + self.mlp_t(tokens_last), self.eps)
            hidden = tokens_last.transpose(1, 2)
        else:
            hidden = rms_norm(hidden + self.self_attn(hidden, cos_sin), self.eps)
        return rms_norm(hidden + self.mlp(hidden), self.eps)


class ReasoningNet(nn.Module):
    """The one tiny network: state + injection, then the blocks."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))

    def forward(self, state: torch.Tensor, injection: torch.Tensor, cos_sin) -> torch.Tensor:
        hidden = state + injection
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return hidden


def latent_recursion(net_call, y_answer, z_latent, x_input, h_cycles: int, l_cycles: int):
    """One supervision step's recursion for any `net_call(state, injection)`:
    T-1 cycles without gradients, then one with (only it is differentiated)."""
    with torch.no_grad():
        for _cycle in range(h_cycles - 1):
            for _inner in range(l_cycles):
                z_latent = net_call(z_latent, y_answer + x_input)
            y_answer = net_call(y_answer, z_latent)
    for _inner in range(l_cycles):
        z_latent = net_call(z_latent, y_answer + x_input)
    y_answer = net_call(y_answer, z_latent)
    return y_answer, z_latent


class TRMInner(nn.Module):
    """Embeddings, the recursion of one supervision step, and the heads."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = config
        dtype = config.dtype
        width = config.hidden_size
        self.embed_scale = math.sqrt(width)

        self.embed_tokens = CastedEmbedding(config.vocab_size, width, init_std=1.0 / self.embed_scale, cast_to=dtype)
        self.lm_head = CastedLinear(width, config.vocab_size, bias=False)
        self.q_head = CastedLinear(width, 2, bias=True)
        self.puzzle_emb = (
            PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim, dtype)
            if config.puzzle_emb_ndim > 0
            else None
        )
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(width // config.num_heads, config.total_len, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.total_len, width, init_std=1.0 / self.embed_scale, cast_to=dtype)

        self.L_level = ReasoningNet(config)

        # Fixed starting states, broadcast to every position when a slot (re)starts; not learned.
        self.register_buffer("H_init", trunc_normal_(torch.empty(width, dtype=dtype), std=1.0), persistent=True)
        self.register_buffer("L_init", trunc_normal_(torch.empty(width, dtype=dtype), std=1.0), persistent=True)

        # Q head starts near "never halt" so early training is not cut short.
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def cos_sin(self):
        return self.rotary_emb() if self.config.pos_encodings == "rope" else None

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor, puzzle_rows=None) -> torch.Tensor:
        config = self.config
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.puzzle_emb is not None:
            puzzle = self.puzzle_emb(puzzle_identifiers, puzzle_rows)
            pad = config.prefix_len * config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, config.prefix_len, config.hidden_size), embedding), dim=-2)
        if config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the variance of the sum of two unit-variance embeddings
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(config.dtype))
        return self.embed_scale * embedding

    def initial_states(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch_size, self.config.total_len, self.config.hidden_size)
        y_answer = self.H_init.to(device).expand(shape).clone()
        z_latent = self.L_init.to(device).expand(shape).clone()
        return y_answer, z_latent

    def reset_states(self, reset: torch.Tensor, y_answer: torch.Tensor, z_latent: torch.Tensor):
        flag = reset.view(-1, 1, 1)
        return torch.where(flag, self.H_init, y_answer), torch.where(flag, self.L_init, z_latent)

    def heads(self, y_answer: torch.Tensor):
        logits = self.lm_head(y_answer)[:, self.config.prefix_len :]
        q_logits = self.q_head(y_answer[:, 0]).to(torch.float32)
        return logits, q_logits[..., 0], q_logits[..., 1]

    def recurse(self, y_answer, z_latent, x_input, cos_sin):
        def net_call(state, injection):
            return self.L_level(state, injection, cos_sin)

        return latent_recursion(net_call, y_answer, z_latent, x_input, self.config.h_cycles, self.config.l_cycles)

    def forward(self, y_answer, z_latent, batch: dict, puzzle_rows: "PuzzleRows | None" = None):
        x_input = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"], puzzle_rows)
        y_answer, z_latent = self.recurse(y_answer, z_latent, x_input, self.cos_sin())
        logits, q_halt, q_continue = self.heads(y_answer)
        return (y_answer.detach(), z_latent.detach()), logits, q_halt, q_continue


@dataclass
class ACTCarry:
    """What persists across supervision steps, one slot per batch row."""

    y_answer: torch.Tensor  # "z_H"
    z_latent: torch.Tensor  # "z_L"
    steps: torch.Tensor  # int32 [B]: supervision steps taken by the slot's current example
    halted: torch.Tensor  # bool [B]: the slot takes a new example at the next step
    current_data: dict = field(default_factory=dict)  # the examples now in the slots
    # The slots' puzzle-embedding gradient leaf (training only; scratch, not state: never saved).
    puzzle_rows: Optional[PuzzleRows] = None

    def copy_(self, source: "ACTCarry") -> None:
        """Write `source` into this carry's tensors in place (a CUDA graph must keep their addresses).
        `puzzle_rows` is the same object in both (the forward passes it through)."""
        self.y_answer.copy_(source.y_answer)
        self.z_latent.copy_(source.z_latent)
        self.steps.copy_(source.steps)
        self.halted.copy_(source.halted)
        for key, value in source.current_data.items():
            self.current_data[key].copy_(value)


def q_head_says_halt(config: TRMConfig, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
    """The Q head's halting decision per slot: q_halt > 0, or q_halt > q_continue when the model
    learns Q-continue. Training adds exploration on top; `trm-fast eval --halt` uses it as is."""
    if config.no_act_continue:
        return q_halt > 0
    return q_halt > q_continue


class TRM(nn.Module):
    """The ACT wrapper: persistent batch carry, halting and exploration, one supervision step per call."""

    inner_class = TRMInner  # the fast engine swaps in its own recursion, same parameters

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = config
        self.inner = self.inner_class(config)

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb

    def initial_carry(self, batch: dict) -> ACTCarry:
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        y_answer, z_latent = self.inner.initial_states(batch_size, device)
        puzzle_emb = self.inner.puzzle_emb
        return ACTCarry(
            y_answer=y_answer,
            z_latent=z_latent,
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),  # every slot starts empty
            current_data={key: torch.empty_like(value) for key, value in batch.items()},
            puzzle_rows=PuzzleRows.allocate(batch_size, puzzle_emb.width, device) if puzzle_emb is not None else None,
        )

    def forward(self, carry: ACTCarry, batch: dict) -> tuple[ACTCarry, dict]:
        config = self.config
        # Halted slots take the batch's new example and restart from the initial states.
        y_answer, z_latent = self.inner.reset_states(carry.halted, carry.y_answer, carry.z_latent)
        steps = torch.where(carry.halted, 0, carry.steps)
        current_data = {
            key: torch.where(carry.halted.view((-1,) + (1,) * (batch[key].ndim - 1)), batch[key], value)
            for key, value in carry.current_data.items()
        }

        (y_answer, z_latent), logits, q_halt, q_continue = self.inner(y_answer, z_latent, current_data, carry.puzzle_rows)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= config.halt_max_steps
            halted = is_last_step
            # Evaluation always runs every step so a batch halts together.
            if self.training and config.halt_max_steps > 1:
                halted = halted | q_head_says_halt(config, q_halt, q_continue)
                # Exploration: some slots must run a random minimum number of steps first.
                explore = torch.rand_like(q_halt) < config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=config.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)

                if not config.no_act_continue:
                    # Bootstrapped Q target from one more (gradient-free) step of the new states.
                    _, _, next_q_halt, next_q_continue = self.inner(y_answer, z_latent, current_data)
                    best_next = torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                    outputs["target_q_continue"] = torch.sigmoid(best_next)

        return ACTCarry(y_answer, z_latent, steps.to(torch.int32), halted, current_data, carry.puzzle_rows), outputs
