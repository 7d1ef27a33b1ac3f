// The attention layer (layers/attention.hpp) with dot-product scores and each position scheme
// (layers/attention_positions.hpp): gradients, the contract, properties, the definition with
// positions, and bad input. The additive scoring has its own file (test_additive_attention.cpp).
#include <eigenformer/layers/attention.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "attention_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;
using MHA = Attention<double>;
using Kind = PositionalKind;

namespace {

AttentionPositions rotary_positions(double base = 10000.0) {
  AttentionPositions p;
  p.kind = Kind::rotary;
  p.rotary_base = base;
  return p;
}

// Few buckets and a short max_distance, so that short test sequences reach the log-spaced and the
// clipped buckets too.
AttentionPositions relative_positions(bool bidirectional) {
  AttentionPositions p;
  p.kind = Kind::relative;
  p.num_buckets = bidirectional ? 8 : 4;
  p.max_distance = 5;
  p.bidirectional = bidirectional;
  return p;
}

void check_self_attention_grads(const AttentionMask& mask, Index B, Index T,
                                const AttentionPositions& positions = {},
                                AttentionImpl impl = AttentionImpl::automatic) {
  Rng rng(11);
  MHA attn(8, 2, rng, eftest::positioned(positions));
  attn.impl = impl;
  eftest::check_self_attention_grads(attn, mask, B, T, rng);
}

/// Self-attention with positions by plain loops and per-element trig: the definition, for
/// comparison. Linear layers via their weights; heads rotated (rotate-half) or biased by bucket.
MatD reference_self_attention(const MHA& attn, const MatD& x, Index B, const AttentionMask& m) {
  const Index T = x.rows() / B, H = attn.n_heads(), dh = attn.head_dim(), D = attn.d_model();
  const AttentionPositions& pos = attn.positions();
  auto project = [&](const Linear<double>& l) {
    MatD y = x * l.weight.value.transpose();
    y.rowwise() += l.bias.value.row(0);
    return y;
  };
  MatD q = project(attn.q_proj), k = project(attn.k_proj);
  const MatD v = project(attn.v_proj);
  if (pos.kind == Kind::rotary) {
    for (MatD* a : {&q, &k}) {
      const MatD in = *a;
      for (Index r = 0; r < B * T; ++r)
        for (Index h = 0; h < H; ++h)
          for (Index i = 0; i < dh / 2; ++i) {
            const double angle = double(r % T) * std::pow(pos.rotary_base, -2.0 * i / dh);
            const double x1 = in(r, h * dh + i), x2 = in(r, h * dh + dh / 2 + i);
            (*a)(r, h * dh + i) = x1 * std::cos(angle) - x2 * std::sin(angle);
            (*a)(r, h * dh + dh / 2 + i) = x2 * std::cos(angle) + x1 * std::sin(angle);
          }
    }
  }
  MatD context = MatD::Zero(B * T, D);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < T; ++i) {
        std::vector<double> w(size_t(T), 0.0);
        double max = -1e300, sum = 0.0;
        std::vector<bool> seen(size_t(T), true);
        for (Index j = 0; j < T; ++j) {
          bool masked = m.causal && j > i;
          if (m.key_padding.size() && m.key_padding(b, j)) masked = true;
          seen[size_t(j)] = !masked;
          double s = q.row(b * T + i).segment(h * dh, dh).dot(k.row(b * T + j).segment(h * dh, dh));
          s /= std::sqrt(double(dh));
          if (pos.kind == Kind::relative)
            s += param_named(const_cast<MHA&>(attn).parameters(), "relative_bias")
                     .value(relative_position_bucket(j - i, pos.bidirectional, pos.num_buckets,
                                                     pos.max_distance),
                            h);
          w[size_t(j)] = s;
          if (!masked) max = std::max(max, s);
        }
        for (Index j = 0; j < T; ++j) {
          w[size_t(j)] = seen[size_t(j)] ? std::exp(w[size_t(j)] - max) : 0.0;
          sum += w[size_t(j)];
        }
        if (sum == 0.0) continue;
        for (Index j = 0; j < T; ++j)
          context.row(b * T + i).segment(h * dh, dh) +=
              w[size_t(j)] / sum * v.row(b * T + j).segment(h * dh, dh);
      }
  MatD y = context * attn.out_proj.weight.value.transpose();
  y.rowwise() += attn.out_proj.bias.value.row(0);
  return y;
}

}  // namespace

