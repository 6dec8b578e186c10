// Launchers of the trm_fast CUDA kernels. Plain C++ over raw device pointers, so the .cu files
// build without PyTorch headers (fast nvcc compiles); bindings.cpp adapts torch tensors to them.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace trm_fast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Largest hidden size the register-resident row kernels accept for each vector width.
int rms_norm_max_hidden(DType dtype, bool vectorised);

// out = rms(residual + delta) (add rounded to the storage dtype, statistics in fp32),
// next_input = out + inject_a (+ inject_b) when inject_a is not null; rstd[row] = 1/sqrt(mean(s^2)+eps).
// `vectorised` asks for 16-byte loads: every pointer 16-byte aligned and hidden a multiple of 16/sizeof(T).
cudaError_t rms_norm_residual_fwd(DType dtype, const void* residual, const void* delta, const void* inject_a,
                                  const void* inject_b, void* out, void* next_input, float* rstd, int64_t rows,
                                  int hidden, float eps, bool vectorised, cudaStream_t stream);

// grad_s = rstd * (g - out * mean(g * out)), g = grad_out (+ grad_next when not null).
cudaError_t rms_norm_residual_bwd(DType dtype, const void* grad_out, const void* grad_next, const void* out,
                                  const float* rstd, void* grad_s, int64_t rows, int hidden, bool vectorised,
                                  cudaStream_t stream);

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
