// Batch normalization, tensor level: torch's argument checks, the layout choice (NCHW planes or
// channels-last rows), the O(C) per-channel arithmetic (on C-element float64 tensors, with torch ops)
// and the CPU/CUDA choice of the O(N*C*L) kernels. Fused variants: + ReLU, + residual + ReLU.
//
// Training forward:  (mean, var) = stats(x)              one read of x
//                    y = (x - mean) * w / sqrt(var + eps) + b (+ r) (ReLU)   one read, one write
// Backward:          dz = dy masked by y > 0 (ReLU)      the mask comes from the saved output
//                    sum_dz, sum_dz_xmu = reduce(dz, x)  one read of dy, x (and y)
//                    dx = dz * k_dz + (x - mean) * k_x + k_1   one more read, one write (dr = dz)
// The mean and inverse std saved for backward are float64 (C values each) whatever the input dtype.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <vector>

#include "common/batch_norm.h"
#include "cpu/batch_norm.h"
#include "ops/alloc.h"
#include "ops/device.h"
#include "ops/ops.h"


namespace dlk::ops {
namespace {

using at::Tensor;
using c10::optional;

bool low_precision(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// bf16_cpu: the op takes bfloat16 on the CPU too (batch_norm_forward and batch_norm_backward).
void check_input(const char* op, const Tensor& input, bool bf16_cpu = false) {
  TORCH_CHECK(input.is_cpu() || input.is_cuda(), "dlkernels.", op, ": input must be a CPU or CUDA tensor, got ",
              input.device());
  const auto s = input.scalar_type();
  const bool cpu_bf16_ok = bf16_cpu && cpu_kernels(input);
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || (cuda_kernels(input) && low_precision(input)) ||
                       (cpu_bf16_ok && s == at::kBFloat16),
                   "dlkernels.", op, ": input must be float32 or float64",
                   cuda_kernels(input) ? ", float16 or bfloat16" : cpu_bf16_ok ? " or bfloat16" : "", " on ",
                   input.device().type(), ", got ", s);
  TORCH_CHECK_VALUE(input.dim() >= 2 && input.dim() <= 5, "dlkernels.", op,
                    ": input must have 2 to 5 dimensions (N, C, ...), got shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(1) > 0, "dlkernels.", op, ": input must have at least one channel, got shape ",
                    input.sizes());
}

// A per-channel tensor (weight, bias, running stats): (C,), on input's device, input's dtype (or float32
// for float16/bfloat16 input, as torch's mixed-precision batch norm keeps them).
void check_channel(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), "dlkernels.", op, ": ", name, " is on ", t.device(), " but input is on ",
              input.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(1), "dlkernels.", op, ": ", name, " must have shape (",
                    input.size(1), ") (one value per channel of input ", input.sizes(), "), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type() || (low_precision(input) && t.scalar_type() == at::kFloat),
                   "dlkernels.", op, ": ", name, " must have the dtype of input (", input.scalar_type(), "), got ",
                   t.scalar_type());
}

void check_like(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), "dlkernels.", op, ": ", name, " is on ", t.device(), " but input is on ",
              input.device());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), "dlkernels.", op, ": ", name, " must have the dtype of input (",
                   input.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == input.sizes(), "dlkernels.", op, ": ", name, " must have the shape of input ",
                    input.sizes(), ", got ", t.sizes());
}

// bfloat16 input on the CPU: the kernels read per-channel tensors in float32 (as torch's mixed batch norm
// keeps them; the functional layer converts bfloat16 parameters and buffers).
bool cpu_bf16(const Tensor& input) { return cpu_kernels(input) && input.scalar_type() == at::kBFloat16; }
void check_channel_f32(const char* op, const char* name, const optional<Tensor>& t, const Tensor& input) {
  if (!cpu_bf16(input) || !t.has_value() || !t->defined()) return;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, "dlkernels.", op, ": ", name,
                   " must be float32 for a bfloat16 input on the CPU, got ", t->scalar_type());
}
uint16_t* bits16(const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }  // bfloat16 bits
optional<Tensor> to_float(const optional<Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}

