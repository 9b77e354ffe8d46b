// im2col convolution, tensor level: torch's argument checks, the batch chunking that bounds the column
// buffer, the GEMMs (at::mm / at::bmm: MKL or oneDNN on CPU, cuBLAS on CUDA; hand-written on the CPU for
// layers with few filters) and the CPU/CUDA choice of the hand-written kernels (im2col, col2im and the
// layout moves around the GEMMs).
//
// Forward, per chunk of B images:  col (rows, B*L) = im2col(x)       rows = C*KH*KW, L = OH*OW
//                                   y (OC, B*L)    = W (OC, rows) @ col      (one GEMM per group)
//                                   out (B, OC, L) = y + bias                (a layout move)
// Backward, per chunk:              gy (OC, B*L)   = grad_output as rows
//                                   grad_W        += gy @ col^T              (col recomputed)
//                                   col            = W^T @ gy;  grad_x = col2im(col)
// A chunk of one image needs no layout move (its (OC, L) block is already the image); a 1x1 kernel with
// stride 1 and no padding needs no im2col (the image is its own column matrix); on the CPU, a one-group
// stride-1 layer with few input values per output (LeNet's first) runs its forward without a column
// matrix (small_direct).
//
// Precision on CUDA: the GEMMs are at::mm/at::bmm, so they follow torch.backends.cuda.matmul.allow_tf32
// (off by default: full float32), not torch.backends.cudnn.allow_tf32, which F.conv2d follows (on by
// default: TF32 on Ampere and later). A converted model's convolutions are thus full float32 unless the
// user allows TF32 matmuls; tests/test_conv.py::test_cuda_precision_follows_the_matmul_tf32_flag.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "common/conv.h"
#include "cpu/conv.h"
#include "cpu/conv_bf16.h"
#include "cpu/conv_direct.h"
#include "ops/alloc.h"
#include "ops/checks.h"
#include "ops/device.h"
#include "ops/ops.h"


namespace dlk::ops {
namespace {

using at::IntArrayRef;
using at::Tensor;

std::atomic<int64_t> g_workspace_limit{int64_t(256) << 20};
// Which layers take Winograd F(2x2, 3x3) (winograd_fits): 0 none, 1 those of the measured rule, 2 every
// layer whose geometry it takes.
std::atomic<int> g_winograd{1};
// Which float32/float64 layers take the direct kernels (direct_fits): 0 none, 1 those of the measured rule, 2
// every one-group layer on a CPU path that has them.
std::atomic<int> g_direct{1};

// The chunk's column matrix is also kept near the last-level cache: im2col writes it and the GEMM reads
// it back while it is still there (64x576x3136 runs at 132 GFLOP/s from cache, a 16-image
// 64x576x50176 GEMM at 106 GFLOP/s from memory, measured with at::mm on the 2-core CI machine).
constexpr int64_t kColumnCacheTarget = int64_t(8) << 20;

struct ConvGeom {
  int64_t N, OC, G;   // batch, output channels, groups
  Im2colGeom g;       // one image; images and strides are set per chunk
  bool direct;        // 1x1, stride 1, no padding: the image is its own column matrix
  int64_t rows_per_group() const { return g.rows() / G; }
};

bool low_precision(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// lowp_on_cpu: the op takes float16/bfloat16 on the CPU too (conv2d and its backward: lowp_cpu_forward).
void check_float(const char* op, const char* name, const Tensor& t, bool lowp_on_cpu = false) {
  const auto s = t.scalar_type();
  const bool lowp_ok = cuda_kernels(t) || lowp_on_cpu;
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || (lowp_ok && low_precision(t)), "dlkernels.", op, ": ", name,
                   " must be float32 or float64", lowp_ok ? ", float16 or bfloat16" : "", " on ", t.device().type(),
                   ", got ", s);
}

// The CPU kernels of this file that take float32/float64 only (the float16/bfloat16 CPU path is separate).
bool cpu_float_kernels(const Tensor& t) { return cpu_kernels(t) && !low_precision(t); }

void check_same(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), "dlkernels.", op, ": ", name, " is on ", t.device(), " but input is on ",
              input.device());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), "dlkernels.", op, ": ", name, " must have the dtype of input (",
                   input.scalar_type(), "), got ", t.scalar_type());
}

// padding: (PH, PW) on both sides, or (top, left, bottom, right) for padding='same' with an even kernel.
void padding4(const char* op, IntArrayRef padding, int64_t p[4]) {
  TORCH_CHECK_VALUE(padding.size() == 2 || padding.size() == 4, "dlkernels.", op,
                    ": padding must have 2 values (or 4: top, left, bottom, right), got ", padding);
  for (size_t i = 0; i < 4; ++i) p[i] = padding[i % padding.size()];
  TORCH_CHECK_VALUE(p[0] >= 0 && p[1] >= 0 && p[2] >= 0 && p[3] >= 0, "dlkernels.", op,
                    ": padding must be non-negative, got ", padding);
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK_VALUE(p[i] <= kMaxGeometryValue, "dlkernels.", op, ": padding must be at most ", kMaxGeometryValue,
                      ", got ", padding);
  }
}

void check_input(const char* op, const Tensor& input) {
  TORCH_CHECK(input.is_cpu() || input.is_cuda(), "dlkernels.", op, ": input must be a CPU or CUDA tensor, got ",
              input.device());
  const std::string name(op);
  check_float(op, "input", input, name == "conv2d" || name == "conv2d_backward");  // lowp_cpu_forward
  TORCH_CHECK_VALUE(input.dim() == 4, "dlkernels.", op, ": input must have shape (N, C, H, W) or (C, H, W), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0, "dlkernels.", op,
                    ": input must have non-zero C, H and W (only the batch may be empty), got ", input.sizes());
}

ConvGeom conv_geom(const char* op, const Tensor& input, const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                   IntArrayRef dilation, int64_t groups) {
  check_input(op, input);
  check_same(op, "weight", weight, input);
  TORCH_CHECK_VALUE(weight.dim() == 4, "dlkernels.", op,
                    ": weight must have shape (out_channels, in_channels / groups, kH, kW), got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0 && weight.size(1) > 0 && weight.size(2) > 0 && weight.size(3) > 0, "dlkernels.",
                    op, ": weight must have non-zero sizes, got ", weight.sizes());
  TORCH_CHECK_VALUE(groups > 0, "dlkernels.", op, ": groups must be positive, got ", groups);
  const int64_t C = input.size(1), OC = weight.size(0);
  TORCH_CHECK_VALUE(C % groups == 0, "dlkernels.", op, ": groups (", groups, ") must divide the input channels (", C,
                    ")");
  TORCH_CHECK_VALUE(OC % groups == 0, "dlkernels.", op, ": groups (", groups,
                    ") must divide the output channels (weight.size(0) = ", OC, ")");
  TORCH_CHECK_VALUE(weight.size(1) * groups == C, "dlkernels.", op, ": input has ", C,
                    " channels but weight expects weight.size(1) * groups = ", weight.size(1), " * ", groups, " = ",
                    weight.size(1) * groups, " (weight ", weight.sizes(), ", input ", input.sizes(), ")");
  check_pair(op, "stride", stride, true);
  check_pair(op, "dilation", dilation, true);
  int64_t p[4];
  padding4(op, padding, p);
  ConvGeom c;
  c.N = input.size(0);
  c.OC = OC;
  c.G = groups;
  c.g = Im2colGeom{C, input.size(2), input.size(3), weight.size(2), weight.size(3), stride[0], stride[1],
                   p[0], p[1], dilation[0], dilation[1], 0, 0, 1, 0, 0};
  c.g.OH = conv_output_size(c.g.H, c.g.KH, c.g.SH, p[0], p[2], c.g.DH);
  c.g.OW = conv_output_size(c.g.W, c.g.KW, c.g.SW, p[1], p[3], c.g.DW);
  TORCH_CHECK_VALUE(c.g.OH >= 1 && c.g.OW >= 1, "dlkernels.", op, ": the kernel (", weight.size(2), " x ",
                    weight.size(3), ", dilation ", dilation, ") is larger than the padded input (", c.g.H, " x ",
                    c.g.W, " with padding ", padding, ")");
  c.direct = c.g.KH == 1 && c.g.KW == 1 && c.g.SH == 1 && c.g.SW == 1 && p[0] == 0 && p[1] == 0 && p[2] == 0 &&
             p[3] == 0;
  return c;
}

// Images per chunk: the column matrix within the workspace limit, and on the CPU near the cache; at least
// one image (one image's column matrix is the smallest unit, so a single image larger than the limit is
// processed whole). A GPU has no such cache to stay in and pays per launch: its chunks fill the limit.
int64_t chunk_images(const ConvGeom& c, const Tensor& input) {
  if (c.direct) return 1;
  const bool cpu = cpu_kernels(input);
  // the column matrix, and on a GPU (chunks of many images) the (OC, B*L) rows buffer beside it
  const int64_t per_image = (c.g.rows() + (cpu ? 0 : c.OC)) * c.g.positions() * int64_t(input.element_size());
  const int64_t limit = g_workspace_limit.load();
  const int64_t budget = cpu ? std::min<int64_t>(limit, kColumnCacheTarget) : limit;
  return std::max<int64_t>(1, std::min<int64_t>(c.N, budget / std::max<int64_t>(per_image, 1)));
}

// out[g] = a[g] @ b[g] for each group g (3-D views (G, M, K) @ (G, K, N)).
void gemm(Tensor out, const Tensor& a, const Tensor& b) {
  if (out.size(0) == 1) {
    Tensor out0 = out.select(0, 0);
    at::mm_out(out0, a.select(0, 0), b.select(0, 0));
  } else {
    at::bmm_out(out, a, b);
  }
}

// acc[g] += a[g] @ b[g].
void gemm_accumulate(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (acc.size(0) == 1) {
    Tensor acc0 = acc.select(0, 0);
    acc0.addmm_(a.select(0, 0), b.select(0, 0));
  } else {
    acc.baddbmm_(a, b);
  }
}

// out[g] = a[g] @ b[g] + bias (the (G, M) bias broadcast along N) through the GEMM's float32 accumulator,
// for float16/bfloat16 on CUDA: cuBLAS (and at::baddbmm on the CPU, which the emulation build runs) adds
// C before the single rounding; the bias added to the GEMM's rounded output would round twice (2.6x
// torch's CPU error; torch's own CUDA conv adds it that way, after cuDNN).
void gemm_bias(Tensor out, const Tensor& a, const Tensor& b, const Tensor& bias) {
  out.copy_(bias.view({out.size(0), out.size(1), 1}).expand_as(out));
  gemm_accumulate(out, a, b);
}

// On the CPU, grad_weight of a one-group layer is accumulated transposed, (rows, OC) += col @ gy^T,
// and copied back once: MKL (2024.2, AVX2 path) runs that form faster for every shape measured on the
// 2-core CI host (64 x 576 x 3136: 1.71 -> 1.42 ms; 32 x 288 x 7168: 1.30 -> 0.89 ms; 128 x 1152 x
// 1764: 3.39 -> 2.97 ms; the same time at 256 x 256 x 196). The forward GEMM computed transposed was
// measured too: from 4% faster to 38% slower, so the forward keeps its form.

