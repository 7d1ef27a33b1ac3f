// The tiled attention (ops/flash_attention.hpp) against the plain one (ops/attention.hpp): outputs,
// gradients and weights for every mask kind, cross shapes, tile sizes that do not divide T, T = 1,
// fully masked rows, each with and without a position bias per distance; finite differences in
// double; and the dispatch in the Attention layer, also with rotary and relative positions.
#include <eigenformer/layers/attention.hpp>
#include <eigenformer/ops/attention.hpp>
#include <eigenformer/ops/flash_attention.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attention_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

struct Case {
  std::string name;
  AttentionDims d;
  AttentionMask mask;
};

// Every mask kind, with shapes that the tile sizes below do not divide.
std::vector<Case> cases() {
  std::vector<Case> out;
  out.push_back({"no mask", {2, 13, 13, 2, 4}, {}});
  AttentionMask causal;
  causal.causal = true;
  out.push_back({"causal", {2, 13, 13, 2, 4}, causal});
  out.push_back({"causal, fewer queries than keys", {2, 5, 17, 2, 3}, causal});
  out.push_back(
      {"causal, more queries than keys (leading rows see nothing)", {1, 9, 4, 2, 3}, causal});
  out.push_back({"T = 1", {3, 1, 1, 2, 3}, causal});
  out.push_back({"one query, many keys", {2, 1, 11, 2, 3}, causal});
  AttentionMask pad;
  pad.key_padding = BoolMatrix::Zero(2, 11);
  pad.key_padding(0, 10) = true;
  for (Index j = 3; j < 11; ++j) pad.key_padding(1, j) = true;
  out.push_back({"key padding, cross shapes", {2, 7, 11, 2, 3}, pad});
  AttentionMask shared;
  shared.attn_mask = BoolMatrix::Zero(6, 9);
  shared.attn_mask(0, 1) = shared.attn_mask(2, 8) = shared.attn_mask(5, 0) = true;
  for (Index j = 0; j < 9; ++j) shared.attn_mask(3, j) = true;  // row 3 sees nothing
  out.push_back({"shared attn_mask with a fully masked row", {2, 6, 9, 1, 4}, shared});
  AttentionMask all;
  all.causal = true;
  all.key_padding = BoolMatrix::Zero(2, 10);
  all.key_padding(1, 0) = true;  // with causal: query 0 of sequence 1 sees nothing
  all.key_padding(0, 7) = true;
  all.attn_mask = BoolMatrix::Zero(20, 10);
  all.attn_mask(2, 1) = all.attn_mask(17, 2) = all.attn_mask(9, 5) = true;
  out.push_back({"causal + padding + per-sequence mask", {2, 10, 10, 2, 2}, all});
  AttentionMask per_head;  // PyTorch's 3-D attn_mask (B*H, Tq, Tk), and a per-sequence float bias
  per_head.attn_mask = BoolMatrix::Zero(2 * 2 * 7, 11);
  per_head.attn_mask(0, 3) = per_head.attn_mask(9, 10) = per_head.attn_mask(20, 0) = true;
  per_head.attn_mask.row(15).setConstant(true);  // sequence 1, head 0, query 1 sees nothing
  Rng bias_rng(11);
  per_head.attn_bias = eftest::random_matrix(2 * 7, 11, bias_rng, 2.0);
  per_head.attn_bias(3, 4) = -std::numeric_limits<double>::infinity();
  out.push_back({"per-head attn_mask + per-sequence float bias", {2, 7, 11, 2, 3}, per_head});
  AttentionMask alibi;
  alibi.causal = true;
  alibi.attn_bias = eftest::alibi_bias({2, 13, 13, 2, 4});
  out.push_back({"causal + ALiBi bias per head", {2, 13, 13, 2, 4}, alibi});
  AttentionMask none;
  none.key_padding = BoolMatrix::Constant(1, 6, true);
  out.push_back({"every key padded", {1, 5, 6, 2, 3}, none});
  return out;
}

const std::vector<AttentionBlocks> kBlocks = {{1, 1}, {2, 3}, {4, 5}, {64, 128}, {3, 100}};

// Shapes whose full tiles are large enough for their float products to go through the GEMM kernel
// (core/gemm_kernel.hpp, when built for AVX2 or AVX-512): 64 x 128 and 48 x 96 tiles with
// dh = 40, so that tiles of dh columns end in a partial register tile, and T = 150, which the
// tiles do not divide.
std::vector<Case> kernel_cases() {
  AttentionMask causal;
  causal.causal = true;
  return {{"no mask, kernel-sized tiles", {1, 150, 150, 2, 40}, {}},
          {"causal, kernel-sized tiles", {1, 150, 150, 2, 40}, causal}};
}
const std::vector<AttentionBlocks> kKernelBlocks = {{64, 128}, {48, 96}};

