// Fused optimizer steps, tensor level: list checks, layout handling, step counters, the chunk table,
// CPU/CUDA choice. Each op updates its tensors in place (schemas annotate them Tensor(a!)[]).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <ATen/core/List.h>
#include <ATen/ops/_foreach_add.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "common/optim.h"
#include "cpu/optim.h"
#include "ops/device.h"
#include "ops/ops.h"

#ifdef DLKERNELS_WITH_CUDA
#include "cuda/launch.h"
#include "ops/cuda_util.h"
#endif

namespace dlk::ops {
namespace {

using at::Tensor;
using at::TensorList;

// Elements per chunk: large enough to amortise scheduling, small enough to balance 14M floats in
// ~120 tensors of very different sizes over the threads.
constexpr int64_t kChunk = 1 << 14;

// A list argument checked against the parameters: same length, and per tensor the parameter's
// shape, dtype and device.
void check_list(const char* op, const char* name, TensorList params, TensorList list) {
  TORCH_CHECK_VALUE(list.size() == params.size(), "dlkernels.", op, ": ", name, " must have one tensor per parameter (",
                    params.size(), "), got ", list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    TORCH_CHECK_VALUE(list[i].sizes() == params[i].sizes(), "dlkernels.", op, ": ", name, "[", i, "] has shape ",
                      list[i].sizes(), " but params[", i, "] has shape ", params[i].sizes());
    TORCH_CHECK_TYPE(list[i].scalar_type() == params[i].scalar_type(), "dlkernels.", op, ": ", name, "[", i,
                     "] has dtype ", list[i].scalar_type(), " but params[", i, "] has dtype ", params[i].scalar_type());
    TORCH_CHECK(list[i].device() == params[i].device(), "dlkernels.", op, ": ", name, "[", i, "] is on ",
                list[i].device(), " but params[", i, "] is on ", params[i].device());
    TORCH_CHECK(!list[i].is_sparse(), "dlkernels.", op, ": ", name, "[", i, "] is sparse; sparse tensors are not supported");
  }
}

void check_params(const char* op, TensorList params) {
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    TORCH_CHECK(p.device() == params[0].device(), "dlkernels.", op, ": all parameters must be on one device, params[", i,
                "] is on ", p.device(), " and params[0] on ", params[0].device());
    TORCH_CHECK_TYPE(p.scalar_type() == params[0].scalar_type(), "dlkernels.", op,
                     ": all parameters of one call must share a dtype, params[", i, "] is ", p.scalar_type(),
                     " and params[0] ", params[0].scalar_type());
    const bool cuda = cuda_kernels(p);
    const auto t = p.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || (cuda && (t == at::kHalf || t == at::kBFloat16)),
                     "dlkernels.", op, ": parameters must be float32 or float64", cuda ? ", float16 or bfloat16" : "",
                     " on ", p.device().type(), ", got ", t, " for params[", i, "]");
    TORCH_CHECK(p.is_cpu() || cuda, "dlkernels.", op, ": parameters must be CPU or CUDA tensors, got ", p.device());
  }
}

// The kernels walk each tensor's memory linearly, which is right when every tensor of a parameter's
// group (param, grad, states) is dense with the same strides. Anything else goes through contiguous
// copies that are written back afterwards.
struct Staged {
  std::vector<std::vector<Tensor>> work;  // [list][i]: what the kernel sees
  std::vector<std::pair<Tensor, Tensor>> write_back;  // (original, staged copy)
};

Staged stage(const std::vector<TensorList>& lists, const std::vector<bool>& mutated) {
  Staged s;
  s.work.resize(lists.size());
  const size_t n = lists[0].size();
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = lists[0][i];
    bool same = p.is_non_overlapping_and_dense();
    for (const auto& l : lists)
      if (!l.empty()) same = same && l[i].strides() == p.strides() && l[i].is_non_overlapping_and_dense();
    for (size_t k = 0; k < lists.size(); ++k) {
      if (lists[k].empty()) continue;
      const Tensor& t = lists[k][i];
      if (same) {
        s.work[k].push_back(t);
      } else {
        Tensor c = t.contiguous();
        if (mutated[k] && !c.is_same(t)) s.write_back.emplace_back(t, c);
        s.work[k].push_back(c);
      }
    }
  }
  return s;
}

