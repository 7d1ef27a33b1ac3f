// The mask cases every attention kernel's tests run: no mask, causal (also with fewer queries
// than keys), key padding with cross shapes, a shared arbitrary mask, and all combined with a
// fully masked row.
#pragma once

#include <vector>

#include <eigenformer/ops/attention.hpp>

namespace eftest {

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
