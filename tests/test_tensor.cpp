// core/tensor.hpp: the batch layout and the conversions of token ids from other containers.
#include <eigenformer/core/tensor.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;

TEST_CASE("to_ids converts Eigen integer matrices and rows of ints, and names a ragged row") {
  Eigen::MatrixXi col_major(2, 3);  // column-major int, as Eigen's default
  col_major << 1, 2, 3, 4, 5, 6;
  const IdMatrix ids = to_ids(col_major);
  CHECK(ids.rows() == 2);
  CHECK(ids(1, 0) == 4);
  CHECK(ids(0, 2) == 3);
  const std::vector<std::vector<int>> rows{{1, 2, 3}, {4, 5, 6}};
  CHECK(to_ids(rows) == ids);
  CHECK(to_ids(std::vector<std::vector<int>>{}).size() == 0);
  eftest::check_throws_with(
      [&] {
        to_ids(std::vector<std::vector<int>>{{1, 2}, {3}});
      },
      {"to_ids", "'rows'", "row 1 of length 1", "expected 2"});
}

TEST_CASE("Batch views sequences and heads of the (B*T, C) layout without copies") {
  Batch<float> x(2, 3, 4);
  x.data().setRandom();
  CHECK(x.seq(1).rows() == 3);
  CHECK(&x.seq(1)(0, 0) == &x.data()(3, 0));
  CHECK(&x.head(1, 1, 2)(0, 0) == &x.data()(3, 2));
}

TEST_CASE("detail::all_finite agrees with Eigen's allFinite, whatever the values around a NaN") {
  const float big = std::numeric_limits<float>::max(), tiny = std::numeric_limits<float>::denorm_min();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  CHECK(detail::all_finite(Matrix<float>(0, 3)));
  for (int trial = 0; trial < 200; ++trial) {
    Matrix<float> m = Matrix<float>::Random(1 + trial % 7, 1 + trial % 37);  // (r, c)
    m(0, 0) = trial % 2 ? big : -big;  // a plain sum of the entries would overflow
    m(m.rows() - 1, m.cols() - 1) = tiny;
    if (trial % 3 == 1) m(trial % m.rows(), trial % m.cols()) = trial % 2 ? inf : -inf;
    if (trial % 3 == 2) m(trial % m.rows(), (trial / 3) % m.cols()) = nan;
    CHECK(detail::all_finite(m) == m.allFinite());
    CHECK(detail::all_finite(m.cast<double>()) == m.allFinite());
  }
}

TEST_CASE("detail::squared_norm_double is the double sum of squares, without float overflow") {
  Matrix<float> m = Matrix<float>::Random(13, 301);  // (r, c): no multiple of a SIMD width
  m(3, 7) = 3e30f;  // its square overflows float
  const double expected = m.cast<double>().squaredNorm();
  CHECK(detail::squared_norm_double(m) == doctest::Approx(expected).epsilon(1e-14));
  CHECK(detail::squared_norm_double(Matrix<double>(0, 4)) == 0.0);
}

TEST_CASE("detail::first_max_index is Eigen's maxCoeff(&index): the first maximum, ties included") {
  Rng rng(5);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  // (index, trial): Eigen's answer and ours, for row r of m read as a row of a ConstRef (as
  // cross_entropy_forward reads logits), as a cast expression, and strided (a column of a
  // column-major copy).
  auto check = [](const Matrix<float>& m, Index r) {
    Index expected = -1;
    m.row(r).maxCoeff(&expected);
    const ConstRef<float> view(m);
    const Eigen::MatrixXf col_major = m.transpose();  // row r of m is column r here
    CHECK(detail::first_max_index(view.row(r)) == expected);
    CHECK(detail::first_max_index(m.row(r).cast<double>()) == expected);
    CHECK(detail::first_max_index(col_major.col(r)) == expected);
  };
  for (Index n : {1, 2, 63, 64, 65, 127, 128, 129, 200, 8192}) {
    CAPTURE(n);
    for (int trial = 0; trial < 24; ++trial) {
      CAPTURE(trial);
      Matrix<float> m(2, n);  // (2, n): entries from a handful of values, ties everywhere
      for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.index(5)) - 2.f;
      switch (trial % 6) {
        case 1:  // all -inf
          m.row(0).setConstant(-inf);
          break;
        case 2:  // the maximum only in the tail after the last whole block
          m(1, n - 1) = 7.f;
          break;
        case 3:  // equal maxima past the first block, the first of them in a later block
          for (Index j : {Index(100), Index(130), n - 1})
            if (j < n) m(0, j) = 7.f;
          break;
        case 4:  // +inf twice
          m(1, n / 2) = m(1, n - 1) = inf;
          break;
        case 5:  // NaN: Eigen's answer, whatever the SIMD maximum skips
          m(0, rng.index(n)) = nan;
          m(1, 0) = nan;
          break;
        default:
          break;
      }
      check(m, 0);
      check(m, 1);
    }
  }
}

template <class Scalar>
void check_add_row_sums(double tolerance) {
  Rng rng(8);
  for (Index cols : {Index(1), Index(7), Index(512), Index(1300)})
    for (Index rows : {Index(0), Index(1), Index(33)}) {
      const Matrix<Scalar> x = eftest::random_matrix<Scalar>(rows, cols, rng);
      const Matrix<Scalar> start = eftest::random_matrix<Scalar>(1, cols + 4, rng);
      Matrix<Scalar> dst = start;  // the sums go to columns 2 .. cols + 1
      detail::add_row_sums(dst.row(0).segment(2, cols), x);
      Matrix<double> want = start.template cast<double>();
      // Row by row, in double (colwise() of a 0-row matrix offsets its null data: UBSan).
      for (Index r = 0; r < rows; ++r)
        want.row(0).segment(2, cols) += x.row(r).template cast<double>();
      CAPTURE(rows);
      CAPTURE(cols);
      CHECK((dst.template cast<double>() - want).cwiseAbs().maxCoeff() <= tolerance);
    }
}

TEST_CASE("detail::add_row_sums adds the column sums, for any width and row count") {
  check_add_row_sums<double>(1e-12);
  check_add_row_sums<float>(1e-5);  // 33 rows of entries below 1, summed in float
}
