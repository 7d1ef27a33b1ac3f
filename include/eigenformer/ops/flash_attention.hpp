// Tiled attention with an online softmax ("flash attention"): the same results as
// ops/attention.hpp without ever holding the (Tq, Tk) probabilities.
//
// Layout, masks and semantics are those of ops/attention.hpp: Q (B*Tq, H*dh), K and V (B*Tk, H*dh),
// causal aligned at the end, key padding (B, Tk), attn_mask and attn_bias (Tq, Tk), (B*Tq, Tk) or
// (B*H*Tq, Tk); a query whose keys are all masked gets a zero output, zero gradients and a
// log-sum-exp of -inf (never NaN).
//
// Forward: for each (sequence, head, block of block.q queries) the keys are visited in blocks of
// block.k; a running row maximum m and sum l rescale the partial output, so only a (block.q,
// block.k) score tile and a (block.q, dh) accumulator live at a time. What backward needs is the
// per-row log-sum-exp lse = m + log(l), (B*H, Tq): row b*H + h holds head h of sequence b.
// Causal attention skips the key blocks that a query block cannot see (about half the work).
//
// Backward recomputes each probability tile from Q, K and lse (P = exp(S - lse)) and uses
// D_i = rowsum(dO * O): dS = P * (dO V^T - D). Per (sequence, head) the key blocks are the outer
// loop (dK, dV of a key block accumulate in a small tile) and dQ accumulates in place.
//
// Position bias: the optional pos_bias (H, Tq + Tk - 1) of ops/attention.hpp is added to each
// score tile (a segment of the head's row per tile row), and the backward returns its gradient
// summed along the diagonals of each dS tile, so the bias too costs memory linear in T.
//
// Memory: scratch of a few (block.q, block.k) and (block, dh) tiles per thread, plus lse (and with a
// position bias B*H*(Tq + Tk - 1) for its gradient); nothing grows with Tq * Tk.
// Threads: the forward runs B*H*ceil(Tq/block.q) independent items, the backward B*H items (so it
// is serial when B*H == 1).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"
#include "attention.hpp"
#include "softmax.hpp"