void check_stats(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device() && t.scalar_type() == at::kDouble && t.dim() == 1 &&
                  t.size(0) == input.size(1),
              "dlkernels.", op, ": ", name, " must be a float64 tensor of shape (", input.size(1), ") on ",
              input.device(), ", got ", t.scalar_type(), " of shape ", t.sizes(), " on ", t.device());
}

// The memory layout the kernels read: channels-last rows when the input is stored that way (or is
// (N, C)), else NCHW planes (after a copy if the input is neither).
struct Layout {
  BatchNormGeom g;
  c10::MemoryFormat format;
};

Layout layout_of(const Tensor& input) {
  int64_t L = 1;
  for (int64_t d = 2; d < input.dim(); ++d) L *= input.size(d);
  BatchNormGeom g{input.size(0), input.size(1), L, false};
  c10::MemoryFormat f = c10::MemoryFormat::Contiguous;
  if (input.dim() == 2) {
    g.channels_last = true;
  } else if (!input.is_contiguous()) {
    if (input.dim() == 4 && input.is_contiguous(c10::MemoryFormat::ChannelsLast)) {
      g.channels_last = true;
      f = c10::MemoryFormat::ChannelsLast;
    } else if (input.dim() == 5 && input.is_contiguous(c10::MemoryFormat::ChannelsLast3d)) {
      g.channels_last = true;
      f = c10::MemoryFormat::ChannelsLast3d;
    }
  }
  return {g, f};
}

Tensor in_layout(const Tensor& t, const Layout& lay) { return t.contiguous(lay.format); }

Tensor empty_in_layout(const Tensor& like, const Layout& lay) {
  if (lay.format == c10::MemoryFormat::Contiguous) return empty_output(like.sizes(), like.options());
  return at::empty(like.sizes(), like.options().memory_format(lay.format));
}

// A (C,) float64 view of an optional per-channel tensor, or `fill`.
Tensor channel_f64(const optional<Tensor>& t, const Tensor& input, double fill) {
  if (t.has_value() && t->defined()) return t->to(at::kDouble).contiguous();
  return at::full({input.size(1)}, fill, input.options().dtype(at::kDouble));
}

const double* f64(const Tensor& t) { return t.data_ptr<double>(); }

// The CPU fused paths take their per-channel values as plain float64 arrays, read and written with
// loops instead of a tensor op each: for small inputs (8x16x8x8) those ~20 small ops per training step
// cost more than the kernels.
std::vector<double> channel_values(const optional<Tensor>& t, int64_t C, double fill) {
  std::vector<double> v(C, fill);
  if (t.has_value() && t->defined()) {
    AT_DISPATCH_FLOATING_TYPES(t->scalar_type(), "dlkernels.batch_norm", [&] {
      const auto a = t->accessor<scalar_t, 1>();
      for (int64_t c = 0; c < C; ++c) v[c] = double(a[c]);
    });
  }
  return v;
}

// A (C,) tensor of dtype `dtype` holding v[c] * (k ? k[c] : 1), rounded once.
Tensor channel_tensor(const std::vector<double>& v, const double* k, const Tensor& like, at::ScalarType dtype) {
  Tensor t = at::empty({int64_t(v.size())}, like.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "dlkernels.batch_norm", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    for (size_t c = 0; c < v.size(); ++c) p[c] = scalar_t(k ? v[c] * k[c] : v[c]);
  });
  return t;
}

Tensor workspace_for(const Layout& lay, const Tensor& input) {
  // CPU: the reductions' partial sums; CUDA: the per-block partials of the two-stage reduction.
  const int64_t n = cpu_kernels(input) ? cpu::batch_norm_workspace_size(lay.g) : 3 * lay.g.C * 64;
  return at::empty({std::max<int64_t>(n, 1)}, input.options().dtype(at::kDouble));
}

