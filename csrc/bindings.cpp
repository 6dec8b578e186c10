// PyTorch binding of the trm_fast CUDA kernels: checks the tensors, picks the launch variant,
// launches on the current stream. Python side: trm_fast/ops/cuda_ext.py (which also validates, so
// users see its messages; the checks here guard direct calls).
//
// Only the headers needed (not torch/extension.h, which pulls in the whole C++ frontend): this file
// dominates the build time on small CI machines.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include <tuple>

#include "trm_fast_kernels.h"

namespace {

using trm_fast::DType;

DType dtype_of(const at::Tensor& tensor, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, name, ": dtype ", tensor.scalar_type(), " is not supported (float32, float16, bfloat16)");
  }
  return DType::kFloat32;
}

void check_cuda_contiguous(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK_VALUE(tensor.is_contiguous(), name, " must be contiguous");
}

void check_like(const at::Tensor& tensor, const at::Tensor& reference, const char* name) {
  check_cuda_contiguous(tensor, name);
  TORCH_CHECK_VALUE(tensor.sizes() == reference.sizes(), name, " has shape ", tensor.sizes(), ", expected ", reference.sizes());
  TORCH_CHECK_TYPE(tensor.scalar_type() == reference.scalar_type(), name, " has dtype ", tensor.scalar_type(), ", expected ",
                   reference.scalar_type());
  TORCH_CHECK_VALUE(tensor.device() == reference.device(), name, " is on ", tensor.device(), ", expected ", reference.device());
}

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

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

void check_loss_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  check_cuda_contiguous(logits, "logits");
  check_cuda_contiguous(labels, "labels");
  TORCH_CHECK_VALUE(logits.dim() == 3, "logits must be [B, L, V], got ", logits.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == logits.size(0) && labels.size(1) == logits.size(1),
                    "labels must be [B, L] matching logits ", logits.sizes(), ", got ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong, "labels must be int32 or int64");
  TORCH_CHECK_VALUE(logits.size(2) >= 1 && logits.size(2) <= trm_fast::kLossHeadMaxVocab,
                    "the CUDA loss head supports vocab sizes 1..", trm_fast::kLossHeadMaxVocab, ", got ", logits.size(2));
  TORCH_CHECK_VALUE(labels.device() == logits.device(), "labels and logits must be on the same device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_head_fwd(const at::Tensor& logits,
                                                                                     const at::Tensor& labels,
                                                                                     const at::Tensor& q_halt_logits,
                                                                                     int64_t ignore_index,
                                                                                     bool stablemax) {
  check_loss_inputs(logits, labels);
  check_cuda_contiguous(q_halt_logits, "q_halt_logits");
  TORCH_CHECK_VALUE(q_halt_logits.dim() == 1 && q_halt_logits.size(0) == logits.size(0),
                    "q_halt_logits must be [B], got ", q_halt_logits.sizes());
  TORCH_CHECK_VALUE(q_halt_logits.device() == logits.device(), "q_halt_logits and logits must be on the same device");
  const DType logits_dtype = dtype_of(logits, "logits");
  const DType q_dtype = dtype_of(q_halt_logits, "q_halt_logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t batch = logits.size(0);
  const auto per_seq = logits.options().dtype(at::kFloat);
  at::Tensor lm_loss = at::empty({batch}, per_seq);
  at::Tensor q_halt_loss = at::empty({batch}, per_seq);
  at::Tensor accuracy = at::empty({batch}, per_seq);
  at::Tensor seq_correct = at::empty({batch}, logits.options().dtype(at::kBool));
  at::Tensor count = at::empty({batch}, logits.options().dtype(at::kInt));
  check_launch(trm_fast::act_loss_head_fwd(logits_dtype, q_dtype, logits.data_ptr(), labels.data_ptr(),
                                           labels.scalar_type() == at::kLong, q_halt_logits.data_ptr(),
                                           lm_loss.data_ptr<float>(), q_halt_loss.data_ptr<float>(),
                                           accuracy.data_ptr<float>(), seq_correct.data_ptr<bool>(),
                                           count.data_ptr<int32_t>(), batch, logits.size(1),
                                           static_cast<int>(logits.size(2)), ignore_index, stablemax,
                                           c10::cuda::getCurrentCUDAStream().stream()),
               "act_loss_head_fwd");
  return {lm_loss, q_halt_loss, accuracy, seq_correct, count};
}

at::Tensor loss_head_bwd(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& token_count,
                         const at::Tensor& grad_lm_loss, int64_t ignore_index, bool stablemax) {
  check_loss_inputs(logits, labels);
  const int64_t batch = logits.size(0);
  check_cuda_contiguous(token_count, "token_count");
  TORCH_CHECK_TYPE(token_count.scalar_type() == at::kInt, "token_count must be int32");
  TORCH_CHECK_VALUE(token_count.numel() == batch, "token_count must be [B]");
  check_cuda_contiguous(grad_lm_loss, "grad_lm_loss");
  TORCH_CHECK_TYPE(grad_lm_loss.scalar_type() == at::kFloat, "grad_lm_loss must be float32");
  TORCH_CHECK_VALUE(grad_lm_loss.numel() == batch, "grad_lm_loss must be [B]");
  const DType logits_dtype = dtype_of(logits, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad_logits = at::empty_like(logits);
  check_launch(trm_fast::act_loss_head_bwd(logits_dtype, logits.data_ptr(), labels.data_ptr(),
                                           labels.scalar_type() == at::kLong, token_count.data_ptr<int32_t>(),
                                           grad_lm_loss.data_ptr<float>(), grad_logits.data_ptr(), batch,
                                           logits.size(1), static_cast<int>(logits.size(2)), ignore_index, stablemax,
                                           c10::cuda::getCurrentCUDAStream().stream()),
               "act_loss_head_bwd");
  return grad_logits;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "trm_fast CUDA kernels: fused residual RMSNorm (+ injection) and the ACT loss head";
  m.def("rms_norm_residual_fwd", &rms_norm_residual_fwd, "(residual, delta, inject_a|None, inject_b|None, eps) -> (out, next_input or empty, rstd)",
        py::arg("residual"), py::arg("delta"), py::arg("inject_a"), py::arg("inject_b"), py::arg("eps"));
  m.def("rms_norm_residual_bwd", &rms_norm_residual_bwd, "(grad_out, grad_next|None, out, rstd) -> grad_s",
        py::arg("grad_out"), py::arg("grad_next"), py::arg("out"), py::arg("rstd"));
  m.def("loss_head_fwd", &loss_head_fwd,
        "(logits, labels, q_halt_logits, ignore_index, stablemax) -> (lm_loss, q_halt_loss, token_accuracy, seq_correct, token_count)",
        py::arg("logits"), py::arg("labels"), py::arg("q_halt_logits"), py::arg("ignore_index"), py::arg("stablemax"));
  m.def("loss_head_bwd", &loss_head_bwd, "(logits, labels, token_count, grad_lm_loss, ignore_index, stablemax) -> grad_logits",
        py::arg("logits"), py::arg("labels"), py::arg("token_count"), py::arg("grad_lm_loss"), py::arg("ignore_index"),
        py::arg("stablemax"));
}
