// im2col convolution CUDA kernels. CUDA headers only, raw pointers: compiles with plain `nvcc -c`.
// The GEMMs between them are cuBLAS, called by the ops layer. Same semantics as csrc/cpu/conv_impl.h
// (the specification): im2col one thread per column element, col2im one thread per input pixel
// gathering the entries that copied it, so the backward pass needs no atomics and is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/conv.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace dlk::cuda {
namespace {

// Consecutive threads take consecutive output positions l of one (row, image): coalesced writes, and
// for stride 1 coalesced reads along the input row. Index math in I (see dispatch_index).
template <class T, class I> __global__ void im2col_kernel(Im2colGeom g, const T* in, T* col) {
  const I OW = I(g.OW), L = I(g.OH) * OW, KW = I(g.KW), KK = I(g.KH) * KW, images = I(g.images);
  const I H = I(g.H), W = I(g.W), C = I(g.C);
  DLK_GRID_LOOP_I(I, i, I(g.rows()) * images * L) {
    const I l = i % L, rb = i / L, b = rb % images, r = rb / images;
    const I c = r / KK, k = r - c * KK, kh = k / KW, kw = k - kh * KW;
    const I oh = l / OW, ow = l - oh * OW;
    const I h = oh * I(g.SH) - I(g.PH) + kh * I(g.DH), w = ow * I(g.SW) - I(g.PW) + kw * I(g.DW);
    T v = from_acc<T>(typename AccOf<T>::type(0));
    if (h >= 0 && h < H && w >= 0 && w < W) v = in[((b * C + c) * H + h) * W + w];
    col[r * I(g.row_stride) + b * I(g.image_stride) + l] = v;
  }
}

// Output positions o along one axis whose tap k lands on input coordinate x: x = o*S - P + k*D.
template <class T, class I> __global__ void col2im_kernel(Im2colGeom g, const T* col, T* out) {
  using A = typename AccOf<T>::type;
  const I H = I(g.H), W = I(g.W), C = I(g.C), KH = I(g.KH), KW = I(g.KW), KK = KH * KW;
  const I SH = I(g.SH), SW = I(g.SW), OH = I(g.OH), OW = I(g.OW);
  DLK_GRID_LOOP_I(I, i, I(g.images) * C * H * W) {
    const I hw = i % (H * W), bc = i / (H * W), c = bc % C, b = bc / C, h = hw / W, w = hw - h * W;
    A acc = 0;
    for (I kh = 0; kh < KH; ++kh) {
      const I hh = h + I(g.PH) - kh * I(g.DH);
      if (hh < 0) break;  // hh falls as kh grows
      const I oh = hh / SH;
      if (oh * SH != hh || oh >= OH) continue;
      for (I kw = 0; kw < KW; ++kw) {
        const I ww = w + I(g.PW) - kw * I(g.DW);
        if (ww < 0) break;
        const I ow = ww / SW;
        if (ow * SW != ww || ow >= OW) continue;
        const I r = c * KK + kh * KW + kw;
        acc += to_acc(col[r * I(g.row_stride) + b * I(g.image_stride) + oh * OW + ow]);
      }
    }
    out[i] = from_acc<T>(acc);
  }
}

template <class T>
__global__ void rows_to_images_kernel(int64_t B, int64_t OC, int64_t L, const T* rows, const T* bias, T* out) {
  DLK_GRID_LOOP(i, B * OC * L) {
    const int64_t l = i % L, oc = (i / L) % OC, b = i / (L * OC);
    typename AccOf<T>::type v = to_acc(rows[oc * B * L + b * L + l]);
    if (bias) v += to_acc(bias[oc]);
    out[i] = from_acc<T>(v);
  }
}

template <class T> __global__ void images_to_rows_kernel(int64_t B, int64_t OC, int64_t L, const T* images, T* rows) {
  DLK_GRID_LOOP(i, B * OC * L) {
    const int64_t l = i % L, b = (i / L) % B, oc = i / (L * B);
    rows[i] = images[(b * OC + oc) * L + l];
  }
}

// One block per channel; each thread sums a fixed strided subset, then a fixed tree in shared memory.
template <class T> __global__ void channel_sum_kernel(int64_t N, int64_t C, int64_t L, const T* in, T* out) {
  using A = typename AccOf<T>::type;
  __shared__ A part[256];
  const int64_t c = blockIdx.x;
  A acc = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + (n * C + c) * L;
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) acc += to_acc(x[l]);
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[c] = from_acc<T>(part[0]);
}

}  // namespace

namespace {
// A bound on every value the index math of im2col/col2im forms: the column block's indices (its row
// stride spans the chunk's images), the images', and the coordinates along each axis (oh * S - P + k * D
// and h + P - k * D, up to (O - 1) S + (K - 1) D + P + H in magnitude: padding, stride and dilation
// reach 2^31 - 1).
int64_t largest_index(const Im2colGeom& g) {
  const int64_t col = g.rows() * g.row_stride + g.images * g.image_stride, image = g.images * g.C * g.H * g.W;
  const int64_t rows = (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + g.PH + g.H;
  const int64_t cols = (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + g.PW + g.W;
  int64_t m = col > image ? col : image;
  m = m > rows ? m : rows;
  return m > cols ? m : cols;
}
}  // namespace

int im2col(DType dt, const Im2colGeom& g, const void* in, void* col, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_index(largest_index(g), [&](auto itag) {
      using I = decltype(itag);
      im2col_kernel<T, I><<<blocks_for(g.rows() * g.images * g.OH * g.OW), 256, 0,
                            static_cast<cudaStream_t>(stream)>>>(g, static_cast<const T*>(in), static_cast<T*>(col));
      return cudaGetLastError();
    });
  });
}

int col2im(DType dt, const Im2colGeom& g, const void* col, void* out, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_index(largest_index(g), [&](auto itag) {
      using I = decltype(itag);
      col2im_kernel<T, I><<<blocks_for(g.images * g.C * g.H * g.W), 256, 0, static_cast<cudaStream_t>(stream)>>>(
          g, static_cast<const T*>(col), static_cast<T*>(out));
      return cudaGetLastError();
    });
  });
}

int conv_rows_to_images(DType dt, int64_t B, int64_t OC, int64_t L, const void* rows, const void* bias, void* out,
                        void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    rows_to_images_kernel<T><<<blocks_for(B * OC * L), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        B, OC, L, static_cast<const T*>(rows), static_cast<const T*>(bias), static_cast<T*>(out));
    return cudaGetLastError();
  });
}

int conv_images_to_rows(DType dt, int64_t B, int64_t OC, int64_t L, const void* images, void* rows, void* stream) {
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    images_to_rows_kernel<T><<<blocks_for(B * OC * L), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        B, OC, L, static_cast<const T*>(images), static_cast<T*>(rows));
    return cudaGetLastError();
  });
}

int channel_sum(DType dt, int64_t N, int64_t C, int64_t L, const void* in, void* out, void* stream) {
  if (C == 0) return 0;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    channel_sum_kernel<T><<<unsigned(C), 256, 0, static_cast<cudaStream_t>(stream)>>>(N, C, L, static_cast<const T*>(in),
                                                                                      static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace dlk::cuda
