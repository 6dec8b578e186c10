"""The reference TRM against the semantics in shared/notes/trm-reference.md."""
import math

import pytest
import torch

from trm_fast.model.reference import TRM, TRMConfig, rms_norm, swiglu_width, trunc_normal_


def tiny_config(**overrides) -> TRMConfig:
    values = dict(
        vocab_size=6, seq_len=12, hidden_size=32, num_heads=2, h_cycles=2, l_cycles=2,
        puzzle_emb_ndim=32, puzzle_emb_len=2, halt_max_steps=4,
    )
    values.update(overrides)
    return TRMConfig(**values)


def make_batch(config: TRMConfig, batch_size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, config.vocab_size, (batch_size, config.seq_len), generator=generator),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32),
    }


def test_parameter_counts_match_the_paper():
    # TRM-Att on 30x30 grids (ARC vocabulary 12): 6.83M; TRM-MLP on Sudoku: 5.03M.
    attention = TRM(TRMConfig(vocab_size=12, seq_len=900))
    mlp = TRM(TRMConfig(vocab_size=11, seq_len=81, mlp_t=True, l_cycles=6, pos_encodings="none"))
    assert round(sum(p.numel() for p in attention.parameters()) / 1e6, 2) == 6.83
    assert round(sum(p.numel() for p in mlp.parameters()) / 1e6, 2) == 5.03


def test_swiglu_width_rounds_up_to_256():
    assert swiglu_width(512, 4.0) == 1536
    assert swiglu_width(96, 4.0) == 256  # exactly 256
    assert swiglu_width(97, 4.0) == 512  # 258.7 -> 259 -> 512 (Sudoku mlp_t width)


def test_truncated_normal_has_requested_std_and_bounds():
    sample = trunc_normal_(torch.empty(200_000), std=0.5)
    assert abs(sample.std().item() - 0.5) < 0.01
    assert sample.abs().max().item() <= 2 * 0.5 / 0.8796256610342398 + 1e-6


def test_rms_norm_is_weightless_fp32_and_casts_back():
    x = torch.randn(4, 8, dtype=torch.float64).to(torch.bfloat16)
    out = rms_norm(x, 1e-5)
    assert out.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_initialisation_of_heads_embeddings_and_puzzle_table():
    model = TRM(tiny_config(hidden_size=64, num_heads=4, puzzle_emb_ndim=64))
    inner = model.inner
    assert torch.count_nonzero(inner.q_head.weight) == 0
    assert torch.all(inner.q_head.bias == -5)
    assert torch.count_nonzero(inner.puzzle_emb.weights) == 0
    assert not any(p is inner.puzzle_emb.weights for p in model.parameters())
    assert "inner.puzzle_emb.weights" in model.state_dict()
    assert not inner.H_init.requires_grad and not inner.L_init.requires_grad


def test_embedding_is_scaled_by_sqrt_width_and_prefixed():
    config = tiny_config()
    model = TRM(config)
    batch = make_batch(config)
    embedded = model.inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    assert embedded.shape == (3, config.seq_len + config.prefix_len, config.hidden_size)
    tokens = model.inner.embed_tokens.embedding_weight[batch["inputs"].long()]
    torch.testing.assert_close(embedded[:, config.prefix_len :], tokens * math.sqrt(config.hidden_size))
    assert torch.count_nonzero(embedded[:, : config.prefix_len]) == 0  # zero-initialised puzzle rows


def count_net_calls(model):
    calls = {"with_grad": 0, "without_grad": 0}

    def hook(_module, _inputs, _output):
        calls["with_grad" if torch.is_grad_enabled() else "without_grad"] += 1

    model.inner.L_level.register_forward_hook(hook)
    return calls


def test_only_the_last_cycle_is_differentiated():
    config = tiny_config(h_cycles=3, l_cycles=4)
    model = TRM(config).train()
    calls = count_net_calls(model)
    batch = make_batch(config)
    carry, outputs = model(model.initial_carry(batch), batch)
    assert calls == {"with_grad": config.l_cycles + 1, "without_grad": (config.h_cycles - 1) * (config.l_cycles + 1)}
    assert not carry.y_answer.requires_grad and not carry.z_latent.requires_grad
    assert outputs["logits"].requires_grad


def test_gradients_equal_those_of_the_last_cycle_alone():
    config = tiny_config(h_cycles=3, l_cycles=2)
    model = TRM(config).train()
    batch = make_batch(config)
    carry = model.initial_carry(batch)
    _, outputs = model(carry, batch)
    outputs["logits"].float().square().mean().backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Replay by hand: the T-1 gradient-free cycles produce constants; differentiate one cycle.
    model.zero_grad()
    inner = model.inner
    y, z = inner.reset_states(carry.halted, carry.y_answer, carry.z_latent)
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    cos_sin = inner.cos_sin()
    with torch.no_grad():
        for _ in range(config.h_cycles - 1):
            for _ in range(config.l_cycles):
                z = inner.L_level(z, y + x, cos_sin)
            y = inner.L_level(y, z, cos_sin)
    for _ in range(config.l_cycles):
        z = inner.L_level(z, y + x, cos_sin)
    y = inner.L_level(y, z, cos_sin)
    inner.lm_head(y)[:, config.prefix_len :].float().square().mean().backward()
    for name, grad in full.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)


