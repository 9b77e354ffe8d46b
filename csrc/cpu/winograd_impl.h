// Winograd F(2x2, 3x3) convolution (conv.h, conv_winograd), written once over a Vec<T> wrapper;
// included by conv_impl.h, so each ISA path (scalar reference, AVX2, AVX-512) has its copy.
//
// With d a 4x4 input patch, g a 3x3 filter and y the 2x2 outputs they make,
//   y = A^T [ U . V ] A,   U = G g G^T,   V = B^T d B   (. elementwise over the 16 positions xi)
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// Summed over the input channels, the products become 16 GEMMs, M[xi] (OC x tiles) = U[xi] (OC x C) @
// V[xi] (C x tiles). The work goes block by block of at most kWinogradBlock tiles (a run of tiles in
// (image, tile row, tile column) order), each block on one thread: its input patches transformed into
// V (16 x C x NB), its 16 GEMMs into M (16 x OC x NB), M transformed back into the output tiles, all
// within the thread's L2. The filters are transformed once per call into U (16 x OC x C), the input
// padded and split into even and odd columns once (so that a vector of consecutive tiles reads
// consecutive values).
//
// Lanes: a vector holds consecutive tiles of one tile row (loads of the split rows, stores of interleaved
// column pairs), or on images less than a vector of tiles wide, consecutive tiles of the block across
// tile rows and images (gathered loads, scalar stores of each tile's outputs), so that every transform
// is lane-wise adds over full vectors.
// channels_last (NHWC) tensors run their own kernels with the channels in the lanes: the input patches
// and output tiles are runs of a pixel's channels, no split copy; the GEMMs are the same register tile
// with tiles as rows and filters as vector columns (M[xi] (tiles x OC) = V[xi]^T @ U[xi]^T).
// The weight gradient (weight_grad) is Winograd's transposed form, below.
// An input value that is not finite would meet the transforms' differences (inf - inf) where the
// direct sum has one infinite product, and one within 64x of the largest finite value could overflow
// in the transforms' sums: the kernel checks the input and filters first and, finding one, returns
// false without writing the output (the caller takes another path).
#pragma once

namespace dlk::cpu {
namespace {

template <class V> struct Winograd {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr int kMR = V::kRegisters >= 32 ? 8 : 4;  // GEMM register tile: kMR filters x kNV vectors
  static constexpr int kNV = 3;
  static_assert(kWinogradRowAlign % kMR == 0, "filter rows are padded for every register tile");
  static_assert(kWinogradBlock % V::W == 0, "a block is whole vectors");

  static R load_n(const T* p, int64_t n) { return n >= V::W ? V::load(p) : V::load_tail(p, n, T(0)); }
  static void store_n(T* p, R v, int64_t n) { n >= V::W ? V::store(p, v) : V::store_tail(p, v, n); }

  // Lanes of acc are NaN once a value added into it was infinite, NaN, or so large (beyond 1/64 of the
  // largest finite value) that the transforms' sums of up to 4 values and the products' sums could
  // overflow where the direct sum does not: s - s for s = 64 v is zero exactly when 64 v is finite.
  static void add_check(R& acc, R v) {
    const R s = V::mul(v, V::set1(T(64)));
    acc = V::add(acc, V::sub(s, s));
  }
  static bool all_finite(R acc) {
    T lanes[V::W];
    V::store(lanes, acc);
    bool ok = true;
    for (int l = 0; l < V::W; ++l) ok = ok && lanes[l] == T(0);
    return ok;
  }

  // Tap offsets of a filter (row-major kh, kw), flipped or not.
  static void tap_offsets(const WinogradFilters& f, int64_t kk[9]) {
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw)
        kk[kh * 3 + kw] = f.flip ? (2 - kh) * f.sh + (2 - kw) * f.sw : kh * f.sh + kw * f.sw;
  }

