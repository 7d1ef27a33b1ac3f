#include <eigenformer/layers/layernorm.hpp>

#include <cmath>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

/// LayerNorm written out entry by entry in double, the reference for the tests.
MatD reference_layernorm(const MatD& x, const MatD& gamma, const MatD& beta, double eps) {
  MatD y(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    double mean = 0.0, var = 0.0;
    for (Index j = 0; j < x.cols(); ++j) mean += x(i, j);
    mean /= static_cast<double>(x.cols());
    for (Index j = 0; j < x.cols(); ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
    var /= static_cast<double>(x.cols());
    for (Index j = 0; j < x.cols(); ++j)
      y(i, j) = (x(i, j) - mean) / std::sqrt(var + eps) * gamma(0, j) + beta(0, j);
  }
  return y;
}

double max_abs(const MatD& m) { return m.cwiseAbs().maxCoeff(); }

/// A LayerNorm with random gamma and beta, so the checks see both.
LayerNorm<double> random_layernorm(Index d, Rng& rng) {
  LayerNorm<double> ln(d);
  ln.weight.value = eftest::random_matrix(1, d, rng);
  ln.bias.value = eftest::random_matrix(1, d, rng);
  return ln;
}

}  // namespace

TEST_CASE_TEMPLATE("LayerNorm forward matches the PyTorch formula", Scalar, float, double) {
  Rng rng(1);
  LayerNorm<Scalar> ln(6);
  const MatD gamma = eftest::random_matrix(1, 6, rng);
  const MatD beta = eftest::random_matrix(1, 6, rng);
  ln.weight.value = gamma.cast<Scalar>();
  ln.bias.value = beta.cast<Scalar>();
  const MatD x = eftest::random_matrix(5, 6, rng, 3.0);
  const Matrix<Scalar> xs = x.cast<Scalar>();
  const MatD y = ln.forward(xs).template cast<double>();
  const MatD expected = reference_layernorm(xs.template cast<double>(), gamma.cast<Scalar>().template cast<double>(),
                                            beta.cast<Scalar>().template cast<double>(), 1e-5);
  const double tol = std::is_same<Scalar, float>::value ? 1e-5 : 1e-13;
  CHECK(max_abs(y - expected) <= tol);
  typename LayerNorm<Scalar>::Cache cache;
  CHECK(ln.forward(xs, cache) == ln.forward(xs));
  CHECK(cache.mean.rows() == 5);
  CHECK(cache.rstd.cols() == 1);
}

TEST_CASE_TEMPLATE("LayerNorm output rows have mean 0 and variance 1", Scalar, float, double) {
  Rng rng(2);
  LayerNorm<Scalar> ln(32);
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(7, 32, rng, 5.0).array() + Scalar(3);
  const Matrix<Scalar> y = ln.forward(x);
  const double tol = std::is_same<Scalar, float>::value ? 1e-5 : 1e-12;
  for (Index i = 0; i < y.rows(); ++i) {
    const double mean = static_cast<double>(y.row(i).mean());
    const double var = static_cast<double>((y.row(i).array() - y.row(i).mean()).square().mean());
    const double x_var = static_cast<double>((x.row(i).array() - x.row(i).mean()).square().mean());
    CHECK(std::abs(mean) <= tol);
    // var(y) = var(x) / (var(x) + eps): 1 up to eps.
    CHECK(std::abs(var - x_var / (x_var + 1e-5)) <= 10 * tol);
    CHECK(std::abs(var - 1.0) <= 1e-5);
  }
}

TEST_CASE("LayerNorm gradients match finite differences") {
  Rng rng(3);
  LayerNorm<double> ln = random_layernorm(5, rng);
  MatD x = eftest::random_matrix(4, 5, rng, 2.0);
  const MatD R = eftest::random_matrix(4, 5, rng);
  auto loss = [&] { return projection(ln.forward(x), R); };
  LayerNorm<double>::Cache cache;
  ln.forward(x, cache);
  const MatD dx = ln.backward(R, cache);
  eftest::check_grad(x, dx, loss, "x");
  eftest::check_param_grads(ln.parameters(), loss, [&] {
    LayerNorm<double>::Cache c;
    ln.forward(x, c);
    ln.backward(R, c);
  });
}

TEST_CASE("LayerNorm follows the gradient contract") {
  Rng rng(4);
  LayerNorm<double> ln = random_layernorm(5, rng);
  const MatD x = eftest::random_matrix(4, 5, rng);
  const MatD R = eftest::random_matrix(4, 5, rng);
  eftest::check_gradient_contract(ln.parameters(), [&] {
    LayerNorm<double>::Cache c;
    ln.forward(x, c);
    return MatD(ln.backward(R, c));
  });
}