// A direct (1x1) one-group layer multiplies every image by the same (OC, C) filter matrix: one batched
// GEMM over the whole batch with the filter broadcast (batch stride 0) writes the output in its own
// layout, in place of one at::mm per image (16 x 256 x 256 x 196 on the CI host: 3.39 -> 3.02 ms for
// the forward, 3.50 -> 2.97 ms for the input gradient, W^T the same way). grad_weight, a sum over the
// images, keeps its per-image accumulation (one GEMM would first need both operands moved to rows).
// tile_images: the layer takes the tile GEMM over the batch instead (tile_direct, below).
bool batched_direct(const ConvGeom& c, bool tile_images) { return c.direct && c.G == 1 && !tile_images; }

// On the CPU, a one-group layer with dilation 1 and column stride 1 or 2 that cpu::conv_direct_fits
// accepts (LeNet's first layer; ResNet layers of up to 64 filters on small images) runs its forward on
// the direct kernel, on the input padded first (at column stride 2 also split into even and odd
// columns): no column matrix (in-process A/B on the CI host: LeNet's 64x1x28x28 -> 6 5x5 forward 1.8x
// faster, forward + backward 1.14-1.25x; 32x16x32x32 -> 16 3x3 forward 3.2 -> 1.1 ms, 32x32x16x16 -> 32
// 2.0 -> 1.1 ms, 32x64x8x8 -> 64 1.7 -> 1.3 ms; at stride 2, 32x16x32x32 -> 32 1.5 -> 0.8 ms, 32x32x16x16
// -> 64 1.2 -> 0.9 ms). Its backward keeps the column matrix.
bool small_direct(const ConvGeom& c, const Tensor& x) {
  const Im2colGeom& g = c.g;
  return cpu_float_kernels(x) && !c.direct && c.G == 1 && (g.SW == 1 || g.SW == 2) && g.DH == 1 && g.DW == 1 &&
         cpu::conv_direct_fits(g.C, g.KH, g.KW, c.OC, g.OW, g.SW, int64_t(x.element_size()));
}

void small_direct_forward(const ConvGeom& c, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& out) {
  const Im2colGeom& g = c.g;
  // rows: every one an output reads (oh * SH + kh) and the image's; columns: the kernel's whole tiles
  // (cpu::conv_direct_columns) and the image's
  const int64_t Hp = std::max(g.PH + g.H, (g.OH - 1) * g.SH + g.KH);
  const int64_t cols = cpu::conv_direct_columns(g.OW);
  cpu::DirectGeom d{c.N, g.C, Hp, 0, g.OH, g.OW, c.OC, g.KH, g.KW, g.SH, 0};
  Tensor xp;
  if (g.SW == 1) {
    d.W = std::max(cols + g.KW - 1, g.PW + g.W);
    xp = at::zeros({c.N, g.C, Hp, d.W}, x.options());
    xp.narrow(2, g.PH, g.H).narrow(3, g.PW, g.W).copy_(x);
  } else {
    // padded column p = w + PW goes to the even half at p / 2 or the odd half at W / 2 + p / 2
    d.half = std::max(cols + (g.KW - 1) / 2, (g.PW + g.W + 1) / 2);
    d.W = 2 * d.half;
    xp = at::zeros({c.N, g.C, Hp, d.W}, x.options());
    Tensor rows = xp.narrow(2, g.PH, g.H);
    for (int64_t w0 = 0; w0 < std::min<int64_t>(2, g.W); ++w0) {  // image columns w0, w0 + 2, ...
      const int64_t p = w0 + g.PW, n = (g.W - w0 + 1) / 2;
      rows.narrow(3, (p & 1) * d.half + p / 2, n).copy_(x.slice(3, w0, g.W, 2));
    }
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d", [&] {
    cpu::conv_direct_forward<scalar_t>(d, xp.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                       b.defined() ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
  });
}

// Depthwise layers (groups == channels > 1, any multiplier) on the CPU: the direct kernels of
// cpu::conv_depthwise_*, memory-bound passes over each plane instead of a column matrix of KH * KW
// copies of the input and a GEMM per group of one row.
bool depthwise(const ConvGeom& c, const Tensor& x) { return cpu_float_kernels(x) && c.G == c.g.C && c.G > 1; }

cpu::DepthwiseGeom depthwise_geom(const ConvGeom& c) {
  const Im2colGeom& g = c.g;
  return cpu::DepthwiseGeom{c.N, g.C, c.OC / g.C, g.H, g.W, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, g.DH, g.DW, g.OH, g.OW};
}

// The input gradient of a stride-1 layer is itself a stride-1 convolution: of grad_output, padded by
// KH - 1 - top rows and KW - 1 - left columns (negative: cropped), with the filters flipped and their
// two channel dimensions swapped. On the CPU, when the direct kernel takes that convolution (C filters
// of OC * KH * KW taps, rows W wide), it runs there instead of a GEMM into the column matrix and col2im
// (in-process A/B: 32x32x16x16 -> 32 3x3 input gradient 1.9 -> 0.9 ms). Each value is then one sum in
// (oc, kh, kw) order: deterministic, rounded differently from the GEMM path. Layers of fewer than 8
// input channels (LeNet's first) keep the GEMM: their transposed convolution would fill one of the
// tile's 6 or 12 filters.
bool direct_input_grad(const ConvGeom& c, const Tensor& x) {
  const Im2colGeom& g = c.g;
  return cpu_float_kernels(x) && !c.direct && c.G == 1 && g.SH == 1 && g.SW == 1 && g.DH == 1 && g.DW == 1 &&
         g.C >= 8 && cpu::conv_direct_fits(c.OC, g.KH, g.KW, g.C, g.W, 1, int64_t(x.element_size()));
}

void direct_input_grad_run(const ConvGeom& c, const Tensor& go, const Tensor& w, const Tensor& grad_input) {
  const Im2colGeom& g = c.g;
  const int64_t top = g.KH - 1 - g.PH, left = g.KW - 1 - g.PW;  // grad_output row oh sits at row oh + top
  const int64_t Hp = g.H + g.KH - 1;
  cpu::DirectGeom d{c.N, c.OC, Hp, cpu::conv_direct_columns(g.W) + g.KW - 1, g.H, g.W, g.C, g.KH, g.KW, 1, 0};
  Tensor gp = at::zeros({c.N, c.OC, Hp, d.W}, go.options());
  const int64_t r0 = std::max<int64_t>(top, 0), r1 = std::min(Hp, top + g.OH);
  const int64_t c0 = std::max<int64_t>(left, 0), c1 = std::min(d.W, left + g.OW);
  if (r1 > r0 && c1 > c0)
    gp.narrow(2, r0, r1 - r0).narrow(3, c0, c1 - c0).copy_(go.narrow(2, r0 - top, r1 - r0).narrow(3, c0 - left, c1 - c0));
  const Tensor wt = w.flip({2, 3}).transpose(0, 1).contiguous();  // (C, OC, KH, KW)
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "conv2d_backward", [&] {
    cpu::conv_direct_forward<scalar_t>(d, gp.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), nullptr,
                                       grad_input.data_ptr<scalar_t>());
  });
}

// On the CPU, layers with up to cpu::kConvTileMaxFilters filters per group run the forward and the
// input-gradient GEMMs on the hand-written register-tile GEMM (cpu::conv_gemm_wide): MKL's general
// kernels run these thin products at half the machine's rate or less, or pack more than they multiply
// (in-process A/B of forward + backward on the CI host: ResNet-on-32x32 layers 5-18% faster, LeNet's
// first layer 1.85 -> 1.66 ms; above 64 filters MKL is as fast or faster, so it keeps those, except the
// forward of a layer with a column matrix up to cpu::kConvTileMaxForwardFilters).
// grad_weight takes the hand-written dot-product kernel only for the smallest layers
// (cpu::conv_gemm_small_fits), else MKL. All take contiguous (G, rows, cols) operands.
bool tile_gemm(const ConvGeom& c, const Tensor& x) { return cpu_float_kernels(x) && c.OC / c.G <= cpu::kConvTileMaxFilters; }
// The forward of a layer with a column matrix goes further, up to cpu::kConvTileMaxForwardFilters (see there).
bool tile_gemm_forward(const ConvGeom& c, const Tensor& x) {
  return tile_gemm(c, x) || (cpu_float_kernels(x) && !c.direct && c.OC / c.G <= cpu::kConvTileMaxForwardFilters);
}
bool small_gemm(const ConvGeom& c, const Tensor& x) {
  return cpu_float_kernels(x) && cpu::conv_gemm_small_fits(c.OC / c.G, c.rows_per_group());
}

// out[g] = w[g] @ b[g] with w (G, M, K) taken as stored (trans false) or as w[g]^T for w (G, K, M).
void tile_gemm_out(const Tensor& out, const Tensor& w, bool trans, const Tensor& b) {
  const int64_t G = out.size(0), M = out.size(1), N = out.size(2), K = b.size(1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "conv2d", [&] {
    for (int64_t g = 0; g < G; ++g)
      cpu::conv_gemm_wide<scalar_t>(M, K, N, w.data_ptr<scalar_t>() + g * M * K, trans ? 1 : K, trans ? M : 1,
                                    b.data_ptr<scalar_t>() + g * K * N, out.data_ptr<scalar_t>() + g * M * N);
  });
}

// On the CPU, a direct (1x1) layer with at most cpu::kConvTileMaxFilters filters per group, or with at
// most kConvTileDirectPositions positions per image at any filter count, runs its forward and input
// gradient on the register-tile GEMM over the whole batch at once (cpu::conv_gemm_wide with batch N),
// its column strips running on from one image into the next: MKL multiplies image by image, which
// gives each product only an image's few columns (14x14: 196) to cut into blocks. Standalone A/B on
// the AMD EPYC (Zen 4) host, 16 images, tile GEMM (packing included) against at::bmm with the filter
// broadcast: 256 x 256 x 196 2.2-2.6 ms against 2.6-4.2, 512 x 2048 x 49 9.1 against 11.3, 1024 x 256
// x 196 9.1 against 9.7; at 784 positions MKL is 6% faster (128 x 512: 9.4 against 10.0 ms) and at
// 3136 the same, so larger images keep it.
constexpr int64_t kConvTileDirectPositions = 256;
bool tile_direct(const ConvGeom& c, const Tensor& x) {
  return cpu_float_kernels(x) && c.direct && (tile_gemm(c, x) || c.g.positions() <= kConvTileDirectPositions);
}

