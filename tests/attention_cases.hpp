// The mask cases every attention kernel's tests run: no mask, causal (also with fewer queries
// than keys), key padding with cross shapes, a shared arbitrary mask, per-head masks (PyTorch's
// 3-D attn_mask), additive score biases (ALiBi, -inf entries), and all combined with a fully
// masked row; reference_mask, their definition one (b, h, i, j) at a time. Also the helpers the
// attention layer's tests share.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include <eigenformer/layers/attention.hpp>
#include <eigenformer/ops/attention.hpp>

#include "test_util.hpp"

namespace eftest {

/// Checks the input gradient and every parameter gradient of self-attention over a random x
/// (B*T, d_model) against central differences of <attn.forward(x), R> for a random R.
inline void check_self_attention_grads(eigenformer::Attention<double>& attn,
                                       const eigenformer::AttentionMask& mask, eigenformer::Index B,
                                       eigenformer::Index T, eigenformer::Rng& rng) {
  using Layer = eigenformer::Attention<double>;
  MatD x = random_matrix(B * T, attn.d_model(), rng);
  const MatD R = random_matrix(B * T, attn.d_model(), rng);
  auto loss = [&] {
    Layer::Cache c;
    return eigenformer::projection(attn.forward(x, B, mask, c), R);
  };
  attn.zero_grad();
  Layer::Cache cache;
  attn.forward(x, B, mask, cache);
  const MatD dx = attn.backward(R, cache);
  check_grad(x, dx, loss, "x");
  check_param_grads(attn.parameters(), loss, [&] {
    Layer::Cache c;
    attn.forward(x, B, mask, c);
    attn.backward(R, c);
  });
}

/// The same for cross-attention: random query (B*Tq, d) and memory (B*Tk, d), gradients of both
/// and of every parameter; returns the memory gradient for further checks.
inline MatD check_cross_attention_grads(eigenformer::Attention<double>& attn,
                                        const eigenformer::AttentionMask& mask,
                                        eigenformer::Index B, eigenformer::Index Tq,
                                        eigenformer::Index Tk, eigenformer::Rng& rng) {
  using Layer = eigenformer::Attention<double>;
  MatD query = random_matrix(B * Tq, attn.d_model(), rng);
  MatD memory = random_matrix(B * Tk, attn.d_model(), rng);
  const MatD R = random_matrix(B * Tq, attn.d_model(), rng);
  auto loss = [&] {
    Layer::Cache c;
    return eigenformer::projection(attn.forward(query, memory, B, mask, c), R);
  };
  Layer::Cache cache;
  attn.forward(query, memory, B, mask, cache);
  MatD dmemory;
  const MatD dquery = attn.backward(R, cache, &dmemory);
  check_grad(query, dquery, loss, "query");
  check_grad(memory, dmemory, loss, "memory");
  check_param_grads(attn.parameters(), loss, [&] {
    Layer::Cache c;
    attn.forward(query, memory, B, mask, c);
    MatD dm;
    attn.backward(R, c, &dm);
  });
  return dmemory;
}

/// The options of a dot-product attention layer (biases on) with these positions.
inline eigenformer::AttentionOptions positioned(const eigenformer::AttentionPositions& p) {
  eigenformer::AttentionOptions o;
  o.positions = p;
  return o;
}

/// The masks' definition for query i and key j of head h of sequence b: adds the attn_bias entry
/// to score and returns true when the pair is masked (a -inf bias masks too).
inline bool reference_mask(const eigenformer::AttentionMask& m, const eigenformer::AttentionDims& d,
                           eigenformer::Index b, eigenformer::Index h, eigenformer::Index i,
                           eigenformer::Index j, double& score) {
  using eigenformer::Index;
  auto row = [&](Index rows) {  // shared (Tq), per sequence (B*Tq), per sequence and head
    return rows == d.B * d.H * d.Tq ? (b * d.H + h) * d.Tq + i
           : rows == d.B * d.Tq     ? b * d.Tq + i
                                    : i;
  };
  bool masked = m.causal && j > i + (d.Tk - d.Tq);
  if (m.key_padding.size() && m.key_padding(b, j)) masked = true;
  if (m.attn_mask.size() && m.attn_mask(row(m.attn_mask.rows()), j)) masked = true;
  if (m.attn_bias.size()) {
    const double bias = m.attn_bias(row(m.attn_bias.rows()), j);
    if (bias == -std::numeric_limits<double>::infinity())
      masked = true;
    else
      score += bias;
  }
  return masked;
}

/// ALiBi's bias (B*H*Tq, Tk) for H heads: head h adds -slope_h * (i - j), slope_h = 2^-(8(h+1)/H).
inline MatD alibi_bias(const eigenformer::AttentionDims& d) {
  using eigenformer::Index;
  MatD out(d.B * d.H * d.Tq, d.Tk);
  for (Index b = 0; b < d.B; ++b)
    for (Index h = 0; h < d.H; ++h) {
      const double slope = std::pow(2.0, -8.0 * double(h + 1) / double(d.H));
      for (Index i = 0; i < d.Tq; ++i)
        for (Index j = 0; j < d.Tk; ++j)
          out((b * d.H + h) * d.Tq + i, j) = -slope * double(i + (d.Tk - d.Tq) - j);
    }
  return out;
}

struct AttentionCase {
  const char* name;
  eigenformer::AttentionDims d;
  eigenformer::AttentionMask mask;
};

inline std::vector<AttentionCase> attention_mask_cases() {
  using eigenformer::AttentionMask;
  using eigenformer::BoolMatrix;
  std::vector<AttentionCase> out;
  out.push_back({"no mask", {2, 4, 4, 2, 3}, {}});
  AttentionMask causal;
  causal.causal = true;
  out.push_back({"causal", {2, 4, 4, 2, 3}, causal});
  out.push_back({"causal, fewer queries than keys", {2, 2, 5, 2, 3}, causal});
  AttentionMask pad;
  pad.key_padding = BoolMatrix::Zero(2, 5);
  pad.key_padding(0, 4) = true;
  pad.key_padding(1, 3) = pad.key_padding(1, 4) = true;
  out.push_back({"key padding, cross shapes", {2, 3, 5, 2, 3}, pad});
  AttentionMask shared;
  shared.attn_mask = BoolMatrix::Zero(3, 4);
  shared.attn_mask(0, 1) = shared.attn_mask(2, 3) = true;
  out.push_back({"shared attn_mask", {2, 3, 4, 1, 4}, shared});
  AttentionMask all;
  all.causal = true;
  all.key_padding = BoolMatrix::Zero(2, 4);
  all.key_padding(1, 0) = true;  // with causal: query 0 of sequence 1 sees nothing
  all.attn_mask = BoolMatrix::Zero(8, 4);
  all.attn_mask(2, 1) = all.attn_mask(7, 2) = true;
  out.push_back({"causal + padding + per-sequence mask, a fully masked row", {2, 4, 4, 2, 2}, all});
  AttentionMask per_head;  // PyTorch's 3-D attn_mask (B*H, Tq, Tk)
  per_head.attn_mask = BoolMatrix::Zero(2 * 2 * 3, 4);
  per_head.attn_mask(0, 1) = per_head.attn_mask(4, 3) = per_head.attn_mask(10, 0) = true;
  per_head.attn_mask.row(7).setConstant(true);  // sequence 1, head 0, query 1 sees nothing
  out.push_back({"per-head attn_mask (B*H*Tq, Tk)", {2, 3, 4, 2, 2}, per_head});
  AttentionMask one_sequence = per_head;  // B == 1: (H*Tq, Tk) is per head
  one_sequence.attn_mask = per_head.attn_mask.topRows(6);
  out.push_back({"per-head attn_mask, one sequence", {1, 3, 4, 2, 2}, one_sequence});
  AttentionMask alibi;
  alibi.causal = true;
  alibi.attn_bias = alibi_bias({2, 4, 4, 2, 3});
  out.push_back({"causal + ALiBi bias per head", {2, 4, 4, 2, 3}, alibi});
  AttentionMask additive;  // a shared float mask with -inf entries, with a per-sequence bool mask
  additive.attn_bias = MatD::Zero(3, 5);
  additive.attn_bias << 0.5, -1.0, 2.0, 0.0, -std::numeric_limits<double>::infinity(), -0.3, 0.7,
      -std::numeric_limits<double>::infinity(), 1.5, -2.0, 0.0, 0.1, 0.2, 0.3, -0.4;
  additive.attn_mask = BoolMatrix::Zero(6, 5);
  additive.attn_mask(4, 1) = true;
  out.push_back(
      {"shared float bias with -inf entries + per-sequence mask", {2, 3, 5, 2, 2}, additive});
  AttentionMask per_sequence_bias;
  per_sequence_bias.attn_bias = MatD::Zero(8, 4);
  per_sequence_bias.attn_bias.col(2).setConstant(-1.5);
  per_sequence_bias.attn_bias(5, 0) = 3.0;
  per_sequence_bias.attn_bias.row(6).setConstant(-std::numeric_limits<double>::infinity());
  out.push_back(
      {"per-sequence float bias, a fully masked row", {2, 4, 4, 2, 2}, per_sequence_bias});
  return out;
}

}  // namespace eftest
