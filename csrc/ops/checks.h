// Argument checks shared by the ops files: errors that name the op, the argument, what was expected and
// what was got.
#pragma once
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace dlk::ops {

// Geometry values (kernel sizes, strides, paddings, dilations, output sizes) above this are refused:
// sums and products of a few of them must stay far from int64 overflow.
constexpr int64_t kMaxGeometryValue = (int64_t(1) << 31) - 1;

// A pair of geometry values: 2 entries, each positive (or non-negative) and at most kMaxGeometryValue.
inline void check_pair(const char* op, const char* name, c10::IntArrayRef v, bool positive) {
  TORCH_CHECK_VALUE(v.size() == 2, "dlkernels.", op, ": ", name, " must have 2 values, got ", v);
  if (positive) {
    TORCH_CHECK_VALUE(v[0] > 0 && v[1] > 0, "dlkernels.", op, ": ", name, " must be positive, got ", v);
  } else {
    TORCH_CHECK_VALUE(v[0] >= 0 && v[1] >= 0, "dlkernels.", op, ": ", name, " must be non-negative, got ", v);
  }
  TORCH_CHECK_VALUE(v[0] <= kMaxGeometryValue && v[1] <= kMaxGeometryValue, "dlkernels.", op, ": ", name,
                    " must be at most ", kMaxGeometryValue, ", got ", v);
}

}  // namespace dlk::ops
