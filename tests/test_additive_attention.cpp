// Additive (Bahdanau) attention: the op against a plain-loop definition and finite differences
// for every input and score parameter with each mask kind; the layer's gradients (self and cross),
// gradient contract, properties in float and double, and bad-input messages.
#include <eigenformer/layers/attention.hpp>
#include <eigenformer/ops/additive_attention.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "attention_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;
using AA = Attention<double>;

namespace {

/// An additive attention layer: d_model features in n_heads heads, score network width d_attn.
template <class Scalar = double>
Attention<Scalar> additive(Index d_model, Index d_attn, Index n_heads, Rng& rng, bool bias = true,
                           const AttentionPositions& positions = {}) {
  AttentionOptions o;
  o.scoring = AttentionScoring::additive;
  o.additive_dim = d_attn;
  o.bias = bias;
  o.positions = positions;
  return Attention<Scalar>(d_model, n_heads, rng, o);
}

// Plain loops, one (b, h, i, j, l) at a time: the definition. pos_bias (H, Tq + Tk - 1) or null.
MatD reference(const MatD& q, const MatD& k, const MatD& v, const MatD& wq, const MatD& wk,
               const MatD* bias, const MatD& w, const AttentionDims& d, const AttentionMask& m,
               const MatD* pos_bias = nullptr) {
  const Index da = w.cols();
  MatD out = MatD::Zero(d.B * d.Tq, d.H * d.dh);
  for (Index b = 0; b < d.B; ++b)
    for (Index h = 0; h < d.H; ++h)
      for (Index i = 0; i < d.Tq; ++i) {
        std::vector<double> s(size_t(d.Tk), 0.0);
        std::vector<bool> visible(size_t(d.Tk), true);
        double max = -std::numeric_limits<double>::infinity();
        for (Index j = 0; j < d.Tk; ++j) {
          double score = 0;
          for (Index l = 0; l < da; ++l) {
            double pre = bias ? (*bias)(0, h * da + l) : 0.0;
            for (Index c = 0; c < d.dh; ++c)
              pre += wq(h * da + l, c) * q(b * d.Tq + i, h * d.dh + c) +
                     wk(h * da + l, c) * k(b * d.Tk + j, h * d.dh + c);
            score += w(h, l) * std::tanh(pre);
          }
          if (pos_bias) score += (*pos_bias)(h, j - i + d.Tq - 1);
          visible[size_t(j)] = !eftest::reference_mask(m, d, b, h, i, j, score);
          s[size_t(j)] = score;
          if (visible[size_t(j)]) max = std::max(max, score);
        }
        double sum = 0;
        for (Index j = 0; j < d.Tk; ++j) {
          s[size_t(j)] = visible[size_t(j)] ? std::exp(s[size_t(j)] - max) : 0.0;
          sum += s[size_t(j)];
        }
        if (sum == 0) continue;
        for (Index j = 0; j < d.Tk; ++j)
          for (Index c = 0; c < d.dh; ++c)
            out(b * d.Tq + i, h * d.dh + c) += s[size_t(j)] / sum * v(b * d.Tk + j, h * d.dh + c);
      }
  return out;
}

}  // namespace