// The direct layer's GEMMs over all N images, group by group: out_n[g] = w[g] @ in_n[g] (forward: in x,
// out y) or w[g]^T @ in_n[g] (trans, the input gradient: in grad_output, out grad_input); in and out
// are contiguous (N, channels, L), w is (G, OCg, Rg).
void tile_gemm_images(const ConvGeom& c, const Tensor& out, const Tensor& w3, bool trans, const Tensor& in) {
  const int64_t L = c.g.positions(), OCg = c.OC / c.G, Rg = c.rows_per_group();
  const int64_t M = trans ? Rg : OCg, K = trans ? OCg : Rg;
  const int64_t in_image = in.size(1) * L, out_image = out.size(1) * L;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "conv2d", [&] {
    for (int64_t g = 0; g < c.G; ++g)
      cpu::conv_gemm_wide<scalar_t>(M, K, L, w3.data_ptr<scalar_t>() + g * OCg * Rg, trans ? 1 : K, trans ? M : 1,
                                    in.data_ptr<scalar_t>() + g * K * L, out.data_ptr<scalar_t>() + g * M * L, c.N,
                                    in_image, out_image);
  });
}

// acc[g] += a[g] @ b[g]^T for a (G, M, N) and b (G, K, N).
void small_gemm_dots(const Tensor& acc, const Tensor& a, const Tensor& b) {
  const int64_t G = a.size(0), M = a.size(1), N = a.size(2), K = b.size(1);
  Tensor work = at::empty({cpu::conv_gemm_dots_work(M, K, N)}, a.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "conv2d_backward", [&] {
    for (int64_t g = 0; g < G; ++g)
      cpu::conv_gemm_dots<scalar_t>(M, K, N, a.data_ptr<scalar_t>() + g * M * N, b.data_ptr<scalar_t>() + g * K * N,
                                    acc.data_ptr<scalar_t>() + g * M * K, work.data_ptr<double>());
  });
}

// On the CPU, one-group 3x3 layers of stride 1 and dilation 1, padded by at most 2 on each side, run
// their forward and input gradient by Winograd F(2x2, 3x3) (cpu::conv_winograd): 16 multiplies per 2x2
// output tile and input channel where the direct sum has 36, in 16 GEMMs with the input and output
// transforms in cache around them. The input gradient of such a layer is the stride-1 convolution of
// grad_output padded by 2 - P with the flipped, transposed filters, which the kernel reads from the
// weight as it is. A layer takes it when the measured rule says it pays (see winograd_pays), or always
// or never by dlkernels.set_winograd. Its workspace (the padded input, about the input's size, the
// transformed filters, 16/9 of the weight, and per-thread blocks) is outside the workspace limit. An
// input or weight that is not finite (or within 64x of the largest float) sends the call to the other
// paths (whose sums keep inf as inf).
// (The kernels index one image's padded planes, channels times tiles, with 32-bit gather offsets.)
bool winograd_geometry(const ConvGeom& c) {
  const Im2colGeom& g = c.g;
  const int64_t bottom = g.OH + 2 - g.H - g.PH, right = g.OW + 2 - g.W - g.PW;
  const int64_t rows = std::max(g.H, g.OH) + 3, cols = std::max(g.W, g.OW) + 3;  // padded planes, either way
  const int64_t planes = std::max(g.C, c.OC) * rows * cols;
  return c.G == 1 && g.KH == 3 && g.KW == 3 && g.SH == 1 && g.SW == 1 && g.DH == 1 && g.DW == 1 && g.PH >= 0 &&
         g.PH <= 2 && g.PW >= 0 && g.PW <= 2 && bottom >= 0 && bottom <= 2 && right >= 0 && right <= 2 &&
         planes < (int64_t(1) << 31);
}
// The measured rule: see the comment of winograd_geometry and docs/performance.md.
bool winograd_pays(const ConvGeom& c) { return c.g.C >= 8 && c.OC >= 8; }
bool winograd_fits(const ConvGeom& c, const Tensor& x) {
  const int mode = g_winograd.load();
  return mode != 0 && cpu_float_kernels(x) && winograd_geometry(c) && (mode == 2 || winograd_pays(c));
}
// The weight gradient's rule: channels_last tensors as winograd_pays; NCHW ones from 32 channels, where
// its input patches, gathered across the channels' planes, cost less than the multiplies saved (at 16
// channels the column-matrix GEMM ties it: docs/performance.md).
bool winograd_weight_grad_fits(const ConvGeom& c, const Tensor& x) {
  return winograd_fits(c, x) && (g_winograd.load() == 2 || channels_last(x) || (c.g.C >= 32 && c.OC >= 32));
}
// Where the taps of w (OC, C, 3, 3), any memory format, are: as the forward's filters, or (flip) as the
// input gradient's, filter (c, o) being w[o, c] flipped.
cpu::WinogradFilters winograd_filters(const Tensor& w, bool flip) {
  return flip ? cpu::WinogradFilters{w.stride(1), w.stride(0), w.stride(2), w.stride(3), true}
              : cpu::WinogradFilters{w.stride(0), w.stride(1), w.stride(2), w.stride(3), false};
}
// out = the convolution of `in` ((N, C, H, W) contiguous, or with nhwc channels_last) with the 3x3
// filters f finds in w, padded by wg.PT / wg.PL above and left; false when a value was not finite (or
// too large: cpu::conv_winograd), the chunks of images before it written (the caller's other paths then
// write the whole output). Images in chunks within the workspace limit (the padded copy of the NCHW input is
// the part that grows with the batch; one image is the smallest chunk); each tile's sums are the same in
// any chunk.
bool winograd_run(const cpu::WinogradGeom& wg, bool nhwc, const Tensor& in, const Tensor& w,
                  const cpu::WinogradFilters& f, const Tensor& b, const Tensor& out) {
  const int64_t threads = std::max(1, at::get_num_threads()), elem = int64_t(in.element_size());
  cpu::WinogradGeom chunk = wg;
  int64_t B_max = wg.N;
  if (!nhwc) {
    chunk.N = 0;
    const int64_t fixed = cpu::conv_winograd_work(chunk, threads);  // the filters and the per-thread blocks
    const int64_t per_image = wg.C * wg.split_plane();
    B_max = std::max<int64_t>(1, std::min(wg.N, (workspace_limit() / elem - fixed) / per_image));
  }
  chunk.N = B_max;
  const int64_t size = nhwc ? cpu::conv_winograd_nhwc_work(chunk, threads) : cpu::conv_winograd_work(chunk, threads);
  const Tensor work = empty_output({size}, in.options());
  const int64_t in_image = wg.C * wg.H * wg.W, out_image = wg.OC * wg.OH * wg.OW;
  bool done = true;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "conv2d", [&] {
    for (int64_t n0 = 0; n0 < wg.N && done; n0 += B_max) {
      chunk.N = std::min(B_max, wg.N - n0);
      const scalar_t* x = in.data_ptr<scalar_t>() + n0 * in_image;
      scalar_t* y = out.data_ptr<scalar_t>() + n0 * out_image;
      const scalar_t* bias = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
      done = nhwc ? cpu::conv_winograd_nhwc<scalar_t>(chunk, x, w.data_ptr<scalar_t>(), f, bias, y,
                                                      work.data_ptr<scalar_t>(), threads)
                  : cpu::conv_winograd<scalar_t>(chunk, x, w.data_ptr<scalar_t>(), f, bias, y,
                                                 work.data_ptr<scalar_t>(), threads);
    }
  });
  return done;
}
bool winograd_forward(const ConvGeom& c, bool nhwc, const Tensor& x, const Tensor& w, const Tensor& b,
                      const Tensor& out) {
  const Im2colGeom& g = c.g;
  const cpu::WinogradGeom wg{c.N, g.C, g.H, g.W, c.OC, g.OH, g.OW, g.PH, g.PW};
  return winograd_run(wg, nhwc, x, w, winograd_filters(w, false), b, out);
}
// grad_input (N, C, H, W): the convolution of grad_output padded by 2 - P with the flipped, transposed
// filters.
bool winograd_input_grad(const ConvGeom& c, bool nhwc, const Tensor& go, const Tensor& w, const Tensor& grad_input) {
  const Im2colGeom& g = c.g;
  const cpu::WinogradGeom wg{c.N, c.OC, g.OH, g.OW, g.C, g.H, g.W, 2 - g.PH, 2 - g.PW};
  return winograd_run(wg, nhwc, go, w, winograd_filters(w, true), Tensor(), grad_input);
}
// grad_weight (OC, C, 3, 3), any memory format, written whole: images in chunks whose split copies fit
// the workspace limit.
bool winograd_weight_grad(const ConvGeom& c, bool nhwc, const Tensor& x, const Tensor& go, const Tensor& grad_weight) {
  const Im2colGeom& g = c.g;
  const cpu::WinogradGeom wg{c.N, g.C, g.H, g.W, c.OC, g.OH, g.OW, g.PH, g.PW};
  const int64_t threads = std::max(1, at::get_num_threads()), elem = int64_t(x.element_size());
  int64_t images = c.N;
  while (images > 1 && cpu::winograd_weight_grad_layout(wg, images, nhwc).total * elem > workspace_limit())
    images = (images + 1) / 2;
  const Tensor work = empty_output({cpu::winograd_weight_grad_layout(wg, images, nhwc).total}, x.options());
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_backward", [&] {
    done = cpu::conv_winograd_weight_grad<scalar_t>(wg, x.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(), nhwc,
                                                    grad_weight.data_ptr<scalar_t>(), winograd_filters(grad_weight, false),
                                                    work.data_ptr<scalar_t>(), threads, images);
  });
  return done;
}

// Element `offset` of a contiguous tensor, untyped (the CUDA launchers take void pointers).
[[maybe_unused]] char* element_ptr(const Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data_ptr()) + offset * int64_t(t.element_size());
}

// The kernels, on the device of `like` (run_on_device: CPU dtype dispatch, or CUDA on the current stream).
struct Kernels {
  const Tensor& like;