  // U[xi][r][col] = (G g G^T)[xi] of the filter at w + r * srow + col * scol (taps at tap_offsets), for
  // rows r < nrows and columns col < ncols; rows up to prow and columns up to ld (the padding) zero. The
  // NCHW kernels take rows = filters, columns = input channels; the NHWC ones the transpose. Returns
  // whether every tap read is finite.
  static bool filters(int64_t nrows, int64_t ncols, const T* w, int64_t srow, int64_t scol, const WinogradFilters& f,
                      T* U, int64_t prow, int64_t ld) {
    int64_t kk[9];
    tap_offsets(f, kk);
    // Tasks: a vector of columns over a run of rows, so that the W filters a gather reads stay the same
    // along the run (W streams; a whole row of lanes at once would touch every filter per row: with
    // columns 9 * C values apart, 512 filters, a TLB miss per gathered value).
    constexpr int64_t kRun = 64;
    const bool gather_ok = scol * (V::W - 1) < (int64_t(1) << 31);  // 32-bit gather offsets (else scalar loads)
    const int64_t col_blocks = (ncols + V::W - 1) / V::W, runs = (nrows + kRun - 1) / kRun;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (nrows * ncols * 16 > kConvParallelGrain)
    for (int64_t task = 0; task < col_blocks * runs; ++task) {
      const int64_t c0 = task / runs * V::W, r0 = task % runs * kRun, r1 = std::min(nrows, r0 + kRun);
      const int64_t n = std::min<int64_t>(V::W, ncols - c0);
      R check = V::set1(T(0));
      for (int64_t row = r0; row < r1; ++row) {
        const T* src = w + row * srow + c0 * scol;
        R r[9];
        if (n == V::W && gather_ok) {
          for (int k = 0; k < 9; ++k) r[k] = V::gather(src + kk[k], scol);
        } else {
          T taps[9][V::W];
          for (int l = 0; l < V::W; ++l)
            for (int k = 0; k < 9; ++k) taps[k][l] = l < n ? src[l * scol + kk[k]] : T(0);
          for (int k = 0; k < 9; ++k) r[k] = V::load(taps[k]);
        }
        for (int k = 0; k < 9; ++k) add_check(check, r[k]);
        const R half = V::set1(T(0.5));
        R t[4][3];  // G g: the filter's rows combined
        for (int j = 0; j < 3; ++j) {
          t[0][j] = r[j];
          t[1][j] = V::mul(V::add(V::add(r[j], r[3 + j]), r[6 + j]), half);
          t[2][j] = V::mul(V::add(V::sub(r[j], r[3 + j]), r[6 + j]), half);
          t[3][j] = r[6 + j];
        }
        for (int i = 0; i < 4; ++i) {  // (G g) G^T: then its columns
          const R u[4] = {t[i][0], V::mul(V::add(V::add(t[i][0], t[i][1]), t[i][2]), half),
                          V::mul(V::add(V::sub(t[i][0], t[i][1]), t[i][2]), half), t[i][2]};
          for (int j = 0; j < 4; ++j) store_n(U + ((i * 4 + j) * prow + row) * ld + c0, u[j], n);
        }
      }
      bad |= int(!all_finite(check));
    }
    for (int xi = 0; xi < 16; ++xi) {
      T* u = U + xi * prow * ld;
      for (int64_t row = 0; row < nrows; ++row)
        for (int64_t c = ncols; c < ld; ++c) u[row * ld + c] = T(0);
      for (int64_t i = nrows * ld; i < prow * ld; ++i) u[i] = T(0);
    }
    return bad == 0;
  }

  // Whether every one of n values is finite.
  static bool all_finite_values(const T* p, int64_t n) {
    int bad = 0;
    const int64_t chunk = 1 << 14, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n > kConvParallelGrain)
    for (int64_t k = 0; k < chunks; ++k) {
      R check = V::set1(T(0));
      const int64_t end = std::min(n, (k + 1) * chunk);
      for (int64_t i = k * chunk; i < end; i += V::W) add_check(check, load_n(p + i, end - i));
      bad |= int(!all_finite(check));
    }
    return bad == 0;
  }

  // The input padded and split: per (image, channel) plane, rows = 2 * TH + 2 padded rows, each stored
  // as its even columns E[0, TW + 1) then its odd ones O[0, TW + 1); padded row r, column q holds input
  // (r - PT, q - PL), zero outside the image. Returns whether every input value is finite.
  static bool pad_split(const WinogradGeom& g, const T* in, T* xd) {
    const int64_t TH = g.tiles_h(), TW1 = g.tiles_w() + 1, rows = 2 * TH + 2, len = 2 * TW1;
    const int64_t planes = g.N * g.C;
    // k in [k_lo, k_hi): both columns 2k - PL and 2k + 1 - PL within the image
    const int64_t k_lo = std::min((g.PL + 1) / 2, TW1);
    const int64_t k_hi = std::max(k_lo, std::min((g.W + g.PL) / 2, TW1));
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (planes * rows * len > kConvParallelGrain)
    for (int64_t p = 0; p < planes; ++p) {
      const T* x = in + p * g.H * g.W;
      for (int64_t r = 0; r < rows; ++r) {
        T* E = xd + (p * rows + r) * len;
        T* O = E + TW1;
        const int64_t h = r - g.PT;
        if (h < 0 || h >= g.H) {
          for (int64_t k = 0; k < len; ++k) E[k] = T(0);
          continue;
        }
        const T* xr = x + h * g.W;
        auto at = [&](int64_t q) { return q >= 0 && q < g.W ? xr[q] : T(0); };
        for (int64_t k = 0; k < k_lo; ++k) E[k] = at(2 * k - g.PL), O[k] = at(2 * k + 1 - g.PL);
        for (int64_t k = k_lo; k < k_hi; ++k) {
          const T e = xr[2 * k - g.PL], o = xr[2 * k + 1 - g.PL];
          E[k] = e;
          O[k] = o;
        }
        for (int64_t k = k_hi; k < TW1; ++k) E[k] = at(2 * k - g.PL), O[k] = at(2 * k + 1 - g.PL);
        R check = V::set1(T(0));
        for (int64_t q = 0; q < g.W; q += V::W) add_check(check, load_n(xr + q, g.W - q));
        bad |= int(!all_finite(check));
      }
    }
    return bad == 0;
  }