TEST_CASE("additive attention op: forward matches the definition, gradients match finite "
          "differences, with each mask kind") {
  for (const eftest::AttentionCase& c : eftest::attention_mask_cases()) {
    for (bool with_bias : {true, false}) {  // true: a score bias and a position bias
      CAPTURE(c.name);
      CAPTURE(with_bias);
      const AttentionDims& d = c.d;
      const Index da = 3;
      Rng rng(3);
      MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
      MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
      MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
      MatD wq = eftest::random_matrix(d.H * da, d.dh, rng, 0.7);
      MatD wk = eftest::random_matrix(d.H * da, d.dh, rng, 0.7);
      MatD bias = eftest::random_matrix(1, d.H * da, rng, 0.5);
      MatD w = eftest::random_matrix(d.H, da, rng);
      MatD pos_bias = eftest::random_matrix(d.H, d.Tq + d.Tk - 1, rng);
      const MatD R = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
      const MatD* bp = with_bias ? &bias : nullptr;
      const MatD* pb = with_bias ? &pos_bias : nullptr;

      auto weights = [&] { return AdditiveScoreWeights<double>{wq, wk, bp, w}; };
      MatD probs;
      auto run = [&](AdditiveAttentionCache<double>& cache) {
        MatD out;
        additive_attention_forward<double>(out, probs, cache, q, k, v, weights(), d, c.mask, pb);
        return out;
      };
      auto loss = [&] {
        AdditiveAttentionCache<double> cache;
        return projection(run(cache), R);
      };
      AdditiveAttentionCache<double> cache;
      const MatD out = run(cache);
      CHECK((out - reference(q, k, v, wq, wk, bp, w, d, c.mask, pb)).cwiseAbs().maxCoeff() <
            1e-12);
      CHECK(out.allFinite());

      MatD dq, dk, dv;
      MatD gwq = MatD::Zero(wq.rows(), wq.cols()), gwk = MatD::Zero(wk.rows(), wk.cols());
      MatD gb = MatD::Zero(1, bias.cols()), gw = MatD::Zero(w.rows(), w.cols());
      AdditiveScoreGrads<double> grads;
      grads.w_q = &gwq;
      grads.w_k = &gwk;
      grads.bias = with_bias ? &gb : nullptr;
      grads.w = &gw;
      MatD dpos_bias;
      additive_attention_backward<double>(dq, dk, dv, grads, R, probs, cache, q, k, v, weights(),
                                          d, pb ? &dpos_bias : nullptr);
      eftest::check_grad(q, dq, loss, "q");
      eftest::check_grad(k, dk, loss, "k");
      eftest::check_grad(v, dv, loss, "v");
      eftest::check_grad(wq, gwq, loss, "w_q");
      eftest::check_grad(wk, gwk, loss, "w_k");
      eftest::check_grad(w, gw, loss, "w");
      if (with_bias) eftest::check_grad(bias, gb, loss, "bias");
      if (with_bias) eftest::check_grad(pos_bias, dpos_bias, loss, "pos_bias");
      CHECK((dq.allFinite() && dk.allFinite() && dv.allFinite()));
    }
  }
}

TEST_CASE("additive attention op: shapes large enough for the threaded loops") {
  // Large enough that parallel_for uses OpenMP threads when there are several (ctest runs the
  // program with OMP_NUM_THREADS=1; run it with 2 to cover the threaded path).
  const AttentionDims d{2, 12, 16, 2, 8};
  const Index da = 8;
  Rng rng(5);
  MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  const MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  const MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  const MatD wq = eftest::random_matrix(d.H * da, d.dh, rng, 0.3);
  const MatD wk = eftest::random_matrix(d.H * da, d.dh, rng, 0.3);
  const MatD bias = eftest::random_matrix(1, d.H * da, rng, 0.3);
  MatD w = eftest::random_matrix(d.H, da, rng);
  const MatD R = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  AttentionMask m;
  m.causal = true;
  m.key_padding = BoolMatrix::Zero(d.B, d.Tk);
  m.key_padding(1, 15) = true;
  const AdditiveScoreWeights<double> p{wq, wk, &bias, w};
  auto loss = [&] {
    MatD out;
    MatD probs;
    AdditiveAttentionCache<double> c;
    additive_attention_forward<double>(out, probs, c, q, k, v, p, d, m);
    return projection(out, R);
  };
  MatD out, probs, dq, dk, dv;
  AdditiveAttentionCache<double> cache;
  additive_attention_forward<double>(out, probs, cache, q, k, v, p, d, m);
  CHECK((out - reference(q, k, v, wq, wk, &bias, w, d, m)).cwiseAbs().maxCoeff() < 1e-12);
  MatD gw = MatD::Zero(d.H, da);
  AdditiveScoreGrads<double> grads;
  grads.w = &gw;
  additive_attention_backward<double>(dq, dk, dv, grads, R, probs, cache, q, k, v, p, d);
  eftest::check_grad(q, dq, loss, "q");
  eftest::check_grad(w, gw, loss, "w");
}