template <class Scalar>
double rel_err(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

template <class Scalar>
void check_against_plain(double tol, bool with_bias, const std::vector<Case>& all = cases(),
                         const std::vector<AttentionBlocks>& blocks = kBlocks) {
  for (const Case& c : all) {
    const AttentionDims& d = c.d;
    Rng rng(7);
    const Matrix<Scalar> q = eftest::random_matrix<Scalar>(d.B * d.Tq, d.H * d.dh, rng, 2.0);
    const Matrix<Scalar> k = eftest::random_matrix<Scalar>(d.B * d.Tk, d.H * d.dh, rng, 2.0);
    const Matrix<Scalar> v = eftest::random_matrix<Scalar>(d.B * d.Tk, d.H * d.dh, rng);
    const Matrix<Scalar> dout = eftest::random_matrix<Scalar>(d.B * d.Tq, d.H * d.dh, rng);
    const Matrix<Scalar> bias_value = eftest::random_matrix<Scalar>(d.H, d.Tq + d.Tk - 1, rng);
    const Matrix<Scalar>* bias = with_bias ? &bias_value : nullptr;
    Matrix<Scalar> out, probs, dq, dk, dv, dbias;
    attention_forward<Scalar>(out, probs, q, k, v, d, c.mask, bias);
    attention_backward<Scalar>(dq, dk, dv, dout, probs, q, k, v, d, with_bias ? &dbias : nullptr);
    for (const AttentionBlocks& blk : blocks) {
      INFO(c.name << ", blocks " << blk.q << " x " << blk.k << (with_bias ? ", bias" : ""));
      Matrix<Scalar> fout, lse, fdq, fdk, fdv, fdbias;
      flash_attention_forward<Scalar>(fout, lse, q, k, v, d, c.mask, blk, bias);
      REQUIRE(lse.rows() == d.B * d.H);
      REQUIRE(lse.cols() == d.Tq);
      CHECK(fout.allFinite());
      CHECK(rel_err(fout, out) < tol);
      // Pre-fill: the outputs must be fresh.
      fdq.setConstant(d.B * d.Tq, d.H * d.dh, Scalar(5));
      fdk.setConstant(d.B * d.Tk, d.H * d.dh, Scalar(5));
      fdv.setConstant(d.B * d.Tk, d.H * d.dh, Scalar(5));
      fdbias.setConstant(d.H, d.Tq + d.Tk - 1, Scalar(5));
      flash_attention_backward<Scalar>(fdq, fdk, fdv, dout, fout, lse, q, k, v, d, c.mask, blk,
                                       bias, with_bias ? &fdbias : nullptr);
      if (with_bias) CHECK(rel_err(fdbias, dbias) < tol);
      CHECK(fdq.allFinite());
      CHECK(fdk.allFinite());
      CHECK(fdv.allFinite());
      CHECK(rel_err(fdq, dq) < tol);
      CHECK(rel_err(fdk, dk) < tol);
      CHECK(rel_err(fdv, dv) < tol);
      for (Index b = 0; b < d.B; ++b)
        for (Index h = 0; h < d.H; ++h) {
          const Matrix<Scalar> w =
              flash_attention_weights<Scalar>(q, k, lse, d, c.mask, b, h, bias);
          const Matrix<Scalar> ref = probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
          CHECK(rel_err(w, ref) < tol);
        }
      // Fully masked rows: zero output and -inf lse exactly where the plain probs are all zero.
      for (Index bh = 0; bh < d.B * d.H; ++bh)
        for (Index i = 0; i < d.Tq; ++i) {
          const bool empty = probs.row(bh * d.Tq + i).cwiseAbs().maxCoeff() == Scalar(0);
          CHECK(std::isinf(lse(bh, i)) == empty);
          if (empty) {
            const Index b = bh / d.H, h = bh % d.H;
            CHECK(fout.block(b * d.Tq + i, h * d.dh, 1, d.dh).cwiseAbs().maxCoeff() == Scalar(0));
            CHECK(fdq.block(b * d.Tq + i, h * d.dh, 1, d.dh).cwiseAbs().maxCoeff() == Scalar(0));
          }
        }
    }
  }
}

}  // namespace

