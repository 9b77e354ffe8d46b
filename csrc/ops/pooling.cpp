// Pooling, tensor level: torch's argument and shape checks, contiguity, allocation, CPU/CUDA choice.
// Inputs arrive as (N, C, H, W) (dlkernels/functional.py adds the batch dimension to (C, H, W)). Every
// op answers channels_last input with channels_last results, as torch's; on the CPU (float32/float64)
// they are computed in that layout (cpu::*_nhwc_*), elsewhere computed contiguous and converted.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "common/pooling.h"
#include "cpu/pooling.h"
#include "ops/alloc.h"
#include "ops/checks.h"
#include "ops/device.h"
#include "ops/ops.h"


namespace dlk::ops {
namespace {

using at::IntArrayRef;
using at::Tensor;

void check_input(const char* op, const Tensor& input) {
  TORCH_CHECK(input.is_cpu() || input.is_cuda(), "dlkernels.", op, ": input must be a CPU or CUDA tensor, got ",
              input.device());
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || (cuda_kernels(input) && (t == at::kHalf || t == at::kBFloat16)),
                   "dlkernels.", op, ": input must be float32 or float64", cuda_kernels(input) ? ", float16 or bfloat16" : "",
                   " on ", input.device().type(), ", got ", t);
  TORCH_CHECK_VALUE(input.dim() == 4, "dlkernels.", op, ": input must have shape (N, C, H, W) or (C, H, W), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0, "dlkernels.", op,
                    ": input must have non-zero C, H and W (only the batch may be empty), got ", input.sizes());
}

Pool2dGeom make_geom(const char* op, const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                     IntArrayRef dilation, bool ceil_mode) {
  check_input(op, input);
  check_pair(op, "kernel_size", kernel, true);
  check_pair(op, "stride", stride, true);
  check_pair(op, "padding", padding, false);
  check_pair(op, "dilation", dilation, true);
  // torch: padding at most half of the kernel, so that every window sees at least one input element
  TORCH_CHECK_VALUE(padding[0] <= kernel[0] / 2 && padding[1] <= kernel[1] / 2, "dlkernels.", op,
                    ": padding must be at most half of kernel_size, got padding ", padding, " for kernel_size ",
                    kernel);
  Pool2dGeom g{input.size(0), input.size(1), input.size(2), input.size(3), 0, 0,
               kernel[0],     kernel[1],     stride[0],     stride[1],     padding[0], padding[1],
               dilation[0],   dilation[1]};
  g.OH = pool_output_size(g.H, g.KH, g.SH, g.PH, g.DH, ceil_mode);
  g.OW = pool_output_size(g.W, g.KW, g.SW, g.PW, g.DW, ceil_mode);
  TORCH_CHECK_VALUE(g.OH >= 1 && g.OW >= 1, "dlkernels.", op, ": input of size ", input.sizes(), " with kernel_size ",
                    kernel, ", stride ", stride, ", padding ", padding, " and dilation ", dilation,
                    " gives output size (", g.OH, ", ", g.OW, "): too small (the kernel is larger than the padded input)");
  return g;
}

void check_grad(const char* op, const Tensor& grad, const Tensor& input, const Pool2dGeom& g) {
  TORCH_CHECK(grad.device() == input.device(), "dlkernels.", op, ": grad_output is on ", grad.device(),
              " but input is on ", input.device());
  TORCH_CHECK_TYPE(grad.scalar_type() == input.scalar_type(), "dlkernels.", op, ": grad_output must have dtype ",
                   input.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == g.N && grad.size(1) == g.C && grad.size(2) == g.OH &&
                        grad.size(3) == g.OW,
                    "dlkernels.", op, ": grad_output must have shape (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW,
                    "), got ", grad.sizes());
}

AvgPoolOptions avg_options(const char* op, bool count_include_pad, c10::optional<int64_t> divisor_override) {
  if (divisor_override.has_value()) {
    TORCH_CHECK_VALUE(*divisor_override != 0, "dlkernels.", op, ": divisor_override must be non-zero");
  }
  return AvgPoolOptions{count_include_pad, divisor_override.value_or(0)};
}

}  // namespace

