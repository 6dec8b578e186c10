"""The analytic FLOP count against counts written out by hand for the paper configurations."""
import pytest

from trm_fast.flops import (
    eval_step_flops,
    heads_flops,
    model_flop_utilisation,
    net_call_flops,
    peak_flops,
    train_step_flops,
)
from trm_fast.model.reference import TRMConfig

SUDOKU_MLP = TRMConfig(
    vocab_size=11, seq_len=81, hidden_size=512, num_heads=8, h_cycles=3, l_cycles=6,
    puzzle_emb_ndim=512, puzzle_emb_len=16, mlp_t=True, pos_encodings="none",
)
MAZE_ATT = TRMConfig(vocab_size=6, seq_len=900, hidden_size=512, num_heads=8, h_cycles=3, l_cycles=4, puzzle_emb_len=16)


def test_sudoku_mlp_train_step_hand_count():
    # Per example: S = 81 + 16 = 97 tokens, D = 512, channel SwiGLU I = 1536 (4*512*2/3 = 1365 -> 1536),
    # token SwiGLU It = 512 (4*97*2/3 = 259 -> 512), vocab 11, 2 layers, T = 3, n = 6.
    token_gate_up = 2 * 1024 * 97 * 512  # [2It, S] @ [S, D]   = 101,711,872
    token_down = 2 * 97 * 512 * 512  # [S, It] @ [It, D]         =  50,855,936
    channel_gate_up = 2 * 97 * 512 * 3072  # [S, D] @ [D, 2I]    = 305,135,616
    channel_down = 2 * 97 * 1536 * 512  # [S, I] @ [I, D]        = 152,567,808
    per_layer = token_gate_up + token_down + channel_gate_up + channel_down
    assert per_layer == 610_271_232
    per_call = 2 * per_layer  # 1,220,542,464
    heads = 2 * 97 * 512 * 11 + 2 * 512 * 2  # lm_head on all 97 positions + q_head = 1,094,656
    gradient_free = 2 * 7 * per_call  # T-1 = 2 cycles of n+1 = 7 calls, forward only
    with_gradient = 3 * (7 * per_call + heads)  # last cycle + heads, forward + backward
    per_example = gradient_free + with_gradient
    assert per_example == 42_722_270_208

    batch = 768
    assert net_call_flops(SUDOKU_MLP, batch) == batch * per_call
    assert heads_flops(SUDOKU_MLP, batch) == batch * heads
    assert train_step_flops(SUDOKU_MLP, batch) == batch * 42_722_270_208  # ~32.8 TFLOP per step
    assert eval_step_flops(SUDOKU_MLP, batch) == batch * (3 * 7 * per_call + heads)


def test_maze_attention_net_call_hand_count():
    # S = 900 + 16 = 916, D = 512 (8 heads of 64), I = 1536; attention products over all heads.
    qkv = 2 * 916 * 512 * 1536
    out_proj = 2 * 916 * 512 * 512
    scores = 2 * 916 * 512 * 916  # sum over heads of [S, 64] @ [64, S]
    values = 2 * 916 * 916 * 512  # sum over heads of [S, S] @ [S, 64]
    channel = 2 * 916 * 512 * 3072 + 2 * 916 * 1536 * 512
    per_call = 2 * (qkv + out_proj + scores + values + channel)
    assert net_call_flops(MAZE_ATT, 1) == per_call
    heads = 2 * 916 * 512 * 6 + 2 * 512 * 2
    assert train_step_flops(MAZE_ATT, 3) == 3 * (2 * 5 * per_call + 3 * (5 * per_call + heads))


def test_counts_scale_linearly_with_batch():
    assert train_step_flops(MAZE_ATT, 10) == 10 * train_step_flops(MAZE_ATT, 1)
    assert eval_step_flops(SUDOKU_MLP, 6) == 6 * eval_step_flops(SUDOKU_MLP, 1)


def test_peak_and_mfu():
    assert peak_flops("NVIDIA H200") == pytest.approx(989e12)
    assert peak_flops("Some CPU") is None
    assert model_flop_utilisation(5e14, 1.0, 1e15) == pytest.approx(0.5)
    assert model_flop_utilisation(5e14, 1.0, None) is None