void finish(Staged& s) {
  for (auto& wb : s.write_back) wb.first.copy_(wb.second);
}

std::vector<TensorChunk> chunk_table(TensorList params) {
  std::vector<TensorChunk> chunks;
  for (size_t i = 0; i < params.size(); ++i)
    for (int64_t b = 0; b < params[i].numel(); b += kChunk)
      chunks.push_back({int64_t(i), b, std::min(params[i].numel(), b + kChunk)});
  return chunks;
}

// Raw pointers of a staged list; T may be const (read-only lists such as the gradients).
template <class T> std::vector<T*> ptrs(const std::vector<Tensor>& l) {
  std::vector<T*> out;
  for (const auto& t : l) out.push_back(t.data_ptr<std::remove_const_t<T>>());
  return out;
}

#ifdef DLKERNELS_WITH_CUDA
// The multi-tensor launchers' inputs: per list, one device pointer per tensor (nullptr for a list the
// options leave unused), and the element counts.
struct DeviceTables {
  std::vector<std::vector<const void*>> lists;
  std::vector<int64_t> numel;
  const void* const* list(size_t k) const { return lists[k].empty() ? nullptr : lists[k].data(); }
  std::shared_ptr<EmuMemoryScope> written = std::make_shared<EmuMemoryScope>();  // emulation build only
};

DeviceTables device_tables(const Staged& s) {
  DeviceTables t;
  for (const auto& l : s.work) {
    t.lists.emplace_back();
    for (const auto& x : l) {
      t.lists.back().push_back(x.data_ptr());
      t.written->add(x);
    }
  }
  for (const auto& x : s.work[0]) t.numel.push_back(x.numel());
  return t;
}

#endif

// The step counters (one floating-point scalar per parameter), advanced, and where the kernels find them.
struct Steps {
  std::vector<double> host;            // the new values, read on the host: torch keeps counters on the CPU
                                       // unless capturable or fused
  std::vector<const void*> device;     // or the counters' addresses, where they stay on the device
  bool device_double = false;
  // the kernels' view of the counters; ds must not outlive this
  void attach(DeviceScalars& ds) const {
    ds.steps = device.empty() ? nullptr : device.data();
    ds.steps_double = device_double;
  }
};

// lr as the host computes with it: the float, or a one-element tensor's value. A tensor on the
// parameters' device, for the CUDA kernels, is read by the kernels (into ds; the host then computes its
// per-tensor scalars with lr = 1, and the kernels multiply lr in).
double resolve_lr(const char* op, TensorList params, double lr, const c10::optional<Tensor>& lr_tensor,
                  DeviceScalars& ds) {
  if (!lr_tensor.has_value() || !lr_tensor->defined()) return lr;
  const Tensor& t = *lr_tensor;
  TORCH_CHECK_VALUE(t.numel() == 1 && at::isFloatingType(t.scalar_type()), "dlkernels.", op,
                    ": lr must be a number or a one-element floating-point tensor, got ", t.scalar_type(), " of shape ",
                    t.sizes());
  const auto dt = t.scalar_type();
  if (cuda_kernels(params[0]) && t.device() == params[0].device() && (dt == at::kFloat || dt == at::kDouble)) {
    ds.lr = t.data_ptr();
    ds.lr_double = dt == at::kDouble;
    return 1.0;
  }
  return t.item<double>();  // a CPU tensor here (or a tensor on another device: a read, as torch's)
}