// mean and biased variance per channel, float64.
std::tuple<Tensor, Tensor> stats_impl(const char* op, const Tensor& x, const Layout& lay) {
  Tensor mean = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
  Tensor var = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
  Tensor work = workspace_for(lay, x);
  run_on_device(op, x, [&](auto tag) {
    using T = decltype(tag);
    cpu::batch_norm_stats<T>(lay.g, x.data_ptr<T>(), mean.data_ptr<double>(), var.data_ptr<double>(),
                             work.data_ptr<double>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(batch_norm_stats(dt, lay.g, x.data_ptr(), mean.data_ptr<double>(), var.data_ptr<double>(),
                                        work.data_ptr<double>(), stream));
  });
  return {mean, var};
}

Tensor apply_impl(const char* op, const Tensor& x, const Layout& lay, const Tensor& mean, const Tensor& scale,
                  const Tensor& beta, const Tensor& residual, bool relu) {
  Tensor y = empty_in_layout(x, lay);
  run_on_device(op, x, [&](auto tag) {
    using T = decltype(tag);
    cpu::batch_norm_apply<T>(lay.g, x.data_ptr<T>(), f64(mean), f64(scale), f64(beta),
                             residual.defined() ? residual.data_ptr<T>() : nullptr, relu, y.data_ptr<T>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(batch_norm_apply(dt, lay.g, x.data_ptr(), f64(mean), f64(scale), f64(beta),
                                        residual.defined() ? residual.data_ptr() : nullptr, relu, y.data_ptr(), stream));
  });
  return y;
}

std::tuple<Tensor, Tensor> reduce_impl(const char* op, const Tensor& dy, const Tensor& x, const Tensor& y,
                                       const Layout& lay, const Tensor& mean, bool relu) {
  Tensor sum_dz = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
  Tensor sum_dz_xmu = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
  Tensor work = workspace_for(lay, x);
  run_on_device(op, x, [&](auto tag) {
    using T = decltype(tag);
    cpu::batch_norm_backward_reduce<T>(lay.g, dy.data_ptr<T>(), x.data_ptr<T>(), relu ? y.data_ptr<T>() : nullptr,
                                       relu, f64(mean), sum_dz.data_ptr<double>(), sum_dz_xmu.data_ptr<double>(),
                                       work.data_ptr<double>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(batch_norm_backward_reduce(dt, lay.g, dy.data_ptr(), x.data_ptr(), relu ? y.data_ptr() : nullptr,
                                                  relu, f64(mean), sum_dz.data_ptr<double>(),
                                                  sum_dz_xmu.data_ptr<double>(), work.data_ptr<double>(), stream));
  });
  return {sum_dz, sum_dz_xmu};
}

std::tuple<Tensor, Tensor> backward_apply_impl(const char* op, const Tensor& dy, const Tensor& x, const Tensor& y,
                                               const Layout& lay, bool relu, const Tensor& mean, const Tensor& k_dz,
                                               const Tensor& k_x, const Tensor& k_1, bool want_input,
                                               bool want_residual) {
  Tensor gi = want_input ? empty_in_layout(x, lay) : at::empty({0}, x.options());
  Tensor gr = want_residual ? empty_in_layout(x, lay) : at::empty({0}, x.options());
  if (!want_input && !want_residual) return {gi, gr};
  run_on_device(op, x, [&](auto tag) {
    using T = decltype(tag);
    cpu::batch_norm_backward_apply<T>(lay.g, dy.data_ptr<T>(), x.data_ptr<T>(), relu ? y.data_ptr<T>() : nullptr, relu,
                                      f64(mean), f64(k_dz), f64(k_x), f64(k_1), want_input ? gi.data_ptr<T>() : nullptr,
                                      want_residual ? gr.data_ptr<T>() : nullptr);
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(batch_norm_backward_apply(dt, lay.g, dy.data_ptr(), x.data_ptr(), relu ? y.data_ptr() : nullptr,
                                                 relu, f64(mean), f64(k_dz), f64(k_x), f64(k_1),
                                                 want_input ? gi.data_ptr() : nullptr,
                                                 want_residual ? gr.data_ptr() : nullptr, stream));
  });
  return {gi, gr};
}

// The output saved for the ReLU mask: needed exactly when relu is set.
Tensor relu_output(const char* op, const optional<Tensor>& output, bool relu, const Tensor& input, const Layout& lay) {
  if (!relu) return Tensor();
  TORCH_CHECK_VALUE(output.has_value() && output->defined(), "dlkernels.", op,
                    ": output (the forward result) is required when relu is set");
  check_like(op, "output", *output, input);
  return in_layout(*output, lay);
}

// A relu_mask argument: int32 bit words (N, C, ceil(L / 32)) on input's device, made for a planar layout.
Tensor checked_relu_mask(const char* op, const Tensor& mask, const Tensor& input, const Layout& lay) {
  const std::vector<int64_t> want{lay.g.N, lay.g.C, cpu::batch_norm_relu_bit_words(lay.g.L)};
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kInt, "dlkernels.", op, ": relu_mask must be int32 (bit words), got ",
                   mask.scalar_type());
  TORCH_CHECK(mask.device() == input.device(), "dlkernels.", op, ": relu_mask is on ", mask.device(),
              " but input is on ", input.device());
  TORCH_CHECK_VALUE(mask.sizes() == c10::IntArrayRef(want), "dlkernels.", op, ": relu_mask must have shape ",
                    c10::IntArrayRef(want), " for input of shape ", input.sizes(), ", got ", mask.sizes());
  TORCH_CHECK_VALUE(!lay.g.channels_last, "dlkernels.", op, ": relu_mask is only made for planar (NCHW-contiguous) "
                    "input, got input of shape ", input.sizes(), " and strides ", input.strides());
  return mask.contiguous();
}

// The gate bits expanded into a 0/1 tensor like input (planar), standing in for output: y > 0 where set.
Tensor gate_from_bits(const Tensor& bits, const Tensor& input, const Layout& lay) {
  const Tensor shifts = at::arange(32, bits.options());
  const Tensor one_bit = bits.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1);  // (N, C, words, 32)
  return one_bit.reshape({lay.g.N, lay.g.C, -1}).narrow(2, 0, lay.g.L).to(input.scalar_type()).reshape(input.sizes())
      .contiguous();
}

void check_grad(const char* op, const Tensor& grad_output, const Tensor& input) {
  check_like(op, "grad_output", grad_output, input);
}

// torch: running_var tracks the unbiased variance, N/(N-1) times the one used to normalize. On the CPU a
// loop on float64 arrays (the fused path has no tensors for them): r * (1 - momentum) in the buffer's
// dtype, plus the float64 term rounded to it.
void update_running_cpu(const optional<Tensor>& running_mean, const optional<Tensor>& running_var, const double* mean,
                        const double* var, double momentum, int64_t count) {
  if (!(running_mean.has_value() && running_mean->defined())) return;
  const double n = double(count), k_var = momentum * n / (n - 1);
  Tensor rm = *running_mean, rv = *running_var;
  AT_DISPATCH_FLOATING_TYPES(rm.scalar_type(), "dlkernels.batch_norm", [&] {
    auto m = rm.accessor<scalar_t, 1>(), v = rv.accessor<scalar_t, 1>();
    const scalar_t keep = scalar_t(1 - momentum);
    for (int64_t c = 0; c < rm.size(0); ++c) {
      const scalar_t m_kept = m[c] * keep, v_kept = v[c] * keep;
      m[c] = m_kept + scalar_t(mean[c] * momentum);
      v[c] = v_kept + scalar_t(var[c] * k_var);
    }
  });
  rm.unsafeGetTensorImpl()->bump_version();  // as the in-place tensor ops did
  rv.unsafeGetTensorImpl()->bump_version();
}

// The same update for float64 (C,) statistics tensors: the loop above on the CPU, tensor ops on CUDA
// (the same arithmetic).
void update_running(const optional<Tensor>& running_mean, const optional<Tensor>& running_var, const Tensor& mean,
                    const Tensor& var, double momentum, int64_t count) {
  if (!(running_mean.has_value() && running_mean->defined())) return;
  if (cpu_kernels(mean)) return update_running_cpu(running_mean, running_var, f64(mean), f64(var), momentum, count);
  const double n = double(count);
  Tensor rm = *running_mean, rv = *running_var;
  // in float64 and rounded once into the statistics' dtype (float16/bfloat16 statistics updated in place
  // would round twice: 3.5x torch's error in bfloat16)
  rm.copy_(rm.to(at::kDouble).mul_(1 - momentum).add_(mean.to(at::kDouble), momentum));
  rv.copy_(rv.to(at::kDouble).mul_(1 - momentum).add_(var.to(at::kDouble), momentum * n / (n - 1)));
}

}  // namespace

