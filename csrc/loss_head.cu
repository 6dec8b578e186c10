// Op 6 in CUDA C++: the fused ACT loss head (stable-max or softmax CE + accuracy + Q-halt BCE).
//
// Forward: one block per sequence; each thread takes rows t = threadIdx.x, +blockDim.x, ... and keeps
// the vocabulary of a row (<= 32 entries) in registers; the per-sequence sums are reduced over the
// block (warp shuffles, then shared memory), and thread 0 writes the [B] outputs including the BCE.
// Backward: one thread per row of the flattened [B*L, V] logits; it recomputes the probabilities
// from the logits (see kernels/loss_head.py for why recomputing beats saving them).
#include <cfloat>

#include "common.h"
#include "loss_head.h"

namespace trm_fast {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 128;

__device__ __forceinline__ float stablemax_s(float x) { return x < 0.f ? 1.f / (1.f - x) : x + 1.f; }
__device__ __forceinline__ float stablemax_ds(float x) { return x < 0.f ? 1.f / ((1.f - x) * (1.f - x)) : 1.f; }

// Loads one row of logits as fp32 into registers (entries >= vocab are left unset and never read).
template <typename T>
__device__ __forceinline__ void load_row(const T* row, int vocab, float (&x)[kLossHeadMaxVocab]) {
#pragma unroll
  for (int j = 0; j < kLossHeadMaxVocab; ++j)
    if (j < vocab) x[j] = to_float(row[j]);
}

template <typename T, typename Label>
__global__ void __launch_bounds__(kForwardThreads)
act_loss_head_fwd_kernel(const T* __restrict__ logits, const Label* __restrict__ labels, const void* q_halt_raw,
                         DType q_dtype, float* __restrict__ lm_loss, float* __restrict__ q_halt_loss,
                         float* __restrict__ token_accuracy, bool* __restrict__ seq_correct,
                         int32_t* __restrict__ token_count, int64_t seq_len, int vocab, int64_t ignore_index,
                         bool stablemax) {
  const int64_t seq = blockIdx.x;
  float ce_sum = 0.f;
  int n_correct = 0, n_labelled = 0;
  for (int64_t position = threadIdx.x; position < seq_len; position += blockDim.x) {
    const int64_t row = seq * seq_len + position;
    const int64_t label = static_cast<int64_t>(labels[row]);
    if (label == ignore_index) continue;
    float x[kLossHeadMaxVocab];
    load_row(logits + row * vocab, vocab, x);
    // argmax: the first maximum, like torch.argmax
    float best = -FLT_MAX;
    int prediction = 0;
    float x_label = 0.f, row_max = -FLT_MAX;
#pragma unroll
    for (int j = 0; j < kLossHeadMaxVocab; ++j) {
      if (j < vocab) {
        if (j == 0 || x[j] > best) { best = x[j]; prediction = j; }
        if (j == label) x_label = x[j];
        row_max = fmaxf(row_max, x[j]);
      }
    }
    float ce;
    if (stablemax) {
      float sum_s = 0.f;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab) sum_s += stablemax_s(x[j]);
      ce = logf(sum_s) - logf(stablemax_s(x_label));
    } else {
      float sum_exp = 0.f;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab) sum_exp += expf(x[j] - row_max);
      ce = logf(sum_exp) + row_max - x_label;
    }
    ce_sum += ce;
    n_labelled += 1;
    n_correct += prediction == label ? 1 : 0;
  }

  // Block reduction: warp shuffles, then one value per warp through shared memory.
  __shared__ float warp_ce[kForwardThreads / 32];
  __shared__ int warp_correct[kForwardThreads / 32];
  __shared__ int warp_labelled[kForwardThreads / 32];
  ce_sum = warp_sum(ce_sum);
  n_correct = warp_sum(n_correct);
  n_labelled = warp_sum(n_labelled);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_ce[warp] = ce_sum;
    warp_correct[warp] = n_correct;
    warp_labelled[warp] = n_labelled;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  float total_ce = 0.f;
  int total_correct = 0, total_labelled = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
    total_ce += warp_ce[w];
    total_correct += warp_correct[w];
    total_labelled += warp_labelled[w];
  }
  const float divisor = static_cast<float>(total_labelled > 1 ? total_labelled : 1);
  const bool all_correct = total_correct == total_labelled;  // true without labels, as in TRM
  float q;
  switch (q_dtype) {
    case DType::kFloat16: q = to_float(static_cast<const __half*>(q_halt_raw)[seq]); break;
    case DType::kBFloat16: q = to_float(static_cast<const __nv_bfloat16*>(q_halt_raw)[seq]); break;
    default: q = static_cast<const float*>(q_halt_raw)[seq]; break;
  }
  const float target = all_correct ? 1.f : 0.f;
  lm_loss[seq] = total_ce / divisor;
  token_accuracy[seq] = static_cast<float>(total_correct) / divisor;
  q_halt_loss[seq] = fmaxf(q, 0.f) - q * target + log1pf(expf(-fabsf(q)));
  seq_correct[seq] = all_correct;
  token_count[seq] = total_labelled;
}

