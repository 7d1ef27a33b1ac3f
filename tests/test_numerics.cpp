// Extreme but well-defined numerics: attention rows with every key masked, a Transformer whose
// source is (almost) all padding, LayerNorm on inputs of 1e6, cross-entropy on logits of +-1e4.
// Everything must be finite and correct, never NaN.
#include <eigenformer/layers/attention.hpp>
#include <eigenformer/layers/layernorm.hpp>
#include <eigenformer/model/transformer.hpp>
#include <eigenformer/train/loss.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

/// Max |a - b|.
template <class A, class B>
double max_diff(const A& a, const B& b) {
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}

/// Attention with random (non-zero) biases, so "zero context" shows as "output = out_proj bias".
Attention<double> make_mha(Rng& rng, Index d = 8, Index H = 2) {
  Attention<double> mha(d, H, rng);
  for (Linear<double>* p : {&mha.q_proj, &mha.k_proj, &mha.v_proj, &mha.out_proj})
    p->bias.value = eftest::random_matrix(1, d, rng, 0.5);
  return mha;
}

}  // namespace

TEST_CASE("self-attention over a sequence whose every key is masked: finite, context zero") {
  Rng rng(11);
  const Index B = 2, T = 4, d = 8;
  Attention<double> mha = make_mha(rng, d);
  MatD x = eftest::random_matrix(B * T, d, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, T);
  mask.key_padding.row(1).setConstant(true);  // sequence 1: every key is padding
  mask.key_padding(0, 3) = true;
  const MatD R = eftest::random_matrix(B * T, d, rng);

  Attention<double>::Cache cache;
  const MatD y = mha.forward(x, B, mask, cache);
  REQUIRE(y.allFinite());
  REQUIRE(cache.score.probs.allFinite());
  // Sequence 1: every probability and the context are zero, so each row is the output bias.
  CHECK(
      cache.score.probs.middleRows(2 * T, 2 * T).isZero(0));  // heads of b = 1: rows (B*H*Tq) 8..15
  CHECK(cache.context.middleRows(T, T).isZero(0));
  for (Index i = T; i < 2 * T; ++i) CHECK(max_diff(y.row(i), mha.out_proj.bias.value) == 0.0);

  // Sequence 0 is what it would be alone.
  AttentionMask mask0;
  mask0.key_padding = mask.key_padding.topRows(1);
  Attention<double>::Cache cache0;
  const MatD y0 = mha.forward(x.topRows(T), 1, mask0, cache0);
  CHECK(max_diff(y.topRows(T), y0) <= 1e-14);

  // Backward: finite; zero gradient for every row of sequence 1; only the output projection's
  // bias learns from it. Against central differences.
  mha.zero_grad();
  const MatD dx = mha.backward(R, cache);
  REQUIRE(dx.allFinite());
  CHECK(dx.middleRows(T, T).isZero(0));
  for (const auto& p : mha.parameters()) {
    INFO(p.name);
    CHECK(p.param->grad.allFinite());
  }
  const ParamList<double> params = mha.parameters();
  std::vector<MatD> grads;
  for (const auto& p : params) grads.push_back(p.param->grad);
  mha.zero_grad();
  mha.backward(R.topRows(T), cache0);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].name);
    MatD expected = params[i].param->grad;
    if (params[i].name == "out_proj.bias") expected += R.middleRows(T, T).colwise().sum();
    CHECK(max_diff(grads[i], expected) <= 1e-12);
  }
  auto loss = [&] {
    Attention<double>::Cache c;
    return (mha.forward(x, B, mask, c).array() * R.array()).sum();
  };
  eftest::check_grad(x, dx, loss, "dx");
}

TEST_CASE("causal attention whose first key is padding: query 0 sees no key, stays finite") {
  // Left padding in a decoder: query 0 may only see key 0, and key 0 is padding.
  Rng rng(12);
  const Index B = 2, T = 5, d = 8;
  Attention<double> mha = make_mha(rng, d);
  MatD x = eftest::random_matrix(B * T, d, rng);
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = BoolMatrix::Zero(B, T);
  mask.key_padding(0, 0) = true;
  mask.key_padding(1, 0) = mask.key_padding(1, 1) = true;  // queries 0 and 1 of sequence 1
  const MatD R = eftest::random_matrix(B * T, d, rng);
  Attention<double>::Cache cache;
  const MatD y = mha.forward(x, B, mask, cache);
  REQUIRE(y.allFinite());
  for (Index i : {0, 5, 6}) {
    CHECK(cache.context.row(i).isZero(0));
    CHECK(max_diff(y.row(i), mha.out_proj.bias.value) == 0.0);
  }
  mha.zero_grad();
  const MatD dx = mha.backward(R, cache);
  REQUIRE(dx.allFinite());
  auto loss = [&] {
    Attention<double>::Cache c;
    return (mha.forward(x, B, mask, c).array() * R.array()).sum();
  };
  eftest::check_grad(x, dx, loss, "dx");
}

