// Multi-tensor fused optimizers on CUDA. CUDA headers only, raw pointers: compiles with plain `nvcc -c`.
//
// One generic driver (multi_tensor_apply below) packs up to kMaxTensors tensors and kMaxBlocks chunks
// of kChunk elements into a table passed by value as the kernel argument (under the 4 KiB limit), and
// launches once per full table: a ResNet's ~120 parameters take a handful of launches instead of
// ~120 x several. Each optimizer is a small functor applied per element, in the same order of
// operations as the CPU path (csrc/cpu/optim_impl.h) and torch.optim. Math in float (double for
// float64 parameters); float16/bfloat16 parameters and states are read and written in their dtype.
//
// Per-tensor scalars (Adam's bias corrections, Adagrad's decayed lr) come from the host, computed from
// host step counters; or, for capturable optimizers (step counters on the GPU) and a tensor lr on the
// GPU, each block computes them from device memory (DeviceScalars): no host read, so a step can be
// captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/optim.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace dlk::cuda {
namespace {

constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 160;
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;
constexpr int kIlp = 4;  // elements per thread in flight: all their loads issued before any arithmetic

template <int NLists> struct TensorTable {
  void* ptr[NLists][kMaxTensors];
  int64_t numel[kMaxTensors];
  double scalar_a[kMaxTensors];  // per-tensor scalars: Adam step_size, SGD first-step flag, Adagrad clr
  double scalar_b[kMaxTensors];  // Adam sqrt(1 - beta2^t)
  const void* step[kMaxTensors];  // capturable: the tensor's step counter on the device, else nullptr
  uint8_t tensor_of_block[kMaxBlocks];
  int32_t chunk_of_block[kMaxBlocks];
};
static_assert(sizeof(TensorTable<5>) <= 4096, "kernel arguments must stay under 4 KiB");


template <class T> __device__ __forceinline__ typename AccOf<T>::type load_m(const T* p, int64_t i) { return to_acc(p[i]); }
template <class T, class M> __device__ __forceinline__ void store_m(T* p, int64_t i, M v) { p[i] = from_acc<T>(v); }

template <class M> __device__ __forceinline__ M sqrt_m(M v) { return sqrt(v); }

// torch's lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w)
template <class M> __device__ __forceinline__ M lerp_m(M start, M end, M w) {
  const M diff = end - start;
  return (w < M(0.5) && w > M(-0.5)) ? start + w * diff : end - diff * (M(1) - w);
}

__device__ __forceinline__ double load_scalar(const void* p, bool is_double) {
  return is_double ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

// The per-tensor values a functor's bind() takes: the host's two scalars (a, b), and what lives on the
// device: lr (when lr_on_device) and the step count t (when step_on_device). Scalars the kernel computes
// from t leave lr out; so do the host's when lr is on the device: bind() multiplies it in.
struct TensorScalars {
  double a, b, lr, t;
  bool lr_on_device, step_on_device;
  // the factor the per-tensor scalars still lack: lr where it is on the device, or where the kernel
  // computed them from t; 1 where the host computed them with its lr
  __device__ double missing_lr(double host_lr) const { return lr_on_device ? lr : (step_on_device ? host_lr : 1.0); }
};

template <class T, int NLists, class Functor>
__global__ void multi_tensor_kernel(TensorTable<NLists> table, Functor f, DeviceScalars ds) {
  const int slot = table.tensor_of_block[blockIdx.x];
  const int64_t begin = int64_t(table.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t n = table.numel[slot];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  T* ptrs[NLists];
#pragma unroll
  for (int k = 0; k < NLists; ++k) ptrs[k] = static_cast<T*>(table.ptr[k][slot]);
  const void* step = table.step[slot];
  TensorScalars s{table.scalar_a[slot], table.scalar_b[slot], ds.lr ? load_scalar(ds.lr, ds.lr_double) : 0.0,
                  step ? load_scalar(step, ds.steps_double) : 0.0, ds.lr != nullptr, step != nullptr};
  Functor g = f;
  g.bind(s);
  // kIlp elements a thread (blockDim.x apart: coalesced) loaded, updated, stored as three phases, so
  // that their loads overlap; a list's pointer is nullptr where the options leave it unused, and every
  // list but the gradients (list 1) is written back.
  using M = typename AccOf<T>::type;
  for (int64_t base = begin + threadIdx.x; base < end; base += int64_t(blockDim.x) * kIlp) {
    M v[kIlp][NLists];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t i = base + int64_t(u) * blockDim.x;
#pragma unroll
      for (int k = 0; k < NLists; ++k) v[u][k] = i < end && ptrs[k] ? load_m(ptrs[k], i) : M(0);
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) g.update(v[u]);
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t i = base + int64_t(u) * blockDim.x;
      if (i >= end) break;
#pragma unroll
      for (int k = 0; k < NLists; ++k)
        if (k != 1 && ptrs[k]) store_m(ptrs[k], i, v[u][k]);
    }
  }
}

// The driver: fills tables and launches. lists[k][i] is list k's pointer for tensor i (a nullptr list
// stands for state the options leave unused); scalars(i, a, b) gives tensor i's two per-tensor scalars.
template <class T, int NLists, class Functor, class Scalars>
cudaError_t multi_tensor_apply(int64_t count, const void* const* const* lists, const int64_t* numel, Scalars scalars,
                               const DeviceScalars& ds, Functor f, cudaStream_t stream) {
  TensorTable<NLists> table;
  int nt = 0, nb = 0;
  auto launch = [&]() {
    if (nb > 0) multi_tensor_kernel<T, NLists, Functor><<<nb, kThreads, 0, stream>>>(table, f, ds);
    nt = nb = 0;
    return cudaGetLastError();
  };
  for (int64_t i = 0; i < count; ++i) {
    if (numel[i] == 0) continue;
    const int64_t chunks = (numel[i] + kChunk - 1) / kChunk;
    bool in_table = false;
    for (int64_t c = 0; c < chunks; ++c) {
      if (nb == kMaxBlocks || (!in_table && nt == kMaxTensors)) {
        cudaError_t err = launch();
        if (err != cudaSuccess) return err;
        in_table = false;
      }
      if (!in_table) {
        for (int k = 0; k < NLists; ++k) table.ptr[k][nt] = lists[k] ? const_cast<void*>(lists[k][i]) : nullptr;
        table.numel[nt] = numel[i];
        scalars(i, table.scalar_a[nt], table.scalar_b[nt]);
        table.step[nt] = ds.steps ? ds.steps[i] : nullptr;
        ++nt;
        in_table = true;
      }
      table.tensor_of_block[nb] = uint8_t(nt - 1);
      table.chunk_of_block[nb] = int32_t(c);
      ++nb;
    }
  }
  return launch();
}

// ------------------------------------------------------------------------------------ functors

// grad, negated for maximize, plus weight_decay * param (torch's L2 form)
template <class M> __device__ __forceinline__ M effective_grad(M g, M p, bool maximize, M weight_decay) {
  if (maximize) g = -g;
  if (weight_decay != M(0)) g = g + weight_decay * p;
  return g;
}

// lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq
template <class T> struct AdamFunctor {
  using M = typename AccOf<T>::type;
  M beta1_weight, beta2, one_minus_beta2, eps, weight_decay, decay;
  bool amsgrad, maximize, decoupled;
  double lr, beta1_d, beta2_d, weight_decay_d;
  double step_size = 0, bc2_sqrt = 1;  // per tensor (bind)
  __device__ void bind(const TensorScalars& s) {
    step_size = s.a;
    bc2_sqrt = s.b;
    if (s.step_on_device) {
      const AdamStepScalars d = adam_step_scalars(1.0, beta1_d, beta2_d, s.t);
      step_size = d.step_size;
      bc2_sqrt = d.bias_correction2_sqrt;
    }
    step_size *= s.missing_lr(lr);
    if (s.lr_on_device) decay = M(1.0 - s.lr * weight_decay_d);
  }
  // x: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (updated in place)
  __device__ void update(M* x) const {
    M p = x[0];
    if (decoupled) p = p * decay;
    const M g = effective_grad(x[1], p, maximize, decoupled ? M(0) : weight_decay);
    const M m = lerp_m(x[2], g, beta1_weight);
    const M v = x[3] * beta2 + g * g * one_minus_beta2;
    M second = v;
    if (amsgrad) {
      second = x[4] > v ? x[4] : v;
      x[4] = second;
    }
    const M denom = sqrt_m(second) / M(bc2_sqrt) + eps;
    x[0] = p + M(-step_size) * m / denom;
    x[2] = m;
    x[3] = v;
  }
};

// lists: param, grad, momentum_buffer
template <class T> struct SgdFunctor {
  using M = typename AccOf<T>::type;
  M lr, momentum, keep, weight_decay;
  bool nesterov, maximize, use_momentum;
  bool first_step = false;  // per tensor (bind)
  __device__ void bind(const TensorScalars& s) {
    first_step = s.a != 0.0;
    if (s.lr_on_device) lr = M(s.lr);
  }
  // x: param, grad, momentum_buffer
  __device__ void update(M* x) const {
    const M p = x[0];
    M g = effective_grad(x[1], p, maximize, weight_decay);
    if (use_momentum) {
      const M b = first_step ? g : x[2] * momentum + g * keep;
      x[2] = b;
      g = nesterov ? g + b * momentum : b;
    }
    x[0] = p + g * (-lr);
  }
};

// lists: param, grad, state_sum
template <class T> struct AdagradFunctor {
  using M = typename AccOf<T>::type;
  M weight_decay, eps;
  bool maximize;
  double lr, lr_decay;
  double clr = 0;  // per tensor (bind)
  __device__ void bind(const TensorScalars& s) {
    clr = (s.step_on_device ? adagrad_clr(1.0, lr_decay, s.t) : s.a) * s.missing_lr(lr);
  }
  // x: param, grad, state_sum
  __device__ void update(M* x) const {
    const M p = x[0];
    const M g = effective_grad(x[1], p, maximize, weight_decay);
    const M s = x[2] + g * g;
    x[2] = s;
    x[0] = p + M(-clr) * g / (sqrt_m(s) + eps);
  }
};

// lists: param, grad, square_avg, grad_avg, momentum_buffer
template <class T> struct RmspropFunctor {
  using M = typename AccOf<T>::type;
  M lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  bool centered, maximize;
  __device__ void bind(const TensorScalars& s) {
    if (s.lr_on_device) lr = M(s.lr);
  }
  // x: param, grad, square_avg, grad_avg, momentum_buffer
  __device__ void update(M* x) const {
    M p = x[0];
    const M g = effective_grad(x[1], p, maximize, weight_decay);
    const M s = x[2] * alpha + g * g * one_minus_alpha;
    x[2] = s;
    M avg;
    if (centered) {
      const M ga = lerp_m(x[3], g, one_minus_alpha);
      x[3] = ga;
      avg = sqrt_m(s - ga * ga);
    } else {
      avg = sqrt_m(s);
    }
    avg = avg + eps;
    if (momentum > M(0)) {
      const M b = x[4] * momentum + g / avg;
      x[4] = b;
      p = p + b * (-lr);
    } else {
      p = p + (-lr) * g / avg;
    }
    x[0] = p;
  }
};


}  // namespace

