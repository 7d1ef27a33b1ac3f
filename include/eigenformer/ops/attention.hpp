// Scaled dot-product attention over many heads: out = softmax(Q K^T / sqrt(dh) + mask) V.
//
// Layout: Q is (B*Tq, H*dh) and K, V are (B*Tk, H*dh), the batch layout of core/tensor.hpp with the
// heads side by side in the columns; head h of sequence b is the block (b*T, h*dh, T, dh).
// The probabilities are kept as (B*H*Tq, Tk): block (b*H + h)*Tq holds head h of sequence b.
//
// Masks, all optional and combined (an entry is masked if any mask says so):
//  - causal: query i sees key j only if j <= i + (Tk - Tq) (aligned at the end, so a step that
//    decodes the last Tq positions against Tk cached keys is causal too; Tq == Tk is the usual case);
//  - key_padding (B, Tk): true marks a padded key of sequence b, as PyTorch's key_padding_mask;
//  - attn_mask (Tq, Tk) shared by the batch, (B*Tq, Tk) per sequence, or (B*H*Tq, Tk) per sequence
//    and head (PyTorch's 3-D attn_mask (B*H, Tq, Tk) flattened: rows (b*H + h)*Tq + i): true marks
//    a masked pair.
// A query whose keys are all masked gets a zero output and zero gradients, never NaN.
//
// Score bias (optional, PyTorch's float attn_mask, e.g. ALiBi's slopes times distances): attn_bias
// in one of the attn_mask shapes is added to the scores after the 1/sqrt(dh) scaling, before the
// masks and the softmax; -inf entries mask. It is an input without a gradient. It is stored in
// double whatever the kernel's Scalar, so a float bias passes through unchanged.
//
// Position bias (optional, e.g. T5's relative bias from ops/relative_position.hpp): pos_bias
// (H, Tq + Tk - 1) holds one value per head and distance; query i and key j of every sequence get
// pos_bias(h, j - i + Tq - 1) added to their score after the 1/sqrt(dh) scaling and before the
// masks and the softmax:  scores = Q K^T / sqrt(dh) + bias.  The backward returns its gradient in
// the same (H, Tq + Tk - 1) form (the score gradients summed over sequences and along each
// diagonal), so no (H, Tq, Tk) bias tensor is ever built.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"
#include "softmax.hpp"

namespace eigenformer {

struct AttentionMask {
  bool causal = false;
  BoolMatrix key_padding;    // (B, Tk) or empty
  BoolMatrix attn_mask;      // (Tq, Tk), (B*Tq, Tk), (B*H*Tq, Tk) or empty
  Matrix<double> attn_bias;  // added to the scores: a shape of attn_mask, or empty