  void im2col(const Im2colGeom& g, const Tensor& in, int64_t in_offset, const Tensor& col) const {
    run_on_device("im2col", like, [&](auto tag) {
      using T = decltype(tag);
      cpu::im2col<T>(g, in.data_ptr<T>() + in_offset, col.data_ptr<T>());
    }, [&](auto dt, void* stream) {
      return DLK_CUDA_CALL(im2col(dt, g, element_ptr(in, in_offset), col.data_ptr(), stream));
    });
  }
  void col2im(const Im2colGeom& g, const Tensor& col, const Tensor& out, int64_t out_offset) const {
    run_on_device("col2im", like, [&](auto tag) {
      using T = decltype(tag);
      cpu::col2im<T>(g, col.data_ptr<T>(), out.data_ptr<T>() + out_offset);
    }, [&](auto dt, void* stream) {
      return DLK_CUDA_CALL(col2im(dt, g, col.data_ptr(), element_ptr(out, out_offset), stream));
    });
  }
  void rows_to_images(int64_t B, int64_t OC, int64_t L, const Tensor& rows, const Tensor* bias, const Tensor& out,
                      int64_t out_offset) const {
    run_on_device("conv2d", like, [&](auto tag) {
      using T = decltype(tag);
      cpu::conv_rows_to_images<T>(B, OC, L, rows.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr,
                                  out.data_ptr<T>() + out_offset);
    }, [&](auto dt, void* stream) {
      return DLK_CUDA_CALL(conv_rows_to_images(dt, B, OC, L, rows.data_ptr(), bias ? bias->data_ptr() : nullptr,
                                               element_ptr(out, out_offset), stream));
    });
  }
  void images_to_rows(int64_t B, int64_t OC, int64_t L, const Tensor& images, int64_t in_offset, const Tensor& rows) const {
    run_on_device("conv2d_backward", like, [&](auto tag) {
      using T = decltype(tag);
      cpu::conv_images_to_rows<T>(B, OC, L, images.data_ptr<T>() + in_offset, rows.data_ptr<T>());
    }, [&](auto dt, void* stream) {
      return DLK_CUDA_CALL(conv_images_to_rows(dt, B, OC, L, element_ptr(images, in_offset), rows.data_ptr(), stream));
    });
  }
  void channel_sum(int64_t N, int64_t C, int64_t L, const Tensor& in, const Tensor& out) const {
    run_on_device("conv2d_backward", like, [&](auto tag) {
      using T = decltype(tag);
      cpu::channel_sum<T>(N, C, L, in.data_ptr<T>(), out.data_ptr<T>());
    }, [&](auto dt, void* stream) {
      return DLK_CUDA_CALL(channel_sum(dt, N, C, L, in.data_ptr(), out.data_ptr(), stream));
    });
  }
};

// The geometry of a chunk of B images in the (rows, B * L) layout one GEMM per group consumes.
Im2colGeom chunk_geom(const ConvGeom& c, int64_t B) {
  Im2colGeom g = c.g;
  g.images = B;
  g.row_stride = B * c.g.positions();
  g.image_stride = c.g.positions();
  return g;
}

// On the CPU, a one-group layer with a channels_last input runs in that layout (float32/float64): the
// column matrix has a row per output position (cpu::im2col_nhwc), so that one GEMM per chunk of images
// with the filters as (OC, KH * KW * C) writes the chunk's (B * OH * OW, OC) rows of the output in place,
// with the bias in the GEMM; a 1x1 stride-1 layer multiplies the input's own (B * H * W, C) rows. The
// backward reads grad_output's rows the same way: grad_weight += gy^T @ col; grad_input of a stride-1
// layer as the channels_last convolution of grad_output (nhwc_backward), of other layers by col2im_nhwc
// of gy @ W (1x1 stride 1: gy @ W itself). No layout copies, no rows-to-images moves.
bool nhwc(const ConvGeom& c, const Tensor& x) { return cpu_float_kernels(x) && c.G == 1 && channels_last(x); }

// Depthwise layers with one filter per channel take channels_last input as it is too: the kernels of
// cpu::conv_depthwise_nhwc_*, whose loops run along the channels (at 7x7 and 4x4 the planar kernels'
// rows are a few values long).
bool depthwise_nhwc(const ConvGeom& c, const Tensor& x) {
  return cpu_float_kernels(x) && c.G == c.g.C && c.G > 1 && c.OC == c.g.C && channels_last(x);
}

// NCHW depthwise layers of one filter per channel on outputs of at most 64 positions run through the
// channels_last kernels (vectorized across channels) on channels_last copies: the NCHW kernels pay per
// plane, a few columns a run. fwd+bwd at batch 16 (AVX2 host, 2026-12-07, copies included): 960 at 4x4
// 2.13 -> 0.93 ms (torch 0.75), 576 at 7x7 2.27 -> 1.54, 576 7x7/s2 2.63 -> 0.84, 192 14x14/s2 2.34 ->
// 1.01; at 14x14 outputs and more the copies cost more than they save (192 at 14x14 1.70 -> 2.11).
bool depthwise_via_nhwc(const ConvGeom& c, const Tensor& x) {
  // (1x1 planes: a tensor both contiguous and channels_last counts as contiguous, its copy too)
  return cpu_float_kernels(x) && c.G == c.g.C && c.G > 1 && c.OC == c.g.C && !channels_last(x) && c.N > 0 &&
         c.g.OH * c.g.OW <= 64 && c.g.H * c.g.W > 1;
}

// The (N * H * W, C) rows of a channels_last tensor.
Tensor nhwc_rows(const Tensor& t) { return t.permute({0, 2, 3, 1}).view({-1, t.size(1)}); }

// Images per chunk: the column matrix within the workspace limit and near the last-level cache, as
// chunk_images; a 1x1 layer's input and output rows within half of the cache target (16 images of 64 ->
// 256 channels at 56x56: rows of 3136 positions ran at 138 GFLOP/s in at::mm, rows of 12544 at 85, 50176
// at 49, on the CI host).
int64_t nhwc_chunk_images(const ConvGeom& c, const Tensor& x) {
  const int64_t per_row = c.direct ? c.g.C + c.OC : c.g.rows();
  const int64_t budget = std::min(g_workspace_limit.load(), c.direct ? kColumnCacheTarget / 2 : kColumnCacheTarget);
  const int64_t per_image = per_row * c.g.positions() * int64_t(x.element_size());
  return std::max<int64_t>(1, std::min<int64_t>(c.N, budget / std::max<int64_t>(per_image, 1)));
}

void nhwc_im2col(const Im2colGeom& g, const Tensor& x, int64_t n0, const Tensor& col) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d", [&] {
    cpu::im2col_nhwc<scalar_t>(g, x.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C, col.data_ptr<scalar_t>());
  });
}

// The filters (OC, C, KH, KW) as the (KH * KW * C, OC) matrix of the channels_last column matrix: a view
// of a channels_last weight, a copy of a contiguous one.
Tensor nhwc_filters(const Tensor& weight, int64_t OC) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({OC, -1}).t();
}

// x channels_last, out (N, OC, OH, OW) channels_last, b undefined or contiguous; wT is the filters as
// the (KH * KW * C, OC) matrix the column matrix multiplies.
void nhwc_forward(const ConvGeom& c, const Tensor& x, const Tensor& wT, const Tensor& b, const Tensor& out) {
  const int64_t L = c.g.positions(), R = c.g.rows();
  const Tensor x_rows = nhwc_rows(x), out_rows = nhwc_rows(out);
  const int64_t B_max = nhwc_chunk_images(c, x);
  Tensor col_buf = c.direct ? Tensor() : empty_output({B_max * L * R}, x.options());
  for (int64_t n0 = 0; n0 < c.N; n0 += B_max) {
    const int64_t B = std::min(B_max, c.N - n0);
    Tensor col;
    if (c.direct) {
      col = x_rows.narrow(0, n0 * L, B * L);
    } else {
      Im2colGeom g = c.g;
      g.images = B;
      col = col_buf.narrow(0, 0, B * L * R).view({B * L, R});
      nhwc_im2col(g, x, n0, col);
    }
    Tensor o = out_rows.narrow(0, n0 * L, B * L);
    if (b.defined()) {
      at::addmm_out(o, b, col, wT);
    } else {
      at::mm_out(o, col, wT);
    }
  }
}

// The channels_last backward: grad_input channels_last, grad_weight in the weight's format.
void nhwc_backward(const ConvGeom& c, const Tensor& grad_output, const Tensor& x, const Tensor& weight,
                   std::array<bool, 3> mask, Tensor& grad_input, Tensor& grad_weight, Tensor& grad_bias) {
  const int64_t L = c.g.positions(), R = c.g.rows(), image = c.g.C * c.g.H * c.g.W;
  const Tensor go = grad_output.contiguous(c10::MemoryFormat::ChannelsLast);
  const Tensor gy_rows = nhwc_rows(go);  // (N * L, OC)
  if (mask[2]) grad_bias = at::sum(gy_rows, {0}, false, at::kDouble).to(x.scalar_type());
  if (c.N > 0 && mask[1] && winograd_weight_grad_fits(c, x)) {
    Tensor gw = channels_last(weight) ? empty_output_nhwc(c.OC, c.g.C, 3, 3, x.options())
                                      : at::empty(weight.sizes(), x.options());
    if (winograd_weight_grad(c, true, x, go, gw)) {
      grad_weight = gw;
      mask[1] = false;
    }
  }
  if (c.N > 0 && mask[0] && winograd_fits(c, x)) {
    grad_input = empty_output_nhwc(c.N, c.g.C, c.g.H, c.g.W, x.options());
    if (winograd_input_grad(c, true, go, weight, grad_input)) mask[0] = false;
  }
  if (!mask[0] && !mask[1]) return;
  const Tensor w_rows = nhwc_filters(weight, c.OC).t();  // (OC, R)
  const Tensor x_rows = nhwc_rows(x);
  // grad_weight as (OC, R) += gy^T @ col: (OC, KH, KW, C) stored, a channels_last weight's own layout.
  // (Accumulated transposed, (R, OC), the GEMMs ran up to 7% faster, but the transposed copy back cost
  // 5.5 ms for a 512 x 4608 gradient, more than it saved: resnet18 profile, CI host.)
  Tensor gw_rows = mask[1] ? at::empty({c.OC, R}, x.options()) : Tensor();
  if (mask[0]) grad_input = empty_output_nhwc(c.N, c.g.C, c.g.H, c.g.W, x.options());
  const Tensor gi_rows = mask[0] ? nhwc_rows(grad_input) : Tensor();
  // A stride-1 layer's input gradient is the channels_last convolution of grad_output, padded by K - 1 - P
  // on each side, with the filters flipped and their channel dimensions swapped: a GEMM over KH * KW * OC
  // values per position instead of gy @ W over OC (ResNet-20's 16-filter layers: K = 16, 23 GFLOP/s, and
  // slower still on denormal gradients) into a column matrix KH * KW times the input for col2im to sum.
  const Im2colGeom& ig = c.g;
  const int64_t pad_bottom = ig.OH + ig.KH - 1 - ig.H - ig.PH, pad_right = ig.OW + ig.KW - 1 - ig.W - ig.PW;
  const bool gi_as_conv = mask[0] && !c.direct && ig.SH == 1 && ig.SW == 1 && ig.DH == 1 && ig.DW == 1 &&
                          ig.PH <= ig.KH - 1 && ig.PW <= ig.KW - 1 && pad_bottom <= ig.KH - 1 && pad_right <= ig.KW - 1;
  if (gi_as_conv) {
    const Tensor wt = weight.transpose(0, 1);  // (C, OC, KH, KW), flipped below (conv_geom reads its sizes)
    const int64_t pad[4] = {ig.KH - 1 - ig.PH, ig.KW - 1 - ig.PW, ig.KH - 1 - pad_bottom, ig.KW - 1 - pad_right};
    const int64_t one[2] = {1, 1};
    const ConvGeom t = conv_geom("conv2d_backward", go, wt, one, pad, one, 1);
    // its (KH * KW * OC, C) matrix: rows (kh, kw, oc) of the flipped taps, each a run of the C values a
    // channels_last weight stores together (cpu::conv_flip_taps_nhwc: 512 x 512 x 3 x 3 in ~0.4 ms, as
    // a plain copy; torch's permuted copy took 4.2 and flip 2.8 more)
    const Tensor w_nhwc = weight.contiguous(c10::MemoryFormat::ChannelsLast);  // (OC, KH, KW, C) stored
    Tensor taps = at::empty({t.g.rows(), t.OC}, weight.options());
    cpu::conv_flip_taps_nhwc(c.OC, ig.KH * ig.KW, ig.C, int64_t(weight.element_size()), w_nhwc.data_ptr(),
                             taps.data_ptr());
    nhwc_forward(t, go, taps, Tensor(), grad_input);
    if (!mask[1]) return;
  }
  if (c.direct && mask[1]) at::mm_out(gw_rows, gy_rows.t(), x_rows);  // one GEMM over the batch
  const int64_t B_max = nhwc_chunk_images(c, x);
  Tensor col_buf = c.direct ? Tensor() : empty_output({B_max * L * R}, x.options());
  for (int64_t n0 = 0; n0 < c.N && ((mask[0] && !gi_as_conv) || !c.direct); n0 += B_max) {
    const int64_t B = std::min(B_max, c.N - n0);
    const Tensor gy = gy_rows.narrow(0, n0 * L, B * L);
    if (c.direct) {  // mask[0]
      Tensor gi = gi_rows.narrow(0, n0 * L, B * L);
      at::mm_out(gi, gy, w_rows);
      continue;
    }
    Im2colGeom g = c.g;
    g.images = B;
    Tensor col = col_buf.narrow(0, 0, B * L * R).view({B * L, R});
    if (mask[1]) {
      nhwc_im2col(g, x, n0, col);
      if (n0 == 0) {
        at::mm_out(gw_rows, gy.t(), col);
      } else {
        gw_rows.addmm_(gy.t(), col);
      }
    }
    if (mask[0] && !gi_as_conv) {
      at::mm_out(col, gy, w_rows);  // the column buffer is free again once grad_weight has used it
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_backward", [&] {
        cpu::col2im_nhwc<scalar_t>(g, col.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>() + n0 * image);
      });
    }
  }
  if (mask[1]) {
    const Tensor gw = gw_rows.view({c.OC, c.g.KH, c.g.KW, c.g.C}).permute({0, 3, 1, 2});  // channels_last
    // (a contiguous weight's gradient with torch's strides, size-1 dimensions included)
    grad_weight = channels_last(weight) ? gw : at::empty(weight.sizes(), x.options()).copy_(gw);
  }
}

}  // namespace