TEST_CASE("cross-attention with per-query masks that hide every key of some queries") {
  Rng rng(13);
  const Index B = 2, Tq = 3, Tk = 4, d = 8;
  Attention<double> mha = make_mha(rng, d);
  MatD q = eftest::random_matrix(B * Tq, d, rng);
  MatD m = eftest::random_matrix(B * Tk, d, rng);
  AttentionMask mask;
  mask.attn_mask = BoolMatrix::Zero(B * Tq, Tk);
  mask.attn_mask.row(1).setConstant(true);  // sequence 0, query 1
  mask.attn_mask.row(5).setConstant(true);  // sequence 1, query 2
  mask.attn_mask(3, 0) = true;
  const MatD R = eftest::random_matrix(B * Tq, d, rng);
  Attention<double>::Cache cache;
  const MatD y = mha.forward(q, m, B, mask, cache);
  REQUIRE(y.allFinite());
  CHECK(cache.context.row(1).isZero(0));
  CHECK(cache.context.row(5).isZero(0));
  mha.zero_grad();
  MatD dm;
  const MatD dq = mha.backward(R, cache, &dm);
  REQUIRE(dq.allFinite());
  REQUIRE(dm.allFinite());
  CHECK(dq.row(1).isZero(0));
  CHECK(dq.row(5).isZero(0));
  auto loss = [&] {
    Attention<double>::Cache c;
    return (mha.forward(q, m, B, mask, c).array() * R.array()).sum();
  };
  eftest::check_grad(q, dq, loss, "dquery");
  eftest::check_grad(m, dm, loss, "dmemory");
}

TEST_CASE("Transformer with a source of only BOS + padding, and one of only padding") {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = 10;
  c.tgt_vocab = 9;
  c.d_ff = 16;
  c.max_len = 8;
  Rng rng(21);
  Transformer<double> model(c, rng);
  IdMatrix src(3, 4), tgt(3, 3);
  src << 1, 0, 0, 0,  // BOS then padding: one visible key
      0, 0, 0, 0,     // nothing but padding: every encoder and cross-attention key masked
      1, 5, 6, 2;
  tgt << 4, 5, 2, 6, 2, 0, 7, 8, 2;
  const IdMatrix tgt_in = shift_right(tgt, 1);
  const MatD R = eftest::random_matrix(3 * 3, c.tgt_vocab, rng);

  Transformer<double>::Cache cache;
  const MatD logits = model.forward(src, tgt_in, cache);
  REQUIRE(logits.allFinite());
  CrossEntropyCache<double> ce;
  const double loss = cross_entropy_forward(ce, logits, tgt, {0, 0.0});
  CHECK(std::isfinite(loss));
  model.zero_grad();
  model.backward(cross_entropy_backward(ce), cache);
  for (const auto& p : model.parameters()) {
    INFO(p.name);
    CHECK(p.param->grad.allFinite());
  }

  // The all-padding source reaches nothing: its logits do not depend on the encoder...
  std::vector<MatD> saved;
  ParamList<double> enc;
  append_params(enc, "encoder", model.encoder.parameters());
  for (const auto& p : enc) {
    saved.push_back(p.param->value);
    p.param->value.array() += 0.25;
  }
  Transformer<double>::Cache cache2;
  const MatD logits2 = model.forward(src, tgt_in, cache2);
  CHECK(max_diff(logits2.middleRows(3, 3), logits.middleRows(3, 3)) <= 1e-12);
  CHECK(max_diff(logits2.topRows(3), logits.topRows(3)) > 1e-3);  // the BOS source does
  for (size_t i = 0; i < enc.size(); ++i) enc[i].param->value = saved[i];

  // ... and gives the encoder no gradient.
  IdMatrix src1 = src.middleRows(1, 1), tgt_in1 = tgt_in.middleRows(1, 1);
  Transformer<double>::Cache cache1;
  model.forward(src1, tgt_in1, cache1);
  model.zero_grad();
  model.backward(R.middleRows(3, 3), cache1);
  for (const auto& p : enc) {
    INFO(p.name);
    CHECK(p.param->grad.isZero(0));
  }

  // Gradients through the one visible source token match central differences.
  auto proj = [&] {
    Transformer<double>::Cache cc;
    return (model.forward(src, tgt_in, cc).array() * R.array()).sum();
  };
  model.zero_grad();
  Transformer<double>::Cache cache3;
  model.forward(src, tgt_in, cache3);
  model.backward(R, cache3);
  for (const auto& p : enc) {
    if (p.name != "encoder.layers.0.self_attn.v_proj.weight" &&
        p.name.find("embedding") == std::string::npos)
      continue;
    const MatD analytic = p.param->grad;
    eftest::check_grad(p.param->value, analytic, proj, p.name);
  }
}

