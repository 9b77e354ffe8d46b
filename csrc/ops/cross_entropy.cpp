// Softmax-cross-entropy, tensor level: argument checks, contiguity, allocation, CPU/CUDA choice.
// Input arrives from dlkernels/functional.py as (N, C, d1, ..., dk) with k >= 0; the kernels see it as
// a contiguous (N, C, S) array.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <limits>

#include "common/cross_entropy.h"
#include "cpu/cross_entropy.h"
#include "ops/alloc.h"
#include "ops/device.h"
#include "ops/ops.h"

#ifdef DLKERNELS_WITH_CUDA
#include "cuda/launch.h"
#include "ops/cuda_util.h"
#endif

namespace dlk::ops {
namespace {

using at::Tensor;

struct Prepared {
  CrossEntropyGeom geom;
  CrossEntropyOptions opts;
  Tensor input, target, target_prob, weight;  // contiguous; undefined where unused
};

bool is_float_type(at::ScalarType t, bool on_cuda) {
  return t == at::kFloat || t == at::kDouble || (on_cuda && (t == at::kHalf || t == at::kBFloat16));
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Shape of one value per row: the input's shape without the class dimension.
std::vector<int64_t> row_shape(const Tensor& input) {
  std::vector<int64_t> s(input.sizes().begin(), input.sizes().end());
  s.erase(s.begin() + 1);
  return s;
}

Prepared prepare(const Tensor& input, const Tensor& target, const c10::optional<Tensor>& weight, int64_t reduction,
                 int64_t ignore_index, double label_smoothing) {
  const bool cuda = cuda_kernels(input);
  TORCH_CHECK(input.is_cpu() || cuda, "dlkernels.cross_entropy: input must be a CPU or CUDA tensor, got device ",
              input.device());
  TORCH_CHECK_TYPE(is_float_type(input.scalar_type(), cuda),
                   "dlkernels.cross_entropy: input must be float32 or float64",
                   cuda ? ", float16 or bfloat16" : "", " on ", input.device().type(), ", got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.dim() >= 2, "dlkernels.cross_entropy: input must have shape (N, C, d1, ..., dk), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.size(1) >= 1, "dlkernels.cross_entropy: input must have at least one class, got shape ",
                    input.sizes());
  TORCH_CHECK(target.device() == input.device(), "dlkernels.cross_entropy: target is on ", target.device(),
              " but input is on ", input.device());
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2,
                    "dlkernels.cross_entropy: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "dlkernels.cross_entropy: label_smoothing must be between 0.0 and 1.0, got ", label_smoothing);
  Prepared p;
  const int64_t C = input.size(1);
  int64_t S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) S *= input.size(d);
  p.geom = CrossEntropyGeom{input.size(0), C, S};
  p.opts = CrossEntropyOptions{static_cast<Reduction>(reduction), ignore_index, label_smoothing, false};
  p.input = input.contiguous();
  if (at::isFloatingType(target.scalar_type())) {
    p.opts.prob_target = true;
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(),
                      "dlkernels.cross_entropy: probability target must have the input's shape ", input.sizes(),
                      ", got ", target.sizes());
    TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(),
                     "dlkernels.cross_entropy: probability target must have the input's dtype ",
                     input.scalar_type(), ", got ", target.scalar_type());
    p.target_prob = target.contiguous();
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte,
                     "dlkernels.cross_entropy: class-index target must be int64 (or uint8), got ",
                     target.scalar_type());
    TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(row_shape(input)),
                      "dlkernels.cross_entropy: target must have shape ", at::IntArrayRef(row_shape(input)),
                      " for input of shape ", input.sizes(), ", got ", target.sizes());
    p.target = target.to(at::kLong).contiguous();
  }
  if (weight.has_value() && weight->defined()) {
    const Tensor& w = *weight;
    TORCH_CHECK(w.device() == input.device(), "dlkernels.cross_entropy: weight is on ", w.device(),
                " but input is on ", input.device());
    TORCH_CHECK_VALUE(w.dim() == 1 && w.numel() == C, "dlkernels.cross_entropy: weight must have shape (", C,
                      ",) (one per class), got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == input.scalar_type(), "dlkernels.cross_entropy: weight must have the input's dtype ",
                     input.scalar_type(), ", got ", w.scalar_type());
    p.weight = w.contiguous();
  }
  return p;
}

template <class T> const T* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

#ifdef DLKERNELS_WITH_CUDA
const void* vptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, "dlkernels.", what, ": CUDA kernel launch failed: ", cuda::error_string(err));
}
#endif

void raise_bad_target(const Tensor& target, int64_t row, int64_t C) {
  const int64_t value = target.reshape({-1})[row].item<int64_t>();
  TORCH_CHECK_INDEX(false, "dlkernels.cross_entropy: target ", value, " is out of bounds: expected a class index in [0, ",
                    C, ") or ignore_index (at flat position ", row, " of target)");
}

