// What the ops' PyTorch bindings (csrc/<op>_bindings.cpp) share: tensor checks, dtype mapping, and the
// registration that adds an op's functions to the extension module (bindings.cpp), so no shared file
// lists the ops.
//
// Only the headers needed (not torch/extension.h, which pulls in the whole C++ frontend): the binding
// files dominate the build time on small CI machines.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <vector>

#include "kernel_api.h"

namespace trm_fast {

using BindFunction = void (*)(pybind11::module_&);

// Every op's bind function, in the order their files were loaded.
std::vector<BindFunction>& registered_bindings();

// `static const Registration registration(bind);` in an op's binding file adds its functions.
struct Registration {
  explicit Registration(BindFunction bind) { registered_bindings().push_back(bind); }
};

namespace binding {

inline DType dtype_of(const at::Tensor& tensor, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, name, ": dtype ", tensor.scalar_type(), " is not supported (float32, float16, bfloat16)");
  }
  return DType::kFloat32;
}

inline void check_cuda_contiguous(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK_VALUE(tensor.is_contiguous(), name, " must be contiguous");
}

inline void check_like(const at::Tensor& tensor, const at::Tensor& reference, const char* name) {
  check_cuda_contiguous(tensor, name);
  TORCH_CHECK_VALUE(tensor.sizes() == reference.sizes(), name, " has shape ", tensor.sizes(), ", expected ", reference.sizes());
  TORCH_CHECK_TYPE(tensor.scalar_type() == reference.scalar_type(), name, " has dtype ", tensor.scalar_type(), ", expected ",
                   reference.scalar_type());
  TORCH_CHECK_VALUE(tensor.device() == reference.device(), name, " is on ", tensor.device(), ", expected ", reference.device());
}

inline bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

inline void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

}  // namespace binding
}  // namespace trm_fast
