// Softmax-cross-entropy CUDA kernels. CUDA headers only, raw pointers: compiles with plain `nvcc -c`.
//
// The formulas are those of csrc/cpu/cross_entropy.h (the CPU scalar path is the specification).
// Layouts, as on the CPU:
//  - S == 1: rows are contiguous. A group of TPR threads (a warp or sub-warp for small C, a whole
//    block for large C) owns one row: one pass of online max/sum-of-exp over the row, a group
//    reduction, and for label smoothing or probability targets a second pass for the weighted sums,
//    shifted by the row max so they do not cancel.
//  - S > 1: one thread per (n, s) row; threads of a warp take neighbouring s, so every load of class c
//    is coalesced.
// Accumulation is in float (double for double inputs); float16/bfloat16 are read and written as such.
// The reduction over rows runs in one block in a fixed order, so results are deterministic; the
// backward writes every element once (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/cross_entropy.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace dlk::cuda {
namespace {

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float log_acc(float v) { return logf(v); }
__device__ __forceinline__ double log_acc(double v) { return log(v); }
template <class A> __device__ __forceinline__ A neg_inf() { return -INFINITY; }

// Online log-sum-exp state: m = running max, s = sum of exp(x - m). A +inf value makes s NaN: torch
// (and the CPU path) subtract the row max first, and exp(inf - inf) is NaN, so a row holding +inf has
// a NaN log-sum-exp, loss and gradient row; the online form alone would give lse = +inf.
template <class A> struct MaxSum {
  A m, s;
  __device__ void add(A x) {
    if (x > m) {  // also true for the first finite x, with m = -inf: s * exp(-inf) = 0
      s = s * exp_acc(m - x) + A(1);
      m = x;
    } else if (x != neg_inf<A>()) {
      s += exp_acc(x - m);  // NaN x makes s NaN, as torch's result
    }
    if (m == -neg_inf<A>()) s = A(NAN);
  }
  __device__ void merge(const MaxSum& o) {
    if (o.m > m) {
      s = s * exp_acc(m - o.m) + o.s;
      m = o.m;
    } else if (o.m != neg_inf<A>()) {
      s += o.s * exp_acc(o.m - m);
    } else if (o.s != o.s) {
      s = o.s;  // keep a NaN
    }
    if (m == -neg_inf<A>()) s = A(NAN);
  }
};

__device__ __forceinline__ float shfl_xor(float v, int off) { return __shfl_xor_sync(0xffffffffu, v, off); }
__device__ __forceinline__ double shfl_xor(double v, int off) { return __shfl_xor_sync(0xffffffffu, v, off); }
template <class A> __device__ __forceinline__ MaxSum<A> shfl_xor(MaxSum<A> v, int off) {
  return MaxSum<A>{shfl_xor(v.m, off), shfl_xor(v.s, off)};
}

// Reduction over a group of TPR threads (TPR a power of two, at most the block size of 256).
// Every thread of the group gets the result. smem: one slot per warp.
template <int TPR, class V, class Op> __device__ V group_reduce(V v, Op op, V* smem) {
  constexpr int kWidth = TPR < 32 ? TPR : 32;
#pragma unroll
  for (int off = kWidth / 2; off > 0; off /= 2) {
    v = op(v, shfl_xor(v, off));
  }
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    constexpr int kWarps = TPR / 32;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    const int first = (warp / kWarps) * kWarps;
    v = smem[first];
    for (int i = 1; i < kWarps; ++i) v = op(v, smem[first + i]);  // same order in every thread
  }
  return v;
}


template <class T> struct ForwardArgs {
  const T* input;
  const int64_t* target;
  const T* target_prob;
  const T* weight;
  using A = typename AccOf<T>::type;
  A* loss;
  A* lse;
  A* row_weight;
  unsigned long long* bad_row;
  const A* wsum_device;  // sum of the class weights, or nullptr without weights (then C)
};

template <class T> __device__ __forceinline__ typename AccOf<T>::type weight_at(const T* w, int64_t c) {
  using A = typename AccOf<T>::type;
  return w ? A(to_acc(w[c])) : A(1);
}

// A class index outside [0, C) that is not ignore_index: remember the smallest such row for the ops
// layer's error message (atomicMin: the result does not depend on the order), and give the row NaN.
template <class A>
__device__ void record_bad_target(int64_t row, unsigned long long* bad_row, A* loss, A* lse, A* roww) {
  atomicMin(bad_row, static_cast<unsigned long long>(row));
  loss[row] = A(NAN);
  lse[row] = roww[row] = A(0);
}