namespace eigenformer {

/// Tile sizes of the tiled kernel. Any positive sizes work (they are clamped to Tq and Tk); the
/// defaults were the fastest measured for dh = 64 in float with AVX2 (bench/bench_attention.cpp).
struct AttentionBlocks {
  Index q = 64;   // queries per tile
  Index k = 128;  // keys per tile
};

/// Which attention kernel a layer runs (Attention::impl).
enum class AttentionImpl {
  automatic,  // use_tiled_attention() decides from the sizes
  plain,      // ops/attention.hpp: keeps the (B*H*Tq, Tk) probabilities
  tiled,      // this file: keeps the (B*H, Tq) log-sum-exp only
};

/// The automatic rule, from bench_attention's BM_attention_plain/tiled (float, dh = 64, one and
/// two threads, both attention kernels' products on the float GEMM kernel; Zen 5): the tiled kernel
/// is slower on short sequences (its backward recomputes Q K^T, 7 products against 6, and small
/// tiles cost more per flop) and as fast with a causal mask at T = 256 (it skips the hidden key
/// blocks), 1.5x faster at T = 1024. Without a mask it stays about 1.2x slower (T = 1024), so there
/// it is chosen for memory: tiled from Tq * Tk >= 256 * 256 when causal, from 512 * 512 otherwise
/// (where the plain probabilities reach 1 MiB per sequence and head).
inline bool use_tiled_attention(AttentionImpl impl, const AttentionDims& d,
                                const AttentionMask& mask) {
  if (impl != AttentionImpl::automatic) return impl == AttentionImpl::tiled;
  const double pairs = static_cast<double>(d.Tq) * static_cast<double>(d.Tk);
  return pairs >= (mask.causal ? 256.0 * 256.0 : 512.0 * 512.0);
}

namespace detail {

/// Whether the tile of queries [i0, i0 + nq) and keys [j0, j0 + nk) has masked entries to set.
inline bool tile_needs_mask(const AttentionMask& mask, const AttentionDims& d, Index i0, Index j0,
                            Index nk) {
  if (mask.key_padding.size() != 0 || mask.attn_mask.size() != 0 || mask.attn_bias.size() != 0)
    return true;
  return mask.causal && j0 + nk - 1 > i0 + (d.Tk - d.Tq);  // the first row hides some keys
}

/// End of the keys that queries [i0, i0 + nq) can see at all (causal), Tk otherwise.
inline Index visible_key_end(const AttentionMask& mask, const AttentionDims& d, Index i0,
                             Index nq) {
  if (!mask.causal) return d.Tk;
  return std::min(d.Tk, i0 + nq + (d.Tk - d.Tq));
}

}  // namespace detail

/// out (B*Tq, H*dh) and lse (B*H, Tq) from q (B*Tq, H*dh), k and v (B*Tk, H*dh), and pos_bias
/// (H, Tq + Tk - 1) when not null. Throws ArgumentError when a shape does not fit d.
template <class Scalar>
void flash_attention_forward(Matrix<Scalar>& out, Matrix<Scalar>& lse, ConstRef<Scalar> q,
                             ConstRef<Scalar> k, ConstRef<Scalar> v, const AttentionDims& d,
                             const AttentionMask& mask, const AttentionBlocks& blocks = {},
                             const Matrix<Scalar>* pos_bias = nullptr) {
  detail::check_attention_inputs<Scalar>("flash_attention_forward", q, k, v, d, mask, pos_bias);
  out.resize(d.B * d.Tq, d.H * d.dh);
  lse.resize(d.B * d.H, d.Tq);
  const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(d.dh));
  const Index bq = std::max<Index>(1, std::min(blocks.q, d.Tq));
  const Index bk = std::max<Index>(1, std::min(blocks.k, d.Tk));
  const Index nqb = (d.Tq + bq - 1) / bq;
  const double work = 4.0 * static_cast<double>(bq * d.Tk * d.dh) * (mask.causal ? 0.5 : 1.0);
  detail::parallel_for(d.B * d.H * nqb, work, [&](Index item) {
    const Index bh = item / nqb, b = bh / d.H, h = bh % d.H;
    const Index i0 = (item % nqb) * bq, nq = std::min(bq, d.Tq - i0);
    const Eigen::Block<ConstRef<Scalar>> qt = q.block(b * d.Tq + i0, h * d.dh, nq, d.dh);
    Matrix<Scalar> s(nq, bk);                              // scores, then probabilities
    Matrix<Scalar> acc = Matrix<Scalar>::Zero(nq, d.dh);   // unnormalised output
    Eigen::Array<Scalar, Eigen::Dynamic, 1> m(nq), l(nq);  // running max and sum
    m.setConstant(neg_inf);
    l.setZero();
    const Index kend = detail::visible_key_end(mask, d, i0, nq);
    for (Index j0 = 0; j0 < kend; j0 += bk) {
      const Index nk = std::min(bk, kend - j0);
      Eigen::Block<Matrix<Scalar>> st = s.leftCols(nk);
      detail::gemm_assign(st, qt, k.block(b * d.Tk + j0, h * d.dh, nk, d.dh).transpose(), scale);
      if (pos_bias) detail::add_position_bias(st, *pos_bias, h, d.Tq, i0, j0);
      if (detail::tile_needs_mask(mask, d, i0, j0, nk))
        detail::apply_mask_tile(st, mask, d, b, h, i0, j0);
      for (Index r = 0; r < nq; ++r) {
        const Scalar m_new = std::max(m(r), st.row(r).maxCoeff());
        if (m_new == neg_inf) {  // nothing visible in this row yet
          st.row(r).setZero();
          continue;
        }
        detail::exp_shifted_row(st.row(r), m_new);
        if (m_new != m(r)) {
          const Scalar alpha = std::exp(m(r) - m_new);  // 0 while m(r) is still -inf
          l(r) *= alpha;
          acc.row(r) *= alpha;
          m(r) = m_new;
        }
        l(r) += st.row(r).sum();
      }
      detail::gemm_add(acc, st, v.block(b * d.Tk + j0, h * d.dh, nk, d.dh));
    }
    for (Index r = 0; r < nq; ++r) {
      if (l(r) > Scalar(0)) {
        out.block(b * d.Tq + i0 + r, h * d.dh, 1, d.dh) = acc.row(r) / l(r);
        lse(bh, i0 + r) = m(r) + std::log(l(r));
      } else {  // every key masked
        out.block(b * d.Tq + i0 + r, h * d.dh, 1, d.dh).setZero();
        lse(bh, i0 + r) = neg_inf;
      }
    }
  });
}

