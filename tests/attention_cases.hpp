// The mask cases every attention kernel's tests run: no mask, causal (also with fewer queries
// than keys), key padding with cross shapes, a shared arbitrary mask, and all combined with a
// fully masked row. Also the helpers the attention layer's tests share.
#pragma once

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
  return out;
}

}  // namespace eftest