TEST_CASE("tiled attention matches the plain kernel in double") {
  check_against_plain<double>(1e-12, false);
  check_against_plain<double>(1e-12, true);
}

TEST_CASE("tiled attention matches the plain kernel in float") {
  check_against_plain<float>(1e-5, false);
  check_against_plain<float>(1e-5, true);
  check_against_plain<float>(1e-5, false, kernel_cases(), kKernelBlocks);
  check_against_plain<float>(1e-5, true, kernel_cases(), kKernelBlocks);
}

TEST_CASE("tiled attention gradients match finite differences") {
  for (const Case& c : cases()) {
    INFO(c.name);
    const AttentionDims& d = c.d;
    const AttentionBlocks blk{4, 3};
    Rng rng(3);
    MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
    MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
    MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
    const MatD R = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
    MatD bias = eftest::random_matrix(d.H, d.Tq + d.Tk - 1, rng);
    MatD out, lse, dq, dk, dv, dbias;
    flash_attention_forward<double>(out, lse, q, k, v, d, c.mask, blk, &bias);
    flash_attention_backward<double>(dq, dk, dv, R, out, lse, q, k, v, d, c.mask, blk, &bias,
                                     &dbias);
    auto loss = [&] {
      MatD o, l;
      flash_attention_forward<double>(o, l, q, k, v, d, c.mask, blk, &bias);
      return projection(o, R);
    };
    eftest::check_grad(q, dq, loss, "q");
    eftest::check_grad(k, dk, loss, "k");
    eftest::check_grad(v, dv, loss, "v");
    eftest::check_grad(bias, dbias, loss, "pos_bias");
  }
}

TEST_CASE("tiled attention rejects inputs that do not fit its dims") {
  const AttentionDims d{2, 3, 4, 2, 2};
  const Matrix<float> q = Matrix<float>::Ones(6, 4), kv = Matrix<float>::Ones(8, 4);
  const Matrix<float> bias = Matrix<float>::Zero(3, 6);
  Matrix<float> out, lse, dq, dk, dv;
  eftest::check_throws_with(
      [&] { flash_attention_forward<float>(out, lse, q, Matrix<float>::Ones(6, 4), kv, d, {}); },
      {"flash_attention_forward", "'k'", "(6, 4)", "(8, 4)"});
  eftest::check_throws_with(
      [&] { flash_attention_forward<float>(out, lse, q, kv, kv, d, {}, {}, &bias); },
      {"flash_attention_forward", "'pos_bias'", "(3, 6)", "(2, 6)"});
  flash_attention_forward<float>(out, lse, q, kv, kv, d, {});
  eftest::check_throws_with(
      [&] {
        flash_attention_backward<float>(dq, dk, dv, q, out, lse.leftCols(2), q, kv, kv, d, {});
      },
      {"flash_attention_backward", "'lse'", "(4, 2)", "(4, 3)"});
  eftest::check_throws_with(
      [&] { flash_attention_backward<float>(dq, dk, dv, q, out, lse, q, kv, kv, d, {}, {}, &bias); },
      {"flash_attention_backward", "'pos_bias'", "(3, 6)"});
  eftest::check_throws_with([&] { flash_attention_weights<float>(q, kv, lse, d, {}, 0, 2); },
                            {"flash_attention_weights", "'h'", "is 2", "0 <= h < 2"});
  eftest::check_throws_with([&] { flash_attention_weights<float>(q, kv, lse, d, {}, 2, 0); },
                            {"flash_attention_weights", "'b'", "is 2"});
}

TEST_CASE("tiled attention stays finite with large scores") {
  const AttentionDims d{1, 20, 20, 1, 2};
  Rng rng(4);
  const Matrix<float> q = eftest::random_matrix<float>(20, 2, rng, 300.0);
  const Matrix<float> k = eftest::random_matrix<float>(20, 2, rng, 300.0);
  const Matrix<float> v = eftest::random_matrix<float>(20, 2, rng);
  AttentionMask causal;
  causal.causal = true;
  Matrix<float> out, lse, dq, dk, dv, pout, probs;  // scores up to about 1e5
  flash_attention_forward<float>(out, lse, q, k, v, d, causal, {3, 4});
  flash_attention_backward<float>(dq, dk, dv, v, out, lse, q, k, v, d, causal, {3, 4});
  attention_forward<float>(pout, probs, q, k, v, d, causal);
  CHECK(out.allFinite());
  CHECK(dq.allFinite());
  CHECK(dk.allFinite());
  CHECK(dv.allFinite());
  CHECK(probs.allFinite());
}