  // v = B^T d B of one 4x4 patch per lane, d[r][q] its row r, column q; v[i * 4 + k].
  static void input_tile(const R (&d)[4][4], R (&v)[16]) {
    R a[4][4];
    for (int r = 0; r < 4; ++r) {  // each row's d B: d0 - d2, d1 + d2, d2 - d1, d1 - d3
      a[r][0] = V::sub(d[r][0], d[r][2]);
      a[r][1] = V::add(d[r][1], d[r][2]);
      a[r][2] = V::sub(d[r][2], d[r][1]);
      a[r][3] = V::sub(d[r][1], d[r][3]);
    }
    for (int k = 0; k < 4; ++k) {  // then B^T over the rows
      v[0 * 4 + k] = V::sub(a[0][k], a[2][k]);
      v[1 * 4 + k] = V::add(a[1][k], a[2][k]);
      v[2 * 4 + k] = V::sub(a[2][k], a[1][k]);
      v[3 * 4 + k] = V::sub(a[1][k], a[3][k]);
    }
  }
  // y = A^T m A + bias of one tile per lane: y[i][j] the output at row i, column j of the tile.
  static void output_tile(const R m[16], R bias, R y[2][2]) {
    R s[2][4];  // A^T m: rows 0 + 1 + 2 and 1 - 2 - 3
    for (int k = 0; k < 4; ++k) {
      s[0][k] = V::add(V::add(m[k], m[4 + k]), m[8 + k]);
      s[1][k] = V::sub(V::sub(m[4 + k], m[8 + k]), m[12 + k]);
    }
    for (int i = 0; i < 2; ++i) {  // (A^T m) A: columns 0 + 1 + 2 and 1 - 2 - 3
      y[i][0] = V::add(V::add(V::add(s[i][0], s[i][1]), s[i][2]), bias);
      y[i][1] = V::add(V::sub(V::sub(s[i][1], s[i][2]), s[i][3]), bias);
    }
  }

  // dL/dm = A g A^T of one 2x2 grad_output tile per lane (A = (A^T)^T, 4x2), g[r][q] its row r, column q.
  static void grad_tile(const R (&g)[2][2], R (&v)[16]) {
    R z[4][2];  // A g: rows g0, g0 + g1, g0 - g1, -g1
    for (int q = 0; q < 2; ++q) {
      z[0][q] = g[0][q];
      z[1][q] = V::add(g[0][q], g[1][q]);
      z[2][q] = V::sub(g[0][q], g[1][q]);
      z[3][q] = V::neg(g[1][q]);
    }
    for (int i = 0; i < 4; ++i) {  // then A^T on the right
      v[i * 4 + 0] = z[i][0];
      v[i * 4 + 1] = V::add(z[i][0], z[i][1]);
      v[i * 4 + 2] = V::sub(z[i][0], z[i][1]);
      v[i * 4 + 3] = V::neg(z[i][1]);
    }
  }

  // Whether a block's vectors hold tiles of several tile rows (images at most TW < W tiles wide: their
  // runs would leave most lanes empty), gathered by per-lane offsets (int32: the padded input is
  // smaller than 2^31 values), instead of runs of consecutive tiles along a tile row.
  static bool lanes_across_rows(const WinogradGeom& g) {
    const int64_t padded = g.N * std::max(g.C, g.OC) * g.split_plane();
    return g.tiles_w() < V::W && padded < (int64_t(1) << 31);
  }

