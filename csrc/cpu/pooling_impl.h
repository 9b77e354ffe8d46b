// Pooling loops, written once; included by pooling.cpp (the scalar reference path, baseline ISA) and
// by pooling_avx2.cpp / pooling_avx512.cpp after their target pragma. The generic loops are compiled
// for every ISA and are the whole scalar path. On the AVX paths, float32 pooling at column stride 1
// or 2 goes through PoolLanes instead (L, hand-written: pooling_lanes_avx2.h): each plane is first
// copied into a scratch plane padded left and right (-inf for max, 0 for average), so that every
// block of outputs reads whole vectors with no edge cases, and the taps are visited in the generic
// loops' order, so the results are the same bits (max pooling takes a plain vector max on planes the
// copy found free of NaN, which gives the same bits there; see max_blocks). Internal linkage: the
// ISA copies never meet at link time.
// Semantics are torch's: max keeps the first maximum and lets NaN win (the last NaN's index); avg
// divides by the window clipped to the padded input (count_include_pad) or to the input, or by
// divisor_override; a window that covers no input gives 0.
#pragma once
// Standard headers come before the ISA pragma in the including file.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/pooling.h"

namespace dlk::cpu {
namespace {

constexpr int64_t kPoolParallelGrain = 1 << 14;
// Outputs above the last-level cache (32 MiB on the CI machine) go out with streaming stores, as in
// cross-entropy: smaller ones are better left in the cache for the next layer.
constexpr int64_t kStreamBytes = int64_t(32) << 20;

// Largest per-thread scratch plane (elements) the lanes use; larger planes take the generic loops,
// which need none (a padded copy of a huge plane per thread could exhaust memory).
constexpr int64_t kLaneScratch = int64_t(1) << 22;

template <class T, class L> struct PoolKernels {
  // Runs f(column stride as a compile-time constant) and returns true when the lanes take the case:
  // stride 1 or 2, and scratch planes within kLaneScratch (DW: the kernel's column dilation).
  template <class F> static bool with_lanes(const Pool2dGeom& g, int64_t DW, F&& f) {
    const auto take = [&](auto s) {
      if (!Lanes<L>::template fits<s.value>(g, DW)) return false;
      f(s);
      return true;
    };
    if (g.SW == 1) return take(std::integral_constant<int64_t, 1>{});
    if (g.SW == 2) return take(std::integral_constant<int64_t, 2>{});
    return false;
  }

  static int64_t first_tap(int64_t start, int64_t d) {
    while (start < 0) start += d;  // the first dilated tap inside the input
    return start;
  }

  // Valid outputs [lo, hi] of a row for the tap at column offset off (column = ow * S + off).
  static void tap_range(int64_t off, int64_t S, int64_t W, int64_t OW, int64_t& lo, int64_t& hi) {
    lo = off >= 0 ? 0 : (-off + S - 1) / S;
    hi = W - 1 - off >= 0 ? std::min(OW - 1, (W - 1 - off) / S) : -1;
  }

  // Calls f(h, off, lo, hi) for each tap of output row oh in torch's order (input row h outer, kernel
  // column inner), with the tap's column offset (column = ow * SW + off) and the outputs [lo, hi] of
  // the row whose window holds that column. Average pooling passes dilation 1.
  template <class F> static void for_each_tap(const Pool2dGeom& g, int64_t oh, int64_t DH, int64_t DW, F&& f) {
    const int64_t h_lo = oh * g.SH - g.PH;
    const int64_t h_hi = std::min(h_lo + (g.KH - 1) * DH + 1, g.H);
    for (int64_t h = first_tap(h_lo, DH); h < h_hi; h += DH)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t off = kw * DW - g.PW;
        int64_t lo, hi;
        tap_range(off, g.SW, g.W, g.OW, lo, hi);
        f(h, off, lo, hi);
      }
  }

  // A whole output row at a time: for each tap (h, kw) in torch's order (h outer, w inner), update
  // every output of the row that sees it. The loop over outputs has no dependences, so it vectorizes
  // (a strided load, a compare, two blends); visiting windows one by one did not, and cost 35 ms of
  // the 3x3/s2 case's 39 ms. A (the argmax type) is int64_t for flat positions in the plane, uint8_t
  // for window taps kh * KW + kw (cpu/pooling.h).
  template <class A> static void max_forward(const Pool2dGeom& g, const T* in, T* out, A* argmax) {
    const int64_t plane_in = g.H * g.W;
    // 32-bit positions in the hot loop keep index and value lanes the same width;
    // planes of 2^31 elements or more take the 64-bit loop.
    if (plane_in >= (int64_t(1) << 31)) return max_forward_rows<int64_t>(g, in, out, argmax);
    if constexpr (Lanes<L>::kOn) {
      if (with_lanes(g, g.DW, [&](auto s) { Lanes<L>::template max_forward<s.value>(g, in, out, argmax); })) return;
    }
    max_forward_rows<int32_t>(g, in, out, argmax);
  }