std::tuple<Tensor, Tensor> max_pool2d_forward(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation, bool ceil_mode,
                                              bool tap_index) {
  const Pool2dGeom g = make_geom("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  if (tap_index) {
    TORCH_CHECK(cpu_kernels(input), "dlkernels.max_pool2d: tap_index (uint8 window taps) is CPU-only, got input on ",
                input.device());
    TORCH_CHECK_VALUE(g.KH * g.KW <= 256, "dlkernels.max_pool2d: tap_index needs kernel_size[0] * kernel_size[1] <= 256, "
                      "got kernel_size ", kernel_size);
  }
  if (channels_last(input) && cpu_kernels(input)) {  // in that layout, without copies
    Tensor out = empty_output_nhwc(g.N, g.C, g.OH, g.OW, input.options());
    Tensor indices = empty_output_nhwc(g.N, g.C, g.OH, g.OW, input.options().dtype(tap_index ? at::kByte : at::kLong));
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d", [&] {
      if (tap_index) {
        cpu::max_pool2d_nhwc_forward<scalar_t>(g, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                               indices.data_ptr<uint8_t>());
      } else {
        cpu::max_pool2d_nhwc_forward<scalar_t>(g, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                               indices.data_ptr<int64_t>());
      }
    });
    return {out, indices};
  }
  const Tensor x = input.contiguous();
  Tensor out = empty_output({g.N, g.C, g.OH, g.OW}, x.options());
  Tensor indices = empty_output({g.N, g.C, g.OH, g.OW}, x.options().dtype(tap_index ? at::kByte : at::kLong));
  run_on_device("max_pool2d", x, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (tap_index) {
      cpu::max_pool2d_forward<scalar_t>(g, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), indices.data_ptr<uint8_t>());
    } else {
      cpu::max_pool2d_forward<scalar_t>(g, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    }
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(max_pool2d_forward(dt, g, x.data_ptr(), out.data_ptr(), indices.data_ptr<int64_t>(), stream));
  });
  return {in_format_of(out, input), in_format_of(indices, input)};
}

Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& input, const Tensor& indices,
                           IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                           bool ceil_mode) {
  const Pool2dGeom g = make_geom("max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_grad("max_pool2d_backward", grad_output, input, g);
  const bool taps = indices.scalar_type() == at::kByte;
  TORCH_CHECK_VALUE((indices.scalar_type() == at::kLong || taps) && indices.sizes() == grad_output.sizes() &&
                        indices.device() == input.device(),
                    "dlkernels.max_pool2d_backward: indices must be int64 (flat positions) or uint8 (window taps, "
                    "CPU) of shape ", grad_output.sizes(), " on ", input.device(), ", got ", indices.scalar_type(),
                    " of shape ", indices.sizes(), " on ", indices.device());
  if (taps) {
    TORCH_CHECK(cpu_kernels(input) && g.KH * g.KW <= 256, "dlkernels.max_pool2d_backward: uint8 window taps need a CPU "
                "input and kernel_size[0] * kernel_size[1] <= 256, got input on ", input.device(), " and kernel_size ",
                kernel_size);
  }
  if (channels_last(input) && cpu_kernels(input)) {
    const Tensor go = grad_output.contiguous(c10::MemoryFormat::ChannelsLast);
    const Tensor idx = indices.contiguous(c10::MemoryFormat::ChannelsLast);
    Tensor grad_input = empty_output_nhwc(g.N, g.C, g.H, g.W, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_backward", [&] {
      if (taps) {
        cpu::max_pool2d_nhwc_backward<scalar_t>(g, go.data_ptr<scalar_t>(), idx.data_ptr<uint8_t>(),
                                                grad_input.data_ptr<scalar_t>());
      } else {
        cpu::max_pool2d_nhwc_backward<scalar_t>(g, go.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                                grad_input.data_ptr<scalar_t>());
      }
    });
    return grad_input;
  }
  const Tensor go = grad_output.contiguous(), idx = indices.contiguous();
  Tensor grad_input = empty_output(input.sizes(), input.options());
  run_on_device("max_pool2d_backward", input, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (taps) {
      cpu::max_pool2d_backward<scalar_t>(g, go.data_ptr<scalar_t>(), idx.data_ptr<uint8_t>(),
                                         grad_input.data_ptr<scalar_t>());
    } else {
      cpu::max_pool2d_backward<scalar_t>(g, go.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                         grad_input.data_ptr<scalar_t>());
    }
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(max_pool2d_backward(dt, g, go.data_ptr(), idx.data_ptr<int64_t>(), grad_input.data_ptr(), stream));
  });
  return in_format_of(grad_input, input);
}