  // For the tiles t0 + j, j < nb (a vector of them at a time), of each of `channels` planes of a split
  // buffer (pad_split's layout, planes of `rows` rows of 2 * TW1 values): the P x P patch of each tile
  // (P = 4: the input's, P = 2: grad_output's), transformed by tile(d, v), then store(c, j, cnt, v)
  // with the 16 vectors of lanes j .. j + cnt.
  template <int P, class Tile, class Store>
  static void for_tiles(const WinogradGeom& g, const T* src, int64_t channels, int64_t t0, int64_t nb, Tile tile,
                        Store store) {
    const int64_t TH = g.tiles_h(), TW = g.tiles_w(), TW1 = TW + 1, rows = 2 * TH + 2, len = 2 * TW1;
    if (lanes_across_rows(g)) {
      for (int64_t j = 0; j < nb; j += V::W) {
        const int64_t cnt = std::min<int64_t>(V::W, nb - j);
        int32_t idx[V::W];  // lane l: its tile's patch in channel 0 (lanes past cnt repeat the last tile)
        for (int l = 0; l < V::W; ++l) {
          const int64_t t = t0 + j + std::min<int64_t>(l, cnt - 1);
          const int64_t n = t / (TH * TW), th = t / TW % TH, tw = t % TW;
          idx[l] = int32_t((n * channels * rows + 2 * th) * len + tw);
        }
        for (int64_t c = 0; c < channels; ++c) {
          const T* base = src + c * rows * len;
          R d[P][P], v[16];
          for (int r = 0; r < P; ++r)
            for (int q = 0; q < P; ++q) d[r][q] = V::gather_idx(base + r * len + (q & 1) * TW1 + q / 2, idx);
          tile(d, v);
          store(c, j, cnt, v);
        }
      }
      return;
    }
    for (int64_t t = t0, off = 0; off < nb;) {
      const int64_t n = t / (TH * TW), th = t / TW % TH, tw = t % TW, run = std::min(TW - tw, nb - off);
      for (int64_t c = 0; c < channels; ++c) {
        const T* row0 = src + ((n * channels + c) * rows + 2 * th) * len + tw;
        for (int64_t j = 0; j < run; j += V::W) {
          const int64_t cnt = std::min<int64_t>(V::W, run - j);
          R d[P][P], v[16];
          for (int r = 0; r < P; ++r)  // columns 0, 1, 2, 3 of the patch: E[tw], O[tw], E[tw + 1], O[tw + 1]
            for (int q = 0; q < P; ++q) d[r][q] = load_n(row0 + r * len + (q & 1) * TW1 + q / 2 + j, cnt);
          tile(d, v);
          store(c, off + j, cnt, v);
        }
      }
      off += run;
      t += run;
    }
  }

  // V[xi][c][j] for the block's tiles t0 + j, j < nb (rows NB long; columns nb up to whole vectors zero).
  static void transform_input(const WinogradGeom& g, const T* xd, int64_t t0, int64_t nb, int64_t NB, T* Vb) {
    const int64_t C = g.C, plane = C * NB;
    for_tiles<4>(g, xd, C, t0, nb, input_tile, [&](int64_t c, int64_t j, int64_t cnt, const R* v) {
      T* dst = Vb + c * NB + j;
      for (int xi = 0; xi < 16; ++xi) store_n(dst + xi * plane, v[xi], cnt);
    });
    const int64_t end = (nb + V::W - 1) / V::W * V::W;
    if (end > nb)
      for (int64_t r = 0; r < 16 * C; ++r)
        for (int64_t j = nb; j < end; ++j) Vb[r * NB + j] = T(0);
  }

