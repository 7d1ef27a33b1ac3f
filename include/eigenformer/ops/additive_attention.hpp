// Additive (Bahdanau) attention over many heads:
//   score(q_i, k_j) = w^T tanh(W_q q_i + W_k k_j + b),   a_i = softmax_j(score(q_i, k_j) + mask),
//   out_i = sum_j a_ij v_j                                   (each head separately)
//
// Layout as in ops/attention.hpp: q is (B*Tq, H*dh), k and v are (B*Tk, H*dh), head h of sequence b
// is the block (b*T, h*dh, T, dh). Each head has its own score network of width da:
//   w_q, w_k (H*da, dh): rows [h*da, (h+1)*da) are head h's W_q / W_k, as nn.Linear(dh, da) weights;
//   bias (1, H*da) or absent: head h's b in columns [h*da, (h+1)*da);
//   w (H, da): row h is head h's score vector.
// The projections W_q q + b and W_k k are computed once per call (aq (B*Tq, H*da), ak (B*Tk,
// H*da)) and kept with the probabilities (B*H*Tq, Tk) for backward, which recomputes the tanh
// rather than keeping a (Tq, Tk, da) tensor per head. The projection and the attention over
// projected keys are also separate functions, so that incremental decoding projects each key
// once (additive_score_projection) and attends over the cached projections
// (additive_attention_attend).
//
// Position bias (optional, T5's relative bias): pos_bias (H, Tq + Tk - 1), one value per head and
// distance as in ops/attention.hpp, is added to the scores before the masks and the softmax:
//   score(q_i, k_j) = w^T tanh(W_q q_i + W_k k_j + b) + pos_bias(h, j - i + Tq - 1),
// and the backward returns its gradient in the same form.
//
// Masks are AttentionMask with the semantics of ops/attention.hpp (causal aligned at the end, key
// padding (B, Tk), attn_mask (Tq, Tk), (B*Tq, Tk) or (B*H*Tq, Tk), true = masked, and attn_bias
// added to the scores); a query whose keys are all masked gets a zero output and zero gradients,
// never NaN.
#pragma once

#include <string>
#include <vector>

#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"
#include "attention.hpp"
#include "linear.hpp"
#include "softmax.hpp"