int64_t workspace_limit() { return g_workspace_limit.load(); }
int64_t direct_mode() { return g_direct.load(); }
void set_direct_mode(int64_t mode) {
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "dlkernels.set_direct_conv: mode must be 0, 1 or 2, got ", mode);
  g_direct.store(int(mode));
}
int64_t winograd_mode() { return g_winograd.load(); }
void set_winograd_mode(int64_t mode) {
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "dlkernels.set_winograd: mode must be 0, 1 or 2, got ", mode);
  g_winograd.store(int(mode));
}
void set_workspace_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes > 0, "dlkernels.set_workspace_limit: bytes must be positive, got ", bytes);
  g_workspace_limit.store(bytes);
}

namespace {

// bfloat16 on the CPU by the pair-dot kernels (cpu/conv_bf16.h): one-group layers, where the CPU path has
// a kernel (AVX512-BF16, or the scalar reference); float16 and the AVX2 path keep the GEMM path below.
bool pair_fits(const ConvGeom& c, const Tensor& x) {
  return cpu_kernels(x) && x.scalar_type() == at::kBFloat16 && c.G == 1 && cpu::pair_conv_available();
}

cpu::Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }
uint16_t* bits(const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }
uint32_t* words(const Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr()); }

// out = conv(x, w) + b in the geometry g, rounded once: x read through its strides, the filters w from
// their first element with strides ws over (oc, c, kh, kw) of g (flip: taps read flipped), out written
// through os (any memory format, or a strided view).
void pair_run(const cpu::PairConvGeom& g, const Tensor& x, const uint16_t* w, cpu::Strides4 ws, bool flip,
              const Tensor& b, uint16_t* out, cpu::Strides4 os) {
  if (g.N == 0) return;
  Tensor xp = empty_output({g.input_words()}, x.options().dtype(at::kInt));
  cpu::pair_conv_pack_input(g, bits(x), strides4(x), words(xp));
  Tensor bf;
  if (b.defined()) {
    bf = at::zeros({g.OCp()}, x.options().dtype(at::kFloat));
    bf.narrow(0, 0, g.OC).copy_(b);
  }
  cpu::pair_conv_forward(g, words(xp), w, ws, flip, bf.defined() ? bf.data_ptr<float>() : nullptr, out, os);
}

// float32/float64 by the direct kernels (cpu/conv_direct.h): one-group layers on the CPU (every ISA
// path), where the measured rule (direct_pays) says they beat the other paths, or always or never by
// dlkernels.set_direct_conv. pass: 0 forward, 1 input gradient, 2 weight gradient.
//
// The rule, from each pass of the four bench models' layers timed against the other paths (AVX2, EPYC
// Zen 3 host, 2026-12-07; docs/performance.md), for layers of more than one tap and dilation 1:
// - forward: strided layers (the 3x3/s2 and 7x7/s2 ones: 1.0-1.45x the im2col path); stride-1 layers
//   on outputs of at most 16 positions (512 at 4x4: 1.35-1.4x Winograd, whose 2x2 tiles waste and
//   whose filter transform is paid for few tiles); channels_last layers of at most 16 channels (the
//   row-per-position GEMM has K = 9 * C: 3 -> 16 at 32x32 2.5x, 16 -> 16 1.15x);
// - input gradient: the same stride-1 layers (the strided ones, by S x S phases, tied or lost);
// - weight gradient: layers of at most 32 channels (3 to 32 channels: 1.1-2.5x; from 64 the GEMM and
//   Winograd paths win).
bool direct_pays(const ConvGeom& c, const Tensor& x, int pass) {
  const Im2colGeom& g = c.g;
  if (g.KH * g.KW == 1 || g.DH != 1 || g.DW != 1) return false;
  const bool strided = g.SH > 1 || g.SW > 1, small_out = g.OH * g.OW <= 16, few = channels_last(x) && g.C <= 16;
  switch (pass) {
    case 0: return strided || small_out || few;
    case 1: return !strided && (small_out || few);
    default: return g.C <= 32;
  }
}
bool direct_fits(const ConvGeom& c, const Tensor& x, int pass) {
  const int mode = g_direct.load();
  if (mode == 0 || !cpu_float_kernels(x) || c.G != 1) return false;  // (every CPU path has the kernels)
  if (pass == 1 && (c.g.DH != 1 || c.g.DW != 1)) return false;  // the input gradient's phases: dilation 1
  return mode == 2 || direct_pays(c, x, pass);
}

// out = conv(x, w) + b in the geometry g (pack 1): as pair_run, in x's dtype (float32 or float64).
template <class T>
void direct_run(const cpu::PairConvGeom& g, const Tensor& x, const T* w, cpu::Strides4 ws, bool flip, const Tensor& b,
                T* out, cpu::Strides4 os) {
  if (g.N == 0) return;
  Tensor xp = empty_output({g.input_words()}, x.options());
  cpu::direct_conv_pack_input(g, x.data_ptr<T>(), strides4(x), xp.data_ptr<T>());
  Tensor bp;
  if (b.defined()) {
    bp = at::zeros({g.OCp()}, x.options());
    bp.narrow(0, 0, g.OC).copy_(b);
  }
  cpu::direct_conv_forward(g, xp.data_ptr<T>(), w, ws, flip, bp.defined() ? bp.data_ptr<T>() : nullptr, out, os);
}

// The input gradient of a pair_fits (bfloat16) or direct_fits (float32) layer of dilation 1, in the
// input's memory format. Input rows of
// one phase, (ih + PH) % SH == a, receive grad_output through the taps kh = a, a + SH, ... only (and
// columns likewise): per phase (a, b) a stride-1 convolution of grad_output with that subset of the
// filters, flipped and transposed as packed, written through a strided view of the result. A stride-1
// layer is the one phase; a phase no tap reaches (1x1 stride 2) is zero.
Tensor phase_input_grad(const ConvGeom& c, const Tensor& gy, const Tensor& w, const Tensor& input) {
  const bool direct = !low_precision(input);
  Tensor gi = channels_last(input) ? empty_output_nhwc(c.N, c.g.C, c.g.H, c.g.W, input.options())
                                   : empty_output(input.sizes(), input.options());
  const cpu::Strides4 ws = strides4(w), gs = strides4(gi);
  const int64_t SH = c.g.SH, SW = c.g.SW, PH = c.g.PH, PW = c.g.PW;
  auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); };
  for (int64_t a = 0; a < SH; ++a) {
    for (int64_t b = 0; b < SW; ++b) {
      const int64_t KHa = a < c.g.KH ? (c.g.KH - a + SH - 1) / SH : 0, KWa = b < c.g.KW ? (c.g.KW - b + SW - 1) / SW : 0;
      // the phase's input rows ih = i * SH + a - PH for i in [i0, i1), columns likewise
      const int64_t i0 = std::max<int64_t>(0, ceil_div(PH - a, SH)), i1 = ceil_div(c.g.H + PH - a, SH);
      const int64_t j0 = std::max<int64_t>(0, ceil_div(PW - b, SW)), j1 = ceil_div(c.g.W + PW - b, SW);
      if (i1 <= i0 || j1 <= j0) continue;
      const int64_t off = (i0 * SH + a - PH) * gs.h + (j0 * SW + b - PW) * gs.w;
      const cpu::Strides4 os{gs.n, gs.c, SH * gs.h, SW * gs.w};
      if (KHa == 0 || KWa == 0) {
        gi.as_strided({c.N, c.g.C, i1 - i0, j1 - j0}, {os.n, os.c, os.h, os.w}, gi.storage_offset() + off).zero_();
        continue;
      }
      cpu::PairConvGeom g{c.N, c.OC, c.g.OH, c.g.OW, c.g.C, KHa, KWa, 1, 1, KHa - 1 - i0, KWa - 1 - j0, 1, 1,
                          i1 - i0, j1 - j0};
      const cpu::Strides4 wt{ws.c, ws.n, SH * ws.h, SW * ws.w};
      if (direct) {
        g.pack = 1;
        AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "conv2d_backward", [&] {
          direct_run(g, gy, w.data_ptr<scalar_t>() + a * ws.h + b * ws.w, wt, true, Tensor(),
                     gi.data_ptr<scalar_t>() + off, os);
        });
      } else {
        pair_run(g, gy, bits(w) + a * ws.h + b * ws.w, wt, true, Tensor(), bits(gi) + off, os);
      }
    }
  }
  return gi;
}