// ------------------------------------------------------------------------------------ forward

template <class T, int TPR>
__global__ void forward_rows_kernel(CrossEntropyGeom g, CrossEntropyOptions o, ForwardArgs<T> a) {
  using A = typename AccOf<T>::type;
  __shared__ MaxSum<A> smem_ms[8];
  __shared__ A smem_a[8];
  constexpr int kRowsPerBlock = 256 / TPR;
  const int lane = threadIdx.x % TPR;
  const int64_t C = g.C;
  const A eps = A(o.label_smoothing), keep = A(1) - eps, eps_c = eps / A(C);
  const A wsum = a.wsum_device ? *a.wsum_device : A(C);
  for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / TPR; row - threadIdx.x / TPR < g.rows();
       row += int64_t(gridDim.x) * kRowsPerBlock) {
    // Every thread of a block runs the same number of iterations (group_reduce syncs the block).
    const bool active = row < g.rows();
    const T* x = a.input + (active ? row : 0) * C;
    int64_t t = 0;
    bool skip = !active;
    if (active && !o.prob_target) {
      t = a.target[row];
      if (t == o.ignore_index) {
        if (lane == 0) a.loss[row] = a.lse[row] = a.row_weight[row] = A(0);
        skip = true;
      } else if (t < 0 || t >= C) {
        if (lane == 0) record_bad_target(row, a.bad_row, a.loss, a.lse, a.row_weight);
        skip = true;
      }
    }
    MaxSum<A> ms{neg_inf<A>(), A(0)};
    if (!skip)
      for (int64_t c = lane; c < C; c += TPR) ms.add(A(to_acc(x[c])));
    ms = group_reduce<TPR>(ms, [](MaxSum<A> p, MaxSum<A> q) { p.merge(q); return p; }, smem_ms);
    const A m = ms.m, log_sum = log_acc(ms.s);
    auto sum = [](A p, A q) { return p + q; };
    A extra1 = 0, extra2 = 0;  // smoothing: sum w (x - m); probabilities: sum w q', sum w q' (x - m)
    const bool second_pass = o.prob_target || eps > A(0);
    if (second_pass) {
      if (!skip) {
        for (int64_t c = lane; c < C; c += TPR) {
          const A d = A(to_acc(x[c])) - m, w = weight_at(a.weight, c);
          if (o.prob_target) {
            const A wq = w * (keep * A(to_acc(a.target_prob[row * C + c])) + eps_c);
            extra1 += wq;
            extra2 += wq * d;
          } else {
            extra1 += w * d;
          }
        }
      }
      extra1 = group_reduce<TPR>(extra1, sum, smem_a);
      extra2 = group_reduce<TPR>(extra2, sum, smem_a);
    }
    if (!skip && lane == 0) {
      a.lse[row] = m + log_sum;
      if (o.prob_target) {
        a.loss[row] = extra1 * log_sum - extra2;
        a.row_weight[row] = A(1);
      } else {
        const A wt = weight_at(a.weight, t);
        A loss = keep * wt * (m + log_sum - A(to_acc(x[t])));
        if (eps > A(0)) loss += eps_c * (wsum * log_sum - extra1);
        a.loss[row] = loss;
        a.row_weight[row] = wt;
      }
    }
  }
}

template <class T>
__global__ void forward_strided_kernel(CrossEntropyGeom g, CrossEntropyOptions o, ForwardArgs<T> a) {
  using A = typename AccOf<T>::type;
  const int64_t C = g.C, S = g.S;
  const A eps = A(o.label_smoothing), keep = A(1) - eps, eps_c = eps / A(C);
  const A wsum = a.wsum_device ? *a.wsum_device : A(C);
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < g.rows();
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = g.row_base(row);
    const T* x = a.input + base;
    int64_t t = 0;
    if (!o.prob_target) {
      t = a.target[row];
      if (t == o.ignore_index) {
        a.loss[row] = a.lse[row] = a.row_weight[row] = A(0);
        continue;
      }
      if (t < 0 || t >= C) {
        record_bad_target(row, a.bad_row, a.loss, a.lse, a.row_weight);
        continue;
      }
    }
    MaxSum<A> ms{neg_inf<A>(), A(0)};
    for (int64_t c = 0; c < C; ++c) ms.add(A(to_acc(x[c * S])));
    const A m = ms.m, log_sum = log_acc(ms.s);
    A extra1 = 0, extra2 = 0;
    if (o.prob_target || eps > A(0)) {
      for (int64_t c = 0; c < C; ++c) {
        const A d = A(to_acc(x[c * S])) - m, w = weight_at(a.weight, c);
        if (o.prob_target) {
          const A wq = w * (keep * A(to_acc(a.target_prob[base + c * S])) + eps_c);
          extra1 += wq;
          extra2 += wq * d;
        } else {
          extra1 += w * d;
        }
      }
    }
    a.lse[row] = m + log_sum;
    if (o.prob_target) {
      a.loss[row] = extra1 * log_sum - extra2;
      a.row_weight[row] = A(1);
    } else {
      const A wt = weight_at(a.weight, t);
      A loss = keep * wt * (m + log_sum - A(to_acc(x[t * S])));
      if (eps > A(0)) loss += eps_c * (wsum * log_sum - extra1);
      a.loss[row] = loss;
      a.row_weight[row] = wt;
    }
  }
}