TEST_CASE("additive attention op: float on shapes the GEMM kernel takes agrees with double") {
  // (Tq, Tk) x (Tk, dh) products of 48 x 64 x 40: large enough for float products to go through
  // core/gemm_kernel.hpp when it is built, with a partial register tile (dh = 40).
  const AttentionDims d{2, 48, 64, 2, 40};
  const Index da = 8;
  Rng rng(8);
  const MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  const MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  const MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  const MatD wq = eftest::random_matrix(d.H * da, d.dh, rng, 0.3);
  const MatD wk = eftest::random_matrix(d.H * da, d.dh, rng, 0.3);
  const MatD w = eftest::random_matrix(d.H, da, rng);
  const MatD dout = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  AttentionMask m;
  m.causal = true;
  // out, dq, dk, dv of Scalar, from the double inputs rounded to Scalar.
  const auto run = [&](auto zero) {
    using S = decltype(zero);
    const Matrix<S> qs = q.cast<S>(), ks = k.cast<S>(), vs = v.cast<S>(), ws = w.cast<S>();
    const Matrix<S> wqs = wq.cast<S>(), wks = wk.cast<S>();
    const AdditiveScoreWeights<S> p{wqs, wks, nullptr, ws};
    // NaN where out and dv will be stored: a product that added instead would show.
    const S nan = std::numeric_limits<S>::quiet_NaN();
    Matrix<S> out = Matrix<S>::Constant(d.B * d.Tq, d.H * d.dh, nan), probs, dq, dk;
    Matrix<S> dv = Matrix<S>::Constant(d.B * d.Tk, d.H * d.dh, nan);
    AdditiveAttentionCache<S> cache;
    additive_attention_forward<S>(out, probs, cache, qs, ks, vs, p, d, m);
    additive_attention_backward<S>(dq, dk, dv, {}, dout.cast<S>(), probs, cache, qs, ks, vs, p, d);
    return std::vector<MatD>{out.template cast<double>(), dq.template cast<double>(),
                             dk.template cast<double>(), dv.template cast<double>()};
  };
  const std::vector<MatD> want = run(0.0), got = run(0.0f);
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("output " << i << " (out, dq, dk, dv)");
    const double scale = std::max(1.0, want[i].cwiseAbs().maxCoeff());
    CHECK((got[i] - want[i]).cwiseAbs().maxCoeff() / scale < 2e-5);
  }
}

TEST_CASE("additive attention op: a query that sees no key gets zero output and zero gradient") {
  const AttentionDims d{1, 2, 3, 1, 2};
  Rng rng(4);
  const MatD q = eftest::random_matrix(2, 2, rng), k = eftest::random_matrix(3, 2, rng),
             v = eftest::random_matrix(3, 2, rng);
  const MatD wq = eftest::random_matrix(4, 2, rng), wk = eftest::random_matrix(4, 2, rng),
             w = eftest::random_matrix(1, 4, rng);
  AttentionMask m;
  m.attn_mask = BoolMatrix::Zero(2, 3);
  m.attn_mask.row(1).setConstant(true);
  const AdditiveScoreWeights<double> p{wq, wk, nullptr, w};
  MatD out, probs, dq, dk, dv;
  AdditiveAttentionCache<double> cache;
  additive_attention_forward<double>(out, probs, cache, q, k, v, p, d, m);
  CHECK(out.row(1).isZero(0));
  CHECK(probs.row(1).isZero(0));
  CHECK(probs.row(0).sum() == doctest::Approx(1.0));
  additive_attention_backward<double>(dq, dk, dv, {}, MatD::Ones(2, 2), probs, cache, q, k, v, p,
                                      d);
  CHECK(dq.row(1).isZero(0));
  CHECK(dq.row(0).norm() > 0);
}

namespace {

// Random parameter values (zero biases would hide bias-gradient mistakes).
void randomize(AA& attn, Rng& rng) {
  for (const auto& p : attn.parameters()) fill_normal(p.param->value, 0.0, 0.4, rng);
}

void check_self_grads(const AttentionMask& mask, Index B, Index T, Index H, bool bias,
                      const AttentionPositions& positions = {}) {
  Rng rng(11);
  AA attn = additive(8, 3, H, rng, bias, positions);
  randomize(attn, rng);
  eftest::check_self_attention_grads(attn, mask, B, T, rng);
}

}  // namespace