namespace {

/// LayerNorm of the given float rows computed in long double (64-bit mantissa: exact enough to be
/// "the exact result" at float precision), with the magnitude of the terms each output entry sums,
/// which is what rounding every term once in float would cost.
struct ExactLayerNorm {
  MatD y, dx, dgamma, dbeta;
  MatD y_scale, dx_scale;  // per entry: |gamma| (|norm| + 1) + |beta|, and the same for dx

  ExactLayerNorm(const Matrix<float>& x, const Matrix<float>& g, const Matrix<float>& b,
                 const Matrix<float>& dy, float eps) {
    using LD = long double;
    const Index N = x.rows(), C = x.cols();
    y.resize(N, C), dx.resize(N, C), y_scale.resize(N, C), dx_scale.resize(N, C);
    dgamma = MatD::Zero(1, C), dbeta = MatD::Zero(1, C);
    std::vector<LD> norm(C), dnorm(C), dgamma_acc(C, 0);
    for (Index i = 0; i < N; ++i) {
      LD mean = 0, var = 0, a = 0, c = 0;
      for (Index j = 0; j < C; ++j) mean += x(i, j);
      mean /= C;
      for (Index j = 0; j < C; ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
      const LD r = 1 / std::sqrt(var / C + static_cast<LD>(eps));
      for (Index j = 0; j < C; ++j) {
        norm[j] = (x(i, j) - mean) * r;
        dnorm[j] = static_cast<LD>(dy(i, j)) * g(0, j);
        a += dnorm[j];
        c += dnorm[j] * norm[j];
        dgamma_acc[j] += dy(i, j) * norm[j];
        dbeta(0, j) += dy(i, j);
      }
      a /= C;
      c /= C;
      for (Index j = 0; j < C; ++j) {
        // "+ 1": the row's mean and rstd are sums of C terms, whose rounding shifts every entry.
        y(i, j) = static_cast<double>(norm[j] * g(0, j) + b(0, j));
        y_scale(i, j) =
            static_cast<double>(std::abs(g(0, j)) * (std::abs(norm[j]) + 1) + std::abs(b(0, j)));
        dx(i, j) = static_cast<double>(r * (dnorm[j] - a - norm[j] * c));
        dx_scale(i, j) = static_cast<double>(
            r * (std::abs(dnorm[j]) + std::abs(a) + (std::abs(norm[j]) + 1) * std::abs(c)));
      }
    }
    for (Index j = 0; j < C; ++j) dgamma(0, j) = static_cast<double>(dgamma_acc[j]);
  }
};

/// Max over entries of |got - want| / (scale * float epsilon): the error in float ulps of scale.
double ulps(const Matrix<float>& got, const MatD& want, const MatD& scale) {
  const double u = std::numeric_limits<float>::epsilon();
  return ((got.cast<double>() - want).cwiseAbs().array() / (scale.array() * u)).maxCoeff();
}

}  // namespace

TEST_CASE("float LayerNorm at any offset: the exact result to float rounding, as at offset 0") {
  // Rows of spread s around an offset o, C features. A float mean of values near 1e6 is off by
  // ulps of 1e6 (1/16 each), which used to shift every centred value by up to 3% of the spread.
  // Measured worst errors over these cases: y 1.0 and dx 3.4 float epsilons (2^-23) of the terms'
  // magnitude, dgamma 2.2e-7 and dbeta 0.9e-7 of their largest entry (as at offset 0); the bounds
  // leave 2x. Before centring twice: y 1.4e-2 of max |y| at offset 1e6.
  Rng rng(31);
  const Index N = 16, C = 64;
  const float eps = 1e-5f;
  const Matrix<float> g = eftest::random_matrix<float>(1, C, rng, 1.0);
  const Matrix<float> b = eftest::random_matrix<float>(1, C, rng, 1.0);
  const Matrix<float> dy = eftest::random_matrix<float>(N, C, rng);
  for (const double spread : {1.0, 1e6}) {
    for (const double offset_over_spread : {0.0, 0.5, 1.0, 2.0, 30.0, 1e3, 1e6}) {
      const double offset = offset_over_spread * spread;
      INFO("offset " << offset << ", spread " << spread);
      Matrix<float> x = eftest::random_matrix<float>(N, C, rng, spread);
      x.array() += static_cast<float>(offset);
      Matrix<float> y, mean, rstd, dx, dgamma = Matrix<float>::Zero(1, C), dbeta = dgamma;
      layernorm_forward<float>(y, mean, rstd, x, g, b, eps);
      layernorm_backward<float>(dx, &dgamma, &dbeta, dy, x, g, mean, rstd);
      const ExactLayerNorm exact(x, g, b, dy, eps);
      REQUIRE(y.allFinite());
      REQUIRE(dx.allFinite());
      CHECK(ulps(y, exact.y, exact.y_scale) <= 2);
      CHECK(ulps(dx, exact.dx, exact.dx_scale) <= 7);
      CHECK(max_diff(dgamma, exact.dgamma) <= 5e-7 * exact.dgamma.cwiseAbs().maxCoeff());
      CHECK(max_diff(dbeta, exact.dbeta) <= 5e-7 * exact.dbeta.cwiseAbs().maxCoeff());
      // The stored mean is the exact mean to float rounding (backward relies on it).
      for (Index i = 0; i < N; ++i) {
        const double m = x.row(i).cast<long double>().mean();
        CHECK(std::abs(mean(i, 0) - m) <=
              2 * std::numeric_limits<float>::epsilon() * (std::abs(m) + spread));
      }
    }
  }
}

TEST_CASE("LayerNorm on inputs of magnitude 1e6: the layer and its edge cases") {
  Rng rng(31);
  const Index N = 6, C = 64;
  LayerNorm<float> ln(C, 1e-5f);
  ln.weight.value = eftest::random_matrix<float>(1, C, rng, 1.0);
  ln.bias.value = eftest::random_matrix<float>(1, C, rng, 1.0);
  const Matrix<float> dy = eftest::random_matrix<float>(N, C, rng);

  SUBCASE("offset 1e6, spread 1, through the layer: outputs and every gradient exact to rounding") {
    Matrix<float> x = eftest::random_matrix<float>(N, C, rng, 1.0);
    x.array() += 1e6f;  // float keeps 1/16 here; the reference normalises the same floats
    LayerNorm<float>::Cache cache;
    const Matrix<float> y = ln.forward(x, cache);
    ln.zero_grad();
    const Matrix<float> dx = ln.backward(dy, cache);
    const ExactLayerNorm exact(x, ln.weight.value, ln.bias.value, dy, ln.eps());
    CHECK(ulps(y, exact.y, exact.y_scale) <= 2);
    CHECK(ulps(dx, exact.dx, exact.dx_scale) <= 7);
    CHECK(max_diff(ln.weight.grad, exact.dgamma) <= 5e-7 * exact.dgamma.cwiseAbs().maxCoeff());
    CHECK(max_diff(ln.bias.grad, exact.dbeta) <= 5e-7 * exact.dbeta.cwiseAbs().maxCoeff());
  }
  SUBCASE("constant rows of +-1e6: zero variance gives exactly beta, and a finite gradient") {
    Matrix<float> x(N, C);
    for (Index i = 0; i < N; ++i) x.row(i).setConstant(i % 2 ? -1e6f : 1e6f);
    LayerNorm<float>::Cache cache;
    const Matrix<float> y = ln.forward(x, cache);
    for (Index i = 0; i < N; ++i) CHECK(y.row(i) == ln.bias.value);
    ln.zero_grad();
    const Matrix<float> dx = ln.backward(dy, cache);
    const ExactLayerNorm exact(x, ln.weight.value, ln.bias.value, dy, ln.eps());
    REQUIRE(dx.allFinite());
    CHECK(ulps(dx, exact.dx, exact.dx_scale) <= 7);
    CHECK(ln.weight.grad.isZero(0));  // the normalised values are all zero
  }
  SUBCASE("double, offset 1e6: full precision, and gradient-checked") {
    LayerNorm<double> lnd(C, 1e-5);
    lnd.weight.value = ln.weight.value.cast<double>();
    MatD x = eftest::random_matrix(N, C, rng, 1.0);
    x.array() += 1e6;
    // Exact mean and variance, centred first with long double.
    LayerNorm<double>::Cache cache;
    const MatD y = lnd.forward(x, cache);
    for (Index i = 0; i < N; ++i) {
      long double m = 0, v = 0;
      for (Index j = 0; j < C; ++j) m += x(i, j);
      m /= C;
      for (Index j = 0; j < C; ++j) v += (x(i, j) - m) * (x(i, j) - m);
      v /= C;
      const long double r = 1.0L / std::sqrt(v + 1e-5L);
      for (Index j = 0; j < C; ++j)
        CHECK(std::abs(static_cast<double>((x(i, j) - m) * r * lnd.weight.value(0, j)) - y(i, j)) <=
              1e-14);
    }
    lnd.zero_grad();
    const MatD dyd = dy.cast<double>();
    const MatD dx = lnd.backward(dyd, cache);
    auto loss = [&] { return (lnd.forward(x).array() * dyd.array()).sum(); };
    GradCheckOptions opt;
    // Inputs of 1e6 carry ~1e-10 of rounding: a wider step and a looser tolerance than at scale 1.
    opt.eps = 1e-3;
    opt.rtol = 1e-4;
    opt.atol = 1e-6;
    eftest::check_grad(x, dx, loss, "dx", opt);
  }
}

TEST_CASE("cross-entropy on logits of +-1e4: exact losses and gradients, no overflow") {
  const float big = 1e4f;
  Matrix<float> logits(4, 5);
  logits << big, -big, -big, -big, -big,  // target 0 is certain: loss 0
      -big, big, -big, -big, -big,        // target 0 is impossible: loss 2e4
      big, big, big, big, big,            // all equal at 1e4: loss log 5
      -big, -big, -big, -big, -big;       // all equal at -1e4: loss log 5
  IdMatrix targets(4, 1);
  targets << 0, 0, 3, 1;
  CrossEntropyCache<float> cache;
  const float loss = cross_entropy_forward(cache, logits, targets);
  const double expected = (0.0 + 2e4 + 2 * std::log(5.0)) / 4;
  CHECK(loss == doctest::Approx(expected).epsilon(1e-6));
  const Matrix<float> d = cross_entropy_backward(cache);
  REQUIRE(d.allFinite());
  Matrix<float> want = Matrix<float>::Zero(4, 5);
  want(1, 1) = 0.25f;
  want(1, 0) = -0.25f;
  want.row(2).setConstant(0.2f / 4);
  want(2, 3) -= 0.25f;
  want.row(3).setConstant(0.2f / 4);
  want(3, 1) -= 0.25f;
  CHECK(max_diff(d, want) <= 1e-7);
  CHECK(cache.correct == 1);  // row 0; rows 2 and 3 tie, and the first maximum (0) is not 3 or 1

  // With label smoothing 0.1: 0.9 (-log p_t) + 0.1 mean_j(-log p_j); p_j = 0 terms are exact
  // differences of logits, never log(0).
  CrossEntropyCache<float> smooth;
  const float ls = cross_entropy_forward(smooth, logits, targets, {-1, 0.1});
  const double u01 = 1.6e4;  // rows 0 and 1: mean_j (max - l_j) = 4 * 2e4 / 5
  const double expected_ls =
      ((0.9 * 0 + 0.1 * u01) + (0.9 * 2e4 + 0.1 * u01) + 2 * std::log(5.0)) / 4;
  CHECK(ls == doctest::Approx(expected_ls).epsilon(1e-6));
  REQUIRE(cross_entropy_backward(smooth).allFinite());

  // Double, and one logit at the float limit's edge of exp: still finite.
  Matrix<double> wide(1, 3);
  wide << 1e4, -1e4, 0;
  IdMatrix t1(1, 1);
  t1 << 2;
  CrossEntropyCache<double> cd;
  CHECK(cross_entropy_forward(cd, wide, t1) == doctest::Approx(1e4).epsilon(1e-12));
  CHECK(cross_entropy_backward(cd).allFinite());
}