// Sum of the class weights, one block, fixed order.
template <class T> __global__ void weight_sum_kernel(const T* w, int64_t C, typename AccOf<T>::type* out) {
  using A = typename AccOf<T>::type;
  __shared__ double part[256];
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += double(to_acc(w[c]));
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = A(part[0]);
}

// ------------------------------------------------------------------------------------ reduction

template <class T>
__global__ void reduce_kernel(int64_t rows, const typename AccOf<T>::type* loss, const typename AccOf<T>::type* roww,
                              int reduction, T* out, typename AccOf<T>::type* total_weight) {
  using A = typename AccOf<T>::type;
  __shared__ double ps[512], pw[512];
  double s = 0, w = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    s += double(loss[r]);
    w += double(roww[r]);
  }
  ps[threadIdx.x] = s;
  pw[threadIdx.x] = w;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      ps[threadIdx.x] += ps[threadIdx.x + half];
      pw[threadIdx.x] += pw[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *total_weight = A(pw[0]);
    if (out) *out = from_acc<T>(A(reduction == int(Reduction::Mean) ? ps[0] / pw[0] : ps[0]));
  }
}

// ------------------------------------------------------------------------------------ backward

template <class T> struct BackwardArgs {
  using A = typename AccOf<T>::type;
  const T* grad_loss;
  const A* total_weight;
  const T* input;
  const int64_t* target;
  const T* target_prob;
  const T* weight;
  const A* lse;
  T* grad_input;
  const A* wsum_device;
};

template <class T>
__device__ __forceinline__ typename AccOf<T>::type row_grad(const BackwardArgs<T>& a, Reduction red, int64_t row) {
  using A = typename AccOf<T>::type;
  if (red == Reduction::None) return A(to_acc(a.grad_loss[row]));
  if (red == Reduction::Mean) return A(to_acc(a.grad_loss[0])) / *a.total_weight;
  return A(to_acc(a.grad_loss[0]));
}

template <class T, int TPR>
__global__ void backward_rows_kernel(CrossEntropyGeom g, CrossEntropyOptions o, BackwardArgs<T> a) {
  using A = typename AccOf<T>::type;
  __shared__ A smem[8];
  constexpr int kRowsPerBlock = 256 / TPR;
  const int lane = threadIdx.x % TPR;
  const int64_t C = g.C;
  const A eps = A(o.label_smoothing), keep = A(1) - eps, eps_c = eps / A(C);
  const A wsum = a.wsum_device ? *a.wsum_device : A(C);
  for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / TPR; row - threadIdx.x / TPR < g.rows();
       row += int64_t(gridDim.x) * kRowsPerBlock) {
    const bool active = row < g.rows();
    const int64_t r = active ? row : 0;
    const T* x = a.input + r * C;
    T* dx = a.grad_input + r * C;
    const A gr = active ? row_grad(a, o.reduction, r) : A(0);
    const A lse = active ? a.lse[r] : A(0);
    if (!o.prob_target) {
      if (!active) continue;  // no group reduction on this path, so inactive groups may leave
      const int64_t t = a.target[r];
      if (t == o.ignore_index) {
        for (int64_t c = lane; c < C; c += TPR) dx[c] = from_acc<T>(A(0));
        continue;
      }
      const A wt = weight_at(a.weight, t);
      const A coef = gr * (keep * wt + eps_c * wsum), b = -gr * eps_c;
      for (int64_t c = lane; c < C; c += TPR) {
        A d = coef * exp_acc(A(to_acc(x[c])) - lse) + b * weight_at(a.weight, c);
        if (c == t) d -= gr * keep * wt;
        dx[c] = from_acc<T>(d);
      }
    } else {
      const T* q = a.target_prob + r * C;
      A wq = 0;
      if (active)
        for (int64_t c = lane; c < C; c += TPR) wq += weight_at(a.weight, c) * (keep * A(to_acc(q[c])) + eps_c);
      wq = group_reduce<TPR>(wq, [](A p, A v) { return p + v; }, smem);
      if (!active) continue;
      for (int64_t c = lane; c < C; c += TPR) {
        const A wqc = weight_at(a.weight, c) * (keep * A(to_acc(q[c])) + eps_c);
        dx[c] = from_acc<T>(gr * (wq * exp_acc(A(to_acc(x[c])) - lse) - wqc));
      }
    }
  }
}