TEST_CASE("additive attention layer: self-attention gradients match finite differences") {
  SUBCASE("no mask, two heads") { check_self_grads({}, 2, 4, 2, true); }
  SUBCASE("no mask, one head, no bias") { check_self_grads({}, 2, 3, 1, false); }
  SUBCASE("causal") {
    AttentionMask m;
    m.causal = true;
    check_self_grads(m, 2, 4, 2, true);
  }
  SUBCASE("key padding") {
    AttentionMask m;
    m.key_padding = BoolMatrix::Zero(2, 4);
    m.key_padding(1, 2) = m.key_padding(1, 3) = true;
    check_self_grads(m, 2, 4, 4, true);
  }
  SUBCASE("arbitrary per-sequence mask, with a fully masked query") {
    AttentionMask m;
    m.attn_mask = BoolMatrix::Zero(8, 4);
    m.attn_mask.row(0).setConstant(true);
    m.attn_mask(6, 1) = true;
    check_self_grads(m, 2, 4, 2, true);
  }
  SUBCASE("rotary positions, causal") {
    AttentionMask m;
    m.causal = true;
    AttentionPositions p;
    p.kind = PositionalKind::rotary;
    p.rotary_base = 100.0;  // large angles at these short lengths
    check_self_grads(m, 2, 5, 2, true, p);
  }
  SUBCASE("relative positions, bidirectional, key padding") {
    AttentionMask m;
    m.key_padding = BoolMatrix::Zero(2, 5);
    m.key_padding(1, 4) = true;
    AttentionPositions p;
    p.kind = PositionalKind::relative;
    p.num_buckets = 6;
    p.max_distance = 4;  // distances 0, 1 exact, 2..3 log-spaced, 4 beyond: every bucket kind
    check_self_grads(m, 2, 5, 2, true, p);
  }
  SUBCASE("relative positions, causal") {
    AttentionMask m;
    m.causal = true;
    AttentionPositions p;
    p.kind = PositionalKind::relative;
    p.num_buckets = 4;
    p.max_distance = 3;
    p.bidirectional = false;
    check_self_grads(m, 2, 5, 2, false, p);
  }
}

namespace {

/// Rows b*T + t0 .. b*T + t0 + n - 1 of each of B sequences of T rows: (B*n, C).
MatD rows_of(const MatD& m, Index B, Index T, Index t0, Index n) {
  MatD out(B * n, m.cols());
  for (Index b = 0; b < B; ++b) out.middleRows(b * n, n) = m.middleRows(b * T + t0, n);
  return out;
}

}  // namespace

TEST_CASE(
    "additive attention layer: cached steps equal a full causal forward, with each kind of "
    "positions; cached memory equals cross-attention") {
  using Kind = PositionalKind;
  for (Kind kind : {Kind::none, Kind::rotary, Kind::relative}) {
    for (Index d_attn : {4, 3}) {  // 4 = head_dim; 3: the cache's key width differs from d_model
      CAPTURE(int(kind));
      CAPTURE(d_attn);
      Rng rng(21);
      AttentionPositions p;
      p.kind = kind;
      p.bidirectional = false;
      p.num_buckets = 4;
      p.max_distance = 4;
      AA attn = additive(8, d_attn, 2, rng, true, p);
      randomize(attn, rng);
      const Index B = 2, T = 6;
      const MatD x = eftest::random_matrix(B * T, 8, rng);
      BoolMatrix pad = BoolMatrix::Constant(B, T, false);
      pad(1, 1) = pad(0, 4) = true;  // padded keys of earlier steps must stay masked
      AttentionMask mask;
      mask.causal = true;
      mask.key_padding = pad;
      AA::Cache c;
      const MatD full = attn.forward(x, B, mask, c);
      KVCache<double> cache = attn.make_cache(B, T);
      Index pos = 0;
      for (Index n : {2, 1, 3}) {
        MatD xn(B * n, 8);
        for (Index b = 0; b < B; ++b) xn.middleRows(b * n, n) = x.middleRows(b * T + pos, n);
        const MatD step = attn.forward_step(xn, B, cache, pad.middleCols(pos, n));
        CHECK((step - rows_of(full, B, T, pos, n)).cwiseAbs().maxCoeff() < 1e-12);
        pos += n;
      }
      CHECK(cache.len == T);
    }
  }
  Rng rng(22);
  AA attn = additive(8, 3, 2, rng);
  randomize(attn, rng);
  const Index B = 2, Tq = 3, S = 4;
  const MatD query = eftest::random_matrix(B * Tq, 8, rng);
  const MatD memory = eftest::random_matrix(B * S, 8, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, S);
  mask.key_padding(1, 3) = true;
  AA::Cache c;
  const MatD full = attn.forward(query, memory, B, mask, c);
  KVCache<double> cache;
  attn.cache_memory(memory, B, mask.key_padding, cache);
  CHECK((attn.forward_cached_memory(query, B, cache) - full).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(cache.k.cols() == 2 * 3);  // the keys' score projections, not the keys
}

TEST_CASE(
    "additive attention layer: cross-attention gradients reach both the queries and the memory") {
  Rng rng(12);
  const Index B = 2, Tq = 3, Tk = 5;
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    AA attn = additive(8, 4, 2, rng);
    randomize(attn, rng);
    AttentionMask mask;
    mask.causal = causal;
    mask.key_padding = BoolMatrix::Zero(B, Tk);
    mask.key_padding(0, 4) = true;
    const MatD dmemory = eftest::check_cross_attention_grads(attn, mask, B, Tq, Tk, rng);
    CHECK(dmemory.row(4).isZero(0));  // the padded key of sequence 0 gets no gradient
  }
}

