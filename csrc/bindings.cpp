// The trm_fast CUDA extension module: each op's binding file (csrc/<op>_bindings.cpp) registers its
// functions (binding.h); this file only collects them. Python side: trm_fast/ops/cuda_ext.py.
#include "binding.h"

namespace trm_fast {

std::vector<BindFunction>& registered_bindings() {
  static std::vector<BindFunction> bindings;  // a function-local static: filled during static initialisation
  return bindings;
}

}  // namespace trm_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "trm_fast CUDA kernels (one csrc/<op>_bindings.cpp per op)";
  for (trm_fast::BindFunction bind : trm_fast::registered_bindings()) bind(m);
}