  template <class I, class A> static void max_forward_rows(const Pool2dGeom& g, const T* in, T* out, A* argmax) {
    constexpr bool kTaps = std::is_same_v<A, uint8_t>;
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    {
      std::vector<I> row_idx(g.OW);  // per-thread scratch, reused for every row
      I* ri = row_idx.data();
#pragma omp for schedule(static)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        const T* x = in + pl * plane_in;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          T* y = out + pl * plane_out + oh * g.OW;
          A* am = argmax + pl * plane_out + oh * g.OW;
          const int64_t h_lo = oh * g.SH - g.PH, h0 = first_tap(h_lo, g.DH);
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            y[ow] = -std::numeric_limits<T>::infinity();
            const int64_t w_lo = ow * g.SW - g.PW, w0 = first_tap(w_lo, g.DW);  // torch's argmax for a window of -inf
            ri[ow] = I(kTaps ? (h0 - h_lo) / g.DH * g.KW + (w0 - w_lo) / g.DW : h0 * g.W + w0);
          }
          for_each_tap(g, oh, g.DH, g.DW, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
            const T* xr = x + h * g.W + off;
            // the tap's argmax for output ow: base + ow * step (a tap's byte is the same for every output)
            const I base = I(kTaps ? (h - h_lo) / g.DH * g.KW + (off + g.PW) / g.DW : h * g.W + off);
            const I step = I(kTaps ? 0 : g.SW);
            for (int64_t ow = lo; ow <= hi; ++ow) {
              const T v = xr[ow * g.SW];
              const T best = y[ow];
              const bool take = (v > best) | (v != v);  // first maximum wins, NaN always wins
              y[ow] = take ? v : best;
              ri[ow] = take ? I(base + I(ow) * step) : ri[ow];
            }
          });
          for (int64_t ow = 0; ow < g.OW; ++ow) am[ow] = A(ri[ow]);
        }
      }
    }
  }

  // The plane of n values at p set to +0.0 (all bits zero) by memset: the AVX files turn off GCC's
  // rewrite of a zeroing loop into the memset call, and their loop zeroed the 50 KB scratch planes of the
  // backward passes 10-15% slower (in alternating processes, 16x64x112x112).
  static void zero(T* p, int64_t n) { std::memset(p, 0, size_t(n) * sizeof(T)); }

  // One plane's max-pooling gradient: gi zeroed, then each output's gradient added at its argmax, in
  // output order (torch's). A position outside the plane, or a tap byte past the window (neither comes
  // from the forward), is skipped.
  static void max_scatter(const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi) {
    const int64_t plane_in = g.H * g.W;
    zero(gi, plane_in);
    for (int64_t o = 0; o < g.OH * g.OW; ++o) {
      const int64_t i = idx[o];
      if (i >= 0 && i < plane_in) gi[i] += go[o];
    }
  }
  static void max_scatter(const Pool2dGeom& g, const T* go, const uint8_t* taps, T* gi) {
    zero(gi, g.H * g.W);
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t t = taps[oh * g.OW + ow];
        const int64_t h = oh * g.SH - g.PH + t / g.KW * g.DH, w = ow * g.SW - g.PW + t % g.KW * g.DW;
        if (t < g.KH * g.KW && h >= 0 && h < g.H && w >= 0 && w < g.W) gi[h * g.W + w] += go[oh * g.OW + ow];
      }
  }

  template <class A> static void max_backward(const Pool2dGeom& g, const T* grad_out, const A* argmax, T* grad_in) {
    if constexpr (Lanes<L>::kOn) {
      if (g.H * g.W <= kLaneScratch) return Lanes<L>::max_backward(g, grad_out, argmax, grad_in);
    }
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel for schedule(static) if (g.planes() * (plane_in + plane_out) > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl)
      max_scatter(g, grad_out + pl * plane_out, argmax + pl * plane_out, grad_in + pl * plane_in);
  }

  // Window of output (oh, ow) clipped to the input, and the divisor torch uses for it.
  static T avg_window(const Pool2dGeom& g, const AvgPoolOptions& o, int64_t oh, int64_t ow, int64_t& h0, int64_t& h1,
                      int64_t& w0, int64_t& w1) {
    h0 = oh * g.SH - g.PH;
    w0 = ow * g.SW - g.PW;
    h1 = std::min(h0 + g.KH, g.H + g.PH);
    w1 = std::min(w0 + g.KW, g.W + g.PW);
    const int64_t padded = (h1 - h0) * (w1 - w0);
    h0 = std::max<int64_t>(h0, 0);
    w0 = std::max<int64_t>(w0, 0);
    h1 = std::min(h1, g.H);
    w1 = std::min(w1, g.W);
    if (o.divisor_override) return T(o.divisor_override);
    return T(o.count_include_pad ? padded : (h1 - h0) * (w1 - w0));
  }

  // Row at a time, as max_forward: sums in torch's tap order, then one division per output.
  static void avg_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {
    if constexpr (Lanes<L>::kOn) {
      if (with_lanes(g, 1, [&](auto s) { Lanes<L>::template avg_forward<s.value>(g, o, in, out); })) return;
    }
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel for schedule(static) if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      const T* x = in + pl * plane_in;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        T* y = out + pl * plane_out + oh * g.OW;
        for (int64_t ow = 0; ow < g.OW; ++ow) y[ow] = T(0);
        for_each_tap(g, oh, 1, 1, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
          const T* xr = x + h * g.W + off;
          for (int64_t ow = lo; ow <= hi; ++ow) y[ow] += xr[ow * g.SW];
        });
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          int64_t h0, h1, w0, w1;
          const T div = avg_window(g, o, oh, ow, h0, h1, w0, w1);
          y[ow] = (h0 >= h1 || w0 >= w1) ? T(0) : y[ow] / div;
        }
      }
    }
  }

  // Row at a time, as the forward: each output row's shares (gradient / divisor) are spread tap by
  // tap; for one tap the outputs of a row write distinct inputs, so the loop over them vectorizes.
  static void avg_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in) {
    if constexpr (Lanes<L>::kOn) {
      if (with_lanes(g, 1, [&](auto s) { Lanes<L>::template avg_backward<s.value>(g, o, grad_out, grad_in); }))
        return;
    }
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
    {
      std::vector<T> share_row(g.OW);  // per-thread scratch
      T* share = share_row.data();
#pragma omp for schedule(static)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        T* gi = grad_in + pl * plane_in;
        const T* go = grad_out + pl * plane_out;
        zero(gi, plane_in);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            int64_t h0, h1, w0, w1;
            share[ow] = go[oh * g.OW + ow] / avg_window(g, o, oh, ow, h0, h1, w0, w1);
          }
          for_each_tap(g, oh, 1, 1, [&](int64_t h, int64_t off, int64_t lo, int64_t hi) {
            T* gr = gi + h * g.W + off;
            for (int64_t ow = lo; ow <= hi; ++ow) gr[ow * g.SW] += share[ow];
          });
        }
      }
    }
  }

  // The AVX float32 paths at column stride S (1 or 2). Off (kOn false) for doubles and the scalar path.
  template <class Ln, class = void> struct Lanes {
    static constexpr bool kOn = false;
  };
  template <class Ln> struct Lanes<Ln, std::enable_if_t<!std::is_void_v<Ln> && std::is_same_v<T, float>>> {
    static constexpr bool kOn = true;
    static constexpr int64_t kW = Ln::W;

    // Scratch plane geometry: OWr outputs per row rounded up to whole blocks; a block at ow reads padded
    // columns ow * S + kw * DW + j * S (j < kW), so Wp columns cover every block's reads and the input's
    // PW + W. A scratch row is Wr wide: the padded row itself, or with kSplit (average pooling's
    // gradient at S = 2) the padded row's even columns, then its odd columns, Wh of each (a multiple of
    // kW), so that a tap of a block (kW columns 2 apart) is one plain load and store. The forwards keep
    // whole rows and shuffle at each tap: splitting while copying the input in made them 10-20% slower
    // (in-process A/B, 16x64x112x112), the backward 12% faster (its merge happens once per row, on the
    // way out, instead of two shuffles and a second load and store per tap).
    struct Pad {
      int64_t OWr, Wp, Wh, Wr;
      template <int64_t S, bool kSplit> static Pad of(const Pool2dGeom& g, int64_t DW) {
        const int64_t OWr = (g.OW + kW - 1) / kW * kW;
        const int64_t Wp = std::max(OWr * S + (g.KW - 1) * DW, g.PW + g.W);
        const int64_t Wh = (Wp + 2 * kW - 1) / (2 * kW) * kW;
        return Pad{OWr, Wp, Wh, kSplit ? 2 * Wh : Wp};
      }
    };

    // Offset in a scratch row of padded column c (the block's kW columns c, c + S, ... follow it).
    template <bool kSplit> static int64_t col(const Pad& p, int64_t c) {
      if constexpr (kSplit) {
        return (c & 1) * p.Wh + (c >> 1);
      } else {
        return c;
      }
    }

    // The kW values of a tap in a whole scratch row: padded columns c, c + S, ...
    template <int64_t S> static typename Ln::R load_tap(const T* xr, int64_t c) {
      if constexpr (S == 1) {
        return Ln::load(xr + c);
      } else {
        return Ln::load_even(xr + c);
      }
    }

    // Whether the scratch planes (padded input or gradient, H x Wr; outputs and divisors, OH x OWr)
    // stay within kLaneScratch elements.
    template <int64_t S> static bool fits(const Pool2dGeom& g, int64_t DW) {
      const Pad p = Pad::template of<S, S == 2>(g, DW);  // the larger rows, whichever layout is taken
      return p.Wr <= kLaneScratch && g.H <= kLaneScratch / p.Wr && p.OWr <= kLaneScratch &&
             g.OH <= kLaneScratch / p.OWr;  // (divisions: the products could overflow)
    }

    // Part k of `parts` of the plane of n values at next, prefetched: called once per output row while a
    // plane is computed, it brings the next plane's input into the cache, so that its copy into the
    // scratch plane does not stall on memory with no work to overlap (the copy took more time than the
    // arithmetic at 16x64x112x112).
    static void prefetch_part(const T* next, int64_t n, int64_t k, int64_t parts) {
      const char* p = reinterpret_cast<const char*>(next);
      const int64_t bytes = n * int64_t(sizeof(T)), b1 = bytes * (k + 1) / parts;
      for (int64_t b = (bytes * k / parts) & ~int64_t(63); b < b1; b += 64) Ln::prefetch(p + b);
    }

    // xp = the plane in whole scratch rows: PW columns of fill, the input row, fill up to Wr. With
    // check_nan, returns whether the plane holds a NaN (max pooling then takes the exact blocks for it).
    static bool pad_plane(const Pool2dGeom& g, const Pad& p, const T* x, T* xp, T fill, bool check_nan) {
      bool nan = false;
      for (int64_t h = 0; h < g.H; ++h) {
        T* r = xp + h * p.Wr;
        for (int64_t w = 0; w < g.PW; ++w) r[w] = fill;
        // Ln's vector moves: GCC made the plain loop a memmove call per row, whose start-up cost was most
        // of the copy for 112-wide rows (the lanes' files also turn off its loop-to-memcpy rewrite)
        if (check_nan) {
          nan |= Ln::copy_has_nan(r + g.PW, x + h * g.W, g.W);
        } else {
          Ln::copy(r + g.PW, x + h * g.W, g.W, false);
        }
        for (int64_t w = g.PW + g.W; w < p.Wr; ++w) r[w] = fill;
      }
      return nan;
    }

    // The common kernel widths 2 and 3 at dilation 1 are compiled with the width known (KWc), so the
    // tap loop unrolls; KWc = 0 takes g.KW and g.DW at run time.
    template <int64_t S, class A> static void max_forward(const Pool2dGeom& g, const T* in, T* out, A* argmax) {
      if (g.DW == 1 && g.KW == 2) return max_forward_k<S, 2>(g, in, out, argmax);
      if (g.DW == 1 && g.KW == 3) return max_forward_k<S, 3>(g, in, out, argmax);
      max_forward_k<S, 0>(g, in, out, argmax);
    }

    template <int64_t S, int64_t KWc, class A>
    static void max_forward_k(const Pool2dGeom& g, const T* in, T* out, A* argmax) {
      constexpr bool kTaps = std::is_same_v<A, uint8_t>;
      const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
      const Pad p = Pad::template of<S, false>(g, g.DW);
      const bool stream = plane_out * g.planes() * int64_t(sizeof(T) + sizeof(A)) > kStreamBytes;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
      {
        // Output plane scratch: each row's blocks are stored at its start, the last block spilling
        // into the next row, which is written after it (OWr < OW + kW, so kW extra is enough).
        std::vector<T> xp(g.H * p.Wr), yp(plane_out + kW);
        std::vector<int32_t> rp(plane_out + kW), first_col(p.OWr);
        // output ow's first tap inside the input: its column relative to the window's first column, or
        // with tap bytes its kernel column
        for (int64_t ow = 0; ow < p.OWr; ++ow) {
          const int64_t w_lo = ow * S - g.PW, off = first_tap(w_lo, g.DW) - w_lo;
          first_col[ow] = int32_t(kTaps ? off / g.DW : off);
        }
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < g.planes(); ++pl) {
          const bool nan = pad_plane(g, p, in + pl * plane_in, xp.data(), -std::numeric_limits<T>::infinity(), true);
          const T* next = pl + 1 < g.planes() ? in + (pl + 1) * plane_in : nullptr;
          const auto plane_blocks = [&](auto exact) {
            constexpr bool kExact = decltype(exact)::value;
            for (int64_t oh = 0; oh < g.OH; ++oh) {
              if (next) prefetch_part(next, plane_in, oh, g.OH);
              T* y = yp.data() + oh * g.OW;
              int32_t* r = rp.data() + oh * g.OW;
              int64_t ow = 0;
              for (; ow + 2 * kW <= p.OWr; ow += 2 * kW)
                max_blocks<S, KWc, 2, kExact, kTaps>(g, p, xp.data(), first_col.data(), oh, ow, y, r);
              if (ow < p.OWr) max_blocks<S, KWc, 1, kExact, kTaps>(g, p, xp.data(), first_col.data(), oh, ow, y, r);
            }
          };
          if (nan) {
            plane_blocks(std::true_type{});
          } else {
            plane_blocks(std::false_type{});
          }
          Ln::copy(out + pl * plane_out, yp.data(), plane_out, stream);
          Ln::copy(argmax + pl * plane_out, rp.data(), plane_out, stream);
        }
        Ln::done(stream);
      }
    }

    // B blocks of kW outputs from ow on (two at once keep two independent chains in flight). Each
    // block's best value and its tap stay in registers across the taps (torch's order: input row outer,
    // kernel column inner); the tap is kept as h * W + kw * DW, and the lane's own first column added
    // at the end gives the position in the unpadded plane (kTaps: kept as kh * KW + kw, the byte). A padding column holds -inf, which never
    // replaces anything (strictly greater is needed), so a window of -inf inputs keeps torch's first-tap
    // position, as in the generic loop. Planes without NaN (kExact false) take a plain max, whose chain
    // from one tap to the next is one instruction: the exact test (greater, or NaN) and its blend made
    // a chain five deep per tap, and the compute bound the forward, not memory.
    template <int64_t S, int64_t KWc, int B, bool kExact, bool kTaps>
    static void max_blocks(const Pool2dGeom& g, const Pad& p, const T* xp, const int32_t* first_col, int64_t oh,
                           int64_t ow, T* y, int32_t* r) {
      const int64_t KW = KWc ? KWc : g.KW, DW = KWc ? 1 : g.DW;
      const int64_t h_lo = oh * g.SH - g.PH;
      const int64_t h_hi = std::min(h_lo + (g.KH - 1) * g.DH + 1, g.H);
      const int64_t h0 = first_tap(h_lo, g.DH);
      typename Ln::R best[B];
      typename Ln::I tap[B];
      for (int b = 0; b < B; ++b) {
        best[b] = Ln::set1(-std::numeric_limits<T>::infinity());
        tap[b] = Ln::add_i(Ln::set1_i(int32_t(kTaps ? (h0 - h_lo) / g.DH * KW : h0 * g.W)), Ln::load_i(first_col + ow + b * kW));
      }
      for (int64_t h = h0; h < h_hi; h += g.DH) {
        const T* xr = xp + h * p.Wr;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const auto t = Ln::set1_i(int32_t(kTaps ? (h - h_lo) / g.DH * KW + kw : h * g.W + kw * DW));
          for (int b = 0; b < B; ++b) {
            const auto v = load_tap<S>(xr, (ow + b * kW) * S + kw * DW);
            if constexpr (kExact) {
              const auto take = Ln::take(v, best[b]);
              best[b] = Ln::select(take, v, best[b]);
              tap[b] = Ln::select_i(take, t, tap[b]);
            } else {
              tap[b] = Ln::select_i(Ln::gt(v, best[b]), t, tap[b]);
              best[b] = Ln::max_no_nan(v, best[b]);
            }
          }
        }
      }
      const auto steps = Ln::lane_steps(int32_t(S));
      for (int b = 0; b < B; ++b) {
        Ln::store(y + ow + b * kW, best[b]);
        const auto lane_col = Ln::add_i(Ln::set1_i(int32_t((ow + b * kW) * S - g.PW)), steps);
        Ln::store_i(r + ow + b * kW, kTaps ? tap[b] : Ln::add_i(tap[b], lane_col));
      }
    }

    // Divisors of one output plane (rows OWr wide), NaN for a window that covers no input.
    static std::vector<T> divisors(const Pool2dGeom& g, const AvgPoolOptions& o, const Pad& p) {
      std::vector<T> d(g.OH * p.OWr, T(1));
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          int64_t h0, h1, w0, w1;
          const T div = avg_window(g, o, oh, ow, h0, h1, w0, w1);
          d[oh * p.OWr + ow] = (h0 >= h1 || w0 >= w1) ? std::numeric_limits<T>::quiet_NaN() : div;
        }
      return d;
    }

    // Sums in the generic loop's tap order; the padding's zeros add nothing (the sum starts at +0,
    // so it is never -0, and x + 0 is x for every other x).
    template <int64_t S>
    static void avg_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {
      if (g.KW == 2) return avg_forward_k<S, 2>(g, o, in, out);
      if (g.KW == 3) return avg_forward_k<S, 3>(g, o, in, out);
      avg_forward_k<S, 0>(g, o, in, out);
    }

    template <int64_t S, int64_t KWc>
    static void avg_forward_k(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {
      const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
      const Pad p = Pad::template of<S, false>(g, 1);
      const bool stream = plane_out * g.planes() * int64_t(sizeof(T)) > kStreamBytes;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
      {
        std::vector<T> xp(g.H * p.Wr), yp(plane_out + kW);  // as max_forward's
        const std::vector<T> div = divisors(g, o, p);
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < g.planes(); ++pl) {
          pad_plane(g, p, in + pl * plane_in, xp.data(), T(0), false);
          const T* next = pl + 1 < g.planes() ? in + (pl + 1) * plane_in : nullptr;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            if (next) prefetch_part(next, plane_in, oh, g.OH);
            const int64_t h_lo = oh * g.SH - g.PH;
            const int64_t h0 = std::max<int64_t>(h_lo, 0), h1 = std::min(h_lo + g.KH, g.H);
            const T* d = div.data() + oh * p.OWr;
            T* y = yp.data() + oh * g.OW;
            int64_t ow = 0;
            for (; ow + 2 * kW <= p.OWr; ow += 2 * kW) avg_blocks<S, KWc, 2>(g, p, xp.data(), d, h0, h1, ow, y);
            if (ow < p.OWr) avg_blocks<S, KWc, 1>(g, p, xp.data(), d, h0, h1, ow, y);
          }
          Ln::copy(out + pl * plane_out, yp.data(), plane_out, stream);
        }
        Ln::done(stream);
      }
    }

    // B blocks of kW outputs from ow on, rows [h0, h1) of their windows (B independent sums in flight:
    // one block at a time waited on each add and division in turn). Taps in the generic loop's order.
    template <int64_t S, int64_t KWc, int B>
    static void avg_blocks(const Pool2dGeom& g, const Pad& p, const T* xp, const T* d, int64_t h0, int64_t h1,
                           int64_t ow, T* y) {
      const int64_t KW = KWc ? KWc : g.KW;
      typename Ln::R acc[B];
      for (int b = 0; b < B; ++b) acc[b] = Ln::set1(T(0));
      for (int64_t h = h0; h < h1; ++h) {
        const T* xr = xp + h * p.Wr;
        for (int64_t kw = 0; kw < KW; ++kw)
          for (int b = 0; b < B; ++b) acc[b] = Ln::add(acc[b], load_tap<S>(xr, (ow + b * kW) * S + kw));
      }
      for (int b = 0; b < B; ++b) {
        const auto dv = Ln::load(d + ow + b * kW);
        Ln::store(y + ow + b * kW, Ln::select(Ln::nan_mask(dv), Ln::set1(T(0)), Ln::div(acc[b], dv)));
      }
    }

    // Shares spread into a zeroed scratch plane (rows as the forward's) in the generic loop's order,
    // then each row's input columns copied out (at S = 2 merged back into one row first). Lanes past
    // the row's end carry share 0; an empty window's taps (NaN share) all land in padding (no input
    // row or no input column in it), which is dropped.
    template <int64_t S>
    static void avg_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in) {
      constexpr bool kSplit = S == 2;
      const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
      const Pad p = Pad::template of<S, kSplit>(g, 1);
      const bool stream = plane_in * g.planes() * int64_t(sizeof(T)) > kStreamBytes;
#pragma omp parallel if (g.planes() * plane_out * g.KH * g.KW > kPoolParallelGrain)
      {
        std::vector<T> gp(g.H * p.Wr), row(p.Wr), share(p.OWr, T(0));
        const std::vector<T> div = divisors(g, o, p);
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < g.planes(); ++pl) {
          zero(gp.data(), int64_t(gp.size()));
          const T* go = grad_out + pl * plane_out;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            for (int64_t ow = 0; ow < g.OW; ++ow) share[ow] = go[oh * g.OW + ow] / div[oh * p.OWr + ow];
            const int64_t h_lo = oh * g.SH - g.PH;
            const int64_t h_hi = std::min(h_lo + g.KH, g.H);
            for (int64_t h = std::max<int64_t>(h_lo, 0); h < h_hi; ++h)
              for (int64_t kw = 0; kw < g.KW; ++kw)
                for (int64_t ow = 0; ow < p.OWr; ow += kW)
                  Ln::add_to(gp.data() + h * p.Wr + col<kSplit>(p, ow * S + kw), Ln::load(share.data() + ow));
          }
          for (int64_t h = 0; h < g.H; ++h) {
            const T* src = gp.data() + h * p.Wr;
            if constexpr (kSplit) {
              Ln::merge(row.data(), src, src + p.Wh, p.Wh);
              src = row.data();
            }
            Ln::copy(grad_in + pl * plane_in + h * g.W, src + g.PW, g.W, stream);
          }
        }
        Ln::done(stream);
      }
    }

    // The generic scatter into a cached scratch plane, then one copy out (streamed when large).
    static void max_backward(const Pool2dGeom& g, const T* grad_out, const int64_t* indices, T* grad_in) {
      const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
      const bool stream = plane_in * g.planes() * int64_t(sizeof(T)) > kStreamBytes;
#pragma omp parallel if (g.planes() * (plane_in + plane_out) > kPoolParallelGrain)
      {
        std::vector<T> gp(plane_in);
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < g.planes(); ++pl) {
          max_scatter(g, grad_out + pl * plane_out, indices + pl * plane_out, gp.data());
          Ln::copy(grad_in + pl * plane_in, gp.data(), plane_in, stream);
        }
        Ln::done(stream);
      }
    }

    // Tap bytes: each output's gradient added, in output order, into a scratch plane padded so that
    // every tap of every window lands in it (rows from -PH, columns from -PW), at its window's origin
    // plus the tap's offset from a table, with no range test (a byte past the window, which the forward
    // never writes, is skipped); then the input's rows copied out. The same additions in the same
    // order as the positions' scatter, so the same bits. Planes whose padded scratch would pass
    // kLaneScratch take the generic scatter.
    static void max_backward(const Pool2dGeom& g, const T* grad_out, const uint8_t* taps, T* grad_in) {
      const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
      const int64_t Hp = std::max(g.PH + g.H, (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1);
      const int64_t Wp = std::max(g.PW + g.W, (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + 1);
      if (Wp > kLaneScratch || Hp > kLaneScratch / Wp) {
#pragma omp parallel for schedule(static) if (g.planes() * (plane_in + plane_out) > kPoolParallelGrain)
        for (int64_t pl = 0; pl < g.planes(); ++pl)
          max_scatter(g, grad_out + pl * plane_out, taps + pl * plane_out, grad_in + pl * plane_in);
        return;
      }
      const bool stream = plane_in * g.planes() * int64_t(sizeof(T)) > kStreamBytes;
      // the geometry in locals: read through g, GCC reloaded g.SW after every store to the plane
      const int64_t K = g.KH * g.KW, OH = g.OH, OW = g.OW, SH = g.SH, SW = g.SW;
      int64_t delta[256] = {};
      for (int64_t t = 0; t < K; ++t) delta[t] = t / g.KW * g.DH * Wp + t % g.KW * g.DW;
#pragma omp parallel if (g.planes() * (plane_in + plane_out) > kPoolParallelGrain)
      {
        std::vector<T> gp(Hp * Wp);
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < g.planes(); ++pl) {
          zero(gp.data(), Hp * Wp);
          const T* go = grad_out + pl * plane_out;
          const uint8_t* tp = taps + pl * plane_out;
          for (int64_t oh = 0; oh < OH; ++oh) {
            T* origin = gp.data() + oh * SH * Wp;  // window origin of output (oh, 0), then of each next one
            const uint8_t* tr = tp + oh * OW;
            const T* gr = go + oh * OW;
            for (int64_t ow = 0; ow < OW; ++ow, origin += SW) {
              const int64_t t = tr[ow];
              if (t < K) origin[delta[t]] += gr[ow];
            }
          }
          for (int64_t h = 0; h < g.H; ++h)
            Ln::copy(grad_in + pl * plane_in + h * g.W, gp.data() + (h + g.PH) * Wp + g.PW, g.W, stream);
        }
        Ln::done(stream);
      }
    }
  };

  static void adaptive_forward(const Pool2dGeom& g, const T* in, T* out) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
    if (plane_out == 1) {  // global pooling (ResNet heads): one plain sum per plane, in order
      // Eight planes at a time, their sums interleaved: one plane's chain of dependent adds (49 of
      // them at 7x7, 3 cycles each) would otherwise bound the loop, not memory.
      constexpr int64_t G = 8;
      const int64_t planes = g.planes();
#pragma omp parallel for schedule(static) if (planes * plane_in > kPoolParallelGrain)
      for (int64_t p0 = 0; p0 < planes; p0 += G) {
        const T* x = in + p0 * plane_in;
        T s[G] = {};
        if (p0 + G <= planes) {
          for (int64_t i = 0; i < plane_in; ++i)
            for (int64_t j = 0; j < G; ++j) s[j] += x[j * plane_in + i];
        } else {
          for (int64_t j = 0; j < planes - p0; ++j)
            for (int64_t i = 0; i < plane_in; ++i) s[j] += x[j * plane_in + i];
        }
        for (int64_t j = 0; j < std::min(G, planes - p0); ++j) out[p0 + j] = s[j] / T(plane_in);
      }
      return;
    }
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      const T* x = in + pl * plane_in;
      T* y = out + pl * plane_out;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
          T s = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) s += x[h * g.W + w];
          y[oh * g.OW + ow] = s / T((h1 - h0) * (w1 - w0));
        }
      }
    }
  }

  static void adaptive_backward(const Pool2dGeom& g, const T* grad_out, T* grad_in) {
    const int64_t plane_in = g.H * g.W, plane_out = g.OH * g.OW;
    if (plane_out == 1) {
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
      for (int64_t pl = 0; pl < g.planes(); ++pl) {
        const T share = grad_out[pl] / T(plane_in);
        for (int64_t i = 0; i < plane_in; ++i) grad_in[pl * plane_in + i] = share;
      }
      return;
    }
#pragma omp parallel for schedule(static) if (g.planes() * plane_in > kPoolParallelGrain)
    for (int64_t pl = 0; pl < g.planes(); ++pl) {
      T* gi = grad_in + pl * plane_in;
      const T* go = grad_out + pl * plane_out;
      zero(gi, plane_in);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
          const T share = go[oh * g.OW + ow] / T((h1 - h0) * (w1 - w0));
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) gi[h * g.W + w] += share;
        }
      }
    }
  }
};