  /// True when nothing is masked or biased: not causal, no key padding, attn_mask nor attn_bias.
  bool empty() const {
    return !causal && key_padding.size() == 0 && attn_mask.size() == 0 && attn_bias.size() == 0;
  }
};

/// Sizes of one attention call.
struct AttentionDims {
  Index B = 0, Tq = 0, Tk = 0, H = 0, dh = 0;
};

namespace detail {

/// Throws unless a (rows, Tk) attn_mask or attn_bias fits dims: (Tq, Tk), (B*Tq, Tk) or
/// (B*H*Tq, Tk).
inline void check_mask_rows(std::string_view func, std::string_view arg, Index rows, Index cols,
                            const AttentionDims& d) {
  const bool rows_fit = rows == d.Tq || rows == d.B * d.Tq || rows == d.B * d.H * d.Tq;
  require(rows_fit && cols == d.Tk, func, arg, [&] {
    return "has shape " + shape_str(rows, cols) + ", expected " + shape_str(d.Tq, d.Tk) + " or " +
           shape_str(d.B * d.Tq, d.Tk) + " (per sequence) or " + shape_str(d.B * d.H * d.Tq, d.Tk) +
           " (per sequence and head)";
  });
}

/// Throws unless mask fits dims (function names the caller in the message).
inline void check_mask(std::string_view func, const AttentionMask& mask, const AttentionDims& d) {
  if (mask.key_padding.size() != 0)
    check_shape(func, "mask.key_padding", mask.key_padding, d.B, d.Tk);
  if (mask.attn_mask.size() != 0)
    check_mask_rows(func, "mask.attn_mask", mask.attn_mask.rows(), mask.attn_mask.cols(), d);
  if (mask.attn_bias.size() != 0)
    check_mask_rows(func, "mask.attn_bias", mask.attn_bias.rows(), mask.attn_bias.cols(), d);
}

/// The row of a (rows, Tk) attn_mask or attn_bias that holds query i of head h of sequence b.
/// Per head takes precedence; when shapes coincide (B == 1 or H == 1) the layouts agree.
inline Index mask_row(Index rows, const AttentionDims& d, Index b, Index h, Index i) {
  if (rows == d.B * d.H * d.Tq) return (b * d.H + h) * d.Tq + i;
  if (rows == d.B * d.Tq) return b * d.Tq + i;
  return i;
}

/// Throws unless q (B*Tq, H*dh), k and v (B*Tk, H*dh), the mask and pos_bias (H, Tq + Tk - 1,
/// when not null) fit dims, whose sizes must be positive. O(1): the kernels check on every call.
template <class Scalar>
void check_attention_inputs(std::string_view func, ConstRef<Scalar> q, ConstRef<Scalar> k,
                            ConstRef<Scalar> v, const AttentionDims& d, const AttentionMask& mask,
                            const Matrix<Scalar>* pos_bias) {
  check_positive(func, "dims.B", d.B);
  check_positive(func, "dims.Tq", d.Tq);
  check_positive(func, "dims.Tk", d.Tk);
  check_positive(func, "dims.H", d.H);
  check_positive(func, "dims.dh", d.dh);
  check_shape(func, "q", q, d.B * d.Tq, d.H * d.dh);
  check_shape(func, "k", k, d.B * d.Tk, d.H * d.dh);
  check_shape(func, "v", v, d.B * d.Tk, d.H * d.dh);
  check_mask(func, mask, d);
  if (pos_bias) check_shape(func, "pos_bias", *pos_bias, d.H, d.Tq + d.Tk - 1);
}

/// Adds attn_bias and sets the masked entries of a score tile to -inf: rows are queries i0..,
/// columns keys j0.. of head h of sequence b (the whole (Tq, Tk) block with i0 = j0 = 0). The
/// plain, tiled and additive kernels all mask through it.
template <class Tile>
void apply_mask_tile(Tile&& s, const AttentionMask& mask, const AttentionDims& d, Index b, Index h,
                     Index i0, Index j0) {
  using Scalar = typename std::decay_t<Tile>::Scalar;
  const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  const Index nq = s.rows(), nk = s.cols();
  if (mask.attn_bias.size() != 0)
    for (Index r = 0; r < nq; ++r)
      s.row(r) += mask.attn_bias.row(mask_row(mask.attn_bias.rows(), d, b, h, i0 + r))
                      .segment(j0, nk)
                      .template cast<Scalar>();
  if (mask.key_padding.size() != 0)
    for (Index c = 0; c < nk; ++c)
      if (mask.key_padding(b, j0 + c)) s.col(c).setConstant(neg_inf);
  for (Index r = 0; r < nq; ++r) {
    const Index i = i0 + r;
    if (mask.causal) {
      const Index first_hidden = i + (d.Tk - d.Tq) + 1 - j0;  // tile column of the first future key
      if (first_hidden < nk) {
        const Index start = first_hidden < 0 ? 0 : first_hidden;
        s.row(r).segment(start, nk - start).setConstant(neg_inf);
      }
    }
    if (mask.attn_mask.size() != 0) {
      const Index row = mask_row(mask.attn_mask.rows(), d, b, h, i);
      for (Index c = 0; c < nk; ++c)
        if (mask.attn_mask(row, j0 + c)) s(r, c) = neg_inf;
    }
  }
}

/// Adds pos_bias (H, Tq + Tk - 1) of head h to a score tile whose rows are queries i0.. and
/// columns keys j0..: row r, column c gets pos_bias(h, j0 + c - (i0 + r) + Tq - 1).
template <class Tile, class Scalar>
void add_position_bias(Tile&& s, const Matrix<Scalar>& pos_bias, Index h, Index Tq, Index i0,
                       Index j0) {
  for (Index r = 0; r < s.rows(); ++r)
    s.row(r) += pos_bias.row(h).segment(j0 - (i0 + r) + Tq - 1, s.cols());
}

/// The transpose of add_position_bias: dpos_bias row (H, Tq + Tk - 1 wide), the column of each
/// distance, += the entries of the score-gradient tile ds on that diagonal.
template <class Tile, class Row>
void accumulate_position_bias(Row&& dpos_bias_row, const Tile& ds, Index Tq, Index i0, Index j0) {
  for (Index r = 0; r < ds.rows(); ++r)
    dpos_bias_row.segment(j0 - (i0 + r) + Tq - 1, ds.cols()) += ds.row(r);
}

/// dpos_bias (H, n) = the sum over the B sequences of per_item (B*H, n), row b*H + h.
template <class Scalar>
void sum_over_sequences(Matrix<Scalar>& dpos_bias, const Matrix<Scalar>& per_item, Index B,
                        Index H) {
  dpos_bias = per_item.topRows(H);
  for (Index b = 1; b < B; ++b) dpos_bias += per_item.middleRows(b * H, H);
}

}  // namespace detail

/// out (B*Tq, H*dh), probs (B*H*Tq, Tk) from q (B*Tq, H*dh), k and v (B*Tk, H*dh).
/// pos_bias, when not null, is (H, Tq + Tk - 1) (see above). Throws ArgumentError when a shape
/// does not fit d.
template <class Scalar>
void attention_forward(Matrix<Scalar>& out, Matrix<Scalar>& probs, ConstRef<Scalar> q,
                       ConstRef<Scalar> k, ConstRef<Scalar> v, const AttentionDims& d,
                       const AttentionMask& mask, const Matrix<Scalar>* pos_bias = nullptr) {
  detail::check_attention_inputs<Scalar>("attention_forward", q, k, v, d, mask, pos_bias);
  out.resize(d.B * d.Tq, d.H * d.dh);
  probs.resize(d.B * d.H * d.Tq, d.Tk);
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(d.dh));
  const double work = 4.0 * static_cast<double>(d.Tq * d.Tk * d.dh);
  detail::parallel_for(d.B * d.H, work, [&](Index bh) {
    const Index b = bh / d.H, h = bh % d.H;
    Eigen::Block<Matrix<Scalar>> p = probs.block(bh * d.Tq, 0, d.Tq, d.Tk);  // (Tq, Tk)
    detail::gemm_assign(p, q.block(b * d.Tq, h * d.dh, d.Tq, d.dh),
                        k.block(b * d.Tk, h * d.dh, d.Tk, d.dh).transpose(), scale);
    if (pos_bias) detail::add_position_bias(p, *pos_bias, h, d.Tq, 0, 0);
    if (!mask.empty()) detail::apply_mask_tile(p, mask, d, b, h, 0, 0);
    for (Index i = 0; i < d.Tq; ++i) detail::softmax_row_inplace(p.row(i));
    detail::gemm_assign(out.block(b * d.Tq, h * d.dh, d.Tq, d.dh), p,
                        v.block(b * d.Tk, h * d.dh, d.Tk, d.dh));  // (Tq, dh)
  });
}