cpu::PairConvGeom pair_geom(const ConvGeom& c) {
  return {c.N, c.g.C, c.g.H, c.g.W, c.OC, c.g.KH, c.g.KW, c.g.SH, c.g.SW, c.g.PH, c.g.PW, c.g.DH, c.g.DW, c.g.OH, c.g.OW};
}

// The weight gradient of a pair_fits layer (a contiguous tensor; x and gy read through their strides), or
// an undefined tensor where the kernel cannot take it (x not finite next to a row of odd width:
// cpu::pair_conv_pack_wgrad_input).
Tensor pair_weight_grad(const ConvGeom& c, const Tensor& x, const Tensor& gy, const Tensor& weight) {
  const cpu::PairConvGeom g = pair_geom(c);
  Tensor xw = empty_output({g.wgrad_input_halves()}, x.options());
  if (!cpu::pair_conv_pack_wgrad_input(g, bits(x), strides4(x), bits(xw))) return Tensor();
  Tensor gp = empty_output({g.wgrad_grad_words()}, x.options().dtype(at::kInt));
  cpu::pair_conv_pack_wgrad_grad(g, bits(gy), strides4(gy), words(gp));
  Tensor acc = empty_output({g.C * g.taps() * g.OCp()}, x.options().dtype(at::kFloat));
  Tensor gw = at::empty(weight.sizes(), weight.options());
  cpu::pair_conv_weight_grad(g, bits(xw), words(gp), acc.data_ptr<float>(), bits(gw), strides4(gw));
  return gw;
}

// The forward of a pair_fits layer, in the input's memory format.
// The output of a layer, in the input's memory format.
Tensor output_like_input(const ConvGeom& c, const Tensor& x) {
  return channels_last(x) ? empty_output_nhwc(c.N, c.OC, c.g.OH, c.g.OW, x.options())
                          : empty_output({c.N, c.OC, c.g.OH, c.g.OW}, x.options());
}

Tensor pair_forward(const ConvGeom& c, const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor out = output_like_input(c, x);
  pair_run(pair_geom(c), x, bits(w), strides4(w), false, b, bits(out), strides4(out));
  return out;
}

cpu::PairConvGeom direct_geom(const ConvGeom& c) {
  cpu::PairConvGeom g = pair_geom(c);
  g.pack = 1;
  return g;
}

// The forward of a direct_fits layer, in the input's memory format.
Tensor direct_forward(const ConvGeom& c, const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor out = output_like_input(c, x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d", [&] {
    direct_run(direct_geom(c), x, w.data_ptr<scalar_t>(), strides4(w), false, b, out.data_ptr<scalar_t>(), strides4(out));
  });
  return out;
}

// The weight gradient of a direct_fits layer, in the weight's memory format.
Tensor direct_weight_grad(const ConvGeom& c, const Tensor& x, const Tensor& gy, const Tensor& weight) {
  const cpu::PairConvGeom g = direct_geom(c);
  const cpu::Isa isa = cpu::current_isa();  // once: it sizes, packs and reads grad_output's blocks
  Tensor gw = channels_last(weight) ? empty_output_nhwc(c.OC, c.g.C, c.g.KH, c.g.KW, weight.options())
                                    : at::empty(weight.sizes(), weight.options());
  Tensor xp = empty_output({g.input_words()}, x.options());
  Tensor acc = empty_output({g.taps() * g.C * g.OCp()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_backward", [&] {
    Tensor gp = empty_output({cpu::direct_conv_grad_values<scalar_t>(g, isa)}, x.options());
    if (g.N > 0) {
      cpu::direct_conv_pack_input(g, x.data_ptr<scalar_t>(), strides4(x), xp.data_ptr<scalar_t>());
      cpu::direct_conv_pack_grad(g, gy.data_ptr<scalar_t>(), strides4(gy), gp.data_ptr<scalar_t>(), isa);
    }
    cpu::direct_conv_weight_grad(g, xp.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>(),
                                 gw.data_ptr<scalar_t>(), strides4(gw), isa);
  });
  return gw;
}

// float16/bfloat16 on the CPU, without a bias: im2col moves the 16-bit values and the GEMMs run in that
// dtype (at::bmm: oneDNN, with AVX512-BF16's vdpbf16ps where the CPU has it; float32 accumulation, one
// rounding per output, as torch's own low-precision convolution). Chunks of images fill the workspace
// limit (one chunk for a typical batch); the layout move is a torch op.
// Images per chunk of the low-precision CPU path: its column matrix and rows within the workspace limit.
int64_t lowp_chunk_images(const ConvGeom& c, const Tensor& x) {
  const int64_t per_image = (c.g.rows() + c.OC) * c.g.positions() * int64_t(x.element_size());
  return std::max<int64_t>(1, std::min<int64_t>(c.N, g_workspace_limit.load() / std::max<int64_t>(per_image, 1)));
}

void lowp_cpu_forward(const ConvGeom& c, const Tensor& x, const Tensor& w, const Tensor& out) {
  const int64_t L = c.g.positions(), rows = c.g.rows(), image = c.g.C * c.g.H * c.g.W;
  const int64_t B_max = lowp_chunk_images(c, x);
  const Tensor w3 = w.view({c.G, c.OC / c.G, c.rows_per_group()});
  Tensor col_buf = at::empty({rows * B_max * L}, x.options());
  for (int64_t n0 = 0; n0 < c.N; n0 += B_max) {
    const int64_t B = std::min(B_max, c.N - n0);
    const Im2colGeom g = chunk_geom(c, B);
    Tensor col = col_buf.narrow(0, 0, rows * B * L);
    cpu::im2col_bits16(g, reinterpret_cast<const uint16_t*>(x.data_ptr()) + n0 * image,
                       reinterpret_cast<uint16_t*>(col.data_ptr()));
    const Tensor y = at::bmm(w3, col.view({c.G, c.rows_per_group(), B * L}));  // (G, OCg, B*L)
    out.narrow(0, n0, B).view({B, c.OC, L}).copy_(y.view({c.OC, B, L}).transpose(0, 1));
  }
}

}  // namespace

namespace {

Tensor conv2d_forward_impl(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                           IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d";
  ConvGeom c = conv_geom(op, input, weight, stride, padding, dilation, groups);
  Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_same(op, "bias", *bias, input);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c.OC, "dlkernels.conv2d: bias must have shape (", c.OC,
                      "), got ", bias->sizes());
    b = bias->contiguous();
  }
  if (pair_fits(c, input)) return pair_forward(c, input, weight, b);
  if (direct_fits(c, input, 0)) return direct_forward(c, input, weight, b);
  if (nhwc(c, input)) {
    Tensor out = empty_output_nhwc(c.N, c.OC, c.g.OH, c.g.OW, input.options());
    if (c.N > 0 && !(winograd_fits(c, input) && winograd_forward(c, true, input, weight, b, out)))
      nhwc_forward(c, input, nhwc_filters(weight, c.OC), b, out);
    return out;
  }
  if (depthwise_nhwc(c, input)) {
    Tensor out = empty_output_nhwc(c.N, c.OC, c.g.OH, c.g.OW, input.options());
    const Tensor wt = weight.reshape({c.OC, c.g.KH * c.g.KW}).t().contiguous();  // (KH * KW, C)
    if (c.N > 0) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv2d", [&] {
        cpu::conv_depthwise_nhwc_forward<scalar_t>(depthwise_geom(c), input.data_ptr<scalar_t>(),
                                                   wt.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                                                   out.data_ptr<scalar_t>());
      });
    }
    return out;
  }
  if (depthwise_via_nhwc(c, input))
    return conv2d_forward_impl(input.contiguous(c10::MemoryFormat::ChannelsLast), weight, bias, stride, padding,
                               dilation, groups)
        .contiguous();
  const Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t L = c.g.positions(), rows = c.g.rows(), image = c.g.C * c.g.H * c.g.W;
  Tensor out = empty_output({c.N, c.OC, c.g.OH, c.g.OW}, x.options());
  if (c.N == 0) return out;
  if (cpu_kernels(x) && low_precision(x)) {
    if (!b.defined()) {
      lowp_cpu_forward(c, x, w, out);
      return out;
    }
    // With a bias: the float32 computation, rounded once (a bias added to the GEMM's rounded output
    // would round twice: 2.6x torch's error, whose oneDNN adds it before rounding).
    return conv2d_forward(input.to(at::kFloat), weight.to(at::kFloat), b.to(at::kFloat), stride, padding, dilation,
                          groups).to(input.scalar_type());
  }
  if (winograd_fits(c, x) && winograd_forward(c, false, x, w, b, out)) return out;
  if (small_direct(c, x)) {
    small_direct_forward(c, x, w, b, out);
    return out;
  }
  if (depthwise(c, x)) {
    const cpu::DepthwiseGeom d = depthwise_geom(c);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d", [&] {
      cpu::conv_depthwise_forward<scalar_t>(d, x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                            b.defined() ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
    });
    return out;
  }
  const Kernels k{x};
  const Tensor w3 = w.view({c.G, c.OC / c.G, c.rows_per_group()});
  const bool tile = tile_gemm_forward(c, x), tile_images = tile_direct(c, x);
  if (tile_images || batched_direct(c, tile_images)) {
    Tensor y = out.view({c.N, c.OC, L});
    if (tile_images) {
      tile_gemm_images(c, y, w3, false, x);
    } else if (b.defined() && low_precision(x)) {  // CUDA: the bias inside the GEMM, one rounding
      gemm_bias(y, w3.select(0, 0).expand({c.N, c.OC, rows}), x.view({c.N, rows, L}), b.expand({c.N, c.OC}));
      return out;
    } else {
      at::bmm_out(y, w3.select(0, 0).expand({c.N, c.OC, rows}), x.view({c.N, rows, L}));
    }
    if (b.defined() && !cpu_kernels(x)) {
      y.add_(b.view({1, c.OC, 1}));  // one launch for the batch
    } else if (b.defined()) {  // in place, image by image while it is in cache ((1, OC, L) rows are the image)
      for (int64_t n = 0; n < c.N; ++n) k.rows_to_images(1, c.OC, L, y[n], &b, out, n * c.OC * L);
    }
    return out;
  }
  const int64_t B_max = chunk_images(c, x);
  Tensor col_buf = c.direct ? Tensor() : empty_output({rows * B_max * L}, x.options());
  Tensor y_buf = B_max > 1 ? empty_output({c.OC * B_max * L}, x.options()) : Tensor();
  for (int64_t n0 = 0; n0 < c.N; n0 += B_max) {
    const int64_t B = std::min(B_max, c.N - n0);
    const Im2colGeom g = chunk_geom(c, B);
    Tensor col;
    if (c.direct) {
      col = x[n0].view({rows, L});
    } else {
      col = col_buf.narrow(0, 0, rows * B * L).view({rows, B * L});
      k.im2col(g, x, n0 * image, col);
    }
    const Tensor col3 = col.view({c.G, c.rows_per_group(), B * L});
    // float16/bfloat16 (CUDA only here): the bias goes in through the GEMM's accumulator
    const bool bias_in_gemm = b.defined() && low_precision(x);
    const Tensor* bias_after = b.defined() && !bias_in_gemm ? &b : nullptr;
    Tensor y = B == 1 ? out[n0].view({c.G, c.OC / c.G, L})  // the (OC, L) block is the image itself
                      : y_buf.narrow(0, 0, c.OC * B * L).view({c.G, c.OC / c.G, B * L});
    if (bias_in_gemm) {
      gemm_bias(y, w3, col3, b.view({c.G, c.OC / c.G}));
    } else {
      tile ? tile_gemm_out(y, w3, false, col3) : gemm(y, w3, col3);
    }
    if (B > 1 || bias_after) k.rows_to_images(B, c.OC, L, y, bias_after, out, n0 * c.OC * L);
  }
  return out;
}

