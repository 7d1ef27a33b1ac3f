// A packed float GEMM for AVX-512 and AVX2 + FMA: C (M, N) = alpha A (M, K) B (K, N), or += it,
// C row-major.
//
// Why: Eigen 3.4's float GEMM ran at 50-67% of the FMA peak on the models' shapes (Zen 5, one
// thread, bench_gemm), and a training step cannot beat its GEMM's share. This kernel, laid out as
// BLIS and OpenBLAS lay theirs out, ran at 75-91% there, beside OpenBLAS's 72-91%; built for AVX2
// on the same machine, at 80-92% of the AVX2 peak against Eigen's 55-71% (bench/README.md).
// detail::gemm (gemm.hpp) uses it for float products large enough to pay for its packing, and for
// small ones it reads without packing (is_small); doubles, other products and BLAS builds go on as
// before. Define EIGENFORMER_EIGEN_GEMM to use Eigen's GEMM for floats too (in every file of a
// program, as EIGEN_USE_BLAS).
//
// Layout. The vector lanes run along N, C's rows: a micro-tile of MR rows x NR columns (NR = two
// vectors) stays in registers while k runs, each step loading two vectors of B and broadcasting
// MR values of A into 2 MR fused multiply-adds. Both operands are first copied ("packed") into
// panels the tile reads in order: A in panels of MR rows (k-major), B in panels of NR columns.
// Loops, outermost first: M in blocks of kBlockM rows (A's packed block, 4.5 MB with AVX-512 and
// 2 MB with AVX2, sits in L3), K in blocks of kBlockK, N in blocks of kBlockN (B's packed block
// sits in L2), then each A panel (kept in L1) against every B panel of the block. A small product
// (is_small: attention's per head) skips the packing where it can: the same tile reads A where
// it is, and B too when B's rows are contiguous.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstring>
#include <utility>

#include "tensor.hpp"

#if !defined(EIGENFORMER_EIGEN_GEMM) && \
    (defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__)))
#define EIGENFORMER_GEMM_KERNEL 1
#include <immintrin.h>
#else
#define EIGENFORMER_GEMM_KERNEL 0
#endif

namespace eigenformer {
namespace detail {

/// The calling thread's packing buffer `which` (0: A, 1: B) of a matrix product, grown to at
/// least size entries and kept, so that products allocate nothing once grown. Eigen's GEMM
/// (gemm.hpp) and the kernel below share them: a thread runs one product at a time.
template <class Scalar>
Scalar* pack_buffer(int which, Index size) {
  thread_local Eigen::Matrix<Scalar, Eigen::Dynamic, 1> buffers[2];  // aligned as Eigen's
  auto& b = buffers[which];
  if (b.size() < size) b.resize(size);
  return b.data();
}

}  // namespace detail
}  // namespace eigenformer