Tensor avg_pool2d_forward(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                          bool ceil_mode, bool count_include_pad, c10::optional<int64_t> divisor_override) {
  const Pool2dGeom g = make_geom("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  const AvgPoolOptions o = avg_options("avg_pool2d", count_include_pad, divisor_override);
  if (channels_last(input) && cpu_kernels(input)) {
    Tensor out = empty_output_nhwc(g.N, g.C, g.OH, g.OW, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d", [&] {
      cpu::avg_pool2d_nhwc_forward<scalar_t>(g, o, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    });
    return out;
  }
  const Tensor x = input.contiguous();
  Tensor out = empty_output({g.N, g.C, g.OH, g.OW}, x.options());
  run_on_device("avg_pool2d", x, [&](auto tag) {
    using scalar_t = decltype(tag);
    cpu::avg_pool2d_forward<scalar_t>(g, o, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(avg_pool2d_forward(dt, g, o, x.data_ptr(), out.data_ptr(), stream));
  });
  return in_format_of(out, input);
}

Tensor avg_pool2d_backward(const Tensor& grad_output, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                           IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           c10::optional<int64_t> divisor_override) {
  const Pool2dGeom g = make_geom("avg_pool2d_backward", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  const AvgPoolOptions o = avg_options("avg_pool2d_backward", count_include_pad, divisor_override);
  check_grad("avg_pool2d_backward", grad_output, input, g);
  if (channels_last(input) && cpu_kernels(input)) {
    const Tensor go = grad_output.contiguous(c10::MemoryFormat::ChannelsLast);
    Tensor grad_input = empty_output_nhwc(g.N, g.C, g.H, g.W, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d_backward", [&] {
      cpu::avg_pool2d_nhwc_backward<scalar_t>(g, o, go.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>());
    });
    return grad_input;
  }
  const Tensor go = grad_output.contiguous();
  Tensor grad_input = empty_output(input.sizes(), input.options());
  run_on_device("avg_pool2d_backward", input, [&](auto tag) {
    using scalar_t = decltype(tag);
    cpu::avg_pool2d_backward<scalar_t>(g, o, go.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(avg_pool2d_backward(dt, g, o, go.data_ptr(), grad_input.data_ptr(), stream));
  });
  return in_format_of(grad_input, input);
}

namespace {
Pool2dGeom adaptive_geom(const char* op, const Tensor& input, IntArrayRef output_size) {
  check_input(op, input);
  TORCH_CHECK_VALUE(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, "dlkernels.", op,
                    ": output_size must be 2 positive values, got ", output_size);
  return Pool2dGeom{input.size(0), input.size(1), input.size(2), input.size(3), output_size[0], output_size[1],
                    0, 0, 1, 1, 0, 0, 1, 1};
}
}  // namespace

Tensor adaptive_avg_pool2d_forward(const Tensor& input, IntArrayRef output_size) {
  const Pool2dGeom g = adaptive_geom("adaptive_avg_pool2d", input, output_size);
  if (channels_last(input) && cpu_kernels(input)) {
    Tensor out = empty_output_nhwc(g.N, g.C, g.OH, g.OW, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d", [&] {
      cpu::adaptive_avg_pool2d_nhwc_forward<scalar_t>(g, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    });
    return out;
  }
  const Tensor x = input.contiguous();
  Tensor out = empty_output({g.N, g.C, g.OH, g.OW}, x.options());
  run_on_device("adaptive_avg_pool2d", x, [&](auto tag) {
    using scalar_t = decltype(tag);
    cpu::adaptive_avg_pool2d_forward<scalar_t>(g, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(adaptive_avg_pool2d_forward(dt, g, x.data_ptr(), out.data_ptr(), stream));
  });
  return in_format_of(out, input);
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Tensor& input) {
  TORCH_CHECK_VALUE(grad_output.dim() == 4, "dlkernels.adaptive_avg_pool2d_backward: grad_output must be 4-D, got ",
                    grad_output.sizes());
  const Pool2dGeom g = adaptive_geom("adaptive_avg_pool2d_backward", input, {grad_output.size(2), grad_output.size(3)});
  check_grad("adaptive_avg_pool2d_backward", grad_output, input, g);
  if (channels_last(input) && cpu_kernels(input)) {
    const Tensor go = grad_output.contiguous(c10::MemoryFormat::ChannelsLast);
    Tensor grad_input = empty_output_nhwc(g.N, g.C, g.H, g.W, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d_backward", [&] {
      cpu::adaptive_avg_pool2d_nhwc_backward<scalar_t>(g, go.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>());
    });
    return grad_input;
  }
  const Tensor go = grad_output.contiguous();
  Tensor grad_input = empty_output(input.sizes(), input.options());
  run_on_device("adaptive_avg_pool2d_backward", input, [&](auto tag) {
    using scalar_t = decltype(tag);
    cpu::adaptive_avg_pool2d_backward<scalar_t>(g, go.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>());
  }, [&](auto dt, void* stream) {
    return DLK_CUDA_CALL(adaptive_avg_pool2d_backward(dt, g, go.data_ptr(), grad_input.data_ptr(), stream));
  });
  return in_format_of(grad_input, input);
}

}  // namespace dlk::ops