TEST_CASE("self-attention gradients match finite differences with each mask kind") {
  SUBCASE("no mask") { check_self_attention_grads({}, 2, 4); }
  SUBCASE("causal") {
    AttentionMask m;
    m.causal = true;
    check_self_attention_grads(m, 2, 4);
  }
  SUBCASE("key padding") {
    AttentionMask m;
    m.key_padding = BoolMatrix::Zero(2, 4);
    m.key_padding(1, 2) = m.key_padding(1, 3) = true;
    check_self_attention_grads(m, 2, 4);
  }
  SUBCASE("arbitrary mask, with a fully masked query") {
    AttentionMask m;
    m.attn_mask = BoolMatrix::Zero(4, 4);
    m.attn_mask.row(0).setConstant(true);
    m.attn_mask(2, 1) = true;
    check_self_attention_grads(m, 2, 4);
  }
  // PyTorch's 3-D attn_mask (B*H, Tq, Tk) and float masks (ALiBi), through both kernels.
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    CAPTURE(int(impl));
    SUBCASE("per-head mask, with a fully masked query of one head") {
      AttentionMask m;
      m.attn_mask = BoolMatrix::Zero(2 * 2 * 4, 4);
      m.attn_mask.row(5).setConstant(true);
      m.attn_mask(9, 2) = m.attn_mask(14, 0) = true;
      check_self_attention_grads(m, 2, 4, {}, impl);
    }
    SUBCASE("causal with ALiBi, and a per-sequence float mask with -inf entries") {
      AttentionMask m;
      m.causal = true;
      m.attn_bias = eftest::alibi_bias({2, 4, 4, 2, 4});
      check_self_attention_grads(m, 2, 4, {}, impl);
      AttentionMask f;
      Rng rng(5);
      f.attn_bias = eftest::random_matrix(2 * 4, 4, rng);
      f.attn_bias(1, 3) = f.attn_bias(6, 0) = -std::numeric_limits<double>::infinity();
      check_self_attention_grads(f, 2, 4, {}, impl);
    }
  }
}

TEST_CASE("cross-attention with a per-head mask and a float bias: gradients, both kernels") {
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    CAPTURE(int(impl));
    Rng rng(14);
    const Index B = 2, Tq = 3, Tk = 5;
    MHA attn(8, 2, rng);
    attn.impl = impl;
    AttentionMask mask;
    mask.attn_mask = BoolMatrix::Zero(B * 2 * Tq, Tk);
    mask.attn_mask(0, 4) = mask.attn_mask(7, 1) = true;
    mask.attn_bias = eftest::random_matrix(Tq, Tk, rng);
    eftest::check_cross_attention_grads(attn, mask, B, Tq, Tk, rng);
  }
}

TEST_CASE("cross-attention gradients reach both the queries and the memory") {
  Rng rng(12);
  const Index B = 2, Tq = 3, Tk = 5;
  MHA attn(8, 4, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, Tk);
  mask.key_padding(0, 4) = true;
  const MatD dmemory = eftest::check_cross_attention_grads(attn, mask, B, Tq, Tk, rng);
  CHECK(dmemory.block(4, 0, 1, 8).isZero());  // the padded key of sequence 0 gets no gradient
}

TEST_CASE("backward reuses its buffers: repeated, reshaped, mixed and copied calls agree") {
  // The layer keeps its gradient temporaries between calls; nothing of one call may reach the next.
  Rng rng(13);
  MHA attn(8, 2, rng);
  const MatD small = eftest::random_matrix(2 * 3, 8, rng);  // B = 2, T = 3
  const MatD big = eftest::random_matrix(3 * 5, 8, rng);    // B = 3, T = 5
  const MatD memory = eftest::random_matrix(3 * 4, 8, rng);
  auto self_grad = [](MHA& layer, const MatD& x, Index B) {
    MHA::Cache c;
    layer.forward(x, B, AttentionMask{}, c);
    return MatD(layer.backward(x, c));  // dy = x: any fixed upstream gradient
  };
  auto cross_grads = [&](MHA& layer) {
    MHA::Cache c;
    layer.forward(big, memory, 3, AttentionMask{}, c);
    MatD dmemory;
    const MatD dquery = layer.backward(big, c, &dmemory);
    return std::make_pair(dquery, dmemory);
  };
  const MatD first_small = self_grad(attn, small, 2);
  const MatD first_big = self_grad(attn, big, 3);
  const auto first_cross = cross_grads(attn);
  CHECK(self_grad(attn, small, 2) == first_small);  // after a larger call
  CHECK(cross_grads(attn) == first_cross);          // after a self-attention call
  CHECK(self_grad(attn, big, 3) == first_big);      // after a cross-attention call
  MHA copy = attn;
  CHECK(self_grad(copy, big, 3) == first_big);
}

