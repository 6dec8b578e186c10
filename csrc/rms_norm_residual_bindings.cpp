// PyTorch binding of op 1 (fused residual RMSNorm + injection): checks the tensors, picks the launch
// variant, launches on the current stream. Python side: trm_fast/ops/rms_norm_residual.py (which also validates,
// so users see its messages; the checks here guard direct calls).
#include <tuple>

#include "binding.h"
#include "rms_norm_residual.h"

namespace {

using namespace trm_fast::binding;
using trm_fast::DType;

// Whether every row tensor allows 16-byte packs; the rows must also fit the kernel's registers.
bool choose_vectorised(const std::vector<const at::Tensor*>& tensors, DType dtype, int64_t hidden, const char* op) {
  const int64_t pack = dtype == DType::kFloat32 ? 4 : 8;
  bool vectorised = hidden % pack == 0;
  for (const at::Tensor* tensor : tensors) vectorised = vectorised && aligned16(*tensor);
  const int64_t limit = trm_fast::rms_norm_max_hidden(dtype, vectorised);
  TORCH_CHECK_VALUE(hidden <= limit, op, ": hidden size ", hidden, " exceeds the CUDA kernel's limit ", limit,
                    " for this dtype/alignment");
  return vectorised;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_residual_fwd(const at::Tensor& residual, const at::Tensor& delta,
                                                                     const c10::optional<at::Tensor>& inject_a,
                                                                     const c10::optional<at::Tensor>& inject_b,
                                                                     double eps) {
  check_cuda_contiguous(residual, "residual");
  TORCH_CHECK_VALUE(residual.dim() >= 1 && residual.size(-1) > 0, "residual must have a non-empty last dim");
  const DType dtype = dtype_of(residual, "residual");
  check_like(delta, residual, "delta");
  TORCH_CHECK_VALUE(!(inject_b.has_value() && !inject_a.has_value()), "inject_b given without inject_a");
  if (inject_a.has_value()) check_like(*inject_a, residual, "inject_a");
  if (inject_b.has_value()) check_like(*inject_b, residual, "inject_b");
  const c10::cuda::CUDAGuard guard(residual.device());
  const int64_t hidden = residual.size(-1);
  const int64_t rows = residual.numel() / hidden;
  at::Tensor out = at::empty_like(residual);
  at::Tensor next_input = inject_a.has_value() ? at::empty_like(residual) : at::empty({0}, residual.options());
  at::Tensor rstd = at::empty({rows}, residual.options().dtype(at::kFloat));
  std::vector<const at::Tensor*> row_tensors{&residual, &delta, &out};
  if (inject_a.has_value()) {
    row_tensors.push_back(&*inject_a);
    row_tensors.push_back(&next_input);
  }
  if (inject_b.has_value()) row_tensors.push_back(&*inject_b);
  const bool vectorised = choose_vectorised(row_tensors, dtype, hidden, "rms_norm_residual_fwd");
  check_launch(trm_fast::rms_norm_residual_fwd(
                   dtype, residual.data_ptr(), delta.data_ptr(), inject_a.has_value() ? inject_a->data_ptr() : nullptr,
                   inject_b.has_value() ? inject_b->data_ptr() : nullptr, out.data_ptr(),
                   inject_a.has_value() ? next_input.data_ptr() : nullptr, rstd.data_ptr<float>(), rows,
                   static_cast<int>(hidden), static_cast<float>(eps), vectorised, c10::cuda::getCurrentCUDAStream().stream()),
               "rms_norm_residual_fwd");
  return {out, next_input, rstd};
}

at::Tensor rms_norm_residual_bwd(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_next,
                                 const at::Tensor& out, const at::Tensor& rstd) {
  check_cuda_contiguous(out, "out");
  TORCH_CHECK_VALUE(out.dim() >= 1 && out.size(-1) > 0, "out must have a non-empty last dim");
  const DType dtype = dtype_of(out, "out");
  check_like(grad_out, out, "grad_out");
  const bool has_next = grad_next.has_value() && grad_next->numel() > 0;
  if (has_next) check_like(*grad_next, out, "grad_next");
  const int64_t hidden = out.size(-1);
  const int64_t rows = out.numel() / hidden;
  check_cuda_contiguous(rstd, "rstd");
  TORCH_CHECK_TYPE(rstd.scalar_type() == at::kFloat, "rstd must be float32");
  TORCH_CHECK_VALUE(rstd.numel() == rows, "rstd must hold one value per row (", rows, "), got ", rstd.numel());
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor grad_s = at::empty_like(out);
  std::vector<const at::Tensor*> row_tensors{&grad_out, &out, &grad_s};
  if (has_next) row_tensors.push_back(&*grad_next);
  const bool vectorised = choose_vectorised(row_tensors, dtype, hidden, "rms_norm_residual_bwd");
  check_launch(trm_fast::rms_norm_residual_bwd(dtype, grad_out.data_ptr(), has_next ? grad_next->data_ptr() : nullptr,
                                               out.data_ptr(), rstd.data_ptr<float>(), grad_s.data_ptr(), rows,
                                               static_cast<int>(hidden), vectorised, c10::cuda::getCurrentCUDAStream().stream()),
               "rms_norm_residual_bwd");
  return grad_s;
}

void bind(pybind11::module_& m) {
  m.def("rms_norm_residual_fwd", &rms_norm_residual_fwd, "(residual, delta, inject_a|None, inject_b|None, eps) -> (out, next_input or empty, rstd)",
        py::arg("residual"), py::arg("delta"), py::arg("inject_a"), py::arg("inject_b"), py::arg("eps"));
  m.def("rms_norm_residual_bwd", &rms_norm_residual_bwd, "(grad_out, grad_next|None, out, rstd) -> grad_s",
        py::arg("grad_out"), py::arg("grad_next"), py::arg("out"), py::arg("rstd"));
}

const trm_fast::Registration registration(bind);

}  // namespace
