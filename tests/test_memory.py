"""The activation-memory estimate behind the automatic micro-batch: a hand count at the paper shapes,
a measurement of what the fused engine really saves for backward, and the micro-batch choice that
keeps the paper's global batch on 24, 80 and 141 GB GPUs."""
import pytest
import torch

from trm_fast import config as config_lib
from trm_fast import memory as memory_lib
from trm_fast.memory import GIB, choose_micro_batch, net_call_saved_bytes, step_memory
from trm_fast.model import TRMConfig, make_model
from trm_fast.train.losses import act_loss

MAZE_PAPER = config_lib.model_config(config_lib.preset("maze-paper"), vocab_size=6, seq_len=900)


def test_hand_count_at_the_maze_paper_shapes():
    # 30x30 grid + 16 puzzle-prefix tokens, D 512, SwiGLU 1536 (4 * 512 * 2/3 rounded up to 256), 8 heads,
    # 2 layers, n = 4 (5 net calls in the gradient cycle), bf16 activations.
    seq, width, inner, heads, bf16, fp32 = 916, 512, 1536, 8, 2, 4
    per_layer = (
        bf16 * seq * 3 * width  # q, k, v (attention's saved inputs)
        + bf16 * seq * width  # attention output
        + bf16 * seq * width  # its head-merged copy (input of o_proj)
        + bf16 * seq * width  # post-attention norm output (also the SwiGLU's input)
        + bf16 * seq * 2 * inner  # SwiGLU gate/up
        + bf16 * seq * inner  # SwiGLU output (input of down_proj)
        + bf16 * seq * width  # block output norm
        + fp32 * seq * heads  # attention log-sum-exp
        + fp32 * seq * 2  # the two norms' rstd
    )
    per_call = bf16 * seq * width + 2 * per_layer  # the call's input, two layers
    assert net_call_saved_bytes(MAZE_PAPER) == per_call == 31_026_752
    estimate = step_memory(MAZE_PAPER, local_batch_size=768)
    logits = fp32 * 900 * 6
    assert estimate.per_example == 5 * per_call + per_call + logits  # saved + one call in flight + logits
    assert estimate.carries == 768 * 2 * bf16 * seq * width  # y_answer and z_latent of every slot
    params = 6_822_914  # the paper's ~7M (embeddings, 2 blocks, heads)
    assert estimate.model_state == params * (5 * fp32 + bf16)
    # the reading: the whole 768-example gradient cycle alone is > 100 GiB
    assert 100 * GIB < 768 * 5 * per_call < 150 * GIB


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("variant", [dict(pos_encodings="rope"), dict(mlp_t=True, pos_encodings="none")])
def test_estimate_matches_what_the_fused_engine_saves(variant, recompute):
    """Bytes saved for backward per example (storages counted once, parameters excluded), measured
    on the fused ops (Triton under the interpreter on CPU) as the difference of two batch sizes."""
    config = TRMConfig(vocab_size=6, seq_len=14, hidden_size=64, num_heads=2, h_cycles=1, l_cycles=2, puzzle_emb_len=2,
                       **variant)
    model = make_model(config, "fast", "triton", recompute=recompute).train()

    def saved(batch_size):
        generator = torch.Generator().manual_seed(0)
        batch = {"inputs": torch.randint(1, 6, (batch_size, 14), generator=generator, dtype=torch.int32),
                 "labels": torch.randint(1, 6, (batch_size, 14), generator=generator),
                 "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32)}
        storages = {}

        def pack(tensor):
            if not (tensor.is_leaf and tensor.requires_grad):
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            carry, outputs = model(model.initial_carry(batch), batch)
            act_loss(outputs, carry.current_data["labels"], carry.halted, carry.steps, backend="triton")
        return sum(storages.values())

    measured = (saved(6) - saved(2)) / 4
    calls = config.l_cycles + 1
    if recompute:
        predicted = calls * 2 * 4 * config.total_len * config.hidden_size  # output + next input per call
    else:
        predicted = calls * net_call_saved_bytes(config) + memory_lib.heads_saved_bytes(config)
    assert measured == pytest.approx(predicted, rel=0.1)


@pytest.mark.parametrize("free_gib, expected", [(22, 96), (78, 256), (139, 384)])
def test_paper_batch_fits_24_80_and_141_gb_gpus(free_gib, expected):
    estimate = step_memory(MAZE_PAPER, 768)
    micro = choose_micro_batch(768, estimate, free_gib * GIB)
    assert micro == expected and 768 % micro == 0  # the global batch is kept, split into micro-batches
    assert estimate.total(micro) <= 0.85 * free_gib * GIB < estimate.total(2 * micro)  # the largest that fits
    assert choose_micro_batch(768, step_memory(MAZE_PAPER, 768, recompute=True), free_gib * GIB) >= 2 * micro


def test_nothing_fits_is_an_error():
    with pytest.raises(ValueError, match="one example needs"):
        choose_micro_batch(768, step_memory(MAZE_PAPER, 768), free_bytes=GIB)


def test_trainer_rule_picks_on_cuda_and_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (22 * GIB, 24 * GIB))
    cfg = config_lib.preset("maze-paper")
    micro, message = memory_lib.micro_batch_for(MAZE_PAPER, cfg, 768, "cuda")
    assert micro == 96 and "micro-batch 96 x 8" in message and "recompute=true would allow" in message
    assert memory_lib.micro_batch_for(MAZE_PAPER, cfg, 768, "cpu") == (768, None)  # CPU: the whole batch
    cfg.micro_batch_size = 64
    assert memory_lib.micro_batch_for(MAZE_PAPER, cfg, 768, "cuda") == (64, None)  # set by the user