template <typename T, typename Label>
__global__ void __launch_bounds__(kBackwardThreads)
act_loss_head_bwd_kernel(const T* __restrict__ logits, const Label* __restrict__ labels,
                         const int32_t* __restrict__ token_count, const float* __restrict__ grad_lm_loss,
                         T* __restrict__ grad_logits, int64_t n_rows, int64_t seq_len, int vocab,
                         int64_t ignore_index, bool stablemax) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < n_rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* grad_row = grad_logits + row * vocab;
    const int64_t label = static_cast<int64_t>(labels[row]);
    if (label == ignore_index) {
      for (int j = 0; j < vocab; ++j) grad_row[j] = from_float<T>(0.f);
      continue;
    }
    const int64_t seq = row / seq_len;
    const int count = token_count[seq];
    const float scale = grad_lm_loss[seq] / static_cast<float>(count > 1 ? count : 1);
    float x[kLossHeadMaxVocab];
    load_row(logits + row * vocab, vocab, x);
    if (stablemax) {
      // dCE/dx_j = s'(x_j) * (1 / sum(s) - [j == label] / s(x_label))
      float sum_s = 0.f, s_label = 1.f;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j) {
        if (j < vocab) {
          const float s = stablemax_s(x[j]);
          sum_s += s;
          if (j == label) s_label = s;
        }
      }
      const float inv_sum = 1.f / sum_s, inv_label = 1.f / s_label;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab)
          grad_row[j] = from_float<T>(scale * stablemax_ds(x[j]) * (inv_sum - (j == label ? inv_label : 0.f)));
    } else {
      // dCE/dx_j = softmax_j - [j == label]
      float row_max = -FLT_MAX, sum_exp = 0.f;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab) row_max = fmaxf(row_max, x[j]);
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab) sum_exp += expf(x[j] - row_max);
      const float inv_sum = 1.f / sum_exp;
#pragma unroll
      for (int j = 0; j < kLossHeadMaxVocab; ++j)
        if (j < vocab)
          grad_row[j] = from_float<T>(scale * (expf(x[j] - row_max) * inv_sum - (j == label ? 1.f : 0.f)));
    }
  }
}

template <typename T, typename Label>
cudaError_t launch_fwd(const void* logits, const void* labels, const void* q_halt_logits, DType q_dtype,
                       float* lm_loss, float* q_halt_loss, float* token_accuracy, bool* seq_correct,
                       int32_t* token_count, int64_t batch, int64_t seq_len, int vocab, int64_t ignore_index,
                       bool stablemax, cudaStream_t stream) {
  act_loss_head_fwd_kernel<T, Label><<<static_cast<unsigned>(batch), kForwardThreads, 0, stream>>>(
      static_cast<const T*>(logits), static_cast<const Label*>(labels), q_halt_logits, q_dtype, lm_loss, q_halt_loss,
      token_accuracy, seq_correct, token_count, seq_len, vocab, ignore_index, stablemax);
  return cudaGetLastError();
}