TEST_CASE("multi-head attention follows the gradient contract, with and without positions") {
  for (const AttentionPositions& positions :
       {AttentionPositions(), rotary_positions(), relative_positions(false)}) {
    CAPTURE(int(positions.kind));
    Rng rng(13);
    MHA attn(8, 2, rng, eftest::positioned(positions));
    const MatD x = eftest::random_matrix(6, 8, rng);
    const MatD R = eftest::random_matrix(6, 8, rng);
    AttentionMask causal;
    causal.causal = true;
    eftest::check_gradient_contract(attn.parameters(), [&] {
      MHA::Cache c;
      attn.forward(x, 2, causal, c);
      return attn.backward(R, c);
    });
  }
}

TEST_CASE_TEMPLATE("causal self-attention: outputs 0..t ignore tokens after t", Scalar, float,
                   double) {
  Rng rng(14);
  Attention<Scalar> attn(8, 2, rng);
  const Index B = 2, T = 6, t = 2;
  Matrix<Scalar> x = eftest::random_matrix<Scalar>(B * T, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  typename Attention<Scalar>::Cache c1, c2;
  const Matrix<Scalar> y1 = attn.forward(x, B, causal, c1);
  for (Index b = 0; b < B; ++b) x.block(b * T + t + 1, 0, T - t - 1, 8).setConstant(Scalar(7));
  const Matrix<Scalar> y2 = attn.forward(x, B, causal, c2);
  for (Index b = 0; b < B; ++b) {
    CHECK(y1.block(b * T, 0, t + 1, 8) == y2.block(b * T, 0, t + 1, 8));
    CHECK(y1.block(b * T + t + 1, 0, T - t - 1, 8) != y2.block(b * T + t + 1, 0, T - t - 1, 8));
  }
}

TEST_CASE_TEMPLATE("padded keys change nothing", Scalar, float, double) {
  Rng rng(15);
  Attention<Scalar> attn(8, 2, rng);
  const Index B = 2, Tq = 3, Tk = 4;
  const Matrix<Scalar> query = eftest::random_matrix<Scalar>(B * Tq, 8, rng);
  Matrix<Scalar> memory = eftest::random_matrix<Scalar>(B * Tk, 8, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, Tk);
  mask.key_padding(1, 2) = mask.key_padding(1, 3) = true;
  typename Attention<Scalar>::Cache c1, c2;
  const Matrix<Scalar> y1 = attn.forward(query, memory, B, mask, c1);
  memory.block(Tk + 2, 0, 2, 8).setConstant(Scalar(1e3));
  const Matrix<Scalar> y2 = attn.forward(query, memory, B, mask, c2);
  CHECK(y1 == y2);
  // Per-head weights: rows sum to 1 and the padded keys get exactly 0.
  for (Index h = 0; h < 2; ++h) {
    const Matrix<Scalar> w = attn.attention_weights(c1, 1, h);
    CHECK(w.rows() == Tq);
    CHECK(w.cols() == Tk);
    for (Index i = 0; i < Tq; ++i) CHECK(w.row(i).sum() == doctest::Approx(1.0));
    CHECK(w.rightCols(2).isZero(0));
  }
}

TEST_CASE("multi-head attention rejects bad input and stays unchanged") {
  Rng rng(16);
  eftest::check_throws_with([&] { Attention<float>(10, 3, rng); },
                            {"Attention::Attention", "n_heads", "must divide"});
  Attention<float> attn(8, 2, rng);
  const Matrix<float> before = attn.q_proj.weight.value;
  Attention<float>::Cache c;
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(6, 7), 2, {}, c); },
                            {"Attention::forward", "'query'", "(6, 7)", "(*, 8)"});
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(7, 8), 2, {}, c); },
                            {"'query'", "7 rows", "B = 2"});
  eftest::check_throws_with(
      [&] { attn.forward(Matrix<float>::Ones(6, 8), Matrix<float>::Ones(6, 9), 2, {}, c); },
      {"'memory'", "(6, 9)", "(*, 8)"});
  AttentionMask bad;
  bad.key_padding = BoolMatrix::Zero(2, 4);
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(6, 8), 2, bad, c); },
                            {"mask.key_padding", "(2, 4)", "(2, 3)"});
  attn.forward(Matrix<float>::Ones(6, 8), 2, {}, c);
  eftest::check_throws_with([&] { attn.backward(Matrix<float>::Ones(5, 8), c); },
                            {"Attention::backward", "'dy'", "(5, 8)", "(6, 8)"});
  CHECK(attn.q_proj.weight.value == before);
  CHECK(attn.q_proj.weight.grad.isZero());
}