int multi_tensor_adam(DType dt, const AdamOptions& o, int64_t count, const void* const* params,
                      const void* const* grads, const void* const* exp_avgs, const void* const* exp_avg_sqs,
                      const void* const* max_exp_avg_sqs, const int64_t* numel, const AdamStepScalars* scalars,
                      const DeviceScalars& ds, void* stream) {
  const void* const* lists[5] = {params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs};
  auto per_tensor = [scalars](int64_t i, double& a, double& b) {
    a = scalars[i].step_size;
    b = scalars[i].bias_correction2_sqrt;
  };
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    using M = typename AccOf<T>::type;
    AdamFunctor<T> f{M(1.0 - o.beta1), M(o.beta2), M(1.0 - o.beta2), M(o.eps), M(o.weight_decay),
                     M(1.0 - o.lr * o.weight_decay), o.amsgrad, o.maximize,
                     o.decoupled_weight_decay && o.weight_decay != 0, o.lr, o.beta1, o.beta2, o.weight_decay};
    return multi_tensor_apply<T, 5>(count, lists, numel, per_tensor, ds, f, static_cast<cudaStream_t>(stream));
  });
}

int multi_tensor_sgd(DType dt, const SgdOptions& o, int64_t count, const void* const* params, const void* const* grads,
                     const void* const* momentum_buffers, const int64_t* numel, const uint8_t* first_step,
                     const DeviceScalars& ds, void* stream) {
  const void* const* lists[3] = {params, grads, momentum_buffers};
  auto per_tensor = [first_step](int64_t i, double& a, double& b) {
    a = first_step[i] ? 1.0 : 0.0;
    b = 0.0;
  };
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    using M = typename AccOf<T>::type;
    SgdFunctor<T> f{M(o.lr), M(o.momentum), M(1.0 - o.dampening), M(o.weight_decay), o.nesterov, o.maximize,
                    o.momentum != 0};
    return multi_tensor_apply<T, 3>(count, lists, numel, per_tensor, ds, f, static_cast<cudaStream_t>(stream));
  });
}