// Max pooling of channels_last tensors: in (N, H, W, C), out and argmax (N, OH, OW, C), one task per
// output row (n, oh), every loop along C. The semantics and argmax forms are the planar kernels': the
// taps in (kh, kw) order, the first maximum wins, NaN always wins, a window of -inf names its first
// tap inside the input. The backward adds each output's gradient at its argmax in output order, one
// image per task (deterministic).
template <class T, class L> struct PoolNhwc {
  static int64_t first_tap(int64_t start, int64_t d) { return PoolKernels<T, L>::first_tap(start, d); }

  template <class A> static void max_forward(const Pool2dGeom& g, const T* in, T* out, A* argmax) {
    constexpr bool kTaps = std::is_same_v<A, uint8_t>;
    const int64_t C = g.C, tasks = g.N * g.OH;
#pragma omp parallel for schedule(static) if (tasks * g.OW * C * g.KH * g.KW > kPoolParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / g.OH, oh = t % g.OH;
      const T* x = in + n * g.H * g.W * C;
      const int64_t h_lo = oh * g.SH - g.PH, h0 = first_tap(h_lo, g.DH);
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        T* y = out + (t * g.OW + ow) * C;
        A* am = argmax + (t * g.OW + ow) * C;
        const int64_t w_lo = ow * g.SW - g.PW, w0 = first_tap(w_lo, g.DW);
        const A init = A(kTaps ? (h0 - h_lo) / g.DH * g.KW + (w0 - w_lo) / g.DW : h0 * g.W + w0);
        for (int64_t c = 0; c < C; ++c) {
          y[c] = -std::numeric_limits<T>::infinity();
          am[c] = init;
        }
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t h = h_lo + kh * g.DH;
          if (h < 0 || h >= g.H) continue;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t w = w_lo + kw * g.DW;
            if (w < 0 || w >= g.W) continue;
            const T* xv = x + (h * g.W + w) * C;
            const A id = A(kTaps ? kh * g.KW + kw : h * g.W + w);
            for (int64_t c = 0; c < C; ++c) {
              const T v = xv[c], best = y[c];
              const bool take = (v > best) | (v != v);
              y[c] = take ? v : best;
              am[c] = take ? id : am[c];
            }
          }
        }
      }
    }
  }

  // A position outside the plane, or a tap byte past the window (neither comes from the forward), is skipped.
  template <class A> static void max_backward(const Pool2dGeom& g, const T* grad_out, const A* argmax, T* grad_in) {
    constexpr bool kTaps = std::is_same_v<A, uint8_t>;
    const int64_t C = g.C, image_in = g.H * g.W * C, image_out = g.OH * g.OW * C;
#pragma omp parallel for schedule(static) if (g.N > 1 && g.N * (image_in + image_out) > kPoolParallelGrain)
    for (int64_t n = 0; n < g.N; ++n) {
      T* gi = grad_in + n * image_in;
      std::memset(gi, 0, size_t(image_in) * sizeof(T));
      const T* go = grad_out + n * image_out;
      const A* am = argmax + n * image_out;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t o = (oh * g.OW + ow) * C;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t a = int64_t(am[o + c]);
            int64_t pos;
            if constexpr (kTaps) {
              const int64_t h = oh * g.SH - g.PH + a / g.KW * g.DH, w = ow * g.SW - g.PW + a % g.KW * g.DW;
              if (a >= g.KH * g.KW || h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
              pos = h * g.W + w;
            } else {
              if (a < 0 || a >= g.H * g.W) continue;
              pos = a;
            }
            gi[pos * C + c] += go[o + c];
          }
        }
    }
  }

  // Average pooling: each window summed in (h, w) order, then one division per output (0 for a window
  // that covers no input), the planar kernels' divisors (PoolKernels::avg_window). adaptive: the windows
  // of adaptive_avg_pool2d, divided by their size.
  template <bool adaptive>
  static void avg_forward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {
    const int64_t C = g.C, tasks = g.N * g.OH;
    const int64_t taps = adaptive ? (g.H / g.OH + 2) * (g.W / g.OW + 2) : g.KH * g.KW;
#pragma omp parallel for schedule(static) if (tasks * g.OW * C * taps > kPoolParallelGrain)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / g.OH, oh = t % g.OH;
      const T* x = in + n * g.H * g.W * C;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        T* y = out + (t * g.OW + ow) * C;
        int64_t h0, h1, w0, w1;
        const T div = window<adaptive>(g, o, oh, ow, h0, h1, w0, w1);
        for (int64_t c = 0; c < C; ++c) y[c] = T(0);
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const T* xv = x + (h * g.W + w) * C;
            for (int64_t c = 0; c < C; ++c) y[c] += xv[c];
          }
        const bool empty = h0 >= h1 || w0 >= w1;
        for (int64_t c = 0; c < C; ++c) y[c] = empty ? T(0) : y[c] / div;
      }
    }
  }

  // Each output's share (gradient / divisor) added over its window, in output order, one image a task.
  template <bool adaptive>
  static void avg_backward(const Pool2dGeom& g, const AvgPoolOptions& o, const T* grad_out, T* grad_in) {
    const int64_t C = g.C, image_in = g.H * g.W * C, image_out = g.OH * g.OW * C;
#pragma omp parallel if (g.N > 1 && g.N * (image_in + image_out) > kPoolParallelGrain)
    {
      std::vector<T> share(static_cast<size_t>(C));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < g.N; ++n) {
        T* gi = grad_in + n * image_in;
        std::memset(gi, 0, size_t(image_in) * sizeof(T));
        for (int64_t oh = 0; oh < g.OH; ++oh)
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            int64_t h0, h1, w0, w1;
            const T div = window<adaptive>(g, o, oh, ow, h0, h1, w0, w1);
            const T* go = grad_out + n * image_out + (oh * g.OW + ow) * C;
            for (int64_t c = 0; c < C; ++c) share[c] = go[c] / div;
            for (int64_t h = h0; h < h1; ++h)
              for (int64_t w = w0; w < w1; ++w) {
                T* gv = gi + (h * g.W + w) * C;
                for (int64_t c = 0; c < C; ++c) gv[c] += share[c];
              }
          }
      }
    }
  }

  template <bool adaptive>
  static T window(const Pool2dGeom& g, const AvgPoolOptions& o, int64_t oh, int64_t ow, int64_t& h0, int64_t& h1,
                  int64_t& w0, int64_t& w1) {
    if constexpr (adaptive) {
      h0 = adaptive_start(oh, g.H, g.OH);
      h1 = adaptive_end(oh, g.H, g.OH);
      w0 = adaptive_start(ow, g.W, g.OW);
      w1 = adaptive_end(ow, g.W, g.OW);
      return T((h1 - h0) * (w1 - w0));
    } else {
      return PoolKernels<T, L>::avg_window(g, o, oh, ow, h0, h1, w0, w1);
    }
  }
};

}  // namespace
}  // namespace dlk::cpu