template <class T>
__global__ void backward_strided_kernel(CrossEntropyGeom g, CrossEntropyOptions o, BackwardArgs<T> a) {
  using A = typename AccOf<T>::type;
  const int64_t C = g.C, S = g.S;
  const A eps = A(o.label_smoothing), keep = A(1) - eps, eps_c = eps / A(C);
  const A wsum = a.wsum_device ? *a.wsum_device : A(C);
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < g.rows();
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = g.row_base(row);
    const T* x = a.input + base;
    T* dx = a.grad_input + base;
    const A gr = row_grad(a, o.reduction, row), lse = a.lse[row];
    if (!o.prob_target) {
      const int64_t t = a.target[row];
      if (t == o.ignore_index) {
        for (int64_t c = 0; c < C; ++c) dx[c * S] = from_acc<T>(A(0));
        continue;
      }
      const A wt = weight_at(a.weight, t);
      const A coef = gr * (keep * wt + eps_c * wsum), b = -gr * eps_c;
      for (int64_t c = 0; c < C; ++c) {
        A d = coef * exp_acc(A(to_acc(x[c * S])) - lse) + b * weight_at(a.weight, c);
        if (c == t) d -= gr * keep * wt;
        dx[c * S] = from_acc<T>(d);
      }
    } else {
      const T* q = a.target_prob + base;
      A wq = 0;
      for (int64_t c = 0; c < C; ++c) wq += weight_at(a.weight, c) * (keep * A(to_acc(q[c * S])) + eps_c);
      for (int64_t c = 0; c < C; ++c) {
        const A wqc = weight_at(a.weight, c) * (keep * A(to_acc(q[c * S])) + eps_c);
        dx[c * S] = from_acc<T>(gr * (wq * exp_acc(A(to_acc(x[c * S])) - lse) - wqc));
      }
    }
  }
}

template <class T>
__global__ void target_backward_kernel(CrossEntropyGeom g, CrossEntropyOptions o, BackwardArgs<T> a, T* grad_target) {
  using A = typename AccOf<T>::type;
  const int64_t C = g.C, S = g.S, total = g.numel();
  const A keep = A(1) - A(o.label_smoothing);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / (C * S), rem = i - n * C * S, c = rem / S, s = rem - c * S;
    const int64_t row = n * S + s;
    grad_target[i] = from_acc<T>(row_grad(a, o.reduction, row) * keep * weight_at(a.weight, c) *
                                 (a.lse[row] - A(to_acc(a.input[i]))));
  }
}

// ------------------------------------------------------------------------------------ launchers

int grid_for(int64_t work_items, int per_block) {
  const int64_t blocks = (work_items + per_block - 1) / per_block;
  return int(blocks < 1 ? 1 : (blocks > 65535 * 16 ? 65535 * 16 : blocks));
}

// Threads per row for the S == 1 kernels: a warp for small C, up to a 256-thread block for large C.
template <class F> cudaError_t with_tpr(int64_t C, F&& f) {
  if (C <= 64) return f(std::integral_constant<int, 16>());
  if (C <= 512) return f(std::integral_constant<int, 32>());
  if (C <= 4096) return f(std::integral_constant<int, 128>());
  return f(std::integral_constant<int, 256>());
}

