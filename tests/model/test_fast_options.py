"""FastTRM's engine options: `recompute` (checkpointed gradient cycle) and `fused_linear` (op 7).

Both must compute the reference model's function: same outputs, carry and every gradient.
"""
import copy

import pytest
import torch

import trm_fast.model.fast as fast_module
from trm_fast.model.fast import FastTRM, fused_linear_problem
from trm_fast.ops import BackendUnavailable

from tests.model.test_fast import VARIANTS, assert_close_scaled, make_batch, run_two_steps, small_config, twin_models

# Tiny shapes for Triton's interpreter; head_dim 32 is the smallest op 7's qkv kernel takes.
TINY = dict(seq_len=6, hidden_size=64, num_heads=2, puzzle_emb_ndim=64, puzzle_emb_len=1, h_cycles=2, l_cycles=1)


def engines(config, backend, **options):
    """(reference TRM, FastTRM without options, FastTRM with `options`), all with the same weights."""
    reference, plain = twin_models(config, backend)
    optioned = FastTRM(config, backend=backend, **options).train()
    optioned.load_state_dict(reference.state_dict())
    return reference, plain, optioned


def results(model, batch) -> dict:
    """Everything two supervision steps produce: outputs, carry and the gradient of every leaf."""
    carry, outputs = run_two_steps(model, batch)
    found = {key: outputs[key] for key in ("logits", "q_halt_logits", "q_continue_logits")}
    found.update(y_answer=carry.y_answer, z_latent=carry.z_latent, steps=carry.steps, halted=carry.halted,
                 puzzle_rows=carry.puzzle_rows.values.grad)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        found["grad:" + name] = param.grad
    return found


def assert_same(actual: dict, expected: dict, rel: float) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if value.dtype in (torch.bool, torch.int32, torch.int64):
            assert torch.equal(actual[key], value), key
        elif rel == 0:
            assert torch.equal(actual[key], value), key
        else:
            assert_close_scaled(actual[key], value, rel, key)


def check_against_reference(config, backend, rel, exact_vs_plain=False, **options):
    reference, plain, optioned = engines(config, backend, **options)
    batch = make_batch(config)
    expected, baseline, got = results(reference, batch), results(plain, batch), results(optioned, batch)
    assert_same(got, expected, rel)
    assert_same(got, baseline, 0 if exact_vs_plain else rel)


def test_options_default_off_and_are_attributes():
    config = small_config("attention")
    model = FastTRM(config, backend="torch")
    assert model.fused_linear is False and model.recompute is False
    model = FastTRM(config, backend="torch", fused_linear=True, recompute=True)
    assert model.fused_linear is True and model.recompute is True
    assert model.inner.fused_linear is True and model.inner.recompute is True
    model.recompute = False
    assert model.inner.recompute is False


