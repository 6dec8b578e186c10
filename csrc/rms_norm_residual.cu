// Op 1 in CUDA C++: residual add + weightless RMSNorm (+ the next call's injection), and its backward.
//
// One warp per row, 4 rows per block. Each lane keeps its slice of the row in registers (ITERS
// packs of VEC elements), so a row is read once and written once; the row statistics are a warp
// shuffle reduction. Math in fp32; the residual add is rounded to the storage dtype first, exactly
// like `(residual + delta).float()` in the PyTorch reference.
#include "common.h"
#include "rms_norm_residual.h"

namespace trm_fast {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxItersVector = 8;   // 16-byte packs: bf16/fp16 rows up to 2048, fp32 rows up to 1024
constexpr int kMaxItersScalar = 32;  // one element per pack: rows up to 1024

template <typename T, int VEC, int ITERS>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
rms_norm_residual_fwd_kernel(const T* __restrict__ residual, const T* __restrict__ delta,
                             const T* __restrict__ inject_a, const T* __restrict__ inject_b,
                             T* __restrict__ out, T* __restrict__ next_input, float* __restrict__ rstd,
                             int64_t rows, int hidden, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps exit together, so the shuffles below stay convergent
  const int64_t row_start = row * hidden;

  float summed[ITERS][VEC];
  float sum_squares = 0.f;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int col = (it * 32 + lane) * VEC;
    if (col < hidden) {
      const Pack<T, VEC> r = load_pack<T, VEC>(residual + row_start + col);
      const Pack<T, VEC> d = load_pack<T, VEC>(delta + row_start + col);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        summed[it][v] = round_to<T>(to_float(r.values[v]) + to_float(d.values[v]));
        sum_squares += summed[it][v] * summed[it][v];
      }
    }
  }
  const float inv_rms = rsqrtf(warp_sum(sum_squares) / hidden + eps);

#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int col = (it * 32 + lane) * VEC;
    if (col < hidden) {
      Pack<T, VEC> o;
#pragma unroll
      for (int v = 0; v < VEC; ++v) o.values[v] = from_float<T>(summed[it][v] * inv_rms);
      store_pack<T, VEC>(out + row_start + col, o);
      if (inject_a != nullptr) {
        // next = (stored out + inject_a) [+ inject_b], rounded after each add like the unfused ops
        const Pack<T, VEC> a = load_pack<T, VEC>(inject_a + row_start + col);
        Pack<T, VEC> n;
#pragma unroll
        for (int v = 0; v < VEC; ++v) n.values[v] = from_float<T>(to_float(o.values[v]) + to_float(a.values[v]));
        if (inject_b != nullptr) {
          const Pack<T, VEC> b = load_pack<T, VEC>(inject_b + row_start + col);
#pragma unroll
          for (int v = 0; v < VEC; ++v) n.values[v] = from_float<T>(to_float(n.values[v]) + to_float(b.values[v]));
        }
        store_pack<T, VEC>(next_input + row_start + col, n);
      }
    }
  }
  if (lane == 0) rstd[row] = inv_rms;
}

template <typename T, int VEC, int ITERS>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
rms_norm_residual_bwd_kernel(const T* __restrict__ grad_out, const T* __restrict__ grad_next,
                             const T* __restrict__ out, const float* __restrict__ rstd, T* __restrict__ grad_s,
                             int64_t rows, int hidden) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t row_start = row * hidden;

  float grad[ITERS][VEC];
  float normed[ITERS][VEC];
  float dot = 0.f;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int col = (it * 32 + lane) * VEC;
    if (col < hidden) {
      const Pack<T, VEC> g = load_pack<T, VEC>(grad_out + row_start + col);
      const Pack<T, VEC> o = load_pack<T, VEC>(out + row_start + col);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        grad[it][v] = to_float(g.values[v]);
        normed[it][v] = to_float(o.values[v]);
      }
      if (grad_next != nullptr) {
        const Pack<T, VEC> n = load_pack<T, VEC>(grad_next + row_start + col);
#pragma unroll
        for (int v = 0; v < VEC; ++v) grad[it][v] += to_float(n.values[v]);
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) dot += grad[it][v] * normed[it][v];
    }
  }
  const float mean_dot = warp_sum(dot) / hidden;
  const float inv_rms = rstd[row];
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int col = (it * 32 + lane) * VEC;
    if (col < hidden) {
      Pack<T, VEC> result;
#pragma unroll
      for (int v = 0; v < VEC; ++v) result.values[v] = from_float<T>(inv_rms * (grad[it][v] - normed[it][v] * mean_dot));
      store_pack<T, VEC>(grad_s + row_start + col, result);
    }
  }
}

// The smallest ITERS (a power of two) with ITERS * 32 * VEC >= hidden.
int iterations_for(int hidden, int vec) {
  int iters = 1;
  while (iters * 32 * vec < hidden) iters *= 2;
  return iters;
}

