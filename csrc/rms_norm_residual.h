// Launchers of residual add + weightless RMSNorm (+ injection) (csrc/rms_norm_residual.cu).
#pragma once

#include "kernel_api.h"

namespace trm_fast {

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

}  // namespace trm_fast
