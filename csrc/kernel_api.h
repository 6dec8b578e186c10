// What every op's launcher header shares: the storage dtypes. Launchers are plain C++ over raw device
// pointers, so the .cu files build without PyTorch headers (fast nvcc compiles); each op's
// <op>_bindings.cpp adapts torch tensors to them.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace trm_fast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace trm_fast