// Advances state_steps by one. On the CUDA kernels, counters on the parameters' device (capturable
// optimizers; with `capturable` always, which the emulation build's tests use) stay there: one
// _foreach_add_ launch, and the kernels read them. Otherwise they are read on the host.
Steps advance_steps(const char* op, TensorList params, TensorList steps, bool capturable) {
  TORCH_CHECK_VALUE(steps.size() == params.size(), "dlkernels.", op, ": state_steps must have one tensor per parameter (",
                    params.size(), "), got ", steps.size());
  for (size_t i = 0; i < steps.size(); ++i)  // all checked before any is changed
    TORCH_CHECK_VALUE(steps[i].numel() == 1 && at::isFloatingType(steps[i].scalar_type()), "dlkernels.", op,
                      ": state_steps[", i, "] must be a one-element floating-point tensor, got ",
                      steps[i].scalar_type(), " of shape ", steps[i].sizes());
  Steps out;
  if (cuda_kernels(params[0]) && !steps.empty() && (capturable || !steps[0].is_cpu())) {
    const auto dt = steps[0].scalar_type();
    for (size_t i = 0; i < steps.size(); ++i) {
      TORCH_CHECK(steps[i].device() == params[0].device(), "dlkernels.", op,
                  ": capturable=True keeps state_steps on the parameters' device; state_steps[", i, "] is on ",
                  steps[i].device(), " and params[0] on ", params[0].device());
      TORCH_CHECK_TYPE(steps[i].scalar_type() == dt && (dt == at::kFloat || dt == at::kDouble), "dlkernels.", op,
                       ": capturable state_steps must all be float32 or all float64, got ", steps[i].scalar_type(),
                       " for state_steps[", i, "] and ", dt, " for state_steps[0]");
    }
    at::_foreach_add_(steps, 1);
    for (const Tensor& t : steps) out.device.push_back(t.data_ptr());
    out.device_double = dt == at::kDouble;
    return out;
  }
  for (const Tensor& s : steps) {
    const auto t = s.scalar_type();
    if (s.is_cpu() && (t == at::kFloat || t == at::kDouble) && !s.requires_grad()) {
      // The usual case (torch keeps the counter on the CPU): incremented in place without two
      // dispatcher round trips (add_ and item cost ~5 us a tensor, ~1 ms a step for 120 parameters).
      // Same arithmetic as add_(1) in the counter's dtype; the version counter moves as add_'s would.
      if (t == at::kFloat) {
        float* v = s.data_ptr<float>();
        *v = *v + 1.0f;
        out.host.push_back(*v);
      } else {
        double* v = s.data_ptr<double>();
        *v = *v + 1.0;
        out.host.push_back(*v);
      }
      if (!s.is_inference()) s.unsafeGetTensorImpl()->bump_version();
    } else {
      s.add_(1);
      out.host.push_back(s.item<double>());  // a host read (a sync for a counter on a GPU)
    }
  }
  return out;
}

}  // namespace

void adam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, TensorList state_steps, double lr, double beta1, double beta2, double eps,
           double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay,
           const c10::optional<Tensor>& lr_tensor, bool capturable) {
  const char* op = decoupled_weight_decay ? "adamw" : "adam";
  if (params.empty()) return;
  check_params(op, params);
  check_list(op, "grads", params, grads);
  check_list(op, "exp_avgs", params, exp_avgs);
  check_list(op, "exp_avg_sqs", params, exp_avg_sqs);
  if (amsgrad) check_list(op, "max_exp_avg_sqs", params, max_exp_avg_sqs);
  DeviceScalars ds;
  const double host_lr = resolve_lr(op, params, lr, lr_tensor, ds);  // checked before the counters move
  const Steps steps = advance_steps(op, params, state_steps, capturable);
  steps.attach(ds);
  std::vector<AdamStepScalars> scalars;
  for (double t : steps.host) scalars.push_back(adam_step_scalars(host_lr, beta1, beta2, t));
  scalars.resize(params.size());  // counters on the device: the kernels compute them
  const AdamOptions o{host_lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
  Staged s = stage({params, grads, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : TensorList()},
                   {true, false, true, true, true});
  const auto chunks = chunk_table(params);
  if (cpu_kernels(params[0])) {
    AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "dlkernels.adam_", [&] {
      auto p = ptrs<scalar_t>(s.work[0]), m = ptrs<scalar_t>(s.work[2]), v = ptrs<scalar_t>(s.work[3]);
      auto vmax = ptrs<scalar_t>(s.work[4]);
      auto gc = ptrs<const scalar_t>(s.work[1]);
      cpu::AdamTensors<scalar_t> t{p.data(), gc.data(), m.data(), v.data(), amsgrad ? vmax.data() : nullptr, scalars.data()};
      cpu::adam_step<scalar_t>(o, t, chunks.data(), int64_t(chunks.size()));
    });
  } else {
#ifdef DLKERNELS_WITH_CUDA
    CudaScope scope(params[0]);
    const DeviceTables t = device_tables(s);
    const int err = cuda::multi_tensor_adam(cuda_dtype(params[0].scalar_type()), o, int64_t(params.size()), t.list(0),
                                            t.list(1), t.list(2), t.list(3), t.list(4), t.numel.data(), scalars.data(),
                                            ds, scope.stream());
    TORCH_CHECK(err == 0, "dlkernels.", op, ": CUDA kernel launch failed: ", cuda::error_string(err));
#else
    TORCH_CHECK(false, "dlkernels.", op, ": this build has no CUDA support");
#endif
  }
  finish(s);
}