int multi_tensor_adagrad(DType dt, const AdagradOptions& o, int64_t count, const void* const* params,
                         const void* const* grads, const void* const* state_sums, const int64_t* numel,
                         const double* clr, const DeviceScalars& ds, void* stream) {
  const void* const* lists[3] = {params, grads, state_sums};
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    using M = typename AccOf<T>::type;
    AdagradFunctor<T> f{M(o.weight_decay), M(o.eps), o.maximize, o.lr, o.lr_decay};
    auto per_tensor = [clr](int64_t i, double& a, double& b) {
      a = clr[i];
      b = 0.0;
    };
    return multi_tensor_apply<T, 3>(count, lists, numel, per_tensor, ds, f, static_cast<cudaStream_t>(stream));
  });
}

int multi_tensor_rmsprop(DType dt, const RmspropOptions& o, int64_t count, const void* const* params,
                         const void* const* grads, const void* const* square_avgs, const void* const* grad_avgs,
                         const void* const* momentum_buffers, const int64_t* numel, const DeviceScalars& ds,
                         void* stream) {
  const void* const* lists[5] = {params, grads, square_avgs, grad_avgs, momentum_buffers};
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    using M = typename AccOf<T>::type;
    RmspropFunctor<T> f{M(o.lr), M(o.alpha), M(1.0 - o.alpha), M(o.eps), M(o.weight_decay), M(o.momentum),
                        o.centered, o.maximize};
    auto none = [](int64_t, double& a, double& b) { a = b = 0.0; };
    return multi_tensor_apply<T, 5>(count, lists, numel, none, ds, f, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk::cuda