  // Cm (kMR rows, row stride ldc; columns col0 .. col0 + NV * W) = (or += with kAccumulate) A (kMR rows
  // of K, element (i, k) at A[i * sa + k * sk]) @ B (K rows, row stride ldb). Each output one sum in k order.
  template <int NV, bool kAccumulate>
  static void strip(const T* A, int64_t sa, int64_t sk, const T* B, int64_t ldb, T* Cm, int64_t ldc, int64_t K,
                    int64_t col0) {
    R acc[kMR][NV];
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = V::set1(T(0));
    const T* b = B + col0;
    for (int64_t k = 0; k < K; ++k, b += ldb) {
      R bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::W);
      for (int i = 0; i < kMR; ++i) {
        const R ai = V::set1(A[i * sa + k * sk]);
        for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(ai, bv[v], acc[i][v]);
      }
    }
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < NV; ++v) {
        T* c = Cm + i * ldc + col0 + v * V::W;
        V::store(c, kAccumulate ? V::add(V::load(c), acc[i][v]) : acc[i][v]);
      }
  }
  // One panel of kMR rows over the first `vecs` vectors of columns, in strips of up to kNV vectors.
  template <bool kAccumulate>
  static void panel(const T* A, int64_t sa, int64_t sk, const T* B, int64_t ldb, T* Cm, int64_t ldc, int64_t K,
                    int64_t vecs) {
    for (int64_t v0 = 0; v0 < vecs; v0 += kNV) {
      const int64_t col0 = v0 * V::W;
      switch (std::min<int64_t>(kNV, vecs - v0)) {
        case 3: strip<3, kAccumulate>(A, sa, sk, B, ldb, Cm, ldc, K, col0); break;
        case 2: strip<2, kAccumulate>(A, sa, sk, B, ldb, Cm, ldc, K, col0); break;
        default: strip<1, kAccumulate>(A, sa, sk, B, ldb, Cm, ldc, K, col0); break;
      }
    }
  }
  // M[xi] (ocp x NB) = U[xi] (ocp x C) @ V[xi] (C x NB) over the block's whole vectors of columns.
  static void multiply(const T* Vb, const T* U, T* Mb, int64_t C, int64_t ocp, int64_t NB, int64_t nb) {
    const int64_t vecs = (nb + V::W - 1) / V::W;
    for (int xi = 0; xi < 16; ++xi)
      for (int64_t m0 = 0; m0 < ocp; m0 += kMR)
        panel<false>(U + (xi * ocp + m0) * C, C, 1, Vb + xi * C * NB, NB, Mb + (xi * ocp + m0) * NB, NB, C, vecs);
  }

  // The block's output tiles: y = A^T M A (+ bias), cropped at OH and OW.
  static void transform_output(const WinogradGeom& g, const T* Mb, int64_t ocp, int64_t t0, int64_t nb, int64_t NB,
                               const T* bias, T* out) {
    const int64_t TH = g.tiles_h(), TW = g.tiles_w(), OHW = g.OH * g.OW;
    if (lanes_across_rows(g)) {
      for (int64_t j = 0; j < nb; j += V::W) {
        const int cnt = int(std::min<int64_t>(V::W, nb - j));
        int64_t at[V::W] = {};  // lane l: its tile's first output in channel 0
        bool row2[V::W] = {}, col2[V::W] = {};
        for (int l = 0; l < cnt; ++l) {
          const int64_t t = t0 + j + l, n = t / (TH * TW), th = t / TW % TH, tw = t % TW;
          at[l] = (n * g.OC * g.OH + 2 * th) * g.OW + 2 * tw;
          row2[l] = 2 * th + 1 < g.OH;
          col2[l] = 2 * tw + 1 < g.OW;
        }
        for (int64_t o = 0; o < g.OC; ++o) {
          R m[16], y[2][2];
          for (int xi = 0; xi < 16; ++xi) m[xi] = V::load(Mb + (xi * ocp + o) * NB + j);
          output_tile(m, V::set1(bias ? bias[o] : T(0)), y);
          T ys[2][2][V::W];
          for (int i = 0; i < 2; ++i)
            for (int k = 0; k < 2; ++k) V::store(ys[i][k], y[i][k]);
          T* yo = out + o * OHW;
          for (int l = 0; l < cnt; ++l) {
            T* p = yo + at[l];
            p[0] = ys[0][0][l];
            if (col2[l]) p[1] = ys[0][1][l];
            if (row2[l]) {
              p[g.OW] = ys[1][0][l];
              if (col2[l]) p[g.OW + 1] = ys[1][1][l];
            }
          }
        }
      }
      return;
    }
    for (int64_t t = t0, off = 0; off < nb;) {
      const int64_t n = t / (TH * TW), th = t / TW % TH, tw = t % TW, run = std::min(TW - tw, nb - off);
      const int rows = 2 * th + 1 < g.OH ? 2 : 1;
      for (int64_t o = 0; o < g.OC; ++o) {
        const R bo = V::set1(bias ? bias[o] : T(0));
        T* yo = out + ((n * g.OC + o) * g.OH + 2 * th) * g.OW;
        for (int64_t j = 0; j < run; j += V::W) {
          const int64_t cnt = std::min<int64_t>(V::W, run - j);
          R m[16], y[2][2];
          for (int xi = 0; xi < 16; ++xi) m[xi] = load_n(Mb + (xi * ocp + o) * NB + off + j, cnt);
          output_tile(m, bo, y);
          const int64_t col = 2 * (tw + j), ncols = std::min(2 * cnt, g.OW - col);
          for (int i = 0; i < rows; ++i) V::store_zip(yo + i * g.OW + col, y[i][0], y[i][1], ncols);
        }
      }
      off += run;
      t += run;
    }
  }

  static bool run(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias, T* out,
                  T* work, int64_t threads) {
    const int64_t ocp = winograd_round(g.OC, kWinogradRowAlign);
    T* U = work;
    T* xd = U + 16 * ocp * g.C;
    T* per_thread = xd + g.N * g.C * g.split_plane();
    const int64_t thread_stride = 16 * (g.C + ocp) * kWinogradBlock;
    if (!filters(g.OC, g.C, w, f.so, f.sc, f, U, ocp, g.C)) return false;
    if (!pad_split(g, in, xd)) return false;
    // Blocks: a multiple of the thread count when there are few, each of whole vectors.
    const int64_t tiles = g.tiles();
    int64_t blocks = (tiles + kWinogradBlock - 1) / kWinogradBlock;
    blocks = (blocks + threads - 1) / threads * threads;
    const int64_t NB = ((tiles + blocks - 1) / blocks + V::W - 1) / V::W * V::W;
    blocks = (tiles + NB - 1) / NB;
#pragma omp parallel num_threads(int(threads)) if (threads > 1 && blocks > 1)
    {
      T* Vb = per_thread + int64_t(omp_get_thread_num()) * thread_stride;
      T* Mb = Vb + 16 * g.C * NB;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t t0 = b * NB, nb = std::min(NB, tiles - t0);
        transform_input(g, xd, t0, nb, NB, Vb);
        multiply(Vb, U, Mb, g.C, ocp, NB, nb);
        transform_output(g, Mb, ocp, t0, nb, NB, bias, out);
      }
    }
    return true;
  }

  // The transformed input patches of tiles t0 .. t0 + nb, a tile per row: dst[xi * xi_stride + j * ldd + c]
  // for tile t0 + j, channel c; a vector of channels at a time, each patch value gathered across the
  // channels' planes (the planes are smaller than 2^31 / W values: pad_split's buffer is).
  static void patches_by_channel(const WinogradGeom& g, const T* xd, int64_t t0, int64_t nb, T* dst,
                                 int64_t xi_stride, int64_t ldd) {
    const int64_t TW1 = g.tiles_w() + 1, len = 2 * TW1, plane = g.split_plane();
    const int64_t TH = g.tiles_h(), TW = g.tiles_w();
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t t = t0 + j, n = t / (TH * TW), th = t / TW % TH, tw = t % TW;
      const T* base = xd + n * g.C * plane + 2 * th * len + tw;
      for (int64_t c0 = 0; c0 < g.C; c0 += V::W) {
        const int64_t cnt = std::min<int64_t>(V::W, g.C - c0);
        int32_t idx[V::W];  // lane l: channel c0 + l's plane (lanes past the channels repeat the last)
        for (int l = 0; l < V::W; ++l) idx[l] = int32_t((c0 + std::min<int64_t>(l, cnt - 1)) * plane);
        R d[4][4], v[16];
        for (int r = 0; r < 4; ++r)
          for (int q = 0; q < 4; ++q) d[r][q] = V::gather_idx(base + r * len + (q & 1) * TW1 + q / 2, idx);
        input_tile(d, v);
        for (int xi = 0; xi < 16; ++xi) store_n(dst + xi * xi_stride + j * ldd + c0, v[xi], cnt);
      }
    }
  }

  // ---- channels_last (NHWC): lanes over channels, every load and store a run of a pixel's channels.

  // dst[xi * xi_stride + j * ld + c] = tile(d) of tile t0 + j, channels c .. c + W, for j < nb: d the P x P
  // patch of in (N, H, W, C) at rows 2 * th - PT .. and columns 2 * tw - PL .. (zero outside the image).
  // P = 4: the input's patches; P = 2: grad_output's tiles, as patches of a stride-1 "image" OH x OW with
  // no padding (the weight gradient's gg).
  template <int P, class Tile>
  static void patches_nhwc(const WinogradGeom& g, const T* in, int64_t t0, int64_t nb, T* dst, int64_t xi_stride,
                           int64_t ld, Tile tile) {
    const int64_t TH = g.tiles_h(), TW = g.tiles_w();
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t t = t0 + j, n = t / (TH * TW), th = t / TW % TH, tw = t % TW;
      for (int64_t c0 = 0; c0 < g.C; c0 += V::W) {
        const int64_t cnt = std::min<int64_t>(V::W, g.C - c0);
        R d[P][P], v[16];
        for (int r = 0; r < P; ++r) {
          const int64_t h = 2 * th + r - g.PT;
          for (int q = 0; q < P; ++q) {
            const int64_t w = 2 * tw + q - g.PL;
            d[r][q] = h >= 0 && h < g.H && w >= 0 && w < g.W ? load_n(in + ((n * g.H + h) * g.W + w) * g.C + c0, cnt)
                                                             : V::set1(T(0));
          }
        }
        tile(d, v);
        for (int xi = 0; xi < 16; ++xi) store_n(dst + xi * xi_stride + j * ld + c0, v[xi], cnt);
      }
    }
  }

  // The NHWC forward: per block of NB tiles, VT[xi] (NB x C) the transformed patches, M[xi] (NB x ocq)
  // = VT[xi] @ UT[xi] (UT: C x ocq, the transformed filters as columns), then each tile's outputs.
  static bool run_nhwc(const WinogradGeom& g, const T* in, const T* w, const WinogradFilters& f, const T* bias, T* out,
                       T* work, int64_t threads) {
    const int64_t C = g.C, OC = g.OC, ocq = winograd_round(OC, kWinogradColAlign);
    T* UT = work;
    T* per_thread = UT + 16 * C * ocq;
    const int64_t thread_stride = 16 * kWinogradBlock * (C + ocq);
    if (!filters(C, OC, w, f.sc, f.so, f, UT, C, ocq)) return false;
    if (!all_finite_values(in, g.N * g.H * g.W * C)) return false;
    const int64_t tiles = g.tiles(), TH = g.tiles_h(), TW = g.tiles_w();
    int64_t blocks = (tiles + kWinogradBlock - 1) / kWinogradBlock;
    blocks = (blocks + threads - 1) / threads * threads;
    const int64_t NB = winograd_round((tiles + blocks - 1) / blocks, kMR);
    blocks = (tiles + NB - 1) / NB;
#pragma omp parallel num_threads(int(threads)) if (threads > 1 && blocks > 1)
    {
      T* Vb = per_thread + int64_t(omp_get_thread_num()) * thread_stride;
      T* Mb = Vb + 16 * kWinogradBlock * C;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t t0 = b * NB, nb = std::min(NB, tiles - t0), rows = winograd_round(nb, kMR);
        patches_nhwc<4>(g, in, t0, nb, Vb, NB * C, C, input_tile);
        for (int xi = 0; xi < 16; ++xi)  // the register tile's rows past the block's tiles
          for (int64_t i = nb * C; i < rows * C; ++i) Vb[xi * NB * C + i] = T(0);
        for (int xi = 0; xi < 16; ++xi)
          for (int64_t m0 = 0; m0 < rows; m0 += kMR)
            panel<false>(Vb + (xi * NB + m0) * C, C, 1, UT + xi * C * ocq, ocq, Mb + (xi * NB + m0) * ocq, ocq, C,
                         ocq / V::W);
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t t = t0 + j, n = t / (TH * TW), th = t / TW % TH, tw = t % TW;
          for (int64_t o0 = 0; o0 < OC; o0 += V::W) {
            const int64_t cnt = std::min<int64_t>(V::W, OC - o0);
            R m[16], y[2][2];
            for (int xi = 0; xi < 16; ++xi) m[xi] = V::load(Mb + (xi * NB + j) * ocq + o0);
            output_tile(m, bias ? load_n(bias + o0, cnt) : V::set1(T(0)), y);
            for (int i = 0; i < 2 && 2 * th + i < g.OH; ++i)
              for (int k = 0; k < 2 && 2 * tw + k < g.OW; ++k)
                store_n(out + ((n * g.OH + 2 * th + i) * g.OW + 2 * tw + k) * OC + o0, y[i][k], cnt);
          }
        }
      }
    }
    return true;
  }

  // The weight gradient (conv.h, conv_winograd_weight_grad): dL/dg = G^T [sum over tiles of (A gy A^T) .
  // (B^T d B)] G, the sum over tiles being 16 GEMMs S[xi] (OC x C) += Y[xi] (OC x tiles) @ V[xi]^T,
  // chunk by chunk of kc tiles: VT[xi] (kc x cp) the transformed input patches stored a tile per row,
  // Y the transformed grad_output tiles, (ocp x kc) for NCHW (lanes over tiles) or (kc x ocp) for NHWC
  // (lanes over channels); the GEMM broadcasts Y and loads rows of VT as the forward's does.
  static bool weight_grad(const WinogradGeom& g, const T* in, const T* gy, bool nhwc, T* gw, const WinogradFilters& f,
                          T* work, int64_t threads, int64_t images) {
    const WinogradLayout L = winograd_weight_grad_layout(g, images, nhwc);
    const int64_t C = g.C, OC = g.OC, cp = L.cp, ocp = L.ocp, kc = L.kc;
    T* xd = work;
    T* gyd = xd + L.x_split;
    T* VT = gyd + L.gy_split;
    T* Y = VT + 16 * kc * cp;
    T* S = Y + 16 * ocp * kc;
    if (nhwc && !(all_finite_values(in, g.N * C * g.H * g.W) && all_finite_values(gy, g.N * OC * g.OH * g.OW)))
      return false;
    if (cp > C)  // columns C .. cp of VT stay zero (the GEMM reads whole vectors)
      for (int64_t r = 0; r < 16 * kc; ++r)
        for (int64_t c = C; c < cp; ++c) VT[r * cp + c] = T(0);
    for (int xi = 0; xi < 16; ++xi)  // the channels OC .. ocp of Y too (the register tile's rows)
      for (int64_t t = 0; t < kc; ++t)
        for (int64_t o = OC; o < ocp; ++o) Y[xi * ocp * kc + (nhwc ? t * ocp + o : o * kc + t)] = T(0);
    for (int64_t i = 0; i < 16 * ocp * cp; ++i) S[i] = T(0);
    const int64_t per_image = g.tiles_h() * g.tiles_w();
    for (int64_t n0 = 0; n0 < g.N; n0 += images) {
      WinogradGeom gc = g;  // this chunk of images
      gc.N = std::min(images, g.N - n0);
      const T* x = in + n0 * C * g.H * g.W;
      const T* dy = gy + n0 * OC * g.OH * g.OW;
      // grad_output's tiles are the same tiles of a stride-1 "image" OH x OW with no padding
      WinogradGeom gg{gc.N, OC, g.OH, g.OW, C, g.OH, g.OW, 0, 0};
      if (!nhwc && !(pad_split(gc, x, xd) && pad_split(gg, dy, gyd))) return false;
      const int64_t tiles = gc.N * per_image;
      for (int64_t t0 = 0; t0 < tiles; t0 += kc) {
        const int64_t nb = std::min(kc, tiles - t0), parts = (nb + V::W - 1) / V::W;
#pragma omp parallel for schedule(static) num_threads(int(threads)) if (threads > 1 && parts > 1)
        for (int64_t p = 0; p < parts; ++p) {
          const int64_t j0 = p * V::W, cnt = std::min<int64_t>(V::W, nb - j0);
          if (nhwc) {
            patches_nhwc<4>(gc, x, t0 + j0, cnt, VT + j0 * cp, kc * cp, cp, input_tile);
            patches_nhwc<2>(gg, dy, t0 + j0, cnt, Y + j0 * ocp, kc * ocp, ocp, grad_tile);
            continue;
          }
          patches_by_channel(gc, xd, t0 + j0, cnt, VT + j0 * cp, kc * cp, cp);
          for_tiles<2>(gg, gyd, OC, t0 + j0, cnt, grad_tile, [&](int64_t o, int64_t j, int64_t n, const R* v) {
            for (int xi = 0; xi < 16; ++xi) store_n(Y + (xi * ocp + o) * kc + j0 + j, v[xi], n);
          });
        }
        const int64_t panels = ocp / kMR, vecs = cp / V::W;
#pragma omp parallel for schedule(static) num_threads(int(threads)) if (threads > 1)
        for (int64_t task = 0; task < 16 * panels; ++task) {
          const int64_t xi = task / panels, m0 = task % panels * kMR;
          const T* A = Y + xi * ocp * kc + (nhwc ? m0 : m0 * kc);
          panel<true>(A, nhwc ? 1 : kc, nhwc ? ocp : 1, VT + xi * kc * cp, cp, S + (xi * ocp + m0) * cp, cp, nb, vecs);
        }
      }
    }
    // dL/dg = G^T S G per filter, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]
    int64_t kk[9];
    tap_offsets(f, kk);
#pragma omp parallel for schedule(static) num_threads(int(threads)) if (threads > 1 && OC * C > 4096)
    for (int64_t o = 0; o < OC; ++o) {
      const R half = V::set1(T(0.5));
      for (int64_t c0 = 0; c0 < C; c0 += V::W) {
        const int64_t n = std::min<int64_t>(V::W, C - c0);
        R m[16];
        for (int xi = 0; xi < 16; ++xi) m[xi] = V::load(S + (xi * ocp + o) * cp + c0);
        R t[3][4];  // G^T S: rows
        for (int k = 0; k < 4; ++k) {
          const R sum = V::mul(V::add(m[4 + k], m[8 + k]), half);
          t[0][k] = V::add(m[k], sum);
          t[1][k] = V::mul(V::sub(m[4 + k], m[8 + k]), half);
          t[2][k] = V::add(sum, m[12 + k]);
        }
        T out[9][V::W];
        for (int r = 0; r < 3; ++r) {  // (G^T S) G: columns
          const R sum = V::mul(V::add(t[r][1], t[r][2]), half);
          V::store(out[r * 3 + 0], V::add(t[r][0], sum));
          V::store(out[r * 3 + 1], V::mul(V::sub(t[r][1], t[r][2]), half));
          V::store(out[r * 3 + 2], V::add(sum, t[r][3]));
        }
        T* dst = gw + o * f.so + c0 * f.sc;
        for (int64_t l = 0; l < n; ++l)
          for (int k = 0; k < 9; ++k) dst[l * f.sc + kk[k]] = out[k][l];
      }
    }
    return true;
  }
};

}  // namespace
}  // namespace dlk::cpu