/// dq (B*Tq, H*dh), dk and dv (B*Tk, H*dh), all fresh, from dout (B*Tq, H*dh), the forward's out
/// and lse, its inputs, the same mask and the same pos_bias. dpos_bias, when not null, gets the
/// gradient (H, Tq + Tk - 1) of pos_bias, fresh.
template <class Scalar>
void flash_attention_backward(Matrix<Scalar>& dq, Matrix<Scalar>& dk, Matrix<Scalar>& dv,
                              ConstRef<Scalar> dout, ConstRef<Scalar> out, ConstRef<Scalar> lse,
                              ConstRef<Scalar> q, ConstRef<Scalar> k, ConstRef<Scalar> v,
                              const AttentionDims& d, const AttentionMask& mask,
                              const AttentionBlocks& blocks = {},
                              const Matrix<Scalar>* pos_bias = nullptr,
                              Matrix<Scalar>* dpos_bias = nullptr) {
  const char* func = "flash_attention_backward";
  detail::check_attention_inputs<Scalar>(func, q, k, v, d, mask, pos_bias);
  detail::check_shape(func, "dout", dout, d.B * d.Tq, d.H * d.dh);
  detail::check_shape(func, "out", out, d.B * d.Tq, d.H * d.dh);
  detail::check_shape(func, "lse", lse, d.B * d.H, d.Tq);
  dq.setZero(d.B * d.Tq, d.H * d.dh);
  dk.resize(d.B * d.Tk, d.H * d.dh);
  dv.resize(d.B * d.Tk, d.H * d.dh);
  Matrix<Scalar> dbias_items;  // (B*H, Tq + Tk - 1): one row per parallel item, no races
  if (dpos_bias) dbias_items.setZero(d.B * d.H, d.Tq + d.Tk - 1);
  const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(d.dh));
  const Index bq = std::max<Index>(1, std::min(blocks.q, d.Tq));
  const Index bk = std::max<Index>(1, std::min(blocks.k, d.Tk));
  const double work = 10.0 * static_cast<double>(d.Tq * d.Tk * d.dh) * (mask.causal ? 0.5 : 1.0);
  detail::parallel_for(d.B * d.H, work, [&](Index bh) {
    const Index b = bh / d.H, h = bh % d.H;
    Eigen::Array<Scalar, Eigen::Dynamic, 1> D(d.Tq);  // rowsum(dO * O)
    for (Index i = 0; i < d.Tq; ++i)
      D(i) = dout.row(b * d.Tq + i)
                 .segment(h * d.dh, d.dh)
                 .dot(out.row(b * d.Tq + i).segment(h * d.dh, d.dh));
    Matrix<Scalar> p(bq, bk), ds(bq, bk), dkt(bk, d.dh), dvt(bk, d.dh);
    for (Index j0 = 0; j0 < d.Tk; j0 += bk) {
      const Index nk = std::min(bk, d.Tk - j0);
      const Eigen::Block<ConstRef<Scalar>> kt = k.block(b * d.Tk + j0, h * d.dh, nk, d.dh);
      const Eigen::Block<ConstRef<Scalar>> vt = v.block(b * d.Tk + j0, h * d.dh, nk, d.dh);
      Eigen::Block<Matrix<Scalar>> dk_acc = dkt.block(0, 0, nk, d.dh),
                                   dv_acc = dvt.block(0, 0, nk, d.dh);
      dk_acc.setZero();
      dv_acc.setZero();
      // Causal: query i sees key j0 only from i = j0 - (Tk - Tq) on.
      const Index first_query = mask.causal ? std::max<Index>(0, j0 - (d.Tk - d.Tq)) : 0;
      for (Index i0 = (first_query / bq) * bq; i0 < d.Tq; i0 += bq) {
        const Index nq = std::min(bq, d.Tq - i0);
        const Eigen::Block<ConstRef<Scalar>> qt = q.block(b * d.Tq + i0, h * d.dh, nq, d.dh);
        const Eigen::Block<ConstRef<Scalar>> got = dout.block(b * d.Tq + i0, h * d.dh, nq, d.dh);
        Eigen::Block<Matrix<Scalar>> pt = p.topLeftCorner(nq, nk), dst = ds.topLeftCorner(nq, nk);
        detail::gemm_assign(pt, qt, kt.transpose(), scale);
        if (pos_bias) detail::add_position_bias(pt, *pos_bias, h, d.Tq, i0, j0);
        if (detail::tile_needs_mask(mask, d, i0, j0, nk))
          detail::apply_mask_tile(pt, mask, d, b, h, i0, j0);
        for (Index r = 0; r < nq; ++r) {
          const Scalar row_lse = lse(bh, i0 + r);
          if (row_lse == neg_inf)
            pt.row(r).setZero();
          else
            detail::exp_shifted_row(pt.row(r), row_lse);
        }
        detail::gemm_add(dv_acc, pt.transpose(), got);
        detail::gemm_assign(dst, got, vt.transpose());  // dL/dP
        for (Index r = 0; r < nq; ++r)
          dst.row(r) = pt.row(r).array() * (dst.row(r).array() - D(i0 + r));  // dL/dS
        if (dpos_bias) detail::accumulate_position_bias(dbias_items.row(bh), dst, d.Tq, i0, j0);
        Eigen::Block<Matrix<Scalar>> dq_tile = dq.block(b * d.Tq + i0, h * d.dh, nq, d.dh);
        detail::gemm(dq_tile, dst, kt, scale, true);
        detail::gemm(dk_acc, dst.transpose(), qt, scale, true);
      }
      dk.block(b * d.Tk + j0, h * d.dh, nk, d.dh) = dk_acc;
      dv.block(b * d.Tk + j0, h * d.dh, nk, d.dh) = dv_acc;
    }
  });
  if (dpos_bias) detail::sum_over_sequences(*dpos_bias, dbias_items, d.B, d.H);
}