#define DLK_POOL_DEFINE(SUFFIX, T, LANES)                                                                              \
  void max_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out, int64_t* idx) {                           \
    PoolKernels<T, LANES>::max_forward(g, in, out, idx);                                                               \
  }                                                                                                                    \
  void max_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out, uint8_t* taps) {                          \
    PoolKernels<T, LANES>::max_forward(g, in, out, taps);                                                              \
  }                                                                                                                    \
  void max_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi) {                     \
    PoolKernels<T, LANES>::max_backward(g, go, idx, gi);                                                               \
  }                                                                                                                    \
  void max_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const T* go, const uint8_t* taps, T* gi) {                    \
    PoolKernels<T, LANES>::max_backward(g, go, taps, gi);                                                              \
  }                                                                                                                    \
  void max_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out, int64_t* idx) {                      \
    PoolNhwc<T, LANES>::max_forward(g, in, out, idx);                                                                         \
  }                                                                                                                    \
  void max_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out, uint8_t* taps) {                     \
    PoolNhwc<T, LANES>::max_forward(g, in, out, taps);                                                                        \
  }                                                                                                                    \
  void max_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom& g, const T* go, const int64_t* idx, T* gi) {                \
    PoolNhwc<T, LANES>::max_backward(g, go, idx, gi);                                                                         \
  }                                                                                                                    \
  void max_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom& g, const T* go, const uint8_t* taps, T* gi) {               \
    PoolNhwc<T, LANES>::max_backward(g, go, taps, gi);                                                                        \
  }                                                                                                                    \
  void avg_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {           \
    PoolNhwc<T, LANES>::template avg_forward<false>(g, o, in, out);                                                    \
  }                                                                                                                    \
  void avg_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* go, T* gi) {           \
    PoolNhwc<T, LANES>::template avg_backward<false>(g, o, go, gi);                                                    \
  }                                                                                                                    \
  void adaptive_avg_pool2d_nhwc_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out) {                           \
    PoolNhwc<T, LANES>::template avg_forward<true>(g, AvgPoolOptions{false, 0}, in, out);                              \
  }                                                                                                                    \
  void adaptive_avg_pool2d_nhwc_backward_##SUFFIX(const Pool2dGeom& g, const T* go, T* gi) {                           \
    PoolNhwc<T, LANES>::template avg_backward<true>(g, AvgPoolOptions{false, 0}, go, gi);                              \
  }                                                                                                                    \
  void avg_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* in, T* out) {                \
    PoolKernels<T, LANES>::avg_forward(g, o, in, out);                                                                 \
  }                                                                                                                    \
  void avg_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const AvgPoolOptions& o, const T* go, T* gi) {                \
    PoolKernels<T, LANES>::avg_backward(g, o, go, gi);                                                                 \
  }                                                                                                                    \
  void adaptive_avg_pool2d_forward_##SUFFIX(const Pool2dGeom& g, const T* in, T* out) {                                \
    PoolKernels<T, LANES>::adaptive_forward(g, in, out);                                                               \
  }                                                                                                                    \
  void adaptive_avg_pool2d_backward_##SUFFIX(const Pool2dGeom& g, const T* go, T* gi) {                                \
    PoolKernels<T, LANES>::adaptive_backward(g, go, gi);                                                               \
  }
