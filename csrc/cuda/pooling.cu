// Pooling CUDA kernels. CUDA headers only, raw pointers: compiles with plain `nvcc -c`.
// Forward: one thread per output element. Backward: gather form, one thread per input element that
// sums the outputs whose window holds it (for max: whose argmax is it), so there are no atomics and
// the result is deterministic. Same semantics as csrc/cpu/pooling_impl.h (the specification).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/pooling.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace dlk::cuda {
namespace {

template <class T> __global__ void max_forward_kernel(Pool2dGeom g, const T* in, T* out, int64_t* indices) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.OH * g.OW) {
    const int64_t ow = i % g.OW, oh = (i / g.OW) % g.OH, pl = i / (g.OW * g.OH);
    const T* x = in + pl * g.H * g.W;
    int64_t h0 = oh * g.SH - g.PH, w0 = ow * g.SW - g.PW;
    const int64_t h1 = min(h0 + (g.KH - 1) * g.DH + 1, g.H), w1 = min(w0 + (g.KW - 1) * g.DW + 1, g.W);
    while (h0 < 0) h0 += g.DH;
    while (w0 < 0) w0 += g.DW;
    A best = -INFINITY;
    int64_t best_i = h0 * g.W + w0;
    for (int64_t h = h0; h < h1; h += g.DH)
      for (int64_t w = w0; w < w1; w += g.DW) {
        const A v = to_acc(x[h * g.W + w]);
        if (v > best || isnan(v)) {
          best = v;
          best_i = h * g.W + w;
        }
      }
    out[i] = from_acc<T>(best);
    indices[i] = best_i;
  }
}

// Outputs whose window can reach input coordinate c: o with o*S - P <= c <= o*S - P + (K-1)*D.
__device__ __forceinline__ void output_range(int64_t c, int64_t K, int64_t S, int64_t P, int64_t D, int64_t O,
                                             int64_t& lo, int64_t& hi) {
  const int64_t reach = c + P - (K - 1) * D;
  lo = reach <= 0 ? 0 : (reach + S - 1) / S;
  hi = min((c + P) / S, O - 1);
}

template <class T> __global__ void max_backward_kernel(Pool2dGeom g, const T* grad_out, const int64_t* indices, T* grad_in) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.H * g.W) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, pl = i / (g.W * g.H);
    int64_t oh0, oh1, ow0, ow1;
    output_range(h, g.KH, g.SH, g.PH, g.DH, g.OH, oh0, oh1);
    output_range(w, g.KW, g.SW, g.PW, g.DW, g.OW, ow0, ow1);
    const int64_t base = pl * g.OH * g.OW, flat = h * g.W + w;
    A s = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow)
        if (indices[base + oh * g.OW + ow] == flat) s += to_acc(grad_out[base + oh * g.OW + ow]);
    grad_in[i] = from_acc<T>(s);
  }
}

template <class A>
__device__ __forceinline__ A avg_window(const Pool2dGeom& g, const AvgPoolOptions& o, int64_t oh, int64_t ow,
                                        int64_t& h0, int64_t& h1, int64_t& w0, int64_t& w1) {
  h0 = oh * g.SH - g.PH;
  w0 = ow * g.SW - g.PW;
  h1 = min(h0 + g.KH, g.H + g.PH);
  w1 = min(w0 + g.KW, g.W + g.PW);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = max(h0, int64_t(0));
  w0 = max(w0, int64_t(0));
  h1 = min(h1, g.H);
  w1 = min(w1, g.W);
  if (o.divisor_override) return A(o.divisor_override);
  return A(o.count_include_pad ? padded : (h1 - h0) * (w1 - w0));
}

template <class T> __global__ void avg_forward_kernel(Pool2dGeom g, AvgPoolOptions o, const T* in, T* out) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.OH * g.OW) {
    const int64_t ow = i % g.OW, oh = (i / g.OW) % g.OH, pl = i / (g.OW * g.OH);
    const T* x = in + pl * g.H * g.W;
    int64_t h0, h1, w0, w1;
    const A div = avg_window<A>(g, o, oh, ow, h0, h1, w0, w1);
    A s = 0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) s += to_acc(x[h * g.W + w]);
    out[i] = from_acc<T>(h0 >= h1 || w0 >= w1 ? A(0) : s / div);
  }
}

