// Batch-normalization CUDA kernels. CUDA headers only, raw pointers: compiles with plain `nvcc -c`.
// Same semantics as csrc/cpu/batch_norm_impl.h (the specification).
// Reductions in two stages: a grid of (channel, block) computes per-block partials (Welford count,
// mean, M2 for the statistics; plain sums for backward) in double, merged in a fixed tree within the
// block; then one thread per channel merges its blocks in order. No atomics: deterministic, and
// Chan's merge keeps the variance accurate for N*H*W in the millions and for means far from zero.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/batch_norm.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace dlk::cuda {
namespace {

constexpr int kThreads = kBlockThreads;
constexpr int kMaxBlocksPerChannel = 64;  // the workspace holds 3 * C * 64 doubles

int blocks_per_channel(const BatchNormGeom& g) {
  const int64_t want = (g.count() + kThreads * 16 - 1) / (kThreads * 16);
  return int(want < 1 ? 1 : (want > kMaxBlocksPerChannel ? kMaxBlocksPerChannel : want));
}

// The values j0, j0 + step, ... of channel c (j = n * L + l), walked without a division per value:
// (n, l) advance by (step / L, step % L) with one carry.
struct ChannelWalk {
  int64_t n, l, step_n, step_l, base;
  const BatchNormGeom& g;
  __device__ ChannelWalk(const BatchNormGeom& geom, int64_t c, int64_t j0, int64_t step)
      : n(j0 / geom.L), l(j0 % geom.L), step_n(step / geom.L), step_l(step % geom.L), base(c), g(geom) {}
  __device__ int64_t offset() const { return g.channels_last ? (n * g.L + l) * g.C + base : (n * g.C + base) * g.L + l; }
  __device__ void next() {
    n += step_n;
    l += step_l;
    if (l >= g.L) {
      l -= g.L;
      ++n;
    }
  }
};

template <class I> __device__ __forceinline__ I channel_of(const BatchNormGeom& g, I i) {
  return g.channels_last ? i % I(g.C) : (i / I(g.L)) % I(g.C);
}

// Layouts whose neighbouring values of a channel lie C apart (channels_last, and (N, C) inputs, L = 1)
// with C >= kCols take the column kernels: a block spans kCols neighbouring channels (a warp reads 32
// consecutive values) and kRows values of each at a time; the others the row kernels, a block per
// (channel, part), threads along the channel's values.
constexpr int kCols = 32, kRows = kThreads / kCols;
bool column_layout(const BatchNormGeom& g) { return (g.channels_last || g.L == 1) && g.C >= kCols; }

struct Welford {
  double n, mean, m2;
};

__device__ __forceinline__ Welford merge(Welford a, Welford b) {
  const double n = a.n + b.n;
  if (n == 0) return a;
  const double d = b.mean - a.mean, fb = b.n / n;
  return Welford{n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

// Block (c, b) of blockDim.x threads covers values [b * per, (b + 1) * per) of channel c.
template <class T> __global__ void stats_partial_kernel(BatchNormGeom g, const T* x, double* part) {
  __shared__ double sn[kThreads], sm[kThreads], s2[kThreads];
  const int64_t c = blockIdx.x, b = blockIdx.y, B = gridDim.y, count = g.count();
  const int64_t per = (count + B - 1) / B, j0 = b * per, j1 = min(count, j0 + per);
  Welford w{0, 0, 0};
  ChannelWalk walk(g, c, j0 + threadIdx.x, blockDim.x);
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x, walk.next()) {
    const double v = double(to_acc(x[walk.offset()]));
    w.n += 1;
    const double d = v - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v - w.mean);
  }
  sn[threadIdx.x] = w.n;
  sm[threadIdx.x] = w.mean;
  s2[threadIdx.x] = w.m2;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
      const Welford r = merge(Welford{sn[threadIdx.x], sm[threadIdx.x], s2[threadIdx.x]},
                              Welford{sn[threadIdx.x + s], sm[threadIdx.x + s], s2[threadIdx.x + s]});
      sn[threadIdx.x] = r.n;
      sm[threadIdx.x] = r.mean;
      s2[threadIdx.x] = r.m2;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double* p = part + 3 * (c * B + b);
    p[0] = sn[0];
    p[1] = sm[0];
    p[2] = s2[0];
  }
}