void sgd_(TensorList params, TensorList grads, TensorList momentum_buffers, c10::List<bool> first_step, double lr,
          double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
          const c10::optional<Tensor>& lr_tensor) {
  const char* op = "sgd";
  if (params.empty()) return;
  DeviceScalars ds;
  lr = resolve_lr(op, params, lr, lr_tensor, ds);
  check_params(op, params);
  check_list(op, "grads", params, grads);
  if (momentum != 0) {
    check_list(op, "momentum_buffers", params, momentum_buffers);
    TORCH_CHECK_VALUE(first_step.size() == params.size(), "dlkernels.sgd: first_step must have one flag per parameter (",
                      params.size(), "), got ", first_step.size());
  }
  std::vector<uint8_t> first(params.size(), 0);
  for (size_t i = 0; i < first_step.size() && i < first.size(); ++i) first[i] = first_step.get(i) ? 1 : 0;
  const SgdOptions o{lr, momentum, dampening, weight_decay, nesterov, maximize};
  Staged s = stage({params, grads, momentum != 0 ? momentum_buffers : TensorList()}, {true, false, true});
  const auto chunks = chunk_table(params);
  if (cpu_kernels(params[0])) {
    AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "dlkernels.sgd_", [&] {
      auto p = ptrs<scalar_t>(s.work[0]), b = ptrs<scalar_t>(s.work[2]);
      auto gc = ptrs<const scalar_t>(s.work[1]);
      cpu::SgdTensors<scalar_t> t{p.data(), gc.data(), momentum != 0 ? b.data() : nullptr, first.data()};
      cpu::sgd_step<scalar_t>(o, t, chunks.data(), int64_t(chunks.size()));
    });
  } else {
#ifdef DLKERNELS_WITH_CUDA
    CudaScope scope(params[0]);
    const DeviceTables t = device_tables(s);
    const int err = cuda::multi_tensor_sgd(cuda_dtype(params[0].scalar_type()), o, int64_t(params.size()), t.list(0),
                                           t.list(1), t.list(2), t.numel.data(), first.data(), ds,
                                           scope.stream());
    TORCH_CHECK(err == 0, "dlkernels.sgd: CUDA kernel launch failed: ", cuda::error_string(err));
#else
    TORCH_CHECK(false, "dlkernels.sgd: this build has no CUDA support");
#endif
  }
  finish(s);
}

