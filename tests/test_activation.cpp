#include <eigenformer/layers/activation.hpp>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

const std::vector<Activation> kAll = {Activation::relu, Activation::gelu_tanh,
                                      Activation::gelu_erf};

/// The textbook formulas in long double, the reference for the tests.
double reference(double x, Activation kind) {
  const long double v = x;
  const long double k = std::sqrt(2.0L / 3.14159265358979323846264338327950288L);
  switch (kind) {
    case Activation::relu: return x > 0 ? x : 0.0;
    case Activation::gelu_tanh:
      return static_cast<double>(0.5L * v * (1.0L + std::tanh(k * (v + 0.044715L * v * v * v))));
    case Activation::gelu_erf:
      return static_cast<double>(0.5L * v * (1.0L + std::erf(v / std::sqrt(2.0L))));
  }
  return 0.0;
}

/// Random inputs kept away from relu's kink, where finite differences do not apply.
MatD random_input(Index rows, Index cols, Rng& rng) {
  MatD x = eftest::random_matrix(rows, cols, rng, 2.0);
  for (Index i = 0; i < x.size(); ++i)
    if (std::abs(x.data()[i]) < 1e-3) x.data()[i] = 0.5;
  return x;
}

}  // namespace

TEST_CASE_TEMPLATE("activation_forward matches the textbook formulas", Scalar, float, double) {
  Rng rng(1);
  const MatD x = random_input(6, 7, rng);
  const Matrix<Scalar> xs = x.cast<Scalar>();
  const double tol = std::is_same<Scalar, float>::value ? 1e-6 : 1e-14;
  for (Activation kind : kAll) {
    INFO(to_string(kind));
    Matrix<Scalar> y;
    activation_forward<Scalar>(y, xs, kind);
    REQUIRE(y.rows() == 6);
    REQUIRE(y.cols() == 7);
    for (Index i = 0; i < x.rows(); ++i)
      for (Index j = 0; j < x.cols(); ++j) {
        const double ref = reference(static_cast<double>(xs(i, j)), kind);
        CHECK(std::abs(static_cast<double>(y(i, j)) - ref) <= tol * (1.0 + std::abs(ref)));
      }
  }
}

TEST_CASE("GELU values match independently computed references") {
  Matrix<double> x(1, 3);
  x << 1.0, -0.5, 3.0;
  Matrix<double> y_erf, y_tanh;
  activation_forward<double>(y_erf, x, Activation::gelu_erf);
  activation_forward<double>(y_tanh, x, Activation::gelu_tanh);
  // Python: 0.5*x*(1+math.erf(x/math.sqrt(2))) and 0.5*x*(1+math.tanh(sqrt(2/pi)*(x+0.044715*x**3))).
  CHECK(y_erf(0, 0) == doctest::Approx(0.8413447460685429).epsilon(1e-14));
  CHECK(y_erf(0, 1) == doctest::Approx(-0.15426876936299344).epsilon(1e-14));
  CHECK(y_erf(0, 2) == doctest::Approx(2.99595030590511).epsilon(1e-14));
  CHECK(y_tanh(0, 0) == doctest::Approx(0.8411919906082768).epsilon(1e-14));
  CHECK(y_tanh(0, 1) == doctest::Approx(-0.15428599017485606).epsilon(1e-14));
  CHECK(y_tanh(0, 2) == doctest::Approx(2.996362607918227).epsilon(1e-14));
}

TEST_CASE("GELU keeps its relative precision for negative inputs") {
  Matrix<double> x(1, 1);
  x << -10.0;
  Matrix<double> y;
  activation_forward<double>(y, x, Activation::gelu_erf);
  // -10 Phi(-10); 0.5 x (1 + erf(x / sqrt 2)) would give exactly 0.
  CHECK(y(0, 0) == doctest::Approx(-7.619853024160593e-23).epsilon(1e-12));
  activation_forward<double>(y, x, Activation::gelu_tanh);
  // -10 sigmoid(2u) with u = sqrt(2/pi) (-10 - 44.715).
  const double u = std::sqrt(2.0 / 3.14159265358979323846) * (-10.0 - 44.715);
  CHECK(y(0, 0) == doctest::Approx(-10.0 / (1.0 + std::exp(-2.0 * u))).epsilon(1e-12));
}

TEST_CASE("activation gradients match finite differences") {
  for (Activation kind : kAll) {
    INFO(to_string(kind));
    Rng rng(2);
    MatD x = random_input(5, 6, rng);
    x(0, 0) = 6.0;
    x(0, 1) = -6.0;
    x(0, 2) = 12.0;
    x(0, 3) = -12.0;
    const MatD R = eftest::random_matrix(5, 6, rng);
    ActivationLayer<double> act(kind);
    auto loss = [&] { return projection(act.forward(x), R); };
    ActivationLayer<double>::Cache cache;
    act.forward(x, cache);
    const MatD dx = act.backward(R, cache);
    eftest::check_grad(x, dx, loss, "x");
  }
}