// The input gradient of a float16/bfloat16 layer, rounded once. bfloat16 layers of one group and
// dilation 1 on a CPU path with pair-dot kernels: pair_input_grad (any stride, by phases). Otherwise a
// stride-1 layer's is itself a stride-1 convolution: of grad_output padded by K - 1 - P with the filters
// flipped and transposed, (C, OC, KH, KW); in the 16-bit dtype that is the forward's 16-bit path, float32
// accumulation, rounded once (as torch's oneDNN backward-data and cuDNN): no column matrix for col2im to
// sum. Other layers take the float32 computation, rounded once: their column matrices must not be
// rounded to 16 bits before col2im sums them (the input itself is not read: its float32 stand-in is left
// unwritten).
Tensor lowp_input_grad(const ConvGeom& c, const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                       IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  if (pair_fits(c, input) && c.g.DH == 1 && c.g.DW == 1) return phase_input_grad(c, grad_output, weight, input);
  const bool as_conv = c.G == 1 && c.g.SH == 1 && c.g.SW == 1 && c.g.DH == 1 && c.g.DW == 1 && c.g.PH <= c.g.KH - 1 &&
                       c.g.PW <= c.g.KW - 1 && padding.size() == 2;
  if (as_conv) {
    const Tensor wt = weight.flip({2, 3}).transpose(0, 1).contiguous();
    const int64_t pad[2] = {c.g.KH - 1 - c.g.PH, c.g.KW - 1 - c.g.PW};
    const int64_t one[2] = {1, 1};
    return conv2d_forward(grad_output, wt, c10::nullopt, one, pad, one, 1);
  }
  auto r = conv2d_backward(grad_output.to(at::kFloat), at::empty(input.sizes(), input.options().dtype(at::kFloat)),
                           weight.to(at::kFloat), stride, padding, dilation, groups, {true, false, false});
  return std::get<0>(r).to(input.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_impl(const Tensor& grad_output, const Tensor& input,
                                                        const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                        IntArrayRef dilation, int64_t groups,
                                                        std::array<bool, 3> output_mask) {
  const char* op = "conv2d_backward";
  ConvGeom c = conv_geom(op, input, weight, stride, padding, dilation, groups);
  check_same(op, "grad_output", grad_output, input);
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == c.N && grad_output.size(1) == c.OC &&
                        grad_output.size(2) == c.g.OH && grad_output.size(3) == c.g.OW,
                    "dlkernels.conv2d_backward: grad_output must have shape (", c.N, ", ", c.OC, ", ", c.g.OH, ", ",
                    c.g.OW, "), got ", grad_output.sizes());
  if (cpu_kernels(input) && low_precision(input)) {
    // float16/bfloat16 on the CPU. The weight gradient: the pair-dot kernel where pair_fits (float32
    // sums, rounded once), else GEMMs in that dtype, (G, OCg, B*L) @ (G, B*L, Rg) on the 16-bit column
    // matrix, one per chunk of images (one for a typical batch: rounded once, as torch's), summed in
    // float32. The input gradient: lowp_input_grad. The bias gradient: the float32 computation, rounded
    // once.
    const auto t = input.scalar_type();
    Tensor gw;
    if (output_mask[1] && pair_fits(c, input) && c.N > 0) gw = pair_weight_grad(c, input, grad_output, weight);
    if (output_mask[1] && !gw.defined()) {
      const Tensor x = input.contiguous(), go = grad_output.contiguous();
      const int64_t L = c.g.positions(), rows = c.g.rows(), image = c.g.C * c.g.H * c.g.W;
      const int64_t B_max = lowp_chunk_images(c, x);
      Tensor acc = at::zeros({c.G, c.OC / c.G, c.rows_per_group()}, x.options().dtype(at::kFloat));
      Tensor col_buf = at::empty({rows * B_max * L}, x.options());
      for (int64_t n0 = 0; n0 < c.N; n0 += B_max) {
        const int64_t B = std::min(B_max, c.N - n0);
        Tensor col = col_buf.narrow(0, 0, rows * B * L);
        cpu::im2col_bits16(chunk_geom(c, B), reinterpret_cast<const uint16_t*>(x.data_ptr()) + n0 * image,
                           reinterpret_cast<uint16_t*>(col.data_ptr()));
        const Tensor gy = go.narrow(0, n0, B).reshape({B, c.OC, L}).transpose(0, 1).reshape({c.G, c.OC / c.G, B * L});
        const Tensor part = at::bmm(gy, col.view({c.G, c.rows_per_group(), B * L}).transpose(1, 2));
        if (n0 == 0 && B == c.N) {
          gw = part.view(weight.sizes());  // one chunk: the GEMM's own rounding, nothing more
          break;
        }
        acc.add_(part);
      }
      if (!gw.defined()) gw = acc.to(t).view(weight.sizes());
    }
    Tensor gi = output_mask[0] ? lowp_input_grad(c, grad_output, input, weight, stride, padding, dilation, groups)
                               : at::empty({0}, input.options());
    Tensor gb = at::empty({0}, input.options());
    if (output_mask[2]) {  // float32, rounded once
      auto r = conv2d_backward(grad_output.to(at::kFloat), at::empty(input.sizes(), input.options().dtype(at::kFloat)),
                               weight.to(at::kFloat), stride, padding, dilation, groups, {false, false, true});
      gb = std::get<2>(r).to(t);
    }
    return {gi, gw.defined() ? gw : at::empty({0}, input.options()), gb};
  }
  if (low_precision(input) && output_mask[0] && !c.direct) {
    // float16/bfloat16 on CUDA: the input gradient rounded once, as on the CPU (W^T @ gy in 16 bits,
    // rounded, then summed by col2im and rounded again: 2.5x torch's error under some seeds, CI
    // 2026-12-06); the other gradients below.
    Tensor gi = lowp_input_grad(c, grad_output, input, weight, stride, padding, dilation, groups);
    auto r = conv2d_backward_impl(grad_output, input, weight, stride, padding, dilation, groups,
                                  {false, output_mask[1], output_mask[2]});
    std::get<0>(r) = gi;
    return r;
  }
  {
    // float32 gradients by the direct kernels where direct_fits; the rest by the paths below
    Tensor dgi, dgw;
    if (output_mask[0] && direct_fits(c, input, 1)) dgi = phase_input_grad(c, grad_output, weight, input);
    if (output_mask[1] && direct_fits(c, input, 2)) dgw = direct_weight_grad(c, input, grad_output, weight);
    if (dgi.defined() || dgw.defined()) {
      const std::array<bool, 3> rest{output_mask[0] && !dgi.defined(), output_mask[1] && !dgw.defined(), output_mask[2]};
      std::tuple<Tensor, Tensor, Tensor> r{at::empty({0}, input.options()), at::empty({0}, input.options()),
                                           at::empty({0}, input.options())};
      if (rest[0] || rest[1] || rest[2])
        r = conv2d_backward_impl(grad_output, input, weight, stride, padding, dilation, groups, rest);
      if (dgi.defined()) std::get<0>(r) = dgi;
      if (dgw.defined()) std::get<1>(r) = dgw;
      return r;
    }
  }
  if (nhwc(c, input)) {
    Tensor gi = at::empty({0}, input.options()), gw = at::empty({0}, input.options()), gb = at::empty({0}, input.options());
    nhwc_backward(c, grad_output, input, weight, output_mask, gi, gw, gb);
    return {gi, gw, gb};
  }
  if (depthwise_nhwc(c, input)) {
    Tensor gi = at::empty({0}, input.options()), gw = at::empty({0}, input.options()), gb = at::empty({0}, input.options());
    const Tensor go = grad_output.contiguous(c10::MemoryFormat::ChannelsLast);
    if (output_mask[2]) gb = at::sum(nhwc_rows(go), {0}, false, at::kDouble).to(input.scalar_type());
    const int64_t KK = c.g.KH * c.g.KW;
    const cpu::DepthwiseGeom d = depthwise_geom(c);
    if (output_mask[0]) gi = empty_output_nhwc(c.N, c.g.C, c.g.H, c.g.W, input.options());
    Tensor gwt = output_mask[1] ? at::empty({KK, c.OC}, input.options()) : Tensor();
    const Tensor wt = weight.reshape({c.OC, KK}).t().contiguous();  // (KH * KW, C)
    Tensor work = output_mask[1] ? at::empty({c.N * KK * c.OC}, input.options().dtype(at::kDouble)) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv2d_backward", [&] {
      if (output_mask[0] && c.N > 0)
        cpu::conv_depthwise_nhwc_input_grad<scalar_t>(d, go.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                                                      gi.data_ptr<scalar_t>());
      if (output_mask[1])
        cpu::conv_depthwise_nhwc_weight_grad<scalar_t>(d, input.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(),
                                                       gwt.data_ptr<scalar_t>(), work.data_ptr<double>());
    });
    if (output_mask[1]) gw = at::empty(weight.sizes(), input.options()).copy_(gwt.t().reshape(weight.sizes()));
    return {gi, gw, gb};
  }
  if (depthwise_via_nhwc(c, input)) {
    auto r = conv2d_backward_impl(grad_output.contiguous(c10::MemoryFormat::ChannelsLast),
                                  input.contiguous(c10::MemoryFormat::ChannelsLast), weight, stride, padding, dilation,
                                  groups, output_mask);
    if (output_mask[0]) std::get<0>(r) = std::get<0>(r).contiguous();
    return r;
  }
  const Tensor x = input.contiguous(), w = weight.contiguous(), go = grad_output.contiguous();
  const int64_t L = c.g.positions(), rows = c.g.rows(), image = c.g.C * c.g.H * c.g.W;
  const int64_t OCg = c.OC / c.G, Rg = c.rows_per_group();
  const Kernels k{x};
  // A gradient not asked for comes back as an empty tensor (the schema returns three tensors).
  Tensor grad_input = at::empty({0}, x.options()), grad_weight = at::empty({0}, x.options()),
         grad_bias = at::empty({0}, x.options());
  if (output_mask[0]) grad_input = empty_output(x.sizes(), x.options());
  // Winograd's weight gradient writes it whole; the other paths accumulate into zeros
  const bool wino = winograd_fits(c, x) && c.N > 0, wino_w = wino && winograd_weight_grad_fits(c, x);
  if (output_mask[1]) grad_weight = wino_w ? at::empty(w.sizes(), w.options()) : at::zeros(w.sizes(), w.options());
  if (output_mask[2]) {
    grad_bias = at::empty({c.OC}, x.options());
    k.channel_sum(c.N, c.OC, L, go, grad_bias);
  }
  if (c.N == 0 || !(output_mask[0] || output_mask[1])) return {grad_input, grad_weight, grad_bias};
  if (depthwise(c, x)) {
    const cpu::DepthwiseGeom d = depthwise_geom(c);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_backward", [&] {
      if (output_mask[0])
        cpu::conv_depthwise_input_grad<scalar_t>(d, go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                 grad_input.data_ptr<scalar_t>());
      if (output_mask[1])
        cpu::conv_depthwise_weight_grad<scalar_t>(d, x.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(),
                                                  grad_weight.data_ptr<scalar_t>());
    });
    return {grad_input, grad_weight, grad_bias};
  }
  if (wino_w && output_mask[1]) {
    if (winograd_weight_grad(c, false, x, go, grad_weight)) {
      output_mask[1] = false;  // done
    } else {
      grad_weight.zero_();  // a value not finite: the column-matrix path below
    }
  }
  const bool wino_gi = output_mask[0] && wino && winograd_input_grad(c, false, go, w, grad_input);
  if (!output_mask[0] && !output_mask[1]) return {grad_input, grad_weight, grad_bias};
  const bool direct_gi = wino_gi || (output_mask[0] && direct_input_grad(c, x));
  if (direct_gi) {
    if (!wino_gi) direct_input_grad_run(c, go, w, grad_input);
    if (!output_mask[1]) return {grad_input, grad_weight, grad_bias};
  }
  Tensor gw3 = output_mask[1] ? grad_weight.view({c.G, OCg, Rg}) : Tensor();
  const Tensor w3 = w.view({c.G, OCg, Rg}), wT3 = w3.transpose(1, 2);  // (G, OCg, Rg), (G, Rg, OCg)
  const bool small = small_gemm(c, x), tile = tile_gemm(c, x), tile_images = tile_direct(c, x);
  const bool batched = batched_direct(c, tile_images);
  if (output_mask[0] && tile_images) tile_gemm_images(c, grad_input.view({c.N, rows, L}), w3, true, go);
  if (output_mask[0] && batched) {
    Tensor gi = grad_input.view({c.N, rows, L});
    at::bmm_out(gi, wT3.select(0, 0).expand({c.N, rows, c.OC}), go.view({c.N, c.OC, L}));
  }
  // grad_weight accumulated transposed on the CPU for one group (see the note after gemm_accumulate)
  Tensor gwT = output_mask[1] && cpu_kernels(x) && c.G == 1 && !small ? at::zeros({Rg, OCg}, w.options()) : Tensor();
  // A GPU pays per launch: a 1x1 layer's weight gradient is one GEMM over the whole batch, (G, OCg, N*L)
  // @ (G, N*L, Rg) from two layout copies, instead of one small GEMM per image.
  if (output_mask[1] && c.direct && !cpu_kernels(x)) {
    const Tensor gy_all = go.view({c.N, c.G, OCg, L}).permute({1, 2, 0, 3}).reshape({c.G, OCg, c.N * L});
    const Tensor x_all = x.view({c.N, c.G, Rg, L}).permute({1, 0, 3, 2}).reshape({c.G, c.N * L, Rg});
    at::bmm_out(gw3, gy_all, x_all);
    output_mask[1] = false;  // done: the loop below runs the input gradient only, if asked for
    if (!output_mask[0] || batched || tile_images || direct_gi) return {grad_input, grad_weight, grad_bias};
  }
  const int64_t B_max = chunk_images(c, x);
  Tensor col_buf = c.direct ? Tensor() : empty_output({rows * B_max * L}, x.options());
  Tensor gy_buf = B_max > 1 ? empty_output({c.OC * B_max * L}, x.options()) : Tensor();
  // float16/bfloat16 (CUDA) in several chunks: each chunk's weight-gradient GEMM rounded once, the chunks
  // summed in float32, as on the CPU (accumulated in the 16-bit gradient, each chunk rounded the running
  // sum again: 2.8x torch's error under emulation, CI seed 886229062)
  Tensor gw_acc = output_mask[1] && low_precision(x) && B_max < c.N ? at::zeros({c.G, OCg, Rg}, x.options().dtype(at::kFloat))
                                                                     : Tensor();
  for (int64_t n0 = 0; n0 < c.N; n0 += B_max) {
    const int64_t B = std::min(B_max, c.N - n0);
    const Im2colGeom g = chunk_geom(c, B);
    Tensor gy;
    if (B == 1) {
      gy = go[n0].view({c.G, OCg, L});
    } else {
      gy = gy_buf.narrow(0, 0, c.OC * B * L).view({c.G, OCg, B * L});
      k.images_to_rows(B, c.OC, L, go, n0 * c.OC * L, gy);
    }
    Tensor col = c.direct ? x[n0].view({c.G, Rg, L}) : col_buf.narrow(0, 0, rows * B * L).view({c.G, Rg, B * L});
    if (output_mask[1]) {
      if (!c.direct) k.im2col(g, x, n0 * image, col);
      if (small) {
        small_gemm_dots(gw3, gy, col);
      } else if (gwT.defined()) {
        gwT.addmm_(col.select(0, 0), gy.select(0, 0).t());
      } else if (gw_acc.defined()) {
        gw_acc.add_(at::bmm(gy, col.transpose(1, 2)));
      } else {
        gemm_accumulate(gw3, gy, col.transpose(1, 2));
      }
    }
    if (output_mask[0] && !batched && !tile_images && !direct_gi) {
      if (c.direct) {
        Tensor gi = grad_input[n0].view({c.G, Rg, L});  // (CPU layers within the tile bound: tile_images)
        gemm(gi, wT3, gy);
      } else {
        // the column buffer is free again once grad_weight has used it
        tile ? tile_gemm_out(col, w3, true, gy) : gemm(col, wT3, gy);
        k.col2im(g, col, grad_input, n0 * image);
      }
    }
  }
  if (gwT.defined()) gw3.select(0, 0).copy_(gwT.t());
  if (gw_acc.defined()) gw3.copy_(gw_acc);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

