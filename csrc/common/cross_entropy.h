// Geometry and options of softmax-cross-entropy, shared by the CPU kernels, the CUDA kernels and the
// ops layer. No torch, no CUDA.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DLK_HOST_DEVICE __host__ __device__
#else
#define DLK_HOST_DEVICE
#endif

namespace dlk {

// Same numbering as torch's at::Reduction.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

// Logits viewed as a contiguous (N, C, S) array: N batch entries, C classes, S = d1 * ... * dk
// positions (S = 1 for the common (N, C) case). A "row" is one (n, s) pair: one softmax over C.
struct CrossEntropyGeom {
  int64_t N;
  int64_t C;
  int64_t S;
  DLK_HOST_DEVICE int64_t rows() const { return N * S; }
  DLK_HOST_DEVICE int64_t numel() const { return N * C * S; }
  // Offset of class 0 of row r; class c sits at row_base(r) + c * S.
  DLK_HOST_DEVICE int64_t row_base(int64_t r) const {
    int64_t n = r / S;
    return n * C * S + (r - n * S);
  }
};

struct CrossEntropyOptions {
  Reduction reduction;
  int64_t ignore_index;    // class-index targets only
  double label_smoothing;  // eps in [0, 1]: the target becomes (1 - eps) * target + eps / C
  bool prob_target;        // target holds class probabilities, shaped like the logits
};

}  // namespace dlk