/// dq (B*Tq, H*dh), dk and dv (B*Tk, H*dh), all fresh, from dout (B*Tq, H*dh) and the forward's
/// probs and inputs. dpos_bias, when not null, gets the gradient (H, Tq + Tk - 1) of the forward's
/// pos_bias, fresh (the backward does not need pos_bias itself: probs hold its effect).
template <class Scalar>
void attention_backward(Matrix<Scalar>& dq, Matrix<Scalar>& dk, Matrix<Scalar>& dv,
                        ConstRef<Scalar> dout, ConstRef<Scalar> probs, ConstRef<Scalar> q,
                        ConstRef<Scalar> k, ConstRef<Scalar> v, const AttentionDims& d,
                        Matrix<Scalar>* dpos_bias = nullptr) {
  const char* func = "attention_backward";
  detail::check_attention_inputs<Scalar>(func, q, k, v, d, AttentionMask(), nullptr);
  detail::check_shape(func, "dout", dout, d.B * d.Tq, d.H * d.dh);
  detail::check_shape(func, "probs", probs, d.B * d.H * d.Tq, d.Tk);
  dq.resize(d.B * d.Tq, d.H * d.dh);
  dk.resize(d.B * d.Tk, d.H * d.dh);
  dv.resize(d.B * d.Tk, d.H * d.dh);
  Matrix<Scalar> dbias_items;  // (B*H, Tq + Tk - 1): one row per parallel item, no races
  if (dpos_bias) dbias_items.setZero(d.B * d.H, d.Tq + d.Tk - 1);
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(d.dh));
  const double work = 8.0 * static_cast<double>(d.Tq * d.Tk * d.dh);
  detail::parallel_for(d.B * d.H, work, [&](Index bh) {
    const Index b = bh / d.H, h = bh % d.H;
    const Eigen::Block<ConstRef<Scalar>> p = probs.block(bh * d.Tq, 0, d.Tq, d.Tk);
    const Eigen::Block<ConstRef<Scalar>> go = dout.block(b * d.Tq, h * d.dh, d.Tq, d.dh);
    detail::gemm_assign(dv.block(b * d.Tk, h * d.dh, d.Tk, d.dh), p.transpose(), go);  // (Tk, dh)
    Matrix<Scalar> ds(d.Tq, d.Tk);  // dL/dprobs, then dL/dscores
    detail::gemm_assign(ds, go, v.block(b * d.Tk, h * d.dh, d.Tk, d.dh).transpose());
    for (Index i = 0; i < d.Tq; ++i) {
      const Scalar dot = p.row(i).dot(ds.row(i));
      ds.row(i) = p.row(i).array() * (ds.row(i).array() - dot);
    }
    if (dpos_bias) detail::accumulate_position_bias(dbias_items.row(bh), ds, d.Tq, 0, 0);
    detail::gemm_assign(dq.block(b * d.Tq, h * d.dh, d.Tq, d.dh), ds,
                        k.block(b * d.Tk, h * d.dh, d.Tk, d.dh), scale);
    detail::gemm_assign(dk.block(b * d.Tk, h * d.dh, d.Tk, d.dh), ds.transpose(),
                        q.block(b * d.Tq, h * d.dh, d.Tq, d.dh), scale);
  });
  if (dpos_bias) detail::sum_over_sequences(*dpos_bias, dbias_items, d.B, d.H);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ATTENTION_TEMPLATES(S)                                                         \
  EIGENFORMER_FOR(S,                                                                               \
                  void attention_forward<S>(Matrix<S>& out, Matrix<S>& probs, ConstRef<S> q,     \
                                            ConstRef<S> k, ConstRef<S> v, const AttentionDims& d,  \
                                            const AttentionMask& mask, const Matrix<S>* pos_bias)) \
  EIGENFORMER_FOR(S, void attention_backward<S>(Matrix<S>& dq, Matrix<S>& dk, Matrix<S>& dv,    \
                                                ConstRef<S> dout, ConstRef<S> probs,               \
                                                ConstRef<S> q, ConstRef<S> k, ConstRef<S> v,       \
                                                const AttentionDims& d, Matrix<S>* dpos_bias))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ATTENTION_TEMPLATES)
// clang-format on

}  // namespace eigenformer