TEST_CASE("self-attention with rotary or relative positions matches the definition, both kernels") {
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = BoolMatrix::Zero(2, 9);
  mask.key_padding(1, 0) = mask.key_padding(0, 7) = true;  // sequence 1: query 0 sees nothing
  const AttentionPositions kinds[] = {rotary_positions(), rotary_positions(3.0),
                                      relative_positions(true), relative_positions(false)};
  for (const AttentionPositions& positions : kinds) {
    for (const AttentionMask& m : {AttentionMask(), mask}) {
      Rng rng(21);
      MHA attn(8, 2, rng, eftest::positioned(positions));
      for (Linear<double>* l : {&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.out_proj})
        fill_normal(l->bias.value, 0.0, 0.5, rng);
      const MatD x = eftest::random_matrix(2 * 9, 8, rng);
      const MatD expected = reference_self_attention(attn, x, 2, m);
      for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
        CAPTURE(int(positions.kind));
        CAPTURE(m.causal);
        CAPTURE(int(impl));
        attn.impl = impl;
        MHA::Cache c;
        CHECK((attn.forward(x, 2, m, c) - expected).cwiseAbs().maxCoeff() < 1e-12);
      }
    }
  }
}

TEST_CASE("self-attention gradients with positions match finite differences, both kernels") {
  AttentionMask causal;
  causal.causal = true;
  AttentionMask pad;
  pad.key_padding = BoolMatrix::Zero(2, 7);
  pad.key_padding(1, 5) = pad.key_padding(1, 6) = true;
  const AttentionPositions kinds[] = {rotary_positions(), relative_positions(true),
                                      relative_positions(false)};
  for (const AttentionPositions& positions : kinds)
    for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
      CAPTURE(int(positions.kind));
      CAPTURE(positions.bidirectional);
      CAPTURE(int(impl));
      check_self_attention_grads(causal, 2, 7, positions, impl);
      check_self_attention_grads(pad, 2, 7, positions, impl);
    }
}

TEST_CASE("relative_bias gets each score gradient in its bucket, and follows the contract") {
  Rng rng(22);
  MHA attn(8, 2, rng, eftest::positioned(relative_positions(true)));
  REQUIRE(attn.parameters().size() == 9);
  CHECK(attn.parameters().back().name == "relative_bias");
  Param<double>& relative_bias = param_named(attn.parameters(), "relative_bias");
  CHECK(relative_bias.value.rows() == 8);
  CHECK(relative_bias.value.cols() == 2);
  const MatD x = eftest::random_matrix(2 * 5, 8, rng);
  const MatD R = eftest::random_matrix(2 * 5, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    attn.impl = impl;
    eftest::check_gradient_contract(attn.parameters(), [&] {
      MHA::Cache c;
      attn.forward(x, 2, causal, c);
      return attn.backward(R, c);
    });
  }
  // Causal with the bidirectional table: later keys (the upper-half buckets 4..7) are masked and
  // get no gradient.
  attn.zero_grad();
  MHA::Cache c;
  attn.forward(x, 2, causal, c);
  attn.backward(R, c);
  CHECK(relative_bias.grad.bottomRows(4).isZero(0));
  CHECK(!relative_bias.grad.topRows(4).isZero(0));
}

