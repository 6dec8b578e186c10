// Small device helpers shared by the trm_fast kernels: fp32 conversions and warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace trm_fast {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Rounds an fp32 value to the storage dtype and back (what an op computed in that dtype would see).
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_float(from_float<T>(x)); }

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ int warp_sum(int value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// VEC consecutive elements moved with one load/store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T values[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* pointer) {
  return *reinterpret_cast<const Pack<T, VEC>*>(pointer);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* pointer, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(pointer) = pack;
}

}  // namespace trm_fast
