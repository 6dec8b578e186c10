// PyTorch binding of op 6 (the ACT loss head): checks the tensors, picks the launch
// variant, launches on the current stream. Python side: trm_fast/ops/loss_head.py (which also validates,
// so users see its messages; the checks here guard direct calls).
#include <tuple>

#include "binding.h"
#include "loss_head.h"

namespace {

using namespace trm_fast::binding;
using trm_fast::DType;

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

void bind(pybind11::module_& m) {
  m.def("loss_head_fwd", &loss_head_fwd,
        "(logits, labels, q_halt_logits, ignore_index, stablemax) -> (lm_loss, q_halt_loss, token_accuracy, seq_correct, token_count)",
        py::arg("logits"), py::arg("labels"), py::arg("q_halt_logits"), py::arg("ignore_index"), py::arg("stablemax"));
  m.def("loss_head_bwd", &loss_head_bwd, "(logits, labels, token_count, grad_lm_loss, ignore_index, stablemax) -> grad_logits",
        py::arg("logits"), py::arg("labels"), py::arg("token_count"), py::arg("grad_lm_loss"), py::arg("ignore_index"),
        py::arg("stablemax"));
}

const trm_fast::Registration registration(bind);

}  // namespace