TEST_CASE_TEMPLATE("positions: an all-zero relative table equals no positions; rotary changes it",
                   Scalar, float, double) {
  Rng rng1(23), rng2(23), rng3(23);
  Attention<Scalar> plain(8, 2, rng1);
  Attention<Scalar> relative(8, 2, rng2, eftest::positioned(relative_positions(true)));
  Attention<Scalar> rotary(8, 2, rng3, eftest::positioned(rotary_positions()));
  CHECK(relative.q_proj.weight.value == plain.q_proj.weight.value);  // same draws before the table
  CHECK(rotary.out_proj.weight.value == plain.out_proj.weight.value);
  CHECK(plain.parameters().size() == 8);
  CHECK(rotary.parameters().size() == 8);
  CHECK(plain.position_scheme() == nullptr);
  param_named(relative.parameters(), "relative_bias").value.setZero();
  Rng rng(24);
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(2 * 6, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    plain.impl = relative.impl = rotary.impl = impl;
    typename Attention<Scalar>::Cache c1, c2, c3;
    const Matrix<Scalar> y = plain.forward(x, 2, causal, c1);
    CHECK(relative.forward(x, 2, causal, c2) == y);
    CHECK(!(rotary.forward(x, 2, causal, c3) == y));
    // Position 0 is not rotated: the first token of each sequence sees only itself.
    CHECK((rotary.forward(x, 2, causal, c3).row(6) - y.row(6)).cwiseAbs().maxCoeff() <
          Scalar(1e-6));
    for (Index h = 0; h < 2; ++h)
      CHECK((relative.attention_weights(c2, 1, h) - plain.attention_weights(c1, 1, h))
                .cwiseAbs()
                .maxCoeff() == Scalar(0));
  }
}

