#include <eigenformer/ops/softmax.hpp>

#include <limits>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

TEST_CASE_TEMPLATE("softmax rows sum to 1 and stay finite for extreme logits", Scalar, float,
                   double) {
  Rng rng(1);
  Matrix<Scalar> x = eftest::random_matrix<Scalar>(6, 7, rng, 3.0);
  x(0, 0) = Scalar(1e4);
  x(1, 2) = Scalar(-1e4);
  x.row(2).setConstant(Scalar(1e4));
  Matrix<Scalar> p;
  softmax_forward<Scalar>(p, x);
  CHECK(p.allFinite());
  for (Index i = 0; i < p.rows(); ++i) CHECK(p.row(i).sum() == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(p(0, 0) == doctest::Approx(1.0));
  CHECK(p(2, 3) == doctest::Approx(1.0 / 7.0));
  CHECK((p.array() >= 0).all());
}

TEST_CASE("softmax of a row of -inf is zero, not NaN") {
  MatD x(2, 3);
  const double inf = std::numeric_limits<double>::infinity();
  x << -inf, -inf, -inf, 0.0, -inf, 0.0;
  MatD p;
  softmax_forward<double>(p, x);
  CHECK(p.row(0).isZero());
  CHECK(p(1, 0) == doctest::Approx(0.5));
  CHECK(p(1, 1) == 0.0);
}

TEST_CASE("softmax backward matches finite differences") {
  Rng rng(2);
  MatD x = eftest::random_matrix(4, 5, rng);
  const MatD R = eftest::random_matrix(4, 5, rng);
  MatD p, dx;
  softmax_forward<double>(p, x);
  softmax_backward<double>(dx, R, p);
  eftest::check_grad(x, dx, [&] {
    MatD y;
    softmax_forward<double>(y, x);
    return projection(y, R);
  }, "x");
}

TEST_CASE("softmax backward rejects a dout of another shape than the forward's output") {
  Matrix<double> out = Matrix<double>::Constant(3, 4, 0.25), dinp;
  eftest::check_throws_with(
      [&] { softmax_backward<double>(dinp, Matrix<double>::Ones(3, 5), out); },
      {"eigenformer::softmax_backward", "'dout'", "has shape (3, 5)", "expected (3, 4)"});
  CHECK(dinp.size() == 0);
}