#if EIGENFORMER_GEMM_KERNEL
namespace eigenformer {
namespace detail {
namespace kernel {

// Each instruction set's functions live in an inline namespace of its own, so that files compiled
// for different ones (which define these inline functions differently) never share a definition
// at link time.
#ifdef __AVX512F__
inline namespace avx512 {
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int MR = 12;  // 12 x 2 accumulators of the 32 registers
// Block sizes measured best on Zen 5 (48 KB L1, 1 MB L2) among BLIS-like choices.
constexpr Index kBlockM = 3072 / MR * MR, kBlockK = 384, kBlockN = 480;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vzero() { return _mm512_setzero_ps(); }
#else
inline namespace avx2 {
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int MR = 6;  // 6 x 2 accumulators of the 16 registers, BLIS's Haswell kernel
// B's block (256 x 256 floats, 256 KB) fits half of Zen 3's 512 KB L2.
constexpr Index kBlockM = 2048 / MR * MR, kBlockK = 256, kBlockN = 256;
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vzero() { return _mm256_setzero_ps(); }
#endif
constexpr int NR = 2 * kLanes;

/// A matrix operand by strides: element (r, c) is data[r * row_stride + c * col_stride].
struct Operand {
  const float* data;
  Index row_stride, col_stride;
};

/// Where a micro-tile reads its operands: element (i, k) of A at a[i * a_row + k * a_depth], and
/// the NR entries of row k of B at b + k * b_depth. Packed panels have the fixed strides of
/// kPacked; a small product's operands are read where they are (small_gemm).
struct TileStrides {
  Index a_row, a_depth, b_depth;
};
constexpr TileStrides kPacked = {1, MR, NR};

/// c (rows, NR, row stride ldc) = alpha a b, or += it when add, for A's (rows, kc) at a and B's
/// (kc, NR) at b, laid out as st says (when packed, as kPacked: a packed A panel (kc, MR), of which
/// the first rows lines are used, and a packed B panel (kc, NR)). Every loop over registers is
/// unrolled, so the accumulators never leave them; with packed, the strides are constants.
template <int rows, bool add, bool packed>
void micro_tile(Index kc, const float* __restrict a, const float* __restrict b, TileStrides st,
                float* c, Index ldc, float alpha) {
  if constexpr (packed) st = kPacked;
  Vec acc[rows][2];
  const float* a_rows[rows];
#pragma GCC unroll 16
  for (int i = 0; i < rows; ++i) {
    acc[i][0] = acc[i][1] = vzero();
    a_rows[i] = a + i * st.a_row;
  }
  for (Index k = 0, ak = 0; k < kc; ++k, ak += st.a_depth, b += st.b_depth) {
    const Vec b0 = vload(b), b1 = vload(b + kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) {
      const Vec ai = vbroadcast(a_rows[i] + ak);
      acc[i][0] = vfma(ai, b0, acc[i][0]);
      acc[i][1] = vfma(ai, b1, acc[i][1]);
    }
  }
  const Vec scale = vbroadcast(&alpha);
#pragma GCC unroll 16
  for (int i = 0; i < rows; ++i) {
    float* row = c + i * ldc;
    vstore(row, add ? vfma(scale, acc[i][0], vload(row)) : vmul(scale, acc[i][0]));
    vstore(row + kLanes,
           add ? vfma(scale, acc[i][1], vload(row + kLanes)) : vmul(scale, acc[i][1]));
  }
}

/// micro_tile<rows, add, packed> for rows = 1 .. MR, chosen at run time: the last panel of a block
/// whose height is no multiple of MR does only its own rows' work.
template <bool add, bool packed, int... r>
void micro_tile_rows(Index rows, Index kc, const float* a, const float* b, TileStrides st, float* c,
                     Index ldc, float alpha, std::integer_sequence<int, r...>) {
  using Tile = void (*)(Index, const float*, const float*, TileStrides, float*, Index, float);
  static constexpr Tile tiles[] = {&micro_tile<r + 1, add, packed>...};
  tiles[rows - 1](kc, a, b, st, c, ldc, alpha);
}

/// A tile of (rows, NR) of C at c, as micro_tile_rows, its add and packed chosen at run time.
inline void full_tile(Index rows, Index kc, const float* a, const float* b, TileStrides st,
                      float* c, Index ldc, float alpha, bool add, bool packed) {
  constexpr auto heights = std::make_integer_sequence<int, MR>();
  if (packed && add)
    micro_tile_rows<true, true>(rows, kc, a, b, st, c, ldc, alpha, heights);
  else if (packed)
    micro_tile_rows<false, true>(rows, kc, a, b, st, c, ldc, alpha, heights);
  else if (add)
    micro_tile_rows<true, false>(rows, kc, a, b, st, c, ldc, alpha, heights);
  else
    micro_tile_rows<false, false>(rows, kc, a, b, st, c, ldc, alpha, heights);
}

/// A tile of which only (rows, cols < NR) lie inside C: computed into a scratch tile, then that
/// part stored or added. (Kept apart from micro_tile: a branch inside it made GCC keep the
/// accumulators in memory.) Padding products (zero x inf = NaN) stay in the scratch.
inline void edge_tile(Index kc, const float* a, const float* b, float* c, Index ldc, Index rows,
                      Index cols, float alpha, bool add) {
  alignas(64) float scratch[MR * NR];
  micro_tile<MR, false, true>(kc, a, b, kPacked, scratch, NR, alpha);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j)
      c[i * ldc + j] = add ? c[i * ldc + j] + scratch[i * NR + j] : scratch[i * NR + j];
}

/// dst[r * ld + c] = src[c * ls + r] for r, c < 8: an 8 x 8 transpose in AVX registers.
inline void transpose8(const float* src, Index ls, float* dst, Index ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

/// dst[r * ld + c] = src[c * ls + r] for r < 8, c < lines (4 or 2): a (lines, 8) block stored as
/// 8 short lines. With transpose8 it packs a panel of MR = 12 (8 + 4) or 6 (4 + 2) rows without
/// transposing any row twice.
template <int lines>
void transpose_short(const float* src, Index ls, float* dst, Index ld) {
  static_assert(lines == 4 || lines == 2, "4 or 2 lines");
  __m256 r[4], t[4];
  for (int i = 0; i < lines; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
  for (int i = 0; i < lines; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // k 0, 1 | 4, 5 of lines i, i + 1
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // k 2, 3 | 6, 7
  }
  if constexpr (lines == 4) {
    for (int i = 0; i < 2; ++i) {
      r[2 * i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);      // k 2i | 2i + 4 of the 4 lines
      r[2 * i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);  // k 2i + 1 | 2i + 5
    }
    for (int k = 0; k < 4; ++k) {
      _mm_storeu_ps(dst + k * ld, _mm256_castps256_ps128(r[k]));
      _mm_storeu_ps(dst + (k + 4) * ld, _mm256_extractf128_ps(r[k], 1));
    }
  } else {
    for (int i = 0; i < 2; ++i) {  // t[i]: k 2i, 2i + 1 | 2i + 4, 2i + 5
      const __m128 lo = _mm256_castps256_ps128(t[i]), hi = _mm256_extractf128_ps(t[i], 1);
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + 2 * i * ld), lo);
      _mm_storeh_pi(reinterpret_cast<__m64*>(dst + (2 * i + 1) * ld), lo);
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + (2 * i + 4) * ld), hi);
      _mm_storeh_pi(reinterpret_cast<__m64*>(dst + (2 * i + 5) * ld), hi);
    }
  }
}

/// dst (kc, width) = the (width, kc) block at src, whose element (i, k) is
/// src[i * stride_i + k * stride_k]; the first n of the width lines are read, the rest are zeros.
/// A panel of A is (MR lines = rows) x kc, a panel of B (NR lines = columns) x kc.
template <int width>
void pack_panel(float* dst, const float* src, Index stride_i, Index stride_k, Index n, Index kc) {
  static_assert(width % 2 == 0, "widths of 8s, then a 4 and a 2");
  constexpr int eights = width / 8 * 8, fours = eights + width % 8 / 4 * 4;
  Index k = 0;
  if (n == width && stride_k == 1) {  // lines contiguous along k: transpose, 8 k at a time
    for (; k + 8 <= kc; k += 8) {
      // Each of the width lines is a stream of its own: with 12 or 32 lines (AVX-512's A and B
      // panels), more than the hardware prefetcher follows when the operand is not in cache.
      // So fetch a cache line of each, 32 k ahead.
      if (k % 16 == 0 && k + 32 < kc)
        for (int i = 0; i < width; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(src + i * stride_i + k + 32), _MM_HINT_T0);
      float* out = dst + k * width;
      for (int i = 0; i < eights; i += 8)
        transpose8(src + i * stride_i + k, stride_i, out + i, width);
      if constexpr (fours > eights)
        transpose_short<4>(src + eights * stride_i + k, stride_i, out + eights, width);
      if constexpr (width > fours)
        transpose_short<2>(src + fours * stride_i + k, stride_i, out + fours, width);
    }
  } else if (n == width && stride_i == 1) {  // a panel's k-line is contiguous: copy
    for (; k < kc; ++k) std::memcpy(dst + k * width, src + k * stride_k, sizeof(float) * width);
  }
  for (; k < kc; ++k) {
    for (Index i = 0; i < n; ++i) dst[k * width + i] = src[i * stride_i + k * stride_k];
    for (Index i = n; i < width; ++i) dst[k * width + i] = 0;
  }
}

/// Packs rows [row, row + rows) x k [k0, k0 + kc) of A as panels of MR rows.
inline void pack_a(float* dst, const Operand& A, Index row, Index rows, Index k0, Index kc) {
  for (Index p = 0; p < rows; p += MR, dst += kc * MR)
    pack_panel<MR>(dst, A.data + (row + p) * A.row_stride + k0 * A.col_stride, A.row_stride,
                   A.col_stride, std::min<Index>(MR, rows - p), kc);
}

/// Packs k [k0, k0 + kc) x columns [col, col + cols) of B as panels of NR columns.
inline void pack_b(float* dst, const Operand& B, Index k0, Index kc, Index col, Index cols) {
  for (Index q = 0; q < cols; q += NR, dst += kc * NR)
    pack_panel<NR>(dst, B.data + k0 * B.row_stride + (col + q) * B.col_stride, B.col_stride,
                   B.row_stride, std::min<Index>(NR, cols - q), kc);
}

/// C's block (rows, cols) at c = alpha packed A block (rows, kc) x packed B block (kc, cols), or
/// += it when add.
inline void block_product(Index kc, const float* pa, const float* pb, float* c, Index ldc,
                          Index rows, Index cols, float alpha, bool add) {
  for (Index i = 0; i < rows; i += MR) {
    const float* a = pa + i * kc;  // panel i / MR
    const Index tile_rows = std::min<Index>(MR, rows - i);
    for (Index j = 0; j < cols; j += NR) {
      const float* b = pb + j * kc;
      float* tile = c + i * ldc + j;
      if (j + NR > cols)
        edge_tile(kc, a, b, tile, ldc, tile_rows, cols - j, alpha, add);
      else
        full_tile(tile_rows, kc, a, b, kPacked, tile, ldc, alpha, add, true);
    }
  }
}

/// Whether gemm takes a product as small: each operand at most this many floats (64 KB, within
/// L2, most of it within L1), N a multiple of NR, and K within one K block (so that each entry
/// is summed in the same order as by the blocked path, whichever a thread's share takes).
/// Attention's per-head products are such (32 to 128 tokens x 64 features): their operands are
/// read where they are, B packed only when its rows are not contiguous. Packing cost them a
/// quarter to a third of their time; on larger operands, reading A in place (MR rows as MR
/// streams) ran slower than packing it.
constexpr Index kSmallOperand = 16384;
inline bool is_small(Index M, Index N, Index K) {
  return K <= kBlockK && N % NR == 0 && M * K <= kSmallOperand && K * N <= kSmallOperand;
}

/// gemm for a small product (is_small): A read in place, B too when its rows are contiguous
/// (col_stride 1), else packed.
inline void small_gemm(Index M, Index N, Index K, float alpha, const Operand& A, const Operand& B,
                       bool add, float* C, Index ldc) {
  const bool b_in_place = B.col_stride == 1;
  const float* b = B.data;
  if (!b_in_place) {
    float* packed = pack_buffer<float>(1, K * N);
    pack_b(packed, B, 0, K, 0, N);
    b = packed;
  }
  // B's panel j starts at column j (in place) or at the j / NR-th packed panel.
  const TileStrides st = {A.row_stride, A.col_stride, b_in_place ? B.row_stride : NR};
  for (Index i = 0; i < M; i += MR)
    for (Index j = 0; j < N; j += NR)
      full_tile(std::min<Index>(MR, M - i), K, A.data + i * A.row_stride,
                b + (b_in_place ? j : j * K), st, C + i * ldc + j, ldc, alpha, add, false);
}

/// C (M, N), row stride ldc, = alpha A (M, K) B (K, N), or += it when add, on the calling thread.
/// K > 0; C must not overlap A or B.
inline void gemm(Index M, Index N, Index K, float alpha, const Operand& A, const Operand& B,
                 bool add, float* C, Index ldc) {
  eigen_assert(K > 0);
  if (is_small(M, N, K)) {
    small_gemm(M, N, K, alpha, A, B, add, C, ldc);
    return;
  }
  const Index mc_max = std::min(kBlockM, (M + MR - 1) / MR * MR);
  const Index kc_max = std::min(kBlockK, K);
  const Index nc_max = std::min(kBlockN, (N + NR - 1) / NR * NR);
  float* pa = pack_buffer<float>(0, mc_max * kc_max);
  float* pb = pack_buffer<float>(1, kc_max * nc_max);
  for (Index i0 = 0; i0 < M; i0 += kBlockM) {
    const Index mc = std::min(kBlockM, M - i0);
    for (Index k0 = 0; k0 < K; k0 += kBlockK) {
      const Index kc = std::min(kBlockK, K - k0);
      pack_a(pa, A, i0, mc, k0, kc);
      for (Index j0 = 0; j0 < N; j0 += kBlockN) {
        const Index nc = std::min(kBlockN, N - j0);
        pack_b(pb, B, k0, kc, j0, nc);
        // The first K block stores (unless add), the others add to it.
        block_product(kc, pa, pb, C + i0 * ldc + j0, ldc, mc, nc, alpha, add || k0 > 0);
      }
    }
  }
}

}  // namespace avx512 or avx2
}  // namespace kernel
}  // namespace detail
}  // namespace eigenformer
#endif  // EIGENFORMER_GEMM_KERNEL