# --- recompute -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recompute_gives_the_same_outputs_and_gradients(variant):
    # Same kernels in the same order, re-run in backward: bit-identical to the non-recompute engine
    # on CPU, and as close to the reference as the engine itself (see test_fast.py).
    check_against_reference(small_config(variant), "torch", rel=1e-4, exact_vs_plain=True, recompute=True)


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one training forward.
    (Checkpointed regions keep their inputs, which this counts, instead of their internals.)"""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    carry = model.initial_carry(batch)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _, outputs = model(carry, batch)
    outputs["logits"].float().square().mean().backward()  # the saved graph is still usable
    return sum(storages.values())


@pytest.mark.parametrize("variant, fused_linear", [("attention", False), ("attention", True), ("mlp_t", False)])
def test_recompute_saves_clearly_less_for_backward(variant, fused_linear):
    config = small_config(variant, l_cycles=3)
    _, _, plain = engines(config, "torch", fused_linear=fused_linear)
    _, _, recomputing = engines(config, "torch", fused_linear=fused_linear, recompute=True)
    batch = make_batch(config)
    without, with_recompute = saved_bytes(plain, batch), saved_bytes(recomputing, batch)
    # Per gradient-carrying call only its input tensors stay (net input and injections, or with op 7
    # the states), instead of every block's qkv / attention / SwiGLU / norm intermediates: ~2% here.
    assert with_recompute < 0.25 * without, (with_recompute, without)


def test_recompute_only_wraps_the_gradient_cycle(monkeypatch):
    calls = []
    real_checkpoint = fast_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(fast_module, "checkpoint", counting_checkpoint)
    config = small_config("attention", h_cycles=3, l_cycles=2)
    _, _, model = engines(config, "torch", recompute=True)
    batch = make_batch(config)
    carry = model.initial_carry(batch)
    model(carry, batch)
    assert calls == [True] * (config.l_cycles + 1)  # the last H cycle's net calls, nothing else
    calls.clear()
    model.eval()
    with torch.no_grad():  # evaluation: nothing to recompute
        model(model.initial_carry(batch), batch)
    assert calls == []


def compiled_matches_eager(config, backend, **options):
    _, _, model = engines(config, backend, **options)
    eager = copy.deepcopy(model)
    batch = make_batch(config)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    carry, compiled_out = compiled(model.initial_carry(batch), batch)
    eager_carry, eager_out = eager(eager.initial_carry(batch), batch)
    torch.testing.assert_close(compiled_out["logits"], eager_out["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(carry.z_latent, eager_carry.z_latent, atol=1e-5, rtol=1e-5)
    for outputs in (compiled_out, eager_out):  # every parameter gets a gradient (q_head through q_halt)
        (outputs["logits"].square().mean() + outputs["q_halt_logits"].square().sum()).backward()
    eager_params = dict(eager.named_parameters())
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, eager_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recompute_compiles_fullgraph(variant):
    config = small_config(variant, **dict(TINY, hidden_size=32, puzzle_emb_ndim=32))
    compiled_matches_eager(config, "torch", recompute=True)


@pytest.mark.slow
def test_recompute_with_fused_linear_compiles_fullgraph_on_triton():
    compiled_matches_eager(small_config("attention", **TINY), "triton", recompute=True, fused_linear=True)


# --- fused_linear (op 7) -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_linear_plumbing_matches_reference_on_torch_ops(variant):
    # backend torch runs op 7's plain twin: checks the engine's rewiring at full test size, fast.
    check_against_reference(small_config(variant), "torch", rel=1e-4, fused_linear=True)


@pytest.mark.slow
def test_fused_linear_matches_reference_under_interpreter():
    # Attention only: mlp_t never calls op 7 (see the call-count test below).
    check_against_reference(small_config("attention", **TINY), "triton", rel=5e-4, fused_linear=True)


@pytest.mark.slow
def test_fused_linear_and_recompute_together_under_interpreter():
    check_against_reference(small_config("attention", **TINY), "triton", rel=5e-4, fused_linear=True, recompute=True)


def count_calls(monkeypatch, names):
    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(fast_module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(fast_module, name, counted)
    return counts


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_linear_replaces_the_injection_and_qkv_passes(monkeypatch, variant):
    names = ["fused_inject_qkv_rope", "rope_qkv", "add_streams", "rms_norm_residual_inject"]
    config = small_config(variant)
    _, _, model = engines(config, "torch", fused_linear=True)
    batch = make_batch(config)
    counts = count_calls(monkeypatch, names)
    model(model.initial_carry(batch), batch)
    net_calls = config.h_cycles * (config.l_cycles + 1)
    if variant == "attention":  # the first block of every net call is op 7; nothing else injects
        assert counts == {"fused_inject_qkv_rope": net_calls, "rope_qkv": net_calls * (config.num_layers - 1),
                          "add_streams": 0, "rms_norm_residual_inject": 0}
    else:  # mlp_t: no linear reads the injected sum over features, so the default path stays
        assert counts["fused_inject_qkv_rope"] == 0 and counts["rms_norm_residual_inject"] > 0


def test_fused_linear_unavailable_device_raises_one_clear_line(monkeypatch):
    config = small_config("attention")
    batch = make_batch(config)
    problem = fused_linear_problem(config, torch.device("meta"))  # no Triton kernel runs on meta tensors
    assert problem and "\n" not in problem and "fused_linear=False" in problem

    monkeypatch.setattr(fast_module, "fused_linear_available", lambda device: False)  # e.g. a pre-sm_80 GPU
    model = FastTRM(config, backend="torch", fused_linear=True)
    with pytest.raises(BackendUnavailable, match=r"fused_linear=True.*cannot run on cpu"):
        model.initial_carry(batch)
    carry = FastTRM(config, backend="torch").initial_carry(batch)
    with pytest.raises(BackendUnavailable, match="fused_linear=True"):  # and at the first forward
        model(carry, batch)
    FastTRM(config, backend="torch")(carry, batch)  # off by default: nothing to check
    mlp_t = small_config("mlp_t")  # op 7 is not used by mlp_t nets: nothing to refuse
    FastTRM(mlp_t, backend="torch", fused_linear=True).initial_carry(make_batch(mlp_t))


def test_fused_linear_unsupported_head_dim_raises_one_clear_line():
    config = small_config("attention", **dict(TINY, hidden_size=32, puzzle_emb_ndim=32))  # head_dim 16
    model = FastTRM(config, backend="triton", fused_linear=True)
    with pytest.raises(BackendUnavailable, match="head_dim"):
        model.initial_carry(make_batch(config))
    assert fused_linear_problem(config, "cpu", backend="torch") is None  # op 7's plain twin takes any head_dim


def test_backend_report_names_op_7_when_on():
    config = small_config("attention")
    assert "fused_inject_qkv_rope" not in FastTRM(config, backend="torch").backend_report("cpu")
    assert FastTRM(config, backend="torch", fused_linear=True).backend_report("cpu")["fused_inject_qkv_rope"] == "torch"