std::tuple<Tensor, Tensor> batch_norm_stats(const Tensor& input) {
  const char* op = "batch_norm_stats";
  check_input(op, input);
  const Layout lay = layout_of(input);
  TORCH_CHECK_VALUE(lay.g.count() > 0, "dlkernels.batch_norm_stats: input has no values per channel, got shape ",
                    input.sizes());
  return stats_impl(op, in_layout(input, lay), lay);
}

Tensor batch_norm_elemt(const Tensor& input, const Tensor& mean, const Tensor& invstd, const optional<Tensor>& weight,
                        const optional<Tensor>& bias, const optional<Tensor>& residual, bool relu) {
  const char* op = "batch_norm_elemt";
  check_input(op, input);
  check_stats(op, "mean", mean, input);
  check_stats(op, "invstd", invstd, input);
  if (weight.has_value() && weight->defined()) check_channel(op, "weight", *weight, input);
  if (bias.has_value() && bias->defined()) check_channel(op, "bias", *bias, input);
  const Layout lay = layout_of(input);
  Tensor r;
  if (residual.has_value() && residual->defined()) {
    check_like(op, "residual", *residual, input);
    r = in_layout(*residual, lay);
  }
  const Tensor scale = channel_f64(weight, input, 1.0) * invstd;
  return apply_impl(op, in_layout(input, lay), lay, mean.contiguous(), scale, channel_f64(bias, input, 0.0), r, relu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_forward(const Tensor& input, const optional<Tensor>& weight,
                                                      const optional<Tensor>& bias,
                                                      const optional<Tensor>& running_mean,
                                                      const optional<Tensor>& running_var, bool training,
                                                      double momentum, double eps,
                                                      const optional<Tensor>& residual, bool relu) {
  const char* op = "batch_norm";
  check_input(op, input, true);
  check_channel_f32(op, "weight", weight, input);
  check_channel_f32(op, "bias", bias, input);
  check_channel_f32(op, "running_mean", running_mean, input);
  check_channel_f32(op, "running_var", running_var, input);
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  const bool has_rv = running_var.has_value() && running_var->defined();
  if (weight.has_value() && weight->defined()) check_channel(op, "weight", *weight, input);
  if (bias.has_value() && bias->defined()) check_channel(op, "bias", *bias, input);
  if (has_rm) check_channel(op, "running_mean", *running_mean, input);
  if (has_rv) check_channel(op, "running_var", *running_var, input);
  TORCH_CHECK_VALUE(has_rm == has_rv, "dlkernels.batch_norm: running_mean and running_var must both be given or both "
                    "be None");
  TORCH_CHECK_VALUE(training || has_rm, "dlkernels.batch_norm: running_mean and running_var must be given in "
                    "evaluation mode (training=False)");
  TORCH_CHECK_VALUE(eps > 0, "dlkernels.batch_norm: eps must be positive, got ", eps);
  const Layout lay = layout_of(input);
  TORCH_CHECK_VALUE(!training || lay.g.count() != 1, "dlkernels.batch_norm: expected more than 1 value per channel "
                    "when training, got input size ", input.sizes());
  const Tensor x = in_layout(input, lay);
  Tensor r;
  if (residual.has_value() && residual->defined()) {
    check_like(op, "residual", *residual, input);
    r = in_layout(*residual, lay);
  }
  Tensor mean, invstd;
  const Tensor no_mask = at::empty({0}, x.options().dtype(at::kInt));
  if (cpu_bf16(x) && training && lay.g.count() > 0 && cpu::batch_norm_fused_fits(lay.g, 4)) {
    mean = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
    invstd = at::empty_like(mean);
    std::vector<double> var64(lay.g.C);
    const std::vector<double> w64 = channel_values(weight, lay.g.C, 1.0), b64 = channel_values(bias, lay.g.C, 0.0);
    Tensor y = empty_in_layout(x, lay);
    cpu::batch_norm_train_forward_bf16(lay.g, bits16(x), w64.data(), b64.data(), eps, r.defined() ? bits16(r) : nullptr,
                                       relu, bits16(y), mean.data_ptr<double>(), var64.data(), invstd.data_ptr<double>());
    update_running_cpu(running_mean, running_var, f64(mean), var64.data(), momentum, lay.g.count());
    return {y, mean, invstd, no_mask};
  }
  if (cpu_bf16(x)) {  // the other layouts and sizes: the float32 computation, rounded once
    auto res = batch_norm_forward(x.to(at::kFloat), weight, bias, running_mean, running_var, training, momentum, eps,
                                  r.defined() ? optional<Tensor>(r.to(at::kFloat)) : optional<Tensor>(), relu);
    std::get<0>(res) = std::get<0>(res).to(at::kBFloat16);
    return res;
  }
  if (training) {
    if (lay.g.count() == 0) {  // empty batch: empty output, running statistics untouched (as torch)
      mean = at::zeros({lay.g.C}, x.options().dtype(at::kDouble));
      return {empty_in_layout(x, lay), mean, mean.clone(), no_mask};
    }
    Tensor var;
    if (cpu_kernels(x) && cpu::batch_norm_fused_fits(lay.g, x.element_size())) {
      // a channel at a time, statistics and normalization in one sweep (csrc/cpu/batch_norm.h)
      mean = at::empty({lay.g.C}, x.options().dtype(at::kDouble));
      invstd = at::empty_like(mean);
      std::vector<double> var64(lay.g.C);
      const std::vector<double> w64 = channel_values(weight, lay.g.C, 1.0), b64 = channel_values(bias, lay.g.C, 0.0);
      Tensor y = empty_in_layout(x, lay);
      // batch_norm_add_relu in float32: the gate as bits, so that backward need not read y
      const bool bits = relu && r.defined() && x.scalar_type() == at::kFloat;
      Tensor mask = bits ? at::empty({lay.g.N, lay.g.C, cpu::batch_norm_relu_bit_words(lay.g.L)},
                                     x.options().dtype(at::kInt))
                         : no_mask;
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dlkernels.batch_norm", [&] {
        cpu::batch_norm_train_forward<scalar_t>(lay.g, x.data_ptr<scalar_t>(), w64.data(), b64.data(), eps,
                                                r.defined() ? r.data_ptr<scalar_t>() : nullptr, relu,
                                                y.data_ptr<scalar_t>(),
                                                bits ? reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>()) : nullptr,
                                                mean.data_ptr<double>(), var64.data(), invstd.data_ptr<double>());
      });
      update_running_cpu(running_mean, running_var, f64(mean), var64.data(), momentum, lay.g.count());
      return {y, mean, invstd, mask};
    }
    std::tie(mean, var) = stats_impl(op, x, lay);
    invstd = at::rsqrt(var + eps);
    update_running(running_mean, running_var, mean, var, momentum, lay.g.count());
  } else {
    mean = running_mean->to(at::kDouble, /*non_blocking=*/false, /*copy=*/true).contiguous();  // a fresh output, never the buffer
    invstd = at::rsqrt(running_var->to(at::kDouble) + eps);
  }
  const Tensor scale = channel_f64(weight, input, 1.0) * invstd;
  Tensor y = apply_impl(op, x, lay, mean, scale, channel_f64(bias, input, 0.0), r, relu);
  return {y, mean, invstd, no_mask};
}