def test_halted_slots_and_only_those_are_refilled():
    config = tiny_config(halt_max_steps=8)
    model = TRM(config).train()
    first, second = make_batch(config, seed=1), make_batch(config, seed=2)
    carry, _ = model(model.initial_carry(first), first)
    carry.halted = torch.tensor([True, False, True])
    carry.steps = torch.tensor([5, 3, 7], dtype=torch.int32)
    before_y, before_z = carry.y_answer.clone(), carry.z_latent.clone()

    y_reset, z_reset = model.inner.reset_states(carry.halted, carry.y_answer, carry.z_latent)
    for row, halted in enumerate(carry.halted.tolist()):
        expected_y = model.inner.H_init.expand_as(y_reset[row]) if halted else before_y[row]
        expected_z = model.inner.L_init.expand_as(z_reset[row]) if halted else before_z[row]
        assert torch.equal(y_reset[row], expected_y) and torch.equal(z_reset[row], expected_z)

    model.config.halt_exploration_prob = 0.0
    new_carry, _ = model(carry, second)
    for key in second:
        assert torch.equal(new_carry.current_data[key][0], second[key][0])
        assert torch.equal(new_carry.current_data[key][1], first[key][1])
        assert torch.equal(new_carry.current_data[key][2], second[key][2])
    assert new_carry.steps.tolist() == [1, 4, 1]


def test_halting_on_q_and_on_max_steps_and_evaluation_runs_all_steps():
    config = tiny_config(halt_max_steps=3, halt_exploration_prob=0.0)
    model = TRM(config)
    batch = make_batch(config)
    with torch.no_grad():
        model.inner.q_head.bias.fill_(5.0)  # q_halt > 0 everywhere
    model.train()
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all()  # training: halts as soon as q_halt > 0

    model.eval()
    carry = model.initial_carry(batch)
    halted_per_step = []
    with torch.no_grad():
        for _ in range(3):
            carry, _ = model(carry, batch)
            halted_per_step.append(carry.halted.clone())
    assert [h.any().item() for h in halted_per_step] == [False, False, True]
    assert carry.steps.tolist() == [3, 3, 3]


def test_exploration_forces_a_minimum_number_of_steps():
    config = tiny_config(halt_max_steps=16, halt_exploration_prob=1.0)
    model = TRM(config).train()
    with torch.no_grad():
        model.inner.q_head.bias.fill_(5.0)
    batch = make_batch(config, batch_size=64)
    torch.manual_seed(0)
    carry, _ = model(model.initial_carry(batch), batch)
    # every slot explores with min steps in [2, 16], so none may halt after one step
    assert not carry.halted.any()


def test_q_continue_target_uses_an_extra_gradient_free_pass():
    config = tiny_config(no_act_continue=False)
    model = TRM(config).train()
    calls = count_net_calls(model)
    batch = make_batch(config)
    carry, outputs = model(model.initial_carry(batch), batch)
    target = outputs["target_q_continue"]
    assert target.shape == (3,) and not target.requires_grad
    assert torch.all((target > 0) & (target < 1))
    per_step = config.h_cycles * (config.l_cycles + 1)
    assert calls["without_grad"] == per_step + (config.h_cycles - 1) * (config.l_cycles + 1)
    assert carry.puzzle_rows.values.requires_grad  # the extra pass did not replace the rows


@pytest.mark.parametrize("variant", [dict(pos_encodings="learned"), dict(pos_encodings="none"), dict(mlp_t=True, pos_encodings="none")])
def test_variants_run_and_differentiate(variant):
    config = tiny_config(**variant)
    model = TRM(config).train()
    batch = make_batch(config)
    carry, outputs = model(model.initial_carry(batch), batch)
    assert outputs["logits"].shape == (3, config.seq_len, config.vocab_size)
    outputs["logits"].sum().backward()
    assert model.inner.embed_tokens.embedding_weight.grad is not None
    assert carry.puzzle_rows.values.grad.shape == (3, config.puzzle_emb_ndim)


def test_bad_config_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="pos_encodings"):
        tiny_config(pos_encodings="alibi")
    with pytest.raises(ValueError, match="num_heads"):
        tiny_config(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown TRMConfig field"):
        TRMConfig.from_dict({"vocab_size": 6, "seq_len": 4, "hiden_size": 3})