dim3 grid_for(int64_t rows) { return dim3(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock)); }

template <typename T, int VEC, int ITERS>
void launch_fwd(const void* residual, const void* delta, const void* inject_a, const void* inject_b, void* out,
                void* next_input, float* rstd, int64_t rows, int hidden, float eps, cudaStream_t stream) {
  rms_norm_residual_fwd_kernel<T, VEC, ITERS><<<grid_for(rows), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const T*>(residual), static_cast<const T*>(delta), static_cast<const T*>(inject_a),
      static_cast<const T*>(inject_b), static_cast<T*>(out), static_cast<T*>(next_input), rstd, rows, hidden, eps);
}

template <typename T, int VEC, int ITERS>
void launch_bwd(const void* grad_out, const void* grad_next, const void* out, const float* rstd, void* grad_s,
                int64_t rows, int hidden, cudaStream_t stream) {
  rms_norm_residual_bwd_kernel<T, VEC, ITERS><<<grid_for(rows), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const T*>(grad_out), static_cast<const T*>(grad_next), static_cast<const T*>(out), rstd,
      static_cast<T*>(grad_s), rows, hidden);
}

// Launch functors (local classes cannot have member templates, so they live here).
struct FwdLaunch {
  const void *residual, *delta, *inject_a, *inject_b;
  void *out, *next_input;
  float* rstd;
  int64_t rows;
  int hidden;
  float eps;
  cudaStream_t stream;
  template <typename T, int VEC, int ITERS>
  void operator()() const {
    launch_fwd<T, VEC, ITERS>(residual, delta, inject_a, inject_b, out, next_input, rstd, rows, hidden, eps, stream);
  }
};

struct BwdLaunch {
  const void *grad_out, *grad_next, *out;
  const float* rstd;
  void* grad_s;
  int64_t rows;
  int hidden;
  cudaStream_t stream;
  template <typename T, int VEC, int ITERS>
  void operator()() const {
    launch_bwd<T, VEC, ITERS>(grad_out, grad_next, out, rstd, grad_s, rows, hidden, stream);
  }
};

// Calls `launch.template operator()<T, VEC, ITERS>()` with the template arguments the row needs.
template <typename T, typename Launch>
cudaError_t dispatch_row_kernel(int hidden, bool vectorised, const Launch& launch) {
  constexpr int kVec = 16 / sizeof(T);
  const int iters = iterations_for(hidden, vectorised ? kVec : 1);
  if (vectorised) {
    switch (iters) {
      case 1: launch.template operator()<T, kVec, 1>(); break;
      case 2: launch.template operator()<T, kVec, 2>(); break;
      case 4: launch.template operator()<T, kVec, 4>(); break;
      case 8: launch.template operator()<T, kVec, 8>(); break;
      default: return cudaErrorInvalidValue;
    }
  } else {
    switch (iters) {
      case 1: launch.template operator()<T, 1, 1>(); break;
      case 2: launch.template operator()<T, 1, 2>(); break;
      case 4: launch.template operator()<T, 1, 4>(); break;
      case 8: launch.template operator()<T, 1, 8>(); break;
      case 16: launch.template operator()<T, 1, 16>(); break;
      case 32: launch.template operator()<T, 1, 32>(); break;
      default: return cudaErrorInvalidValue;
    }
  }
  return cudaGetLastError();
}

template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, int hidden, bool vectorised, const Launch& launch) {
  switch (dtype) {
    case DType::kFloat32: return dispatch_row_kernel<float>(hidden, vectorised, launch);
    case DType::kFloat16: return dispatch_row_kernel<__half>(hidden, vectorised, launch);
    case DType::kBFloat16: return dispatch_row_kernel<__nv_bfloat16>(hidden, vectorised, launch);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int rms_norm_max_hidden(DType dtype, bool vectorised) {
  const int element_bytes = dtype == DType::kFloat32 ? 4 : 2;
  return vectorised ? kMaxItersVector * 32 * (16 / element_bytes) : kMaxItersScalar * 32;
}

cudaError_t rms_norm_residual_fwd(DType dtype, const void* residual, const void* delta, const void* inject_a,
                                  const void* inject_b, void* out, void* next_input, float* rstd, int64_t rows,
                                  int hidden, float eps, bool vectorised, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const FwdLaunch launch{residual, delta, inject_a, inject_b, out, next_input, rstd, rows, hidden, eps, stream};
  return dispatch_dtype(dtype, hidden, vectorised, launch);
}

cudaError_t rms_norm_residual_bwd(DType dtype, const void* grad_out, const void* grad_next, const void* out,
                                  const float* rstd, void* grad_s, int64_t rows, int hidden, bool vectorised,
                                  cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const BwdLaunch launch{grad_out, grad_next, out, rstd, grad_s, rows, hidden, stream};
  return dispatch_dtype(dtype, hidden, vectorised, launch);
}

}  // namespace trm_fast