std::atomic<bool> g_cuda_sync_checks{false};

}  // namespace

bool cuda_sync_checks() { return g_cuda_sync_checks.load(std::memory_order_relaxed); }
void set_cuda_sync_checks(bool enabled) { g_cuda_sync_checks.store(enabled, std::memory_order_relaxed); }

std::tuple<Tensor, Tensor, Tensor> cross_entropy_forward(const Tensor& input, const Tensor& target,
                                                         const c10::optional<Tensor>& weight, int64_t reduction,
                                                         int64_t ignore_index, double label_smoothing) {
  Prepared p = prepare(input, target, weight, reduction, ignore_index, label_smoothing);
  const auto& g = p.geom;
  const auto rshape = row_shape(input);
  const auto acc = acc_type(input.scalar_type());
  const auto opt_acc = input.options().dtype(acc);
  Tensor lse = at::empty(rshape, opt_acc);
  Tensor total_weight = at::empty({}, opt_acc);
  Tensor loss_rows = at::empty(rshape, opt_acc);
  Tensor row_weight = at::empty(rshape, opt_acc);
  Tensor out = p.opts.reduction == Reduction::None ? loss_rows : at::empty({}, input.options());

  if (cpu_kernels(input)) {
    if (!p.opts.prob_target) {
      const int64_t bad = cpu::cross_entropy_find_bad_target(p.target.data_ptr<int64_t>(), g.rows(), g.C, ignore_index);
      if (bad >= 0) raise_bad_target(p.target, bad, g.C);
    }
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dlkernels.cross_entropy_forward", [&] {
      cpu::CrossEntropyForwardArgs<scalar_t> a{p.input.data_ptr<scalar_t>(), ptr_or_null<int64_t>(p.target),
                                               ptr_or_null<scalar_t>(p.target_prob), ptr_or_null<scalar_t>(p.weight),
                                               loss_rows.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                               row_weight.data_ptr<scalar_t>()};
      cpu::cross_entropy_forward<scalar_t>(g, p.opts, a);
      // total_weight is kept for every reduction (backward of 'mean' divides by it).
      cpu::cross_entropy_reduce<scalar_t>(g.rows(), a.loss, a.row_weight, p.opts.reduction,
                                          p.opts.reduction == Reduction::None ? nullptr : out.data_ptr<scalar_t>(),
                                          total_weight.data_ptr<scalar_t>());
    });
    return {out, lse, total_weight};
  }
#ifdef DLKERNELS_WITH_CUDA
  CudaScope scope(input);
  void* stream = scope.stream();
  const auto dt = cuda_dtype(input.scalar_type());
  Tensor bad_row = at::full({}, std::numeric_limits<int64_t>::max(), input.options().dtype(at::kLong));
  Tensor workspace = at::empty({1}, opt_acc);  // the weight sum
  check_launch(cuda::cross_entropy_forward(dt, g, p.opts, p.input.data_ptr(), ptr_or_null<int64_t>(p.target),
                                           vptr(p.target_prob), vptr(p.weight), loss_rows.data_ptr(), lse.data_ptr(),
                                           row_weight.data_ptr(),
                                           reinterpret_cast<unsigned long long*>(bad_row.data_ptr<int64_t>()),
                                           workspace.data_ptr(), stream),
               "cross_entropy");
  if (!p.opts.prob_target && cuda_sync_checks()) {
    // A clear error needs the host to look: one small device-to-host copy, a synchronisation, so only
    // when asked for (dlkernels.set_cuda_sync_checks). Otherwise the bad row's loss is NaN, and so is
    // a mean or sum over it: visible in the loss, without stalling the host every step.
    const int64_t bad = bad_row.item<int64_t>();
    if (bad != std::numeric_limits<int64_t>::max()) raise_bad_target(p.target, bad, g.C);
  }
  if (p.opts.reduction == Reduction::None) {
    out = acc == input.scalar_type() ? loss_rows : loss_rows.to(input.scalar_type());
  }
  check_launch(cuda::cross_entropy_reduce(dt, g.rows(), loss_rows.data_ptr(), row_weight.data_ptr(),
                                          p.opts.reduction,
                                          p.opts.reduction == Reduction::None ? nullptr : out.data_ptr(),
                                          total_weight.data_ptr(), stream),
               "cross_entropy");
  return {out, lse, total_weight};
#else
  TORCH_CHECK(false, "dlkernels.cross_entropy: this build has no CUDA support");
#endif
}

}  // namespace dlk::ops