/// Runs the layer with the plain and the tiled kernel and compares outputs, input and parameter
/// gradients and per-head weights. Self-attention when Tq == Tk and positions are set.
template <class Scalar>
void check_layer_kernels(const AttentionPositions& positions, Index Tq, Index Tk, double tol) {
  Rng rng(5);
  Attention<Scalar> mha(8, 2, rng, eftest::positioned(positions));
  const bool self = positions.kind != PositionalKind::none;
  const Index B = 2;
  const Matrix<Scalar> query = eftest::random_matrix<Scalar>(B * Tq, 8, rng);
  const Matrix<Scalar> memory = eftest::random_matrix<Scalar>(B * Tk, 8, rng);
  const Matrix<Scalar> dy = eftest::random_matrix<Scalar>(B * Tq, 8, rng);
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = BoolMatrix::Zero(B, Tk);
  mask.key_padding(1, 0) = true;  // query 0 of sequence 1 sees nothing
  Matrix<Scalar> y[2], dq[2], dmem[2];
  std::vector<Matrix<Scalar>> grads[2];
  typename Attention<Scalar>::Cache caches[2];
  for (int t = 0; t < 2; ++t) {
    mha.impl = t == 0 ? AttentionImpl::plain : AttentionImpl::tiled;
    mha.zero_grad();
    y[t] = self ? mha.forward(query, B, mask, caches[t])
                : mha.forward(query, memory, B, mask, caches[t]);
    dq[t] = mha.backward(dy, caches[t], self ? nullptr : &dmem[t]);
    for (const auto& p : mha.parameters()) grads[t].push_back(p.param->grad);
  }
  CHECK(caches[0].score.probs.size() != 0);
  CHECK(caches[0].score.lse.size() == 0);
  CHECK(caches[1].score.probs.size() == 0);
  CHECK(caches[1].score.lse.size() == B * 2 * Tq);
  CHECK(rel_err(y[1], y[0]) < tol);
  CHECK(rel_err(dq[1], dq[0]) < tol);
  if (!self) CHECK(rel_err(dmem[1], dmem[0]) < tol);
  for (size_t i = 0; i < grads[0].size(); ++i) CHECK(rel_err(grads[1][i], grads[0][i]) < tol);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < 2; ++h) {
      const Matrix<Scalar> w0 = mha.attention_weights(caches[0], b, h);
      const Matrix<Scalar> w1 = mha.attention_weights(caches[1], b, h);
      CHECK(rel_err(w1, w0) < tol);
    }
}

TEST_CASE("the attention layer gives the same results with either kernel") {
  check_layer_kernels<double>({}, 7, 9, 1e-12);
}

TEST_CASE_TEMPLATE("Attention with rotary or relative positions: either kernel", Scalar,
                   float, double) {
  const double tol = std::is_same<Scalar, float>::value ? 1e-5 : 1e-12;
  AttentionPositions rotary, relative;
  rotary.kind = PositionalKind::rotary;
  relative.kind = PositionalKind::relative;
  relative.num_buckets = 6;
  relative.max_distance = 7;
  for (bool bidirectional : {true, false}) {
    CAPTURE(bidirectional);
    relative.bidirectional = bidirectional;
    check_layer_kernels<Scalar>(relative, 11, 11, tol);
  }
  check_layer_kernels<Scalar>(rotary, 11, 11, tol);
}

TEST_CASE("the attention layer picks the kernel by size") {
  Rng rng(6);
  Attention<float> mha(16, 2, rng);
  AttentionMask causal;
  causal.causal = true;
  Attention<float>::Cache cache;
  const Matrix<float> small = eftest::random_matrix<float>(2 * 16, 16, rng);
  mha.forward(small, 2, causal, cache);
  CHECK(cache.score.probs.size() !=
        0);  // short sequences (e.g. translate's cross-attention): plain
  const Matrix<float> big = eftest::random_matrix<float>(256, 16, rng);
  mha.forward(big, 1, causal, cache);
  CHECK(cache.score.probs.size() == 0);
  CHECK(cache.score.lse.size() == 2 * 256);
  CHECK(mha.attention_weights(cache, 0, 1).rowwise().sum().isOnes(1e-5f));
  mha.forward(big, 1, AttentionMask(), cache);  // no mask: plain up to 512 x 512
  CHECK(cache.score.probs.size() != 0);
}