// What forward and backward launch alike: the weight sum into the workspace (when weighted), then the
// kernel of the layout: rows(tpr) for contiguous rows, strided() for (N, C, S > 1).
template <class T, class Args, class Rows, class Strided>
cudaError_t launch_layout(const CrossEntropyGeom& g, const T* weight, void* workspace, Args& a, Rows rows,
                          Strided strided, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (weight) {
    weight_sum_kernel<T><<<1, 256, 0, stream>>>(weight, g.C, static_cast<A*>(workspace));
    a.wsum_device = static_cast<A*>(workspace);
  }
  if (g.S == 1) {
    with_tpr(g.C, rows);
  } else {
    strided();
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t forward_impl(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* input,
                         const int64_t* target, const void* target_prob, const void* weight, void* loss, void* lse,
                         void* roww, unsigned long long* bad_row, void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (g.rows() == 0) return cudaSuccess;
  ForwardArgs<T> a{static_cast<const T*>(input), target, static_cast<const T*>(target_prob),
                   static_cast<const T*>(weight), static_cast<A*>(loss), static_cast<A*>(lse), static_cast<A*>(roww),
                   bad_row, nullptr};
  return launch_layout(
      g, a.weight, workspace, a,
      [&](auto tpr) {
        constexpr int TPR = decltype(tpr)::value;
        forward_rows_kernel<T, TPR><<<grid_for(g.rows(), 256 / TPR), 256, 0, stream>>>(g, o, a);
        return cudaSuccess;
      },
      [&] { forward_strided_kernel<T><<<grid_for(g.rows(), 256), 256, 0, stream>>>(g, o, a); }, stream);
}

template <class T>
cudaError_t backward_impl(const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* grad_loss,
                          const void* total_weight, const void* input, const int64_t* target, const void* target_prob,
                          const void* weight, const void* lse, void* grad_input, void* grad_target,
                          void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (g.numel() == 0) return cudaSuccess;
  BackwardArgs<T> a{static_cast<const T*>(grad_loss), static_cast<const A*>(total_weight), static_cast<const T*>(input),
                    target, static_cast<const T*>(target_prob), static_cast<const T*>(weight),
                    static_cast<const A*>(lse), static_cast<T*>(grad_input), nullptr};
  if (grad_target) {
    target_backward_kernel<T><<<grid_for(g.numel(), 256), 256, 0, stream>>>(g, o, a, static_cast<T*>(grad_target));
    return cudaGetLastError();
  }
  return launch_layout(
      g, a.weight, workspace, a,
      [&](auto tpr) {
        constexpr int TPR = decltype(tpr)::value;
        backward_rows_kernel<T, TPR><<<grid_for(g.rows(), 256 / TPR), 256, 0, stream>>>(g, o, a);
        return cudaSuccess;
      },
      [&] { backward_strided_kernel<T><<<grid_for(g.rows(), 256), 256, 0, stream>>>(g, o, a); }, stream);
}


}  // namespace

int cross_entropy_forward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* input,
                          const int64_t* target, const void* target_prob, const void* weight, void* loss_acc,
                          void* lse_acc, void* row_weight_acc, unsigned long long* bad_row, void* workspace_acc,
                          void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return forward_impl<T>(g, o, input, target, target_prob, weight, loss_acc, lse_acc, row_weight_acc, bad_row,
                           workspace_acc, static_cast<cudaStream_t>(stream));
  });
}

int cross_entropy_reduce(DType dt, int64_t rows, const void* loss_acc, const void* row_weight_acc, Reduction reduction,
                         void* out, void* total_weight_acc, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = typename AccOf<T>::type;
    reduce_kernel<T><<<1, 512, 0, static_cast<cudaStream_t>(stream)>>>(
        rows, static_cast<const A*>(loss_acc), static_cast<const A*>(row_weight_acc), int(reduction),
        static_cast<T*>(out), static_cast<A*>(total_weight_acc));
    return cudaGetLastError();
  });
}

int cross_entropy_backward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o, const void* grad_loss,
                           const void* total_weight_acc, const void* input, const int64_t* target,
                           const void* target_prob, const void* weight, const void* lse_acc, void* grad_input,
                           void* workspace_acc, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return backward_impl<T>(g, o, grad_loss, total_weight_acc, input, target, target_prob, weight, lse_acc, grad_input,
                            nullptr, workspace_acc, static_cast<cudaStream_t>(stream));
  });
}

int cross_entropy_target_backward(DType dt, const CrossEntropyGeom& g, const CrossEntropyOptions& o,
                                  const void* grad_loss, const void* total_weight_acc, const void* input,
                                  const void* weight, const void* lse_acc, void* grad_target, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return backward_impl<T>(g, o, grad_loss, total_weight_acc, input, nullptr, nullptr, weight, lse_acc, nullptr,
                            grad_target, nullptr, static_cast<cudaStream_t>(stream));
  });
}

const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace dlk::cuda
