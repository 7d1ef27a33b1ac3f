// core/grad.hpp: a parameter's gradient, in memory of its own or lent, and GradOut.
#include <eigenformer/core/grad.hpp>
#include <memory>
#include <utility>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;

TEST_CASE("GradMatrix starts as zeros of its own and assigns a same-shaped value in place") {
  GradMatrix<float> g(2, 3);
  CHECK(g.rows() == 2);
  CHECK(g.cols() == 3);
  CHECK(g.isZero(0));
  CHECK_FALSE(g.lent());
  const float* data = g.data();
  g = Matrix<float>::Constant(2, 3, 1.5f);
  g += Matrix<float>::Ones(2, 3);
  g.row(1) *= 2.0f;
  CHECK(g.data() == data);
  CHECK(g(0, 2) == 2.5f);
  CHECK(g(1, 0) == 5.0f);
  g.resize(2, 3);  // the same shape: nothing changes
  CHECK(g.data() == data);
  CHECK(g(1, 0) == 5.0f);
}

TEST_CASE("GradMatrix takes memory of another shape as a Matrix would, even from itself") {
  GradMatrix<double> g(2, 2);
  g << 1, 2, 3, 4;
  g = g.transpose().replicate(1, 2);  // (2, 4), computed from g before it changes
  REQUIRE(g.rows() == 2);
  REQUIRE(g.cols() == 4);
  CHECK(g.row(0) == Eigen::RowVector4d(1, 3, 1, 3));
  g.resize(3, 1);
  CHECK(g.rows() == 3);
  CHECK(g.cols() == 1);
  g.setZero();
  CHECK(g.isZero(0));
}

TEST_CASE("GradMatrix copies own their memory; moves take the other's, lent or not") {
  GradMatrix<float> a(2, 2);
  a.setConstant(3.0f);
  GradMatrix<float> b = a;
  CHECK(b.data() != a.data());
  CHECK(b == a);
  b(0, 0) = 7.0f;
  CHECK(a(0, 0) == 3.0f);

  auto buffer = std::make_shared<std::vector<float>>(4, -1.0f);
  a.lend(buffer->data(), 2, 2, buffer, true);
  GradMatrix<float> c(1, 1);
  c = a;  // a copy of a lent gradient owns its memory
  CHECK_FALSE(c.lent());
  CHECK(c.data() != buffer->data());
  CHECK(c.isConstant(3.0f, 0));

  GradMatrix<float> d(std::move(a));
  CHECK(d.lent());
  CHECK(d.data() == buffer->data());
  CHECK(a.size() == 0);
  CHECK_FALSE(a.lent());
  const float* own = b.data();
  d = std::move(b);
  CHECK_FALSE(d.lent());
  CHECK(d.data() == own);
  CHECK(d(0, 0) == 7.0f);
}

TEST_CASE("GradMatrix::lend views the lent memory, copying its values only when asked") {
  GradMatrix<float> g(2, 3);
  g.setConstant(2.0f);
  std::weak_ptr<std::vector<float>> watch;
  {
    auto buffer = std::make_shared<std::vector<float>>(10, -1.0f);
    watch = buffer;
    g.lend(buffer->data() + 4, 2, 3, buffer, true);  // a slice, as a bucket lends
    CHECK(g.lent());
    CHECK(g.data() == buffer->data() + 4);
    CHECK((*buffer)[3] == -1.0f);
    CHECK((*buffer)[4] == 2.0f);
    CHECK((*buffer)[9] == 2.0f);
    g(1, 2) = 5.0f;
    CHECK((*buffer)[9] == 5.0f);

    auto other = std::make_shared<std::vector<float>>(6, 4.0f);
    g.lend(other->data(), 2, 3, other, false);  // the values there are taken as they are
    CHECK(g.isConstant(4.0f, 0));
    g.lend(buffer->data() + 4, 2, 3, buffer, false);
    CHECK(g(1, 2) == 5.0f);
    g.lend(other->data(), 2, 3, other, true);  // from one lender to another, values kept
    CHECK((*other)[5] == 5.0f);
    CHECK((*other)[0] == 2.0f);
    g.lend(buffer->data() + 4, 2, 3, buffer, false);
  }
  CHECK_FALSE(watch.expired());  // the gradient keeps the lent memory alive
  auto small = std::make_shared<std::vector<float>>(2, 0.0f);
  eftest::check_throws_with([&] { g.lend(small->data(), 1, 2, small, true); },
                            {"GradMatrix::lend", "(1, 2)", "(2, 3)"});
  CHECK(g.rows() == 2);  // unchanged
  CHECK_FALSE(small.use_count() > 1);
  CHECK(g(1, 2) == 5.0f);
  g.resize(1, 1);  // memory of its own again: the lender's is freed
  CHECK_FALSE(g.lent());
  CHECK(watch.expired());
}

TEST_CASE("GradMatrix::swap exchanges memory, own or lent, as Matrix::swap") {
  GradMatrix<float> a(1, 2), b(3, 1);
  a.setConstant(1.0f);
  auto buffer = std::make_shared<std::vector<float>>(3, 2.0f);
  b.lend(buffer->data(), 3, 1, buffer, false);
  const float* own = a.data();
  a.swap(b);
  CHECK(a.lent());
  CHECK(a.data() == buffer->data());
  CHECK(a.rows() == 3);
  CHECK_FALSE(b.lent());
  CHECK(b.data() == own);
  CHECK(b.isOnes(0));
  std::swap(a, b);
  CHECK(a.data() == own);
  CHECK(b.data() == buffer->data());
}

TEST_CASE("GradOut points at a gradient, a matrix or nothing, and its copies point alike") {
  GradMatrix<float> g(2, 2);
  Matrix<float> m = Matrix<float>::Zero(1, 2);
  Matrix<float> empty;
  GradOut<float> none = nullptr, to_g = &g, to_m = &m, to_empty = &empty;
  CHECK_FALSE(none);
  CHECK(to_empty);  // a 0 x 0 matrix is still a gradient to add into
  CHECK_FALSE(GradOut<float>(static_cast<Matrix<float>*>(nullptr)));
  REQUIRE(to_g);
  REQUIRE(to_m);
  *to_g += Matrix<float>::Ones(2, 2);
  to_m->row(0).array() += 3.0f;
  CHECK(g.isOnes(0));
  CHECK(m.isConstant(3.0f, 0));

  GradOut<float> copy = to_m;
  copy = to_g;  // points elsewhere: neither matrix's entries change
  CHECK(copy->data() == g.data());
  CHECK(m.isConstant(3.0f, 0));
  CHECK(g.isOnes(0));
}