namespace dlk::ops {
namespace {

void check_saved(const Prepared& p, const at::Tensor& grad_loss, const at::Tensor& lse, const at::Tensor& total_weight) {
  const auto acc = acc_type(p.input.scalar_type());
  const auto rshape = row_shape(p.input);
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef(rshape) && lse.scalar_type() == acc && lse.device() == p.input.device(),
                    "dlkernels.cross_entropy_backward: lse must be ", acc, " of shape ", at::IntArrayRef(rshape),
                    " on ", p.input.device(), ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
  TORCH_CHECK_VALUE(total_weight.numel() == 1 && total_weight.scalar_type() == acc &&
                        total_weight.device() == p.input.device(),
                    "dlkernels.cross_entropy_backward: total_weight must be one ", acc, " value, got ",
                    total_weight.scalar_type(), " ", total_weight.sizes());
  TORCH_CHECK(grad_loss.device() == p.input.device(), "dlkernels.cross_entropy_backward: grad_loss is on ",
              grad_loss.device(), " but input is on ", p.input.device());
  TORCH_CHECK_TYPE(grad_loss.scalar_type() == p.input.scalar_type(),
                   "dlkernels.cross_entropy_backward: grad_loss must have the input's dtype ", p.input.scalar_type(),
                   ", got ", grad_loss.scalar_type());
  if (p.opts.reduction == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == at::IntArrayRef(rshape), "dlkernels.cross_entropy_backward: grad_loss must have shape ",
                      at::IntArrayRef(rshape), " for reduction='none', got ", grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "dlkernels.cross_entropy_backward: grad_loss must be one value, got shape ",
                      grad_loss.sizes());
  }
}

}  // namespace

at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                  const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index,
                                  double label_smoothing) {
  Prepared p = prepare(input, target, weight, reduction, ignore_index, label_smoothing);
  check_saved(p, grad_loss, lse, total_weight);
  const auto& g = p.geom;
  at::Tensor grad = grad_loss.contiguous(), lse_c = lse.contiguous(), tw = total_weight.contiguous();
  at::Tensor grad_input = empty_output(p.input.sizes(), p.input.options());
  if (cpu_kernels(input)) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dlkernels.cross_entropy_backward", [&] {
      cpu::CrossEntropyBackwardArgs<scalar_t> a{grad.data_ptr<scalar_t>(), tw.data_ptr<scalar_t>(),
                                                p.input.data_ptr<scalar_t>(), ptr_or_null<int64_t>(p.target),
                                                ptr_or_null<scalar_t>(p.target_prob), ptr_or_null<scalar_t>(p.weight),
                                                lse_c.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>()};
      cpu::cross_entropy_backward<scalar_t>(g, p.opts, a);
    });
    return grad_input;
  }
#ifdef DLKERNELS_WITH_CUDA
  CudaScope scope(input);
  at::Tensor workspace = at::empty({1}, lse.options());  // the weight sum
  check_launch(cuda::cross_entropy_backward(cuda_dtype(input.scalar_type()), g, p.opts, grad.data_ptr(), tw.data_ptr(),
                                            p.input.data_ptr(), ptr_or_null<int64_t>(p.target), vptr(p.target_prob),
                                            vptr(p.weight), lse_c.data_ptr(), grad_input.data_ptr(),
                                            workspace.data_ptr(), scope.stream()),
               "cross_entropy_backward");
  return grad_input;
#else
  TORCH_CHECK(false, "dlkernels.cross_entropy_backward: this build has no CUDA support");
#endif
}

at::Tensor cross_entropy_target_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                                         const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                         const at::Tensor& total_weight, int64_t reduction, double label_smoothing) {
  Prepared p = prepare(input, target, weight, reduction, -100, label_smoothing);
  TORCH_CHECK_VALUE(p.opts.prob_target, "dlkernels.cross_entropy_target_backward: only probability targets have a gradient");
  check_saved(p, grad_loss, lse, total_weight);
  const auto& g = p.geom;
  at::Tensor grad = grad_loss.contiguous(), lse_c = lse.contiguous(), tw = total_weight.contiguous();
  at::Tensor grad_target = empty_output(p.input.sizes(), p.input.options());
  if (cpu_kernels(input)) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dlkernels.cross_entropy_target_backward", [&] {
      cpu::cross_entropy_target_backward<scalar_t>(g, p.opts, grad.data_ptr<scalar_t>(), tw.data_ptr<scalar_t>(),
                                                   p.input.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(p.weight),
                                                   lse_c.data_ptr<scalar_t>(), grad_target.data_ptr<scalar_t>());
    });
    return grad_target;
  }
#ifdef DLKERNELS_WITH_CUDA
  CudaScope scope(input);
  check_launch(cuda::cross_entropy_target_backward(cuda_dtype(input.scalar_type()), g, p.opts, grad.data_ptr(),
                                                   tw.data_ptr(), p.input.data_ptr(), vptr(p.weight), lse_c.data_ptr(),
                                                   grad_target.data_ptr(), scope.stream()),
               "cross_entropy_target_backward");
  return grad_target;
#else
  TORCH_CHECK(false, "dlkernels.cross_entropy_target_backward: this build has no CUDA support");
#endif
}

}  // namespace dlk::ops