TEST_CASE("additive attention layer: follows the gradient contract") {
  Rng rng(13);
  AA attn = additive(8, 3, 2, rng);
  randomize(attn, rng);
  const MatD x = eftest::random_matrix(6, 8, rng);
  const MatD R = eftest::random_matrix(6, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  eftest::check_gradient_contract(attn.parameters(), [&] {
    AA::Cache c;
    attn.forward(x, 2, causal, c);
    return attn.backward(R, c);
  });
}

TEST_CASE_TEMPLATE("additive attention weights sum to 1 and padded keys change nothing", Scalar,
                   float, double) {
  Rng rng(15);
  Attention<Scalar> attn = additive<Scalar>(8, 5, 2, rng);
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
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < 2; ++h) {
      const Matrix<Scalar> w = attn.attention_weights(c1, b, h);
      CHECK(w.rows() == Tq);
      CHECK(w.cols() == Tk);
      for (Index i = 0; i < Tq; ++i) CHECK(w.row(i).sum() == doctest::Approx(1.0));
      CHECK((w.array() >= Scalar(0)).all());
      if (b == 1) CHECK(w.rightCols(2).isZero(0));
    }
}

TEST_CASE_TEMPLATE("causal additive self-attention: outputs 0..t ignore tokens after t", Scalar,
                   float, double) {
  Rng rng(14);
  Attention<Scalar> attn = additive<Scalar>(8, 4, 2, rng);
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

TEST_CASE_TEMPLATE("a fully masked query gives the output bias and finite, zero gradients", Scalar,
                   float, double) {
  Rng rng(17);
  Attention<Scalar> attn = additive<Scalar>(8, 4, 2, rng);
  fill_normal(attn.out_proj.bias.value, 0.0, 1.0, rng);
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(4, 8, rng);
  AttentionMask m;
  m.attn_mask = BoolMatrix::Zero(4, 4);
  m.attn_mask.row(2).setConstant(true);
  typename Attention<Scalar>::Cache c;
  const Matrix<Scalar> y = attn.forward(x, 1, m, c);
  CHECK(y.allFinite());
  CHECK(y.row(2) == attn.out_proj.bias.value.row(0));
  Matrix<Scalar> dy = Matrix<Scalar>::Zero(4, 8);
  dy.row(2).setOnes();  // only the fully masked query's output matters
  attn.zero_grad();
  const Matrix<Scalar> dx = attn.backward(dy, c);
  CHECK(dx.allFinite());
  CHECK(dx.isZero(0));
  CHECK(param_named(attn.parameters(), "score.q_weight").grad.isZero(0));
  CHECK(param_named(attn.parameters(), "score.v").grad.isZero(0));
}

TEST_CASE("additive attention rejects bad input and stays unchanged") {
  Rng rng(16);
  eftest::check_throws_with([&] { additive<float>(10, 4, 3, rng); },
                            {"Attention::Attention", "n_heads", "must divide"});
  eftest::check_throws_with([&] { additive<float>(8, -1, 2, rng); },
                            {"Attention::Attention", "options.additive_dim", "must be >= 0", "-1"});
  AttentionPositions rotary;
  rotary.kind = PositionalKind::rotary;
  eftest::check_throws_with([&] { additive<float>(6, 4, 2, rng, true, rotary); },
                            {"Attention::Attention", "positions.kind", "even head_dim", "got 3"});
  AttentionPositions few;
  few.kind = PositionalKind::relative;
  few.num_buckets = 3;
  eftest::check_throws_with([&] { additive<float>(8, 4, 2, rng, true, few); },
                            {"positions.num_buckets", "at least 4", "is 3"});
  Attention<float> with_positions = additive<float>(8, 4, 2, rng, true, rotary);
  Attention<float>::Cache pc;
  eftest::check_throws_with(
      [&] {
        with_positions.forward(Matrix<float>::Ones(4, 8), Matrix<float>::Ones(4, 8), 2, {}, pc);
      },
      {"Attention::forward", "'memory'", "rotary positions",
       "positions apply to self-attention only"});
  Attention<float> narrow = additive<float>(8, 3, 2, rng);
  KVCache<float> wide(2, 4, 8);  // key width d_model, not H * d_attn
  eftest::check_throws_with(
      [&] { narrow.forward_step(Matrix<float>::Ones(2, 8), 2, wide); },
      {"Attention::forward_step", "'cache'", "key width 8", "key width 6", "make_cache"});
  Attention<float> one = additive<float>(8, 4, 1, rng);
  CHECK(one.n_heads() == 1);
  CHECK(dynamic_cast<const AdditiveScore<float>&>(one.score()).d_attn() == 4);
  CHECK(one.parameters().size() == 12);
  CHECK(additive<float>(8, 4, 1, rng, false).parameters().size() == 7);
  Attention<float> attn = additive<float>(8, 4, 2, rng);
  const Matrix<float> before = param_named(attn.parameters(), "score.q_weight").value;
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
                            {"Attention::forward", "mask.key_padding", "(2, 4)", "(2, 3)"});
  AttentionMask bad_attn;
  bad_attn.attn_mask = BoolMatrix::Zero(2, 2);
  eftest::check_throws_with(
      [&] { attn.forward(Matrix<float>::Ones(6, 8), Matrix<float>::Ones(4, 8), 2, bad_attn, c); },
      {"mask.attn_mask", "(2, 2)", "(3, 2) or (6, 2)"});
  attn.forward(Matrix<float>::Ones(6, 8), 2, {}, c);
  eftest::check_throws_with([&] { attn.backward(Matrix<float>::Ones(5, 8), c); },
                            {"Attention::backward", "'dy'", "(5, 8)", "(6, 8)"});
  Matrix<float> dm;
  eftest::check_throws_with([&] { attn.backward(Matrix<float>::Ones(6, 8), c, &dm); },
                            {"Attention::backward", "dmemory", "self-attention"});
  eftest::check_throws_with([&] { attn.attention_weights(c, 2, 0); },
                            {"attention_weights", "'b'", "is 2"});
  CHECK(param_named(attn.parameters(), "score.q_weight").value == before);
  CHECK(param_named(attn.parameters(), "score.q_weight").grad.isZero());

  // The op checks its own arguments too.
  const Matrix<float> q = Matrix<float>::Ones(6, 8), wq = Matrix<float>::Ones(8, 4),
                      w = Matrix<float>::Ones(2, 4), wrong = Matrix<float>::Ones(8, 3);
  Matrix<float> out, probs;
  AdditiveAttentionCache<float> cache;
  const AttentionDims d{2, 3, 3, 2, 4};
  eftest::check_throws_with(
      [&] {
        additive_attention_forward<float>(out, probs, cache, q, q, q, {wq, wrong, nullptr, w}, d,
                                          {});
      },
      {"additive_attention_forward", "weights.w_k", "(8, 3)", "(8, 4)"});
  eftest::check_throws_with(
      [&] {
        additive_attention_forward<float>(out, probs, cache, q, Matrix<float>::Ones(5, 8), q,
                                          {wq, wq, nullptr, w}, d, {});
      },
      {"additive_attention_forward", "'k'", "(5, 8)", "(6, 8)"});
  const Matrix<float> bias = Matrix<float>::Ones(1, 7);
  eftest::check_throws_with(
      [&] {
        additive_attention_forward<float>(out, probs, cache, q, q, q, {wq, wq, &bias, w}, d, {});
      },
      {"weights.bias", "(1, 7)", "(1, 8)"});
  const Matrix<float> pos_bias = Matrix<float>::Ones(2, 4);
  eftest::check_throws_with(
      [&] {
        additive_attention_forward<float>(out, probs, cache, q, q, q, {wq, wq, nullptr, w}, d, {},
                                          &pos_bias);
      },
      {"additive_attention_forward", "pos_bias", "(2, 4)", "(2, 5)"});
}