TEST_CASE("LayerNorm stays exact for inputs with a 1e6 offset") {
  // LN(x + c) = LN(x): a one-pass variance (E[x^2] - E[x]^2) loses about 1e-4 here.
  Rng rng(5);
  LayerNorm<double> ln = random_layernorm(16, rng);
  const MatD x = eftest::random_matrix(6, 16, rng);
  const MatD shifted = x.array() + 1e6;
  const MatD R = eftest::random_matrix(6, 16, rng);
  CHECK(max_abs(ln.forward(shifted) - ln.forward(x)) <= 1e-8);

  LayerNorm<double>::Cache c1, c2;
  ln.forward(x, c1);
  const MatD dx = ln.backward(R, c1);
  const MatD dgamma = ln.weight.grad;
  ln.zero_grad();
  ln.forward(shifted, c2);
  const MatD dx_shifted = ln.backward(R, c2);
  CHECK(max_abs(dx_shifted - dx) <= 1e-8 * (1.0 + max_abs(dx)));
  CHECK(max_abs(ln.weight.grad - dgamma) <= 1e-8 * (1.0 + max_abs(dgamma)));
}

TEST_CASE("LayerNorm in float handles inputs of magnitude 1e6") {
  Rng rng(6);
  LayerNorm<float> ln(16);
  const MatD x = eftest::random_matrix(6, 16, rng, 1e6);
  const MatD R = eftest::random_matrix(6, 16, rng);
  const Matrix<float> xf = x.cast<float>();
  LayerNorm<float>::Cache cf;
  const Matrix<float> y = ln.forward(xf, cf);
  const Matrix<float> dx = ln.backward(R.cast<float>(), cf);
  REQUIRE(y.allFinite());
  REQUIRE(dx.allFinite());
  REQUIRE(ln.weight.grad.allFinite());

  LayerNorm<double> ref(16);
  LayerNorm<double>::Cache cd;
  const MatD yd = ref.forward(xf.cast<double>(), cd);
  const MatD dxd = ref.backward(R, cd);
  CHECK(max_abs(y.cast<double>() - yd) <= 1e-5);
  CHECK(max_abs(dx.cast<double>() - dxd) <= 1e-4 * max_abs(dxd));
  CHECK(max_abs(ln.weight.grad.cast<double>() - ref.weight.grad) <= 1e-4 * max_abs(ref.weight.grad));
}

TEST_CASE("LayerNorm of a constant row is beta with finite gradients") {
  Rng rng(7);
  LayerNorm<double> ln = random_layernorm(4, rng);
  const MatD x = MatD::Constant(2, 4, 3.5);
  LayerNorm<double>::Cache c;
  const MatD y = ln.forward(x, c);
  CHECK(max_abs(y.rowwise() - ln.bias.value.row(0)) == 0.0);
  const MatD dx = ln.backward(eftest::random_matrix(2, 4, rng), c);
  CHECK(dx.allFinite());
}

TEST_CASE("LayerNorm over many rows (the threaded path) matches the reference") {
  Rng rng(8);
  LayerNorm<double> ln = random_layernorm(64, rng);
  const MatD x = eftest::random_matrix(1500, 64, rng);
  const MatD R = eftest::random_matrix(1500, 64, rng);
  CHECK(max_abs(ln.forward(x) - reference_layernorm(x, ln.weight.value, ln.bias.value, 1e-5)) <=
        1e-12);
  // Backward row by row must agree with backward on the whole batch.
  LayerNorm<double>::Cache c;
  ln.forward(x, c);
  const MatD dx = ln.backward(R, c);
  const MatD dgamma = ln.weight.grad, dbeta = ln.bias.grad;
  ln.zero_grad();
  for (Index i = 0; i < x.rows(); i += 300) {
    LayerNorm<double>::Cache ci;
    ln.forward(x.middleRows(i, 300), ci);
    CHECK(max_abs(ln.backward(R.middleRows(i, 300), ci) - dx.middleRows(i, 300)) <= 1e-12);
  }
  CHECK(max_abs(ln.weight.grad - dgamma) <= 1e-10);
  CHECK(max_abs(ln.bias.grad - dbeta) <= 1e-10);
}

TEST_CASE("LayerNorm parameters have PyTorch names and vector shapes") {
  LayerNorm<float> ln(3, 1e-6f);
  const ParamList<float> params = ln.parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].name == "weight");
  CHECK(params[1].name == "bias");
  CHECK(params[0].param->shape() == std::vector<Index>{3});
  CHECK(params[1].param->is_vector);
  CHECK(ln.weight.value.isOnes());
  CHECK(ln.bias.value.isZero());
  CHECK(ln.eps() == 1e-6f);
  CHECK(ln.features() == 3);
}