namespace eigenformer {

/// The score network's parameters (see the header comment for shapes); bias may be null.
template <class Scalar>
struct AdditiveScoreWeights {
  const Matrix<Scalar>& w_q;   // (H*da, dh)
  const Matrix<Scalar>& w_k;   // (H*da, dh)
  const Matrix<Scalar>* bias;  // (1, H*da) or null
  const Matrix<Scalar>& w;     // (H, da)
};

/// Where backward adds the score network's gradients; a null member is not wanted.
template <class Scalar>
struct AdditiveScoreGrads {
  GradOut<Scalar> w_q = nullptr;
  GradOut<Scalar> w_k = nullptr;
  GradOut<Scalar> bias = nullptr;
  GradOut<Scalar> w = nullptr;
};

/// The score projections forward keeps for backward (the probabilities are kept separately, as
/// attention_forward keeps them).
template <class Scalar>
struct AdditiveAttentionCache {
  Matrix<Scalar> aq;  // (B*Tq, H*da) W_q q + b per head
  Matrix<Scalar> ak;  // (B*Tk, H*da) W_k k per head
};

namespace detail {

/// Throws unless the inputs, the mask and pos_bias (when not null) fit dims as the dot-product
/// kernels require, and the score weights fit too (func names the caller).
template <class Scalar>
void check_additive_attention(std::string_view func, ConstRef<Scalar> q, ConstRef<Scalar> k,
                              ConstRef<Scalar> v, const AdditiveScoreWeights<Scalar>& p,
                              const AttentionDims& d, const AttentionMask& mask,
                              const Matrix<Scalar>* pos_bias) {
  check_attention_inputs<Scalar>(func, q, k, v, d, mask, pos_bias);
  check_shape(func, "weights.w", p.w, d.H, -1);
  check_positive(func, "weights.w columns", p.w.cols());
  const Index da = p.w.cols();
  check_shape(func, "weights.w_q", p.w_q, d.H * da, d.dh);
  check_shape(func, "weights.w_k", p.w_k, d.H * da, d.dh);
  if (p.bias) check_shape(func, "weights.bias", *p.bias, 1, d.H * da);
}

}  // namespace detail

/// The per-head score projection of H heads: a (N, H*da), head h's columns [h*da, (h+1)*da) =
/// x (N, H*dh) head h's columns times w (H*da, dh) head h's rows transposed, plus bias (1, H*da)
/// when given. With (w_q, bias) it is aq of the queries, with (w_k, null) ak of the keys: the
/// layers call it directly to project cached keys once.
template <class Scalar>
void additive_score_projection(Matrix<Scalar>& a, ConstRef<Scalar> x, const Matrix<Scalar>& w,
                               const Matrix<Scalar>* bias, Index H) {
  const char* func = "additive_score_projection";
  detail::check_positive(func, "H", H);
  detail::require(w.rows() > 0 && w.rows() % H == 0 && w.cols() > 0, func, "w", [&] {
    return "has shape " + detail::shape_of(w) +
           ", expected (H*da, dh) with H = " + std::to_string(H) + " and da, dh >= 1";
  });
  detail::check_shape(func, "x", x, -1, H * w.cols());
  if (bias) detail::check_shape(func, "bias", *bias, 1, w.rows());
  const Index da = w.rows() / H, dh = w.cols();
  a.resize(x.rows(), H * da);
  Matrix<Scalar> head;  // (N, da)
  for (Index h = 0; h < H; ++h) {  // one product per head over every sequence
    // Each head is a bias-free Linear(dh, da): linear_forward's product (and threading) is
    // already compiled for every model, so it costs no new template instantiation.
    linear_forward<Scalar>(head, x.middleCols(h * dh, dh), w.middleRows(h * da, da), nullptr);
    a.middleCols(h * da, da) = head;
  }
  if (bias) a.rowwise() += bias->row(0);
}

/// The attention itself from the score projections: out (B*Tq, H*dh) and probs (B*H*Tq, Tk) from
/// aq (B*Tq, H*da), ak (B*Tk, H*da), v (B*Tk, H*dh) and the score vectors w (H, da); pos_bias
/// (H, Tq + Tk - 1) or null.
template <class Scalar>
void additive_attention_attend(Matrix<Scalar>& out, Matrix<Scalar>& probs, ConstRef<Scalar> aq,
                               ConstRef<Scalar> ak, ConstRef<Scalar> v, const Matrix<Scalar>& w,
                               const AttentionDims& d, const AttentionMask& mask,
                               const Matrix<Scalar>* pos_bias = nullptr) {
  const char* func = "additive_attention_attend";
  for (Index n : {d.B, d.Tq, d.Tk, d.H, d.dh}) detail::check_positive(func, "dims", n);
  detail::check_shape(func, "w", w, d.H, -1);
  detail::check_positive(func, "w columns", w.cols());
  detail::check_shape(func, "aq", aq, d.B * d.Tq, d.H * w.cols());
  detail::check_shape(func, "ak", ak, d.B * d.Tk, d.H * w.cols());
  detail::check_shape(func, "v", v, d.B * d.Tk, d.H * d.dh);
  detail::check_mask(func, mask, d);
  if (pos_bias) detail::check_shape(func, "pos_bias", *pos_bias, d.H, d.Tq + d.Tk - 1);
  const Index da = w.cols();
  out.resize(d.B * d.Tq, d.H * d.dh);
  probs.resize(d.B * d.H * d.Tq, d.Tk);
  const double work = 24.0 * static_cast<double>(d.Tq * d.Tk * (da + d.dh));
  detail::parallel_for(d.B * d.H, work, [&](Index bh) {
    const Index b = bh / d.H, h = bh % d.H;
    Eigen::Block<Matrix<Scalar>> s = probs.block(bh * d.Tq, 0, d.Tq, d.Tk);  // (Tq, Tk)
    const Eigen::Block<ConstRef<Scalar>> akh = ak.block(b * d.Tk, h * da, d.Tk, da);  // (Tk, da)
    const Eigen::Block<const Matrix<Scalar>> wh = w.block(h, 0, 1, da);             // (1, da)
    Matrix<Scalar> e(d.Tk, da);  // tanh(aq_i + ak_j) for one query i
    for (Index i = 0; i < d.Tq; ++i) {
      e = (akh.rowwise() + aq.row(b * d.Tq + i).segment(h * da, da)).array().tanh();
      s.row(i).noalias() = wh * e.transpose();
    }
    if (pos_bias) detail::add_position_bias(s, *pos_bias, h, d.Tq, 0, 0);
    if (!mask.empty()) detail::apply_mask_tile(s, mask, d, b, h, 0, 0);
    for (Index i = 0; i < d.Tq; ++i) detail::softmax_row_inplace(s.row(i));
    detail::gemm_assign(out.block(b * d.Tq, h * d.dh, d.Tq, d.dh), s,
                        v.block(b * d.Tk, h * d.dh, d.Tk, d.dh));  // (Tq, dh)
  });
}

/// out (B*Tq, H*dh), probs (B*H*Tq, Tk) and cache (aq, ak) from q (B*Tq, H*dh), k and v
/// (B*Tk, H*dh); pos_bias (H, Tq + Tk - 1) or null. Throws ArgumentError on mismatched shapes
/// before writing anything.
template <class Scalar>
void additive_attention_forward(Matrix<Scalar>& out, Matrix<Scalar>& probs,
                                AdditiveAttentionCache<Scalar>& cache, ConstRef<Scalar> q,
                                ConstRef<Scalar> k, ConstRef<Scalar> v,
                                const AdditiveScoreWeights<Scalar>& p, const AttentionDims& d,
                                const AttentionMask& mask,
                                const Matrix<Scalar>* pos_bias = nullptr) {
  detail::check_additive_attention<Scalar>("additive_attention_forward", q, k, v, p, d, mask,
                                          pos_bias);
  additive_score_projection<Scalar>(cache.aq, q, p.w_q, p.bias, d.H);
  additive_score_projection<Scalar>(cache.ak, k, p.w_k, nullptr, d.H);
  additive_attention_attend<Scalar>(out, probs, cache.aq, cache.ak, v, p.w, d, mask, pos_bias);
}

/// dq (B*Tq, H*dh), dk and dv (B*Tk, H*dh), all fresh, from dout (B*Tq, H*dh), the forward's probs,
/// cache and inputs; adds the score network's gradients into grads. dpos_bias, when not null, gets
/// the gradient (H, Tq + Tk - 1) of the forward's pos_bias, fresh. Arguments must match the
/// forward's.
template <class Scalar>
void additive_attention_backward(Matrix<Scalar>& dq, Matrix<Scalar>& dk, Matrix<Scalar>& dv,
                                 const AdditiveScoreGrads<Scalar>& grads, ConstRef<Scalar> dout,
                                 ConstRef<Scalar> probs,
                                 const AdditiveAttentionCache<Scalar>& cache, ConstRef<Scalar> q,
                                 ConstRef<Scalar> k, ConstRef<Scalar> v,
                                 const AdditiveScoreWeights<Scalar>& p, const AttentionDims& d,
                                 Matrix<Scalar>* dpos_bias = nullptr) {
  const char* func = "additive_attention_backward";
  detail::check_additive_attention<Scalar>(func, q, k, v, p, d, AttentionMask{}, nullptr);
  detail::check_shape(func, "dout", dout, d.B * d.Tq, d.H * d.dh);
  const Index da = p.w.cols();
  detail::check_shape(func, "probs", probs, d.B * d.H * d.Tq, d.Tk);
  detail::check_shape(func, "cache.aq", cache.aq, d.B * d.Tq, d.H * da);
  detail::check_shape(func, "cache.ak", cache.ak, d.B * d.Tk, d.H * da);
  if (grads.w_q) detail::check_shape(func, "grads.w_q", *grads.w_q, d.H * da, d.dh);
  if (grads.w_k) detail::check_shape(func, "grads.w_k", *grads.w_k, d.H * da, d.dh);
  if (grads.bias) detail::check_shape(func, "grads.bias", *grads.bias, 1, d.H * da);
  if (grads.w) detail::check_shape(func, "grads.w", *grads.w, d.H, da);
  dv.resize(d.B * d.Tk, d.H * d.dh);
  Matrix<Scalar> daq(d.B * d.Tq, d.H * da), dak(d.B * d.Tk, d.H * da);
  Matrix<Scalar> dw_parts(d.B * d.H, da);  // per (b, h), summed over b afterwards (no races)
  Matrix<Scalar> dbias_items;  // (B*H, Tq + Tk - 1): one row per parallel item, no races
  if (dpos_bias) dbias_items.setZero(d.B * d.H, d.Tq + d.Tk - 1);
  const double work = 32.0 * static_cast<double>(d.Tq * d.Tk * (da + d.dh));
  detail::parallel_for(d.B * d.H, work, [&](Index bh) {
    const Index b = bh / d.H, h = bh % d.H;
    const Eigen::Block<ConstRef<Scalar>> pr = probs.block(bh * d.Tq, 0, d.Tq, d.Tk);
    const Eigen::Block<ConstRef<Scalar>> go = dout.block(b * d.Tq, h * d.dh, d.Tq, d.dh);
    detail::gemm_assign(dv.block(b * d.Tk, h * d.dh, d.Tk, d.dh), pr.transpose(), go);  // (Tk, dh)
    Matrix<Scalar> ds(d.Tq, d.Tk);  // dL/dprobs, then dL/dscores
    detail::gemm_assign(ds, go, v.block(b * d.Tk, h * d.dh, d.Tk, d.dh).transpose());
    for (Index i = 0; i < d.Tq; ++i) {
      const Scalar dot = pr.row(i).dot(ds.row(i));
      ds.row(i) = pr.row(i).array() * (ds.row(i).array() - dot);
    }
    if (dpos_bias) detail::accumulate_position_bias(dbias_items.row(bh), ds, d.Tq, 0, 0);
    const Eigen::Block<const Matrix<Scalar>> ak = cache.ak.block(b * d.Tk, h * da, d.Tk, da);
    const Eigen::Block<const Matrix<Scalar>> wh = p.w.block(h, 0, 1, da);
    Eigen::Block<Matrix<Scalar>> daq_b = daq.block(b * d.Tq, h * da, d.Tq, da);
    Eigen::Block<Matrix<Scalar>> dak_b = dak.block(b * d.Tk, h * da, d.Tk, da);
    Eigen::Block<Matrix<Scalar>> dw_b = dw_parts.block(bh, 0, 1, da);
    daq_b.setZero();
    dak_b.setZero();
    dw_b.setZero();
    Matrix<Scalar> e(d.Tk, da), g(d.Tk, da);
    for (Index i = 0; i < d.Tq; ++i) {
      if (pr.row(i).isZero(0)) continue;  // every key masked: nothing flows back
      e = (ak.rowwise() + cache.aq.row(b * d.Tq + i).segment(h * da, da)).array().tanh();
      dw_b.noalias() += ds.row(i) * e;  // (1, Tk) (Tk, da)
      // g_jl = ds_ij w_l (1 - e_jl^2): the gradient of the pre-tanh sum aq_i + ak_j.
      g.noalias() = ds.row(i).transpose() * wh;
      g.array() *= Scalar(1) - e.array().square();
      daq_b.row(i) = g.colwise().sum();
      dak_b += g;
    }
  });
  dq.resize(d.B * d.Tq, d.H * d.dh);
  dk.resize(d.B * d.Tk, d.H * d.dh);
  Matrix<Scalar> dhead, dweight;  // (N, dh), (da, dh)
  for (Index h = 0; h < d.H; ++h) {
    // The projections' backward, each head a bias-free Linear(dh, da) (see the forward).
    const auto project_back = [&](Matrix<Scalar>& dx, GradOut<Scalar> gw, const Matrix<Scalar>& da_,
                                  ConstRef<Scalar> x, const Matrix<Scalar>& w) {
      if (gw) dweight.setZero(da, d.dh);
      linear_backward<Scalar>(dhead, gw ? &dweight : nullptr, nullptr, da_.middleCols(h * da, da),
                              x.middleCols(h * d.dh, d.dh), w.middleRows(h * da, da));
      dx.middleCols(h * d.dh, d.dh) = dhead;
      if (gw) gw->middleRows(h * da, da) += dweight;
    };
    project_back(dq, grads.w_q, daq, q, p.w_q);
    project_back(dk, grads.w_k, dak, k, p.w_k);
    if (grads.w)
      for (Index b = 0; b < d.B; ++b) grads.w->row(h) += dw_parts.row(b * d.H + h);
  }
  if (grads.bias) *grads.bias += daq.colwise().sum();
  if (dpos_bias) detail::sum_over_sequences(*dpos_bias, dbias_items, d.B, d.H);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ADDITIVE_ATTENTION_TEMPLATES(S)                                                \
  EIGENFORMER_FOR(                                                                                 \
      S, void additive_score_projection<S>(Matrix<S>& a, ConstRef<S> x, const Matrix<S>& w,       \
                                           const Matrix<S>* bias, Index H))                        \
  EIGENFORMER_FOR(S, void additive_attention_attend<S>(                                            \
                         Matrix<S>& out, Matrix<S>& probs, ConstRef<S> aq, ConstRef<S> ak,       \
                         ConstRef<S> v, const Matrix<S>& w, const AttentionDims& d,                \
                         const AttentionMask& mask, const Matrix<S>* pos_bias))                    \
  EIGENFORMER_FOR(                                                                                 \
      S, void additive_attention_forward<S>(                                                       \
             Matrix<S>& out, Matrix<S>& probs, AdditiveAttentionCache<S>& cache, ConstRef<S> q, \
             ConstRef<S> k, ConstRef<S> v, const AdditiveScoreWeights<S>& p,                       \
             const AttentionDims& d, const AttentionMask& mask, const Matrix<S>* pos_bias))        \
  EIGENFORMER_FOR(                                                                                 \
      S, void additive_attention_backward<S>(                                                      \
             Matrix<S>& dq, Matrix<S>& dk, Matrix<S>& dv, const AdditiveScoreGrads<S>& grads,   \
             ConstRef<S> dout, ConstRef<S> probs, const AdditiveAttentionCache<S>& cache,          \
             ConstRef<S> q, ConstRef<S> k, ConstRef<S> v, const AdditiveScoreWeights<S>& p,        \
             const AttentionDims& d, Matrix<S>* dpos_bias))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ADDITIVE_ATTENTION_TEMPLATES)
// clang-format on

}  // namespace eigenformer