// The column kernel of the statistics (see column_layout): grid (C / kCols, parts), block (kCols, kRows).
template <class T> __global__ void stats_partial_cols_kernel(BatchNormGeom g, const T* x, double* part) {
  __shared__ double sn[kRows][kCols], sm[kRows][kCols], s2[kRows][kCols];
  const int64_t c = int64_t(blockIdx.x) * kCols + threadIdx.x, b = blockIdx.y, B = gridDim.y, count = g.count();
  const int64_t per = (count + B - 1) / B, j0 = b * per, j1 = min(count, j0 + per);
  const int tx = threadIdx.x, ty = threadIdx.y;
  Welford w{0, 0, 0};
  if (c < g.C) {
    for (int64_t j = j0 + ty; j < j1; j += kRows) {  // channels_last's (n * L + l) * C + c is j * C + c
      const double v = double(to_acc(x[j * g.C + c]));
      w.n += 1;
      const double d = v - w.mean;
      w.mean += d / w.n;
      w.m2 += d * (v - w.mean);
    }
  }
  sn[ty][tx] = w.n;
  sm[ty][tx] = w.mean;
  s2[ty][tx] = w.m2;
  __syncthreads();
  for (int s = kRows / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const Welford r = merge(Welford{sn[ty][tx], sm[ty][tx], s2[ty][tx]},
                              Welford{sn[ty + s][tx], sm[ty + s][tx], s2[ty + s][tx]});
      sn[ty][tx] = r.n;
      sm[ty][tx] = r.mean;
      s2[ty][tx] = r.m2;
    }
    __syncthreads();
  }
  if (ty == 0 && c < g.C) {
    double* p = part + 3 * (c * B + b);
    p[0] = sn[0][tx];
    p[1] = sm[0][tx];
    p[2] = s2[0][tx];
  }
}

__global__ void stats_finish_kernel(int64_t C, int B, const double* part, double* mean, double* var) {
  DLK_GRID_LOOP(c, C) {
    Welford w{0, 0, 0};
    for (int b = 0; b < B; ++b) {
      const double* p = part + 3 * (c * B + b);
      w = merge(w, Welford{p[0], p[1], p[2]});
    }
    mean[c] = w.mean;
    var[c] = w.n > 0 ? w.m2 / w.n : 0.0;
  }
}

template <class T, class I>
__global__ void apply_kernel(BatchNormGeom g, const T* x, const double* mean, const double* scale, const double* beta,
                             const T* residual, bool relu, T* y) {
  DLK_GRID_LOOP_I(I, i, g.N * g.C * g.L) {
    const I c = channel_of(g, i);
    double v = (double(to_acc(x[i])) - mean[c]) * scale[c] + beta[c];
    if (residual) v += double(to_acc(residual[i]));
    if (relu) v = v < 0 ? 0.0 : v;  // torch.relu: NaN (and -0.0) pass
    y[i] = from_acc<T>(typename AccOf<T>::type(v));
  }
}

template <class T> __device__ __forceinline__ double dz_of(const T* dy, const T* y, bool relu, int64_t i) {
  const auto d = to_acc(dy[i]);
  return relu && !(to_acc(y[i]) > 0) ? 0.0 : double(d);
}

template <class T>
__global__ void backward_partial_kernel(BatchNormGeom g, const T* dy, const T* x, const T* y, bool relu,
                                        const double* mean, double* part) {
  __shared__ double sa[kThreads], sb[kThreads];
  const int64_t c = blockIdx.x, b = blockIdx.y, B = gridDim.y, count = g.count();
  const int64_t per = (count + B - 1) / B, j0 = b * per, j1 = min(count, j0 + per);
  const double m = mean[c];
  double a = 0, s = 0;
  ChannelWalk walk(g, c, j0 + threadIdx.x, blockDim.x);
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x, walk.next()) {
    const int64_t i = walk.offset();
    const double dz = dz_of(dy, y, relu, i);
    a += dz;
    s += dz * (double(to_acc(x[i])) - m);
  }
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (int(threadIdx.x) < k) {
      sa[threadIdx.x] += sa[threadIdx.x + k];
      sb[threadIdx.x] += sb[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part[2 * (c * B + b)] = sa[0];
    part[2 * (c * B + b) + 1] = sb[0];
  }
}

// The column kernel of the backward sums (see column_layout).
template <class T>
__global__ void backward_partial_cols_kernel(BatchNormGeom g, const T* dy, const T* x, const T* y, bool relu,
                                             const double* mean, double* part) {
  __shared__ double sa[kRows][kCols], sb[kRows][kCols];
  const int64_t c = int64_t(blockIdx.x) * kCols + threadIdx.x, b = blockIdx.y, B = gridDim.y, count = g.count();
  const int64_t per = (count + B - 1) / B, j0 = b * per, j1 = min(count, j0 + per);
  const int tx = threadIdx.x, ty = threadIdx.y;
  double a = 0, s = 0;
  if (c < g.C) {
    const double m = mean[c];
    for (int64_t j = j0 + ty; j < j1; j += kRows) {
      const int64_t i = j * g.C + c;
      const double dz = dz_of(dy, y, relu, i);
      a += dz;
      s += dz * (double(to_acc(x[i])) - m);
    }
  }
  sa[ty][tx] = a;
  sb[ty][tx] = s;
  __syncthreads();
  for (int k = kRows / 2; k > 0; k >>= 1) {
    if (ty < k) {
      sa[ty][tx] += sa[ty + k][tx];
      sb[ty][tx] += sb[ty + k][tx];
    }
    __syncthreads();
  }
  if (ty == 0 && c < g.C) {
    part[2 * (c * B + b)] = sa[0][tx];
    part[2 * (c * B + b) + 1] = sb[0][tx];
  }
}

