// Launchers of the fused ACT loss head (csrc/loss_head.cu).
#pragma once

#include "kernel_api.h"

namespace trm_fast {

constexpr int kLossHeadMaxVocab = 32;

// One block per sequence: per-sequence CE / accuracy / exact-correctness and the Q-halt BCE.
// labels are int32 (labels_are_int64 = false) or int64.
cudaError_t act_loss_head_fwd(DType logits_dtype, DType q_dtype, const void* logits, const void* labels,
                              bool labels_are_int64, const void* q_halt_logits, float* lm_loss, float* q_halt_loss,
                              float* token_accuracy, bool* seq_correct, int32_t* token_count, int64_t batch,
                              int64_t seq_len, int vocab, int64_t ignore_index, bool stablemax, cudaStream_t stream);

// grad_logits[b, t, :] = grad_lm_loss[b] / max(count[b], 1) * dCE_t/dlogits (0 at ignored tokens).
cudaError_t act_loss_head_bwd(DType logits_dtype, const void* logits, const void* labels, bool labels_are_int64,
                              const int32_t* token_count, const float* grad_lm_loss, void* grad_logits,
                              int64_t batch, int64_t seq_len, int vocab, int64_t ignore_index, bool stablemax,
                              cudaStream_t stream);

}  // namespace trm_fast
