#include <eigenformer/layers/linear.hpp>

#include <algorithm>
#include <cmath>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

TEST_CASE_TEMPLATE("Linear forward computes x W^T + b", Scalar, float, double) {
  Rng rng(1);
  Linear<Scalar> lin(3, 2, rng);
  lin.weight.value << 1, 2, 3, 4, 5, 6;
  lin.bias.value << 0.5, -1;
  Matrix<Scalar> x(2, 3);
  x << 1, 0, -1, 2, 1, 0;
  Matrix<Scalar> y = lin.forward(x);
  Matrix<Scalar> expected(2, 2);
  expected << 1 - 3 + 0.5, 4 - 6 - 1, 2 + 2 + 0.5, 8 + 5 - 1;
  CHECK((y - expected).cwiseAbs().maxCoeff() == doctest::Approx(0.0));
}

TEST_CASE("Linear gradients match finite differences") {
  for (bool with_bias : {true, false}) {
    Rng rng(2);
    Linear<double> lin(4, 3, rng, with_bias);
    MatD x = eftest::random_matrix(5, 4, rng);
    const MatD R = eftest::random_matrix(5, 3, rng);
    auto loss = [&] { return projection(lin.forward(x), R); };
    Linear<double>::Cache cache;
    lin.zero_grad();
    lin.forward(x, cache);
    const MatD dx = lin.backward(R, cache);
    eftest::check_grad(x, dx, loss, "x");
    eftest::check_param_grads(lin.parameters(), loss, [&] {
      Linear<double>::Cache c;
      lin.forward(x, c);
      lin.backward(R, c);
    });
  }
}

namespace {

/// The largest difference between Linear's forward and backward on (N, in) -> (N, out), with or
/// without a bias, and plain sums; also linear_backward_add's input gradient (the sum plus its
/// old value) and linear_backward's bias gradient alone (no weight gradient wanted).
double worst_error_against_sums(Index N, Index in, Index out, bool with_bias, Rng& rng) {
  Linear<double> lin(in, out, rng, with_bias);
  const MatD x = eftest::random_matrix(N, in, rng), dy = eftest::random_matrix(N, out, rng);
  Linear<double>::Cache cache;
  lin.zero_grad();
  const MatD y = lin.forward(x, cache);
  const MatD dx = lin.backward(dy, cache);
  const MatD before = eftest::random_matrix(N, in, rng);
  MatD dx_added = before, dx_bias_only;
  linear_backward_add<double>(dx_added, nullptr, nullptr, dy, x, lin.weight.value);
  MatD dbias_alone = MatD::Zero(1, out);
  linear_backward<double>(dx_bias_only, nullptr, &dbias_alone, dy, x, lin.weight.value);
  double worst = 0;
  for (Index i = 0; i < N; ++i)
    for (Index o = 0; o < out; ++o) {
      double sum = with_bias ? lin.bias.value(0, o) : 0.0;
      for (Index k = 0; k < in; ++k) sum += x(i, k) * lin.weight.value(o, k);
      worst = std::max(worst, std::abs(y(i, o) - sum));
    }
  for (Index i = 0; i < N; ++i)
    for (Index k = 0; k < in; ++k) {
      double sum = 0;
      for (Index o = 0; o < out; ++o) sum += dy(i, o) * lin.weight.value(o, k);
      worst = std::max(worst, std::abs(dx(i, k) - sum));
      worst = std::max(worst, std::abs(dx_added(i, k) - before(i, k) - sum));
      worst = std::max(worst, std::abs(dx_bias_only(i, k) - sum));
    }
  for (Index o = 0; o < out; ++o)
    for (Index k = 0; k < in; ++k) {
      double sum = 0;
      for (Index i = 0; i < N; ++i) sum += dy(i, o) * x(i, k);
      worst = std::max(worst, std::abs(lin.weight.grad(o, k) - sum));
    }
  for (Index o = 0; o < out; ++o) {
    double sum = 0;
    for (Index i = 0; i < N; ++i) sum += dy(i, o);
    if (with_bias) worst = std::max(worst, std::abs(lin.bias.grad(0, o) - sum));
    worst = std::max(worst, std::abs(dbias_alone(0, o) - sum));
  }
  return worst;
}

}  // namespace

TEST_CASE("Linear's threaded products equal plain sums, cut by rows or by columns") {
  // Each shape crosses the threading threshold (2^20 multiply-adds, core/parallel.hpp). A product
  // is cut along its larger operand (detail::cut_rows): by rows when its destination has at least
  // as many rows as columns. Run with 2 threads too.
  struct Shape {
    Index N, in, out;
  };
  // forward (N, out), input gradient (N, in), weight gradient (out, in), cut by:
  //   203, 96, 61: rows, rows, columns (96 = 48 | 48), the bias summed apart, serially;
  //   520, 100, 70: rows, rows, columns (48 | 52), the bias summed apart over 36400 entries,
  //   which is threaded;
  //   37, 150, 211: columns, columns, rows (the bias summed with the product);
  //   12, 300, 301: as the last, with fewer rows than two blocks (decoding).
  for (const Shape s :
       {Shape{203, 96, 61}, Shape{520, 100, 70}, Shape{37, 150, 211}, Shape{12, 300, 301}})
    for (const bool with_bias : {true, false}) {
      CAPTURE(s.N);
      CAPTURE(with_bias);
      Rng rng(3);
      CHECK(worst_error_against_sums(s.N, s.in, s.out, with_bias, rng) < 1e-12);
    }
  CHECK(detail::cut_rows(203, 61));
  CHECK_FALSE(detail::cut_rows(61, 96));
  CHECK_FALSE(detail::cut_rows(37, 211));
  CHECK(detail::cut_rows(211, 150));
  CHECK(detail::cut_rows(12, 8));  // both under two blocks: one block either way
}

TEST_CASE("Linear follows the gradient contract") {
  Rng rng(3);
  Linear<double> lin(4, 3, rng);
  const MatD x = eftest::random_matrix(5, 4, rng);
  const MatD R = eftest::random_matrix(5, 3, rng);
  eftest::check_gradient_contract(lin.parameters(), [&] {
    Linear<double>::Cache c;
    lin.forward(x, c);
    return MatD(lin.backward(R, c));
  });
}

TEST_CASE("Linear rejects bad shapes and leaves its parameters unchanged") {
  Rng rng(4);
  Linear<float> lin(4, 3, rng);
  const Matrix<float> before = lin.weight.value;
  Matrix<float> x = Matrix<float>::Ones(6, 5);
  eftest::check_throws_with([&] { lin.forward(x); },
                            {"Linear::forward", "'x'", "(6, 5)", "(*, 4)"});
  Linear<float>::Cache cache;
  lin.forward(Matrix<float>::Ones(6, 4), cache);
  eftest::check_throws_with([&] { lin.backward(Matrix<float>::Ones(6, 2), cache); },
                            {"Linear::backward", "'dy'", "(6, 2)", "(6, 3)"});
  CHECK(lin.weight.value == before);
  CHECK(lin.weight.grad.isZero());
  eftest::check_throws_with([&] { Linear<float>(0, 3, rng); }, {"Linear::Linear", "in_features"});
}