void adagrad_(TensorList params, TensorList grads, TensorList state_sums, TensorList state_steps, double lr,
              double lr_decay, double weight_decay, double eps, bool maximize, const c10::optional<Tensor>& lr_tensor,
              bool capturable) {
  const char* op = "adagrad";
  if (params.empty()) return;
  check_params(op, params);
  check_list(op, "grads", params, grads);
  check_list(op, "state_sums", params, state_sums);
  DeviceScalars ds;
  const double host_lr = resolve_lr(op, params, lr, lr_tensor, ds);  // checked before the counters move
  const Steps steps = advance_steps(op, params, state_steps, capturable);
  steps.attach(ds);
  std::vector<double> clr;
  for (double t : steps.host) clr.push_back(adagrad_clr(host_lr, lr_decay, t));
  clr.resize(params.size());  // counters on the device: the kernels compute them
  AdagradOptions o{};
  o.weight_decay = weight_decay;
  o.eps = eps;
  o.lr = host_lr;
  o.lr_decay = lr_decay;
  o.maximize = maximize;
  Staged s = stage({params, grads, state_sums}, {true, false, true});
  const auto chunks = chunk_table(params);
  if (cpu_kernels(params[0])) {
    AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "dlkernels.adagrad_", [&] {
      auto p = ptrs<scalar_t>(s.work[0]), sum = ptrs<scalar_t>(s.work[2]);
      auto gc = ptrs<const scalar_t>(s.work[1]);
      cpu::AdagradTensors<scalar_t> t{p.data(), gc.data(), sum.data(), clr.data()};
      cpu::adagrad_step<scalar_t>(o, t, chunks.data(), int64_t(chunks.size()));
    });
  } else {
#ifdef DLKERNELS_WITH_CUDA
    CudaScope scope(params[0]);
    const DeviceTables t = device_tables(s);
    const int err = cuda::multi_tensor_adagrad(cuda_dtype(params[0].scalar_type()), o, int64_t(params.size()),
                                               t.list(0), t.list(1), t.list(2), t.numel.data(), clr.data(),
                                               ds, scope.stream());
    TORCH_CHECK(err == 0, "dlkernels.adagrad: CUDA kernel launch failed: ", cuda::error_string(err));
#else
    TORCH_CHECK(false, "dlkernels.adagrad: this build has no CUDA support");
#endif
  }
  finish(s);
}

void rmsprop_(TensorList params, TensorList grads, TensorList square_avgs, TensorList grad_avgs,
              TensorList momentum_buffers, TensorList state_steps, double lr, double alpha, double eps,
              double weight_decay, double momentum, bool centered, bool maximize,
              const c10::optional<Tensor>& lr_tensor, bool capturable) {
  const char* op = "rmsprop";
  if (params.empty()) return;
  check_params(op, params);
  check_list(op, "grads", params, grads);
  check_list(op, "square_avgs", params, square_avgs);
  if (centered) check_list(op, "grad_avgs", params, grad_avgs);
  if (momentum > 0) check_list(op, "momentum_buffers", params, momentum_buffers);
  DeviceScalars ds;
  const double host_lr = resolve_lr(op, params, lr, lr_tensor, ds);  // checked before the counters move
  const Steps steps = advance_steps(op, params, state_steps, capturable);
  steps.attach(ds);
  const RmspropOptions o{host_lr, alpha, eps, weight_decay, momentum, centered, maximize};
  Staged s = stage({params, grads, square_avgs, centered ? grad_avgs : TensorList(),
                    momentum > 0 ? momentum_buffers : TensorList()},
                   {true, false, true, true, true});
  const auto chunks = chunk_table(params);
  if (cpu_kernels(params[0])) {
    AT_DISPATCH_FLOATING_TYPES(params[0].scalar_type(), "dlkernels.rmsprop_", [&] {
      auto p = ptrs<scalar_t>(s.work[0]), sq = ptrs<scalar_t>(s.work[2]), ga = ptrs<scalar_t>(s.work[3]);
      auto b = ptrs<scalar_t>(s.work[4]);
      auto gc = ptrs<const scalar_t>(s.work[1]);
      cpu::RmspropTensors<scalar_t> t{p.data(), gc.data(), sq.data(), centered ? ga.data() : nullptr,
                                      momentum > 0 ? b.data() : nullptr};
      cpu::rmsprop_step<scalar_t>(o, t, chunks.data(), int64_t(chunks.size()));
    });
  } else {
#ifdef DLKERNELS_WITH_CUDA
    CudaScope scope(params[0]);
    const DeviceTables t = device_tables(s);
    const int err = cuda::multi_tensor_rmsprop(cuda_dtype(params[0].scalar_type()), o, int64_t(params.size()),
                                               t.list(0), t.list(1), t.list(2), t.list(3), t.list(4), t.numel.data(),
                                               ds, scope.stream());
    TORCH_CHECK(err == 0, "dlkernels.rmsprop: CUDA kernel launch failed: ", cuda::error_string(err));
#else
    TORCH_CHECK(false, "dlkernels.rmsprop: this build has no CUDA support");
#endif
  }
  finish(s);
}

}  // namespace dlk::ops