__global__ void backward_finish_kernel(int64_t C, int B, const double* part, double* sum_dz, double* sum_dz_xmu) {
  DLK_GRID_LOOP(c, C) {
    double a = 0, s = 0;
    for (int b = 0; b < B; ++b) {
      a += part[2 * (c * B + b)];
      s += part[2 * (c * B + b) + 1];
    }
    sum_dz[c] = a;
    sum_dz_xmu[c] = s;
  }
}

template <class T, class I>
__global__ void backward_apply_kernel(BatchNormGeom g, const T* dy, const T* x, const T* y, bool relu,
                                      const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                                      T* grad_input, T* grad_residual) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP_I(I, i, g.N * g.C * g.L) {
    const I c = channel_of(g, i);
    const double dz = dz_of(dy, y, relu, int64_t(i));
    if (grad_input) grad_input[i] = from_acc<T>(A(dz * k_dz[c] + (double(to_acc(x[i])) - mean[c]) * k_x[c] + k_1[c]));
    if (grad_residual) grad_residual[i] = from_acc<T>(A(dz));
  }
}

}  // namespace

int batch_norm_stats(DType dt, const BatchNormGeom& g, const void* x, double* mean, double* var, double* workspace,
                     void* stream) {
  if (g.C == 0) return 0;
  const int B = blocks_per_channel(g);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    if (column_layout(g)) {
      stats_partial_cols_kernel<T><<<dim3(unsigned((g.C + kCols - 1) / kCols), unsigned(B)), dim3(kCols, kRows), 0, s>>>(
          g, static_cast<const T*>(x), workspace);
    } else {
      stats_partial_kernel<T><<<dim3(unsigned(g.C), unsigned(B)), kThreads, 0, s>>>(g, static_cast<const T*>(x), workspace);
    }
    stats_finish_kernel<<<blocks_for(g.C), kThreads, 0, s>>>(g.C, B, workspace, mean, var);
    return cudaGetLastError();
  });
}

int batch_norm_apply(DType dt, const BatchNormGeom& g, const void* x, const double* mean, const double* scale,
                     const double* beta, const void* residual, bool relu, void* y, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_index(g.N * g.C * g.L, [&](auto itag) {
      using I = decltype(itag);
      apply_kernel<T, I><<<blocks_for(g.N * g.C * g.L), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          g, static_cast<const T*>(x), mean, scale, beta, static_cast<const T*>(residual), relu, static_cast<T*>(y));
      return cudaGetLastError();
    });
  });
}

int batch_norm_backward_reduce(DType dt, const BatchNormGeom& g, const void* dy, const void* x, const void* y,
                               bool relu, const double* mean, double* sum_dz, double* sum_dz_xmu, double* workspace,
                               void* stream) {
  if (g.C == 0) return 0;
  const int B = blocks_per_channel(g);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    if (column_layout(g)) {
      backward_partial_cols_kernel<T><<<dim3(unsigned((g.C + kCols - 1) / kCols), unsigned(B)), dim3(kCols, kRows), 0,
                                        s>>>(g, static_cast<const T*>(dy), static_cast<const T*>(x),
                                             static_cast<const T*>(y), relu, mean, workspace);
    } else {
      backward_partial_kernel<T><<<dim3(unsigned(g.C), unsigned(B)), kThreads, 0, s>>>(
          g, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(y), relu, mean, workspace);
    }
    backward_finish_kernel<<<blocks_for(g.C), kThreads, 0, s>>>(g.C, B, workspace, sum_dz, sum_dz_xmu);
    return cudaGetLastError();
  });
}

int batch_norm_backward_apply(DType dt, const BatchNormGeom& g, const void* dy, const void* x, const void* y,
                              bool relu, const double* mean, const double* k_dz, const double* k_x, const double* k_1,
                              void* grad_input, void* grad_residual, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_index(g.N * g.C * g.L, [&](auto itag) {
      using I = decltype(itag);
      backward_apply_kernel<T, I><<<blocks_for(g.N * g.C * g.L), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          g, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(y), relu, mean, k_dz, k_x, k_1,
          static_cast<T*>(grad_input), static_cast<T*>(grad_residual));
      return cudaGetLastError();
    });
  });
}

}  // namespace dlk::cuda