// The public ops: each result in the memory format its counterpart has (the paths above that compute in
// the contiguous layout hand a channels_last input's results back converted); a channels_last weight
// gets a channels_last gradient.
Tensor conv2d_forward(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias, IntArrayRef stride,
                      IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  return in_format_of(conv2d_forward_impl(input, weight, bias, stride, padding, dilation, groups), input);
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                                   int64_t groups, std::array<bool, 3> output_mask) {
  auto r = conv2d_backward_impl(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
  if (output_mask[0]) std::get<0>(r) = in_format_of(std::get<0>(r), input);
  if (output_mask[1]) {
    const auto f = channels_last(weight) ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous;
    std::get<1>(r) = std::get<1>(r).contiguous(f);
  }
  return r;
}

Tensor im2col(const Tensor& input, IntArrayRef kernel_size, IntArrayRef dilation, IntArrayRef padding,
              IntArrayRef stride) {
  const char* op = "im2col";
  check_input(op, input);
  check_pair(op, "kernel_size", kernel_size, true);
  check_pair(op, "dilation", dilation, true);
  check_pair(op, "padding", padding, false);
  check_pair(op, "stride", stride, true);
  const Tensor x = input.contiguous();
  Im2colGeom g{x.size(1), x.size(2), x.size(3), kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
               padding[1], dilation[0], dilation[1], 0, 0, x.size(0), 0, 0};
  g.OH = conv_output_size(g.H, g.KH, g.SH, g.PH, g.PH, g.DH);
  g.OW = conv_output_size(g.W, g.KW, g.SW, g.PW, g.PW, g.DW);
  TORCH_CHECK_VALUE(g.OH >= 1 && g.OW >= 1, "dlkernels.im2col: kernel_size ", kernel_size, " with dilation ",
                    dilation, " is larger than the padded input (", g.H, " x ", g.W, " with padding ", padding, ")");
  g.row_stride = g.positions();
  g.image_stride = g.rows() * g.positions();
  Tensor out = empty_output({g.images, g.rows(), g.positions()}, x.options());
  if (g.images > 0) Kernels{x}.im2col(g, x, 0, out);
  return out;
}

Tensor col2im(const Tensor& input, IntArrayRef output_size, IntArrayRef kernel_size, IntArrayRef dilation,
              IntArrayRef padding, IntArrayRef stride) {
  const char* op = "col2im";
  TORCH_CHECK(input.is_cpu() || input.is_cuda(), "dlkernels.col2im: input must be a CPU or CUDA tensor, got ",
              input.device());
  check_float(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() == 3, "dlkernels.col2im: input must have shape (N, C * kH * kW, L) or (C * kH * kW, L), got ",
                    input.sizes());
  check_pair(op, "output_size", output_size, true);
  check_pair(op, "kernel_size", kernel_size, true);
  check_pair(op, "dilation", dilation, true);
  check_pair(op, "padding", padding, false);
  check_pair(op, "stride", stride, true);
  const int64_t KK = kernel_size[0] * kernel_size[1];
  TORCH_CHECK_VALUE(input.size(1) > 0 && input.size(1) % KK == 0, "dlkernels.col2im: input.size(1) must be a positive "
                    "multiple of kH * kW = ", KK, ", got ", input.size(1));
  Im2colGeom g{input.size(1) / KK, output_size[0], output_size[1], kernel_size[0], kernel_size[1], stride[0], stride[1],
               padding[0], padding[1], dilation[0], dilation[1], 0, 0, input.size(0), 0, 0};
  g.OH = conv_output_size(g.H, g.KH, g.SH, g.PH, g.PH, g.DH);
  g.OW = conv_output_size(g.W, g.KW, g.SW, g.PW, g.PW, g.DW);
  TORCH_CHECK_VALUE(g.OH >= 1 && g.OW >= 1 && input.size(2) == g.OH * g.OW, "dlkernels.col2im: output_size ",
                    output_size, " with kernel_size ", kernel_size, ", dilation ", dilation, ", padding ", padding,
                    " and stride ", stride, " has ", g.OH, " x ", g.OW, " = ", g.OH * g.OW,
                    " sliding blocks, but input.size(2) is ", input.size(2));
  g.row_stride = g.positions();
  g.image_stride = g.rows() * g.positions();
  const Tensor cols = input.contiguous();
  Tensor out = empty_output({g.images, g.C, g.H, g.W}, cols.options());
  if (g.images > 0) Kernels{cols}.col2im(g, cols, out, 0);
  return out;
}

}  // namespace dlk::ops