TEST_CASE("positions: bad settings and cross-attention are rejected by name") {
  Rng rng(25);
  const std::string ctor = "Attention::Attention";
  AttentionPositions p = rotary_positions();
  eftest::check_throws_with([&] { Attention<float>(9, 3, rng, eftest::positioned(p)); },
                            {ctor, "'positions.kind'", "rotary", "even head_dim", "got 3"});
  p.rotary_base = 0.0;
  eftest::check_throws_with([&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
                            {ctor, "'positions.rotary_base'", "positive", "got 0"});
  p.rotary_base = -1.0;
  eftest::check_throws_with([&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
                            {ctor, "'positions.rotary_base'", "got -1"});
  p = relative_positions(true);
  p.num_buckets = 3;
  eftest::check_throws_with(
      [&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
      {ctor, "'positions.num_buckets'", "at least 4", "bidirectional", "is 3"});
  p = relative_positions(false);
  p.num_buckets = 1;
  eftest::check_throws_with([&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
                            {ctor, "'positions.num_buckets'", "at least 2", "is 1"});
  p = relative_positions(true);
  p.max_distance = 0;
  eftest::check_throws_with([&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
                            {ctor, "'positions.max_distance'", "positive", "is 0"});
  p.num_buckets = 32;
  p.max_distance = 8;  // 8 exact buckets per direction
  eftest::check_throws_with([&] { Attention<float>(8, 2, rng, eftest::positioned(p)); },
                            {ctor, "'positions.max_distance'", "8 exactly bucketed", "is 8"});
  // Settings the kind does not use are not checked.
  p.kind = Kind::none;
  p.rotary_base = -1.0;
  CHECK(Attention<float>(9, 3, rng, eftest::positioned(p)).parameters().size() == 8);

  for (const AttentionPositions& positions : {rotary_positions(), relative_positions(true)}) {
    Attention<float> attn(8, 2, rng, eftest::positioned(positions));
    const Matrix<float> x = Matrix<float>::Ones(6, 8);
    Attention<float>::Cache c;
    eftest::check_throws_with(
        [&] { attn.forward(x, x, 2, {}, c); },
        {"Attention::forward", "'memory'", "positions apply to self-attention only"});
    KVCache<float> kv;
    eftest::check_throws_with(
        [&] { attn.cache_memory(x, 2, {}, kv); },
        {"Attention::cache_memory", "positions apply to self-attention only"});
    kv.reset(2, 3, 8);
    eftest::check_throws_with(
        [&] { attn.forward_cached_memory(x, 2, kv); },
        {"Attention::forward_cached_memory", "positions apply to self-attention only"});
    CHECK(kv.len == 0);
  }
}

TEST_CASE("cross-attention with kdim/vdim: gradients of query, key, value and every parameter") {
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    CAPTURE(int(impl));
    Rng rng(31);
    AttentionOptions o;
    o.kdim = 6;
    o.vdim = 10;
    MHA attn(8, 2, rng, o);
    attn.impl = impl;
    CHECK(attn.kdim() == 6);
    CHECK(attn.vdim() == 10);
    CHECK(attn.k_proj.weight.value.rows() == 8);
    CHECK(attn.k_proj.weight.value.cols() == 6);
    CHECK(attn.v_proj.weight.value.cols() == 10);
    const Index B = 2, Tq = 3, Tk = 4;
    MatD query = eftest::random_matrix(B * Tq, 8, rng);
    MatD key = eftest::random_matrix(B * Tk, 6, rng);
    MatD value = eftest::random_matrix(B * Tk, 10, rng);
    const MatD R = eftest::random_matrix(B * Tq, 8, rng);
    AttentionMask mask;
    mask.key_padding = BoolMatrix::Zero(B, Tk);
    mask.key_padding(1, 3) = true;
    auto loss = [&] {
      MHA::Cache c;
      return projection(attn.forward(query, key, value, B, mask, c), R);
    };
    attn.zero_grad();
    MHA::Cache cache;
    attn.forward(query, key, value, B, mask, cache);
    MatD dkey, dvalue;
    const MatD dquery = attn.backward(R, cache, &dkey, &dvalue);
    eftest::check_grad(query, dquery, loss, "query");
    eftest::check_grad(key, dkey, loss, "key");
    eftest::check_grad(value, dvalue, loss, "value");
    CHECK(dvalue.row(7).isZero());  // the padded key of sequence 1
    eftest::check_param_grads(attn.parameters(), loss, [&] {
      MHA::Cache c;
      attn.forward(query, key, value, B, mask, c);
      attn.backward(R, c, nullptr, nullptr);
    });
  }
}

TEST_CASE(
    "kdim/vdim: the same parameter names; key = value = memory equals forward(query, "
    "memory); misuse is named") {
  Rng rng(32);
  AttentionOptions o;
  o.kdim = o.vdim = 6;
  MHA attn(8, 2, rng, o);
  std::vector<std::string> names;
  for (const auto& p : attn.parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"q_proj.weight", "q_proj.bias", "k_proj.weight",
                                          "k_proj.bias", "v_proj.weight", "v_proj.bias",
                                          "out_proj.weight", "out_proj.bias"});
  const MatD query = eftest::random_matrix(2 * 3, 8, rng);
  const MatD memory = eftest::random_matrix(2 * 4, 6, rng);
  MHA::Cache c1, c2;
  const MatD y1 = attn.forward(query, memory, 2, {}, c1);
  const MatD y2 = attn.forward(query, memory, memory, 2, {}, c2);
  CHECK((y1 - y2).cwiseAbs().maxCoeff() < 1e-14);
  MatD dmemory, dkey, dvalue;
  attn.backward(y1, c1, &dmemory);
  attn.backward(y1, c2, &dkey, &dvalue);
  CHECK((dmemory - dkey - dvalue).cwiseAbs().maxCoeff() < 1e-13);
  eftest::check_throws_with(
      [&] { attn.backward(y1, c2, &dmemory); },
      {"Attention::backward", "'cache'", "backward(dy, cache, dkey, dvalue)"});
  eftest::check_throws_with([&] { attn.backward(y1, c1, &dkey, &dvalue); },
                            {"Attention::backward", "'cache'", "is not from forward(query, key"});
  eftest::check_throws_with([&] { attn.forward(query, 2, {}, c1); },
                            {"Attention::forward", "kdim 6 and vdim 6", "d_model 8"});
  eftest::check_throws_with([&] { attn.forward(query, memory, MatD::Ones(8, 5), 2, {}, c1); },
                            {"Attention::forward", "'value'", "(8, 5)", "(8, 6)"});
  o.vdim = 10;
  MHA apart(8, 2, rng, o);
  eftest::check_throws_with(
      [&] { apart.forward(query, memory, 2, {}, c1); },
      {"Attention::forward", "kdim 6 and vdim 10", "forward(query, key, value"});
  o.kdim = -1;
  eftest::check_throws_with([&] { MHA(8, 2, rng, o); },
                            {"Attention::Attention", "options.kdim", ">= 0"});
}