template <typename T, typename Label>
cudaError_t launch_bwd(const void* logits, const void* labels, const int32_t* token_count, const float* grad_lm_loss,
                       void* grad_logits, int64_t batch, int64_t seq_len, int vocab, int64_t ignore_index,
                       bool stablemax, cudaStream_t stream) {
  const int64_t n_rows = batch * seq_len;
  const int64_t blocks = (n_rows + kBackwardThreads - 1) / kBackwardThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  act_loss_head_bwd_kernel<T, Label><<<grid, kBackwardThreads, 0, stream>>>(
      static_cast<const T*>(logits), static_cast<const Label*>(labels), token_count, grad_lm_loss,
      static_cast<T*>(grad_logits), n_rows, seq_len, vocab, ignore_index, stablemax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t fwd_for_labels(bool labels_are_int64, const void* logits, const void* labels, const void* q, DType q_dtype,
                           float* lm_loss, float* q_halt_loss, float* accuracy, bool* seq_correct, int32_t* count,
                           int64_t batch, int64_t seq_len, int vocab, int64_t ignore_index, bool stablemax,
                           cudaStream_t stream) {
  return labels_are_int64
             ? launch_fwd<T, int64_t>(logits, labels, q, q_dtype, lm_loss, q_halt_loss, accuracy, seq_correct, count,
                                      batch, seq_len, vocab, ignore_index, stablemax, stream)
             : launch_fwd<T, int32_t>(logits, labels, q, q_dtype, lm_loss, q_halt_loss, accuracy, seq_correct, count,
                                      batch, seq_len, vocab, ignore_index, stablemax, stream);
}

template <typename T>
cudaError_t bwd_for_labels(bool labels_are_int64, const void* logits, const void* labels, const int32_t* count,
                           const float* grad_lm_loss, void* grad_logits, int64_t batch, int64_t seq_len, int vocab,
                           int64_t ignore_index, bool stablemax, cudaStream_t stream) {
  return labels_are_int64 ? launch_bwd<T, int64_t>(logits, labels, count, grad_lm_loss, grad_logits, batch, seq_len,
                                                   vocab, ignore_index, stablemax, stream)
                          : launch_bwd<T, int32_t>(logits, labels, count, grad_lm_loss, grad_logits, batch, seq_len,
                                                   vocab, ignore_index, stablemax, stream);
}

}  // namespace

cudaError_t act_loss_head_fwd(DType logits_dtype, DType q_dtype, const void* logits, const void* labels,
                              bool labels_are_int64, const void* q_halt_logits, float* lm_loss, float* q_halt_loss,
                              float* token_accuracy, bool* seq_correct, int32_t* token_count, int64_t batch,
                              int64_t seq_len, int vocab, int64_t ignore_index, bool stablemax, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (vocab < 1 || vocab > kLossHeadMaxVocab) return cudaErrorInvalidValue;
  switch (logits_dtype) {
    case DType::kFloat32:
      return fwd_for_labels<float>(labels_are_int64, logits, labels, q_halt_logits, q_dtype, lm_loss, q_halt_loss,
                                   token_accuracy, seq_correct, token_count, batch, seq_len, vocab, ignore_index,
                                   stablemax, stream);
    case DType::kFloat16:
      return fwd_for_labels<__half>(labels_are_int64, logits, labels, q_halt_logits, q_dtype, lm_loss, q_halt_loss,
                                    token_accuracy, seq_correct, token_count, batch, seq_len, vocab, ignore_index,
                                    stablemax, stream);
    case DType::kBFloat16:
      return fwd_for_labels<__nv_bfloat16>(labels_are_int64, logits, labels, q_halt_logits, q_dtype, lm_loss,
                                           q_halt_loss, token_accuracy, seq_correct, token_count, batch, seq_len,
                                           vocab, ignore_index, stablemax, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t act_loss_head_bwd(DType logits_dtype, const void* logits, const void* labels, bool labels_are_int64,
                              const int32_t* token_count, const float* grad_lm_loss, void* grad_logits,
                              int64_t batch, int64_t seq_len, int vocab, int64_t ignore_index, bool stablemax,
                              cudaStream_t stream) {
  if (batch * seq_len == 0) return cudaSuccess;
  if (vocab < 1 || vocab > kLossHeadMaxVocab) return cudaErrorInvalidValue;
  switch (logits_dtype) {
    case DType::kFloat32:
      return bwd_for_labels<float>(labels_are_int64, logits, labels, token_count, grad_lm_loss, grad_logits, batch,
                                   seq_len, vocab, ignore_index, stablemax, stream);
    case DType::kFloat16:
      return bwd_for_labels<__half>(labels_are_int64, logits, labels, token_count, grad_lm_loss, grad_logits, batch,
                                    seq_len, vocab, ignore_index, stablemax, stream);
    case DType::kBFloat16:
      return bwd_for_labels<__nv_bfloat16>(labels_are_int64, logits, labels, token_count, grad_lm_loss, grad_logits,
                                           batch, seq_len, vocab, ignore_index, stablemax, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace trm_fast