template <class T> __global__ void avg_backward_kernel(Pool2dGeom g, AvgPoolOptions o, const T* grad_out, T* grad_in) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.H * g.W) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, pl = i / (g.W * g.H);
    int64_t oh0, oh1, ow0, ow1;
    output_range(h, g.KH, g.SH, g.PH, 1, g.OH, oh0, oh1);
    output_range(w, g.KW, g.SW, g.PW, 1, g.OW, ow0, ow1);
    const T* go = grad_out + pl * g.OH * g.OW;
    A s = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        int64_t h0, h1, w0, w1;
        const A div = avg_window<A>(g, o, oh, ow, h0, h1, w0, w1);
        s += to_acc(go[oh * g.OW + ow]) / div;
      }
    grad_in[i] = from_acc<T>(s);
  }
}

template <class T> __global__ void adaptive_forward_kernel(Pool2dGeom g, const T* in, T* out) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.OH * g.OW) {
    const int64_t ow = i % g.OW, oh = (i / g.OW) % g.OH, pl = i / (g.OW * g.OH);
    const T* x = in + pl * g.H * g.W;
    const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
    const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
    A s = 0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) s += to_acc(x[h * g.W + w]);
    out[i] = from_acc<T>(s / A((h1 - h0) * (w1 - w0)));
  }
}

template <class T> __global__ void adaptive_backward_kernel(Pool2dGeom g, const T* grad_out, T* grad_in) {
  using A = typename AccOf<T>::type;
  DLK_GRID_LOOP(i, g.planes() * g.H * g.W) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, pl = i / (g.W * g.H);
    const T* go = grad_out + pl * g.OH * g.OW;
    // outputs whose adaptive window holds h: start(o) <= h < end(o)
    const int64_t oh0 = (h * g.OH) / g.H, ow0 = (w * g.OW) / g.W;
    A s = 0;
    for (int64_t oh = oh0 > 0 ? oh0 - 1 : 0; oh < g.OH && adaptive_start(oh, g.H, g.OH) <= h; ++oh) {
      const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
      if (h < h0 || h >= h1) continue;
      for (int64_t ow = ow0 > 0 ? ow0 - 1 : 0; ow < g.OW && adaptive_start(ow, g.W, g.OW) <= w; ++ow) {
        const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
        if (w < w0 || w >= w1) continue;
        s += to_acc(go[oh * g.OW + ow]) / A((h1 - h0) * (w1 - w0));
      }
    }
    grad_in[i] = from_acc<T>(s);
  }
}


}  // namespace

int max_pool2d_forward(DType dt, const Pool2dGeom& g, const void* in, void* out, int64_t* indices, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    max_forward_kernel<T><<<blocks_for(g.planes() * g.OH * g.OW), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(in), static_cast<T*>(out), indices);
    return cudaGetLastError();
  });
}

int max_pool2d_backward(DType dt, const Pool2dGeom& g, const void* grad_out, const int64_t* indices, void* grad_in,
                        void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    max_backward_kernel<T><<<blocks_for(g.planes() * g.H * g.W), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(grad_out), indices, static_cast<T*>(grad_in));
    return cudaGetLastError();
  });
}

int avg_pool2d_forward(DType dt, const Pool2dGeom& g, const AvgPoolOptions& o, const void* in, void* out, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    avg_forward_kernel<T><<<blocks_for(g.planes() * g.OH * g.OW), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, o, static_cast<const T*>(in), static_cast<T*>(out));
    return cudaGetLastError();
  });
}

int avg_pool2d_backward(DType dt, const Pool2dGeom& g, const AvgPoolOptions& o, const void* grad_out, void* grad_in,
                        void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    avg_backward_kernel<T><<<blocks_for(g.planes() * g.H * g.W), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, o, static_cast<const T*>(grad_out), static_cast<T*>(grad_in));
    return cudaGetLastError();
  });
}

int adaptive_avg_pool2d_forward(DType dt, const Pool2dGeom& g, const void* in, void* out, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    adaptive_forward_kernel<T><<<blocks_for(g.planes() * g.OH * g.OW), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(in), static_cast<T*>(out));
    return cudaGetLastError();
  });
}

int adaptive_avg_pool2d_backward(DType dt, const Pool2dGeom& g, const void* grad_out, void* grad_in, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    adaptive_backward_kernel<T><<<blocks_for(g.planes() * g.H * g.W), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        g, static_cast<const T*>(grad_out), static_cast<T*>(grad_in));
    return cudaGetLastError();
  });
}

}  // namespace dlk::cuda
