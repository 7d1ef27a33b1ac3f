// The attention op: reference values, every mask kind, gradients, and the all-masked row.
#include <eigenformer/ops/attention.hpp>

#include <cmath>
#include <limits>

#include "attention_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

// Plain loops, one (b, h, i, j) at a time: the definition, for comparison. pos_bias (H, Tq+Tk-1)
// when not empty: score (i, j) of head h += pos_bias(h, j - i + Tq - 1).
MatD reference_attention(const MatD& q, const MatD& k, const MatD& v, const AttentionDims& d,
                         const AttentionMask& m, const MatD& pos_bias = MatD()) {
  MatD out = MatD::Zero(d.B * d.Tq, d.H * d.dh);
  for (Index b = 0; b < d.B; ++b)
    for (Index h = 0; h < d.H; ++h)
      for (Index i = 0; i < d.Tq; ++i) {
        std::vector<double> w(static_cast<size_t>(d.Tk), 0.0);
        double max = -std::numeric_limits<double>::infinity();
        std::vector<bool> visible(static_cast<size_t>(d.Tk), true);
        for (Index j = 0; j < d.Tk; ++j) {
          double bias = 0;
          const bool masked = eftest::reference_mask(m, d, b, h, i, j, bias);
          visible[size_t(j)] = !masked;
          double s = 0;
          for (Index c = 0; c < d.dh; ++c) s += q(b * d.Tq + i, h * d.dh + c) * k(b * d.Tk + j, h * d.dh + c);
          w[size_t(j)] = s / std::sqrt(double(d.dh));
          w[size_t(j)] += bias;
          if (pos_bias.size()) w[size_t(j)] += pos_bias(h, j - i + d.Tq - 1);
          if (!masked) max = std::max(max, w[size_t(j)]);
        }
        double sum = 0;
        for (Index j = 0; j < d.Tk; ++j) {
          w[size_t(j)] = visible[size_t(j)] ? std::exp(w[size_t(j)] - max) : 0.0;
          sum += w[size_t(j)];
        }
        if (sum == 0) continue;
        for (Index j = 0; j < d.Tk; ++j)
          for (Index c = 0; c < d.dh; ++c)
            out(b * d.Tq + i, h * d.dh + c) += w[size_t(j)] / sum * v(b * d.Tk + j, h * d.dh + c);
      }
  return out;
}

/// Random q (B*Tq, H*dh), k and v (B*Tk, H*dh) for dims d.
struct QKV {
  MatD q, k, v;
};
QKV random_qkv(const AttentionDims& d, Rng& rng) {
  QKV out;
  out.q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  out.k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  out.v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  return out;
}

}  // namespace