/// Attention weights (Tq, Tk) of head h of sequence b, recomputed from q, k and the forward's
/// lse (and the same pos_bias): what attention_forward's probs hold for that head.
template <class Scalar>
Matrix<Scalar> flash_attention_weights(ConstRef<Scalar> q, ConstRef<Scalar> k, ConstRef<Scalar> lse,
                                       const AttentionDims& d, const AttentionMask& mask, Index b,
                                       Index h, const Matrix<Scalar>* pos_bias = nullptr) {
  const char* func = "flash_attention_weights";
  detail::check_attention_inputs<Scalar>(func, q, k, k, d, mask, pos_bias);
  detail::check_shape(func, "lse", lse, d.B * d.H, d.Tq);
  detail::require(b >= 0 && b < d.B, func, "b", [&] {
    return "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(d.B);
  });
  detail::require(h >= 0 && h < d.H, func, "h", [&] {
    return "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(d.H);
  });
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(d.dh));
  Matrix<Scalar> p(d.Tq, d.Tk);
  detail::gemm_assign(p, q.block(b * d.Tq, h * d.dh, d.Tq, d.dh),
                      k.block(b * d.Tk, h * d.dh, d.Tk, d.dh).transpose(), scale);
  if (pos_bias) detail::add_position_bias(p, *pos_bias, h, d.Tq, 0, 0);
  if (!mask.empty()) detail::apply_mask_tile(p, mask, d, b, h, 0, 0);
  for (Index i = 0; i < d.Tq; ++i) {
    const Scalar row_lse = lse(b * d.H + h, i);
    if (row_lse == -std::numeric_limits<Scalar>::infinity())
      p.row(i).setZero();
    else
      detail::exp_shifted_row(p.row(i), row_lse);
  }
  return p;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_FLASH_ATTENTION_TEMPLATES(S)                                                   \
  EIGENFORMER_FOR(S, void flash_attention_forward<S>(                                              \
                         Matrix<S>& out, Matrix<S>& lse, ConstRef<S> q, ConstRef<S> k,           \
                         ConstRef<S> v, const AttentionDims& d, const AttentionMask& mask,         \
                         const AttentionBlocks& blocks, const Matrix<S>* pos_bias))                \
  EIGENFORMER_FOR(                                                                                 \
      S, void flash_attention_backward<S>(                                                         \
             Matrix<S>& dq, Matrix<S>& dk, Matrix<S>& dv, ConstRef<S> dout, ConstRef<S> out,    \
             ConstRef<S> lse, ConstRef<S> q, ConstRef<S> k, ConstRef<S> v, const AttentionDims& d, \
             const AttentionMask& mask, const AttentionBlocks& blocks, const Matrix<S>* pos_bias,  \
             Matrix<S>* dpos_bias))                                                                \
  EIGENFORMER_FOR(S, Matrix<S> flash_attention_weights<S>(                                         \
                         ConstRef<S> q, ConstRef<S> k, ConstRef<S> lse, const AttentionDims& d,    \
                         const AttentionMask& mask, Index b, Index h, const Matrix<S>* pos_bias))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_FLASH_ATTENTION_TEMPLATES)
// clang-format on

}  // namespace eigenformer