TEST_CASE("LayerNorm rejects bad input and leaves its parameters unchanged") {
  Rng rng(9);
  LayerNorm<float> ln(4);
  ln.weight.value.setConstant(2.0f);
  const Matrix<float> before = ln.weight.value;
  eftest::check_throws_with([&] { ln.forward(Matrix<float>::Ones(6, 5)); },
                            {"LayerNorm::forward", "'x'", "(6, 5)", "(*, 4)"});
  LayerNorm<float>::Cache cache;
  ln.forward(Matrix<float>::Ones(6, 4), cache);
  eftest::check_throws_with([&] { ln.backward(Matrix<float>::Ones(6, 3), cache); },
                            {"LayerNorm::backward", "'dy'", "(6, 3)", "(6, 4)"});
  // A cache that no forward filled, or one of another LayerNorm, is named as the problem.
  eftest::check_throws_with([&] { ln.backward(Matrix<float>::Ones(6, 4), {}); },
                            {"LayerNorm::backward", "'cache'", "is empty: no forward pass"});
  LayerNorm<float>::Cache foreign = cache;
  foreign.rstd.conservativeResize(5, 1);
  eftest::check_throws_with([&] { ln.backward(Matrix<float>::Ones(6, 4), foreign); },
                            {"LayerNorm::backward", "'cache.rstd'", "(5, 1)", "(6, 1)"});
  CHECK(ln.weight.value == before);
  CHECK(ln.weight.grad.isZero());
  CHECK(ln.bias.grad.isZero());
  eftest::check_throws_with([&] { LayerNorm<float>(0); },
                            {"LayerNorm::LayerNorm", "'d'", "must be positive, got 0"});
  eftest::check_throws_with([&] { LayerNorm<float>(4, 0.0f); },
                            {"LayerNorm::LayerNorm", "'eps'"});
  eftest::check_throws_with([&] { LayerNorm<float>(4, -1e-5f); },
                            {"LayerNorm::LayerNorm", "'eps'", "-1e-05"});
}

TEST_CASE("layernorm ops reject mismatched parameter shapes") {
  Matrix<double> out, mean, rstd, dinp;
  const Matrix<double> x = Matrix<double>::Ones(3, 4);
  const Matrix<double> g = Matrix<double>::Ones(1, 4), bad = Matrix<double>::Ones(1, 5);
  eftest::check_throws_with([&] { layernorm_forward<double>(out, mean, rstd, x, bad, g, 1e-5); },
                            {"layernorm_forward", "'gamma'", "(1, 5)", "(1, 4)"});
  eftest::check_throws_with([&] { layernorm_forward<double>(out, mean, rstd, x, g, bad, 1e-5); },
                            {"layernorm_forward", "'beta'", "(1, 5)", "(1, 4)"});
  eftest::check_throws_with(
      [&] { layernorm_forward<double>(out, mean, rstd, Matrix<double>(3, 0), g, g, 1e-5); },
      {"layernorm_forward", "'inp'", "(3, 0)", "expected at least one column"});
  eftest::check_throws_with([&] { layernorm_forward<double>(out, mean, rstd, x, g, g, -1.0); },
                            {"layernorm_forward", "'eps'", "must be positive and finite", "-1"});
  layernorm_forward<double>(out, mean, rstd, x, g, g, 1e-5);
  Matrix<double> dgamma = Matrix<double>::Zero(1, 5);
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, &dgamma, nullptr, x, x, g, mean, rstd); },
      {"layernorm_backward", "'dgamma'", "(1, 5)", "(1, 4)"});
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, nullptr, nullptr, x, x, g, rstd.topRows(2), rstd); },
      {"layernorm_backward", "'mean'", "(2, 1)", "(3, 1)"});
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, nullptr, nullptr, x, x, g, mean, rstd.topRows(1)); },
      {"layernorm_backward", "'rstd'", "(1, 1)", "(3, 1)"});
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, nullptr, nullptr, x.leftCols(3), x, g, mean, rstd); },
      {"layernorm_backward", "'dout'", "(3, 3)", "(3, 4)"});
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, nullptr, nullptr, x, x, bad, mean, rstd); },
      {"layernorm_backward", "'gamma'", "(1, 5)", "(1, 4)"});
  Matrix<double> dbeta = Matrix<double>::Zero(2, 4);
  eftest::check_throws_with(
      [&] { layernorm_backward<double>(dinp, nullptr, &dbeta, x, x, g, mean, rstd); },
      {"layernorm_backward", "'dbeta'", "(2, 4)", "(1, 4)"});
  CHECK(dgamma.isZero());
  CHECK(dbeta.isZero());
}