std::tuple<Tensor, Tensor> batch_norm_backward_reduce(const Tensor& grad_output, const Tensor& input,
                                                      const optional<Tensor>& output, const Tensor& mean,
                                                      const Tensor& invstd, bool relu) {
  const char* op = "batch_norm_backward_reduce";
  check_input(op, input);
  check_grad(op, grad_output, input);
  check_stats(op, "mean", mean, input);
  check_stats(op, "invstd", invstd, input);
  const Layout lay = layout_of(input);
  const Tensor y = relu_output(op, output, relu, input, lay);
  return reduce_impl(op, in_layout(grad_output, lay), in_layout(input, lay), y, lay, mean.contiguous(), relu);
}

std::tuple<Tensor, Tensor> batch_norm_backward_elemt(const Tensor& grad_output, const Tensor& input,
                                                     const optional<Tensor>& output, const Tensor& mean,
                                                     const Tensor& invstd, const optional<Tensor>& weight,
                                                     const Tensor& sum_dz, const Tensor& sum_dz_xmu, int64_t count,
                                                     bool relu, std::array<bool, 2> output_mask) {
  const char* op = "batch_norm_backward_elemt";
  check_input(op, input);
  check_grad(op, grad_output, input);
  check_stats(op, "mean", mean, input);
  check_stats(op, "invstd", invstd, input);
  check_stats(op, "sum_dz", sum_dz, input);
  check_stats(op, "sum_dz_xmu", sum_dz_xmu, input);
  if (weight.has_value() && weight->defined()) check_channel(op, "weight", *weight, input);
  TORCH_CHECK_VALUE(count > 0, "dlkernels.batch_norm_backward_elemt: count must be positive, got ", count);
  const Layout lay = layout_of(input);
  const Tensor y = relu_output(op, output, relu, input, lay);
  const Tensor k_dz = channel_f64(weight, input, 1.0) * invstd;
  const Tensor k_x = -(k_dz * invstd * invstd * sum_dz_xmu / double(count));
  const Tensor k_1 = -(k_dz * sum_dz / double(count));
  return backward_apply_impl(op, in_layout(grad_output, lay), in_layout(input, lay), y, lay, relu, mean.contiguous(),
                             k_dz, k_x, k_1, output_mask[0], output_mask[1]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_backward(const Tensor& grad_output, const Tensor& input,
                                                               const optional<Tensor>& output,
                                                               const optional<Tensor>& weight, const Tensor& save_mean,
                                                               const Tensor& save_invstd, bool training, bool relu,
                                                               std::array<bool, 4> output_mask,
                                                               const optional<Tensor>& bias, bool relu_from_input,
                                                               const optional<Tensor>& relu_mask) {
  const char* op = "batch_norm_backward";
  check_input(op, input, true);
  check_channel_f32(op, "weight", weight, input);
  check_channel_f32(op, "bias", bias, input);
  check_grad(op, grad_output, input);
  check_stats(op, "save_mean", save_mean, input);
  check_stats(op, "save_invstd", save_invstd, input);
  if (weight.has_value() && weight->defined()) check_channel(op, "weight", *weight, input);
  if (bias.has_value() && bias->defined()) check_channel(op, "bias", *bias, input);
  const Layout lay = layout_of(input);
  const Tensor bits = relu && relu_mask.has_value() && relu_mask->defined() && relu_mask->numel() > 0
                          ? checked_relu_mask(op, *relu_mask, input, lay)
                          : Tensor();
  // the CPU path that takes a channel at a time (below)
  const bool fused = training && output_mask[0] && cpu_kernels(input) &&
                     cpu::batch_norm_fused_fits(lay.g, input.element_size());
  // the gate from bits on the fused path; anywhere else (never, for the forward's own masks: they are made
  // on that path) expanded into a 0/1 tensor that stands in for output
  const bool bits_fused = bits.defined() && fused && input.scalar_type() == at::kFloat;
  const Tensor y = !bits.defined() ? relu_output(op, output, relu, input, lay)
                   : bits_fused    ? Tensor()
                                   : gate_from_bits(bits, input, lay);
  const Tensor dy = in_layout(grad_output, lay), x = in_layout(input, lay), mean = save_mean.contiguous();
  const auto empty = [&] { return at::empty({0}, input.options()); };
  Tensor gw = empty(), gb = empty();
  if (lay.g.count() == 0) {  // empty batch: zero parameter gradients
    Tensor gi = output_mask[0] ? empty_in_layout(x, lay) : empty();
    Tensor gr = output_mask[3] ? empty_in_layout(x, lay) : empty();
    if (output_mask[1]) gw = at::zeros({lay.g.C}, weight.has_value() ? weight->options() : input.options());
    if (output_mask[2]) gb = at::zeros({lay.g.C}, weight.has_value() ? weight->options() : input.options());
    return {gi, gw, gb, gr};
  }
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  if (cpu_bf16(x)) {
    if (training && output_mask[0] && !bits.defined() && cpu::batch_norm_fused_fits(lay.g, 4)) {
      std::vector<double> sum_dz(lay.g.C), sum_dz_xmu(lay.g.C);
      Tensor gi = empty_in_layout(x, lay), gr = output_mask[3] ? empty_in_layout(x, lay) : empty();
      const std::vector<double> w64 = channel_values(weight, lay.g.C, 1.0), b64 = channel_values(bias, lay.g.C, 0.0);
      const Tensor invstd = save_invstd.contiguous();
      const bool mask_from_output = relu && !relu_from_input;
        cpu::batch_norm_train_backward_bf16(lay.g, bits16(dy), bits16(x), mask_from_output ? bits16(y) : nullptr, relu,
                                          f64(mean), f64(invstd), w64.data(), b64.data(), sum_dz.data(),
                                          sum_dz_xmu.data(), bits16(gi), output_mask[3] ? bits16(gr) : nullptr);
      if (output_mask[1]) gw = channel_tensor(sum_dz_xmu, f64(invstd), input, at::kFloat);
      if (output_mask[2]) gb = channel_tensor(sum_dz, nullptr, input, at::kFloat);
      return {gi, gw, gb, gr};
    }
    // the float32 computation, rounded once
    const optional<Tensor> out32 = output.has_value() && output->defined() ? to_float(output) : output;
    auto res = batch_norm_backward(dy.to(at::kFloat), x.to(at::kFloat), out32, weight, save_mean, save_invstd, training,
                                   relu, output_mask, bias, relu_from_input, relu_mask);
    for (Tensor* t : {&std::get<0>(res), &std::get<3>(res)})
      if (t->numel() > 0) *t = t->to(at::kBFloat16);
    return res;
  }
  if (fused) {
    // a channel at a time, the two sums and the gradient in one sweep (csrc/cpu/batch_norm.h). With
    // relu_from_input (the caller's word that the forward added no residual) the ReLU mask is recomputed
    // from x: the forward's arithmetic on the same saved statistics, weight and bias, so the same bits
    // as output > 0, and one read of output fewer.
    std::vector<double> sum_dz(lay.g.C), sum_dz_xmu(lay.g.C);
    Tensor gi = empty_in_layout(x, lay), gr = output_mask[3] ? empty_in_layout(x, lay) : empty();
    const std::vector<double> w64 = channel_values(weight, lay.g.C, 1.0), b64 = channel_values(bias, lay.g.C, 0.0);
    const Tensor invstd = save_invstd.contiguous();
    const bool mask_from_output = relu && !relu_from_input && !bits_fused;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dlkernels.batch_norm_backward", [&] {
      cpu::batch_norm_train_backward<scalar_t>(lay.g, dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                               mask_from_output ? y.data_ptr<scalar_t>() : nullptr,
                                               bits_fused ? reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>())
                                                          : nullptr,
                                               relu, f64(mean),
                                               f64(invstd), w64.data(), b64.data(), sum_dz.data(), sum_dz_xmu.data(),
                                               gi.data_ptr<scalar_t>(),
                                               output_mask[3] ? gr.data_ptr<scalar_t>() : nullptr);
    });
    if (output_mask[1]) gw = channel_tensor(sum_dz_xmu, f64(invstd), input, param_dtype);
    if (output_mask[2]) gb = channel_tensor(sum_dz, nullptr, input, param_dtype);
    return {gi, gw, gb, gr};
  }
  const bool need_sums = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  Tensor sum_dz, sum_dz_xmu;
  if (need_sums) std::tie(sum_dz, sum_dz_xmu) = reduce_impl(op, dy, x, y, lay, mean, relu);
  if (output_mask[1]) gw = (sum_dz_xmu * save_invstd).to(param_dtype);
  if (output_mask[2]) gb = sum_dz.to(param_dtype);
  const Tensor k_dz = channel_f64(weight, input, 1.0) * save_invstd;
  Tensor k_x, k_1;
  if (training && output_mask[0]) {
    const double n = double(lay.g.count());
    k_x = -(k_dz * save_invstd * save_invstd * sum_dz_xmu / n);
    k_1 = -(k_dz * sum_dz / n);
  } else {  // eval: the statistics are constants, dx = dz * w * invstd
    k_x = at::zeros_like(k_dz);
    k_1 = k_x;
  }
  Tensor gi, gr;
  std::tie(gi, gr) = backward_apply_impl(op, dy, x, y, lay, relu, mean, k_dz, k_x, k_1, output_mask[0], output_mask[3]);
  return {gi, gw, gb, gr};
}

}  // namespace dlk::ops