TEST_CASE("relu has derivative 0 at 0, as in PyTorch") {
  Matrix<double> x = Matrix<double>::Zero(1, 3), dx;
  x(0, 1) = 2.0;
  activation_backward<double>(dx, Matrix<double>::Ones(1, 3), x, Activation::relu);
  CHECK(dx(0, 0) == 0.0);
  CHECK(dx(0, 1) == 1.0);
  CHECK(dx(0, 2) == 0.0);
}

TEST_CASE_TEMPLATE("activations stay finite for huge inputs", Scalar, float, double) {
  const Scalar big = std::numeric_limits<Scalar>::max() / Scalar(4);
  const std::vector<Scalar> values = {Scalar(30), Scalar(1e4), Scalar(1e15), big};
  Matrix<Scalar> x(2, values.size());
  for (size_t j = 0; j < values.size(); ++j) {
    x(0, static_cast<Index>(j)) = values[j];
    x(1, static_cast<Index>(j)) = -values[j];
  }
  const Matrix<Scalar> ones = Matrix<Scalar>::Ones(x.rows(), x.cols());
  for (Activation kind : kAll) {
    INFO(to_string(kind));
    Matrix<Scalar> y, dx;
    activation_forward<Scalar>(y, x, kind);
    activation_backward<Scalar>(dx, ones, x, kind);
    REQUIRE(y.allFinite());
    REQUIRE(dx.allFinite());
    CHECK(y.row(0) == x.row(0));
    CHECK(y.row(1).cwiseAbs().maxCoeff() <= Scalar(1e-30));
    CHECK(dx.row(0).isOnes());
    CHECK(dx.row(1).cwiseAbs().maxCoeff() <= Scalar(1e-30));
  }
}

TEST_CASE("activations over many rows (the threaded path) match the row-by-row result") {
  Rng rng(3);
  const MatD x = random_input(2000, 48, rng);
  const MatD dy = eftest::random_matrix(2000, 48, rng);
  for (Activation kind : kAll) {
    INFO(to_string(kind));
    MatD y, dx, y_row, dx_row;
    activation_forward<double>(y, x, kind);
    activation_backward<double>(dx, dy, x, kind);
    for (Index i = 0; i < x.rows(); i += 397) {
      activation_forward<double>(y_row, x.row(i), kind);
      activation_backward<double>(dx_row, dy.row(i), x.row(i), kind);
      CHECK(y_row == y.row(i));
      CHECK(dx_row == dx.row(i));
    }
  }
}

TEST_CASE("ActivationLayer has no parameters and matches the ops") {
  Rng rng(4);
  ActivationLayer<double> act(Activation::gelu_tanh);
  CHECK(act.kind() == Activation::gelu_tanh);
  CHECK(act.parameters().empty());
  const MatD x = random_input(3, 4, rng);
  const MatD dy = eftest::random_matrix(3, 4, rng);
  ActivationLayer<double>::Cache cache;
  MatD y, dx;
  activation_forward<double>(y, x, Activation::gelu_tanh);
  activation_backward<double>(dx, dy, x, Activation::gelu_tanh);
  CHECK(act.forward(x, cache) == y);
  CHECK(act.backward(dy, cache) == dx);
  CHECK(act.backward(dy, cache) == dx);  // fresh each call
}

TEST_CASE("parse_activation and to_string round-trip") {
  for (Activation kind : kAll) CHECK(parse_activation(to_string(kind)) == kind);
  CHECK(parse_activation("gelu") == Activation::gelu_erf);
  CHECK(Activation::gelu == Activation::gelu_erf);  // gelu is the exact form, as nn.GELU()
  CHECK(to_string(Activation::gelu_erf) == "gelu_erf");
  eftest::check_throws_with([] { parse_activation("swish"); },
                            {"parse_activation", "'name'", "'swish'", "relu, gelu"});
}

TEST_CASE("activations reject bad input") {
  const Activation bogus = static_cast<Activation>(7);
  eftest::check_throws_with([&] { ActivationLayer<float>{bogus}; },
                            {"ActivationLayer::ActivationLayer", "'kind'", "7"});
  eftest::check_throws_with([&] { to_string(bogus); }, {"to_string", "'kind'"});
  Matrix<float> out;
  const Matrix<float> x = Matrix<float>::Ones(3, 4);
  eftest::check_throws_with([&] { activation_forward<float>(out, x, bogus); },
                            {"activation_forward", "'kind'"});
  eftest::check_throws_with(
      [&] { activation_backward<float>(out, Matrix<float>::Ones(3, 5), x, Activation::relu); },
      {"activation_backward", "'dout'", "(3, 5)", "(3, 4)"});
  ActivationLayer<float> act(Activation::relu);
  ActivationLayer<float>::Cache cache;
  act.forward(x, cache);
  eftest::check_throws_with([&] { act.backward(Matrix<float>::Ones(2, 4), cache); },
                            {"ActivationLayer::backward", "'dy'", "(2, 4)", "(3, 4)"});
}