TEST_CASE("attention matches the definition for every mask kind") {
  for (const eftest::AttentionCase& c : eftest::attention_mask_cases()) {
    INFO(c.name);
    Rng rng(1);
    const AttentionDims& d = c.d;
    const MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
    const MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
    const MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
    MatD out, probs;
    attention_forward<double>(out, probs, q, k, v, d, c.mask);
    CHECK((out - reference_attention(q, k, v, d, c.mask)).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(probs.allFinite());
  }
}

TEST_CASE("attention gradients match finite differences for every mask kind, with and without a "
          "position bias per distance") {
  for (const eftest::AttentionCase& c : eftest::attention_mask_cases()) {
    for (bool with_bias : {false, true}) {
      INFO(c.name << (with_bias ? ", position bias" : ""));
      Rng rng(2);
      const AttentionDims& d = c.d;
      MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
      MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
      MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
      MatD bias = eftest::random_matrix(d.H, d.Tq + d.Tk - 1, rng);
      const MatD R = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
      const MatD* b = with_bias ? &bias : nullptr;
      MatD out, probs, dq, dk, dv, dbias = MatD::Constant(1, 1, 5.0);  // dbias comes back fresh
      attention_forward<double>(out, probs, q, k, v, d, c.mask, b);
      CHECK((out - reference_attention(q, k, v, d, c.mask, with_bias ? bias : MatD()))
                .cwiseAbs()
                .maxCoeff() < 1e-12);
      attention_backward<double>(dq, dk, dv, R, probs, q, k, v, d, with_bias ? &dbias : nullptr);
      auto loss = [&] {
        MatD o, p;
        attention_forward<double>(o, p, q, k, v, d, c.mask, b);
        return projection(o, R);
      };
      eftest::check_grad(q, dq, loss, "q");
      eftest::check_grad(k, dk, loss, "k");
      eftest::check_grad(v, dv, loss, "v");
      if (!with_bias) continue;
      REQUIRE(dbias.rows() == d.H);
      REQUIRE(dbias.cols() == d.Tq + d.Tk - 1);
      eftest::check_grad(bias, dbias, loss, "pos_bias");
    }
  }
}

TEST_CASE("a zero position bias changes nothing; a constant one per head changes nothing either") {
  const eftest::AttentionCase c = eftest::attention_mask_cases().back();
  const AttentionDims& d = c.d;
  Rng rng(6);
  const MatD q = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  const MatD k = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  const MatD v = eftest::random_matrix(d.B * d.Tk, d.H * d.dh, rng);
  MatD out, probs, out0, probs0, out1, probs1;
  attention_forward<double>(out, probs, q, k, v, d, c.mask);
  const MatD zero = MatD::Zero(d.H, d.Tq + d.Tk - 1);
  attention_forward<double>(out0, probs0, q, k, v, d, c.mask, &zero);
  CHECK(out0 == out);
  CHECK(probs0 == probs);
  MatD shift(d.H, d.Tq + d.Tk - 1);  // the softmax ignores a shift of a whole row
  for (Index h = 0; h < d.H; ++h) shift.row(h).setConstant(3.0 * double(h + 1));
  attention_forward<double>(out1, probs1, q, k, v, d, c.mask, &shift);
  CHECK((out1 - out).cwiseAbs().maxCoeff() < 1e-13);
}

TEST_CASE_TEMPLATE("a query whose keys are all masked gives zeros, not NaN", Scalar, float, double) {
  const AttentionDims d{2, 3, 3, 2, 2};
  Rng rng(3);
  const Matrix<Scalar> q = eftest::random_matrix<Scalar>(6, 4, rng);
  const Matrix<Scalar> k = eftest::random_matrix<Scalar>(6, 4, rng);
  const Matrix<Scalar> v = eftest::random_matrix<Scalar>(6, 4, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Constant(2, 3, true);  // sequence 0: every key padded
  mask.key_padding.row(1).setConstant(false);
  Matrix<Scalar> out, probs, dq, dk, dv;
  attention_forward<Scalar>(out, probs, q, k, v, d, mask);
  const Matrix<Scalar> dout = Matrix<Scalar>::Ones(6, 4);
  attention_backward<Scalar>(dq, dk, dv, dout, probs, q, k, v, d);
  CHECK(out.allFinite());
  CHECK(out.topRows(3).isZero());
  CHECK(!out.bottomRows(3).isZero());
  CHECK(dq.allFinite());
  CHECK(dk.allFinite());
  CHECK(dv.allFinite());
  CHECK(dq.topRows(3).isZero());
  CHECK(dk.topRows(3).isZero());
  CHECK(dv.topRows(3).isZero());
}

TEST_CASE_TEMPLATE("attention probabilities sum to 1 and logits of 1e4 stay finite", Scalar, float,
                   double) {
  const AttentionDims d{1, 4, 4, 1, 2};
  Matrix<Scalar> q = Matrix<Scalar>::Constant(4, 2, Scalar(100));
  q(1, 0) = Scalar(-100);
  const Matrix<Scalar> k = q;  // scores up to 1e4 / sqrt(2) in size
  const Matrix<Scalar> v = Matrix<Scalar>::Ones(4, 2);
  Matrix<Scalar> out, probs, dq, dk, dv;
  attention_forward<Scalar>(out, probs, q, k, v, d, AttentionMask{});
  CHECK(probs.allFinite());
  for (Index i = 0; i < 4; ++i) CHECK(probs.row(i).sum() == doctest::Approx(1.0));
  attention_backward<Scalar>(dq, dk, dv, Matrix<Scalar>::Ones(4, 2), probs, q, k, v, d);
  CHECK(dq.allFinite());
  CHECK(dk.allFinite());
}

TEST_CASE("attention masks of the wrong shape are rejected") {
  const AttentionDims d{2, 3, 4, 1, 2};
  AttentionMask m;
  m.key_padding = BoolMatrix::Zero(2, 3);
  eftest::check_throws_with([&] { detail::check_mask("f", m, d); },
                            {"eigenformer::f", "mask.key_padding", "(2, 3)", "(2, 4)"});
  m.key_padding.resize(0, 0);
  m.attn_mask = BoolMatrix::Zero(5, 4);
  eftest::check_throws_with([&] { detail::check_mask("f", m, d); },
                            {"mask.attn_mask", "(5, 4)", "(3, 4) or (6, 4)"});
  m.attn_mask.resize(0, 0);
  m.attn_bias = MatD::Zero(3, 5);
  eftest::check_throws_with([&] { detail::check_mask("f", m, d); },
                            {"mask.attn_bias", "(3, 5)", "(3, 4) or (6, 4)"});
  const AttentionDims heads{2, 3, 4, 2, 2};  // per sequence and head: (B*H*Tq, Tk) = (12, 4)
  m.attn_bias = MatD::Zero(12, 4);
  detail::check_mask("f", m, heads);
  m.attn_bias = MatD::Zero(9, 4);
  eftest::check_throws_with([&] { detail::check_mask("f", m, heads); },
                            {"mask.attn_bias", "(9, 4)", "(12, 4) (per sequence and head)"});
}

TEST_CASE("a score bias equals adding it to the scores; a row shift of it changes nothing") {
  const AttentionDims d{2, 3, 4, 2, 2};
  Rng rng(8);
  const auto [q, k, v] = random_qkv(d, rng);
  AttentionMask m;
  m.attn_bias = eftest::random_matrix(d.B * d.H * d.Tq, d.Tk, rng);
  MatD out, probs, out_shift, probs_shift;
  attention_forward<double>(out, probs, q, k, v, d, m);
  // probs = softmax(scores + bias), checked against the unbiased scores of the plain kernel.
  MatD out0, probs0;
  attention_forward<double>(out0, probs0, q, k, v, d, {});
  for (Index r = 0; r < probs.rows(); ++r) {
    const auto expected = (probs0.row(r).array().log() + m.attn_bias.row(r).array()).exp();
    CHECK((probs.row(r).array() - expected / expected.sum()).abs().maxCoeff() < 1e-12);
  }
  m.attn_bias.array().colwise() +=
      Eigen::VectorXd::LinSpaced(m.attn_bias.rows(), -3.0, 5.0).array();
  attention_forward<double>(out_shift, probs_shift, q, k, v, d, m);
  CHECK((out_shift - out).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("attention ops reject inputs that do not fit their dims, the position bias included") {
  const AttentionDims d{2, 3, 4, 2, 2};
  const Matrix<float> q = Matrix<float>::Ones(6, 4), kv = Matrix<float>::Ones(8, 4);
  Matrix<float> out, probs, dq, dk, dv;
  eftest::check_throws_with(
      [&] { attention_forward<float>(out, probs, Matrix<float>::Ones(5, 4), kv, kv, d, {}); },
      {"attention_forward", "'q'", "(5, 4)", "(6, 4)"});
  eftest::check_throws_with(
      [&] { attention_forward<float>(out, probs, q, kv, Matrix<float>::Ones(8, 3), d, {}); },
      {"attention_forward", "'v'", "(8, 3)", "(8, 4)"});
  const Matrix<float> bias = Matrix<float>::Zero(2, 5);
  eftest::check_throws_with([&] { attention_forward<float>(out, probs, q, kv, kv, d, {}, &bias); },
                            {"attention_forward", "'pos_bias'", "(2, 5)", "(2, 6)"});
  AttentionMask pad;
  pad.key_padding = BoolMatrix::Zero(2, 3);
  eftest::check_throws_with([&] { attention_forward<float>(out, probs, q, kv, kv, d, pad); },
                            {"attention_forward", "mask.key_padding", "(2, 3)", "(2, 4)"});
  eftest::check_throws_with(
      [&] { attention_forward<float>(out, probs, q, kv, kv, {2, 3, 4, 0, 2}, {}); },
      {"attention_forward", "'dims.H'", "positive"});
  attention_forward<float>(out, probs, q, kv, kv, d, {});
  eftest::check_throws_with(
      [&] { attention_backward<float>(dq, dk, dv, Matrix<float>::Ones(6, 3), probs, q, kv, kv, d); },
      {"attention_backward", "'dout'", "(6, 3)", "(6, 4)"});
  eftest::check_throws_with(
      [&] { attention_backward<float>(dq, dk, dv, q, probs.topRows(8), q, kv, kv, d); },
      {"attention_backward", "'probs'", "(8, 4)", "(12, 4)"});
}

#ifdef _OPENMP
#include <omp.h>
#endif

TEST_CASE("attention large enough to be threaded gives the single-threaded result exactly") {
  // 16 (batch x head) items of 4*32*32*16 = 65536 operations each: above the threading threshold.
  const AttentionDims d{4, 32, 32, 4, 16};
  Rng rng(4);
  const auto [q, k, v] = random_qkv(d, rng);
  const MatD dout = eftest::random_matrix(d.B * d.Tq, d.H * d.dh, rng);
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = BoolMatrix::Zero(d.B, d.Tk);
  mask.key_padding(2, 31) = true;
  const MatD bias = eftest::random_matrix(d.H, d.Tq + d.Tk - 1, rng);
  // Init-captures: C++17 lambdas cannot capture structured bindings (clang enforces it).
  auto run = [&, &q = q, &k = k, &v = v](MatD& out, MatD& dq, MatD& dk, MatD& dv, MatD& dbias) {
    MatD probs;
    attention_forward<double>(out, probs, q, k, v, d, mask, &bias);
    attention_backward<double>(dq, dk, dv, dout, probs, q, k, v, d, &dbias);
  };
  MatD out1, dq1, dk1, dv1, db1, out2, dq2, dk2, dv2, db2;
  run(out1, dq1, dk1, dv1, db1);  // threaded when OMP_NUM_THREADS > 1
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  run(out2, dq2, dk2, dv2, db2);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  CHECK(out1 == out2);
  CHECK(dq1 == dq2);
  CHECK(dk1 == dk2);
  CHECK(dv1 == dv2);
  CHECK(db1 == db2);
  CHECK((out1 - reference_attention(q, k, v, d, mask, bias)).cwiseAbs().maxCoeff() < 1e-12);
}
