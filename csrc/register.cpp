// The dispatcher schemas of every op (TORCH_LIBRARY), their CPU and CUDA implementations
// (TORCH_LIBRARY_IMPL), and the small pybind11 module dlkernels._C for non-op helpers (ISA, build info).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "ops/alloc.h"
#include "ops/ops.h"

#ifdef DLKERNELS_CUDA_EMU
#include "dlk_emu/runtime.h"
#endif

TORCH_LIBRARY(dlkernels, m) {
  // Softmax-cross-entropy. reduction: 0 none, 1 mean, 2 sum (torch's numbering).
  m.def("cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "float label_smoothing) -> (Tensor loss, Tensor lse, Tensor total_weight)");
  m.def("cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
        "Tensor total_weight, int reduction, int ignore_index, float label_smoothing) -> Tensor");
  m.def("cross_entropy_target_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
        "Tensor total_weight, int reduction, float label_smoothing) -> Tensor");
  // Fused optimizer steps: every list but grads is updated in place; state_steps are incremented.
  // lr_tensor (a one-element tensor) replaces lr; on the parameters' GPU the kernels read it there.
  // capturable: the step counters stay on the GPU, read by the kernels (no host synchronisation).
  m.def("adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay, Tensor? lr_tensor=None, "
        "bool capturable=False) -> ()");
  m.def("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, bool[] first_step, float lr, "
        "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, Tensor? lr_tensor=None) "
        "-> ()");
  m.def("adagrad_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, Tensor(c!)[] state_steps, "
        "float lr, float lr_decay, float weight_decay, float eps, bool maximize, Tensor? lr_tensor=None, "
        "bool capturable=False) -> ()");
  m.def("rmsprop_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] grad_avgs, "
        "Tensor(d!)[] momentum_buffers, Tensor(e!)[] state_steps, float lr, float alpha, float eps, "
        "float weight_decay, float momentum, bool centered, bool maximize, Tensor? lr_tensor=None, "
        "bool capturable=False) -> ()");
  // Pooling on (N, C, H, W). max_pool2d returns the argmax as a flat index in the H*W plane, as torch,
  // or with tap_index (CPU) as a uint8 window tap kh * KW + kw (what autograd saves).
  m.def("max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode, bool tap_index=False) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, int[2] stride, "
        "int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("avg_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
        "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d_forward(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
  // im2col convolution on (N, C, H, W). padding: 2 values, or 4 (top, left, bottom, right) for 'same'.
  // conv2d_backward returns an empty tensor in place of each gradient output_mask does not ask for.
  m.def("conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, int[2] dilation, "
        "int groups) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[] padding, "
        "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("im2col(Tensor input, int[2] kernel_size, int[2] dilation, int[2] padding, int[2] stride) -> Tensor");
  m.def("col2im(Tensor input, int[2] output_size, int[2] kernel_size, int[2] dilation, int[2] padding, "
        "int[2] stride) -> Tensor");
  // Batch normalization on (N, C, ...). Saved statistics and backward sums are float64 (C). relu fuses
  // a ReLU (its backward mask is output > 0); residual is added before it. relu_from_input tells the
  // backward that the forward had no residual, so it may recompute the mask from input, weight and
  // bias. relu_mask: the forward's gate as bits where it makes one (see ops.h), which the backward reads
  // in place of output. The pieces (stats, elemt, backward_reduce, backward_elemt) are what
  // SyncBatchNorm composes around its all-reduce.
  m.def("batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps, Tensor? residual, bool relu) "
        "-> (Tensor output, Tensor save_mean, Tensor save_invstd, Tensor relu_mask)");
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? output, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool relu, bool[4] output_mask, Tensor? bias=None, "
        "bool relu_from_input=False, Tensor? relu_mask=None) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)");
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  m.def("batch_norm_elemt(Tensor input, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, Tensor? residual, "
        "bool relu) -> Tensor");
  m.def("batch_norm_backward_reduce(Tensor grad_output, Tensor input, Tensor? output, Tensor mean, Tensor invstd, "
        "bool relu) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  m.def("batch_norm_backward_elemt(Tensor grad_output, Tensor input, Tensor? output, Tensor mean, Tensor invstd, "
        "Tensor? weight, Tensor sum_dz, Tensor sum_dz_xmu, int count, bool relu, bool[2] output_mask) "
        "-> (Tensor grad_input, Tensor grad_residual)");
}

namespace {

// Every op has one implementation function that serves both backends (the ops layer picks the kernel
// from the tensors' device), so CPU and CUDA register the same list.
void register_impls(torch::Library& m) {
  m.impl("cross_entropy_forward", &dlk::ops::cross_entropy_forward);
  m.impl("cross_entropy_backward", &dlk::ops::cross_entropy_backward);
  m.impl("cross_entropy_target_backward", &dlk::ops::cross_entropy_target_backward);
  m.impl("adam_", &dlk::ops::adam_);
  m.impl("sgd_", &dlk::ops::sgd_);
  m.impl("adagrad_", &dlk::ops::adagrad_);
  m.impl("rmsprop_", &dlk::ops::rmsprop_);
  m.impl("max_pool2d_forward", &dlk::ops::max_pool2d_forward);
  m.impl("max_pool2d_backward", &dlk::ops::max_pool2d_backward);
  m.impl("avg_pool2d_forward", &dlk::ops::avg_pool2d_forward);
  m.impl("avg_pool2d_backward", &dlk::ops::avg_pool2d_backward);
  m.impl("adaptive_avg_pool2d_forward", &dlk::ops::adaptive_avg_pool2d_forward);
  m.impl("adaptive_avg_pool2d_backward", &dlk::ops::adaptive_avg_pool2d_backward);
  m.impl("conv2d_forward", &dlk::ops::conv2d_forward);
  m.impl("conv2d_backward", &dlk::ops::conv2d_backward);
  m.impl("im2col", &dlk::ops::im2col);
  m.impl("col2im", &dlk::ops::col2im);
  m.impl("batch_norm_forward", &dlk::ops::batch_norm_forward);
  m.impl("batch_norm_backward", &dlk::ops::batch_norm_backward);
  m.impl("batch_norm_stats", &dlk::ops::batch_norm_stats);
  m.impl("batch_norm_elemt", &dlk::ops::batch_norm_elemt);
  m.impl("batch_norm_backward_reduce", &dlk::ops::batch_norm_backward_reduce);
  m.impl("batch_norm_backward_elemt", &dlk::ops::batch_norm_backward_elemt);
}

}  // namespace

TORCH_LIBRARY_IMPL(dlkernels, CPU, m) { register_impls(m); }

#if defined(DLKERNELS_WITH_CUDA) && !defined(DLKERNELS_CUDA_EMU)
TORCH_LIBRARY_IMPL(dlkernels, CUDA, m) { register_impls(m); }
#endif

namespace {

std::vector<std::string> isa_names(const std::vector<dlk::cpu::Isa>& isas) {
  std::vector<std::string> out;
  for (auto i : isas) out.emplace_back(dlk::cpu::isa_name(i));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dlkernels native helpers; the ops themselves live in torch.ops.dlkernels";
  m.def("cpu_isa", [] { return std::string(dlk::cpu::isa_name(dlk::cpu::current_isa())); },
        "The CPU instruction-set path the kernels use now.");
  m.def("set_cpu_isa", [](const std::string& name) {
    dlk::cpu::Isa isa;
    if (!dlk::cpu::parse_isa(name, &isa))
      throw std::invalid_argument("dlkernels.set_cpu_isa: isa must be one of 'scalar', 'avx2', 'avx512', got '" + name + "'");
    std::string err = dlk::cpu::set_isa(isa);
    if (!err.empty()) throw std::invalid_argument("dlkernels.set_cpu_isa: " + err);
  });
  m.def("supported_cpu_isas", [] {
    std::vector<dlk::cpu::Isa> out;
    for (auto i : dlk::cpu::isas_compiled())
      if (dlk::cpu::isa_supported(i)) out.push_back(i);
    return isa_names(out);
  });
  m.def("compiled_cpu_isas", [] { return isa_names(dlk::cpu::isas_compiled()); });
  m.def("cpu_cache_limit", &dlk::ops::cpu_cache_limit);
  m.def("set_cpu_cache_limit", &dlk::ops::set_cpu_cache_limit);
  m.def("cpu_cache_idle_bytes", &dlk::ops::cpu_cache_idle_bytes);
  m.def("cpu_cache_window", &dlk::ops::cpu_cache_window);
  m.def("set_cpu_cache_window", &dlk::ops::set_cpu_cache_window);
  m.def("cpu_cache_stats", [] {
    const dlk::ops::CpuCacheStats s = dlk::ops::cpu_cache_stats();
    pybind11::dict d;
    d["held_bytes"] = s.held_bytes;
    d["in_use_bytes"] = s.in_use_bytes;
    d["idle_bytes"] = s.idle_bytes;
    d["limit_bytes"] = s.limit_bytes;
    d["window"] = s.window;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["released"] = s.released;
    return d;
  });
  m.def("empty_cache", &dlk::ops::cpu_cache_release);
  m.def("workspace_limit", &dlk::ops::workspace_limit);
  m.def("set_workspace_limit", &dlk::ops::set_workspace_limit);
  m.def("winograd_mode", &dlk::ops::winograd_mode);
  m.def("set_winograd_mode", &dlk::ops::set_winograd_mode);
  m.def("direct_mode", &dlk::ops::direct_mode);
  m.def("set_direct_mode", &dlk::ops::set_direct_mode);
  m.def("cuda_sync_checks", &dlk::ops::cuda_sync_checks);
  m.def("set_cuda_sync_checks", &dlk::ops::set_cuda_sync_checks);
  m.def("isa_env_error", [] { return dlk::cpu::isa_env_error(); });
#if defined(DLKERNELS_CUDA_EMU)
  // CPU tensors run the CUDA kernels on the emulator (tools/cuda_emu); no GPU code is compiled.
  m.attr("cuda_archs") = std::string();
  m.attr("with_cuda") = false;
  m.attr("cuda_emulated") = true;
  m.def("emu_stats", [] {
    const dlk_emu::Stats s = dlk_emu::stats();
    pybind11::dict d;
    d["launches"] = s.launches;
    d["replayed_launches"] = s.replayed_launches;
    d["threads"] = s.threads;
    d["failed_launches"] = s.failed_launches;
    return d;
  });
  m.def("set_emu_orders", &dlk_emu::set_orders);
  m.def("emu_launches_by_kernel", &dlk_emu::launches_by_kernel);
  // out: the data pointer of a contiguous float32 tensor of n >= 64 elements (tests/test_cuda_emu.py)
  m.def("emu_probe", [](const std::string& name, uintptr_t out, int64_t n) {
    if (n < 64) throw std::invalid_argument("emu_probe: n must be at least 64, got " + std::to_string(n));
    return dlk_emu::run_probe(name, reinterpret_cast<float*>(out), n);
  });
#ifdef __SANITIZE_ADDRESS__
  m.attr("emu_sanitized") = true;
#else
  m.attr("emu_sanitized") = false;
#endif
#elif defined(DLKERNELS_WITH_CUDA)
  m.attr("cuda_archs") = std::string(DLKERNELS_CUDA_ARCHS);
  m.attr("with_cuda") = true;
  m.attr("cuda_emulated") = false;
#else
  m.attr("cuda_archs") = std::string();
  m.attr("with_cuda") = false;
  m.attr("cuda_emulated") = false;
#endif
}
