#include <eigenformer/layers/dropout.hpp>

#include <cmath>
#include <string>
#include <utility>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

TEST_CASE_TEMPLATE("Dropout with the same seed draws the same mask", Scalar, float, double) {
  const Matrix<Scalar> x = Matrix<Scalar>::Ones(20, 30);
  Dropout<Scalar> a(Scalar(0.4), 42), b(Scalar(0.4), 42), c(Scalar(0.4), 43);
  typename Dropout<Scalar>::Cache ca, cb, cc;
  const Matrix<Scalar> ya = a.forward(x, ca);
  CHECK(ya == b.forward(x, cb));
  CHECK(ca.mask == cb.mask);
  CHECK(ya != c.forward(x, cc));
  // The rng advances: the next mask differs from the first.
  typename Dropout<Scalar>::Cache next;
  a.forward(x, next);
  CHECK(next.mask != ca.mask);
}

TEST_CASE_TEMPLATE("Dropout keeps 1 - p of the entries, scaled so the mean is preserved", Scalar,
                   float, double) {
  const Scalar p = Scalar(0.3);
  Dropout<Scalar> drop(p, 7);
  Rng rng(1);
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(400, 500, rng).array().abs() + Scalar(1);
  typename Dropout<Scalar>::Cache cache;
  const Matrix<Scalar> y = drop.forward(x, cache);
  const Scalar scale = Scalar(1) / (Scalar(1) - p);
  Index kept = 0, wrong = 0;
  for (Index i = 0; i < y.rows(); ++i)
    for (Index j = 0; j < y.cols(); ++j) {
      const bool is_kept = y(i, j) != Scalar(0);
      kept += is_kept;
      wrong += is_kept && y(i, j) != x(i, j) * scale;
    }
  CHECK(wrong == 0);
  const double n = static_cast<double>(x.size());
  // 200000 Bernoulli(0.7) draws: the standard deviation of the kept fraction is about 0.001.
  CHECK(std::abs(static_cast<double>(kept) / n - 0.7) < 0.005);
  const double mean_x = static_cast<double>(x.template cast<double>().mean());
  const double mean_y = static_cast<double>(y.template cast<double>().mean());
  CHECK(std::abs(mean_y - mean_x) < 0.01 * mean_x);
}

TEST_CASE("Dropout's mask is a hash of (row key, column), whatever the threads") {
  // Rows are drawn in parallel; each row's key is element i of one SplitMix64 stream started at
  // the layer's draw. Run with OMP_NUM_THREADS=2 too (tests/CMakeLists.txt).
  const Index rows = 300, cols = 129;
  const float p = 0.25f;
  Dropout<float> drop(p, 11);
  typename Dropout<float>::Cache cache;
  drop.forward(Matrix<float>::Ones(rows, cols), cache);
  Rng rng(11);
  std::uint64_t state = rng.next_u64();
  const auto threshold = static_cast<std::uint32_t>(0.25 * 4294967296.0);
  Index mismatches = 0;
  for (Index i = 0; i < rows; ++i) {
    const auto key = static_cast<std::uint32_t>(detail::splitmix64(state));
    for (Index j = 0; j < cols; ++j) {
      const bool dropped = detail::hash32(key, static_cast<std::uint32_t>(j)) < threshold;
      mismatches += cache.mask(i, j) != (dropped ? 0.0f : 1.0f / (1.0f - p));
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("Dropout masks of neighbouring rows and columns are uncorrelated") {
  // A weak hash would show up as kept/dropped agreement away from p^2 + (1-p)^2 between
  // neighbours.
  Dropout<double> drop(0.5, 3);
  typename Dropout<double>::Cache cache;
  drop.forward(MatD::Ones(400, 400), cache);
  const MatD kept = (cache.mask.array() > 0).cast<double>();
  const double right = (kept.leftCols(399).array() == kept.rightCols(399).array()).cast<double>().mean();
  const double down = (kept.topRows(399).array() == kept.bottomRows(399).array()).cast<double>().mean();
  // 159600 pairs with agreement probability 0.5: standard deviation about 0.0013.
  CHECK(std::abs(right - 0.5) < 0.007);
  CHECK(std::abs(down - 0.5) < 0.007);
}

TEST_CASE("Dropout backward applies the forward's mask") {
  Rng rng(2);
  Dropout<double> drop(0.5, 3);
  const MatD x = eftest::random_matrix(6, 8, rng);
  const MatD dy = eftest::random_matrix(6, 8, rng);
  Dropout<double>::Cache cache;
  const MatD y = drop.forward(x, cache);
  // A later forward must not change what backward does with this cache.
  Dropout<double>::Cache other;
  drop.forward(x, other);
  const MatD dx = drop.backward(dy, cache);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < x.cols(); ++j) {
      CHECK(y(i, j) == x(i, j) * cache.mask(i, j));
      CHECK(dx(i, j) == dy(i, j) * cache.mask(i, j));
    }
  // The layer is linear in x with this mask, so dx is the exact gradient of <y, dy>.
  CHECK(std::abs(projection(y, dy) - projection(x, dx)) <= 1e-12);
}

TEST_CASE("Dropout is the identity in eval mode, for p = 0 and for inference") {
  Rng rng(3);
  const MatD x = eftest::random_matrix(5, 4, rng);
  const MatD dy = eftest::random_matrix(5, 4, rng);
  Dropout<double> drop(0.5, 4);
  CHECK(drop.training);
  CHECK(drop.forward(x) == x);
  drop.eval();
  CHECK_FALSE(drop.training);
  Dropout<double>::Cache cache;
  CHECK(drop.forward(x, cache) == x);
  CHECK(drop.backward(dy, cache) == dy);
  CHECK(cache.mask.size() == 0);
  drop.train();
  CHECK(drop.training);
  drop.train(false);
  CHECK_FALSE(drop.training);

  Dropout<double> none(0.0, 5);
  CHECK(none.forward(x, cache) == x);
  CHECK(none.backward(dy, cache) == dy);
  CHECK(none.parameters().empty());
}

TEST_CASE("Dropout rejects bad input") {
  eftest::check_throws_with([] { Dropout<float>(1.0f, 0); }, {"Dropout::Dropout", "'p'", "1"});
  eftest::check_throws_with([] { Dropout<float>(-0.1f, 0); }, {"Dropout::Dropout", "'p'", "-0.1"});
  eftest::check_throws_with([] { Dropout<double>(std::nan(""), 0); }, {"Dropout::Dropout", "'p'"});
  Dropout<float> drop(0.5f, 1);
  Dropout<float>::Cache cache;
  drop.forward(Matrix<float>::Ones(3, 4), cache);
  eftest::check_throws_with([&] { drop.backward(Matrix<float>::Ones(3, 5), cache); },
                            {"Dropout::backward", "'dy'", "(3, 5)", "(3, 4)"});
  drop.eval();
  drop.forward(Matrix<float>::Ones(2, 2), cache);
  eftest::check_throws_with([&] { drop.backward(Matrix<float>::Ones(3, 4), cache); },
                            {"Dropout::backward", "'dy'", "(3, 4)", "(2, 2)"});
}

TEST_CASE("Dropout in place gives what forward and backward give, and reuses the mask buffer") {
  Rng rng(6);
  const MatD x = eftest::random_matrix(6, 8, rng);
  const MatD dy = eftest::random_matrix(6, 8, rng);
  Dropout<double> a(0.4, 7), b(0.4, 7);
  Dropout<double>::Cache ca, cb;
  for (int draw = 0; draw < 2; ++draw) {  // the second draw reuses cb's mask buffer
    CAPTURE(draw);
    const MatD y = a.forward(x, ca);
    MatD y_in_place = x;
    b.forward_in_place(y_in_place, cb);
    CHECK(y_in_place == y);
    CHECK(cb.mask == ca.mask);
    MatD d = dy;
    b.backward_in_place(d, cb);
    CHECK(d == a.backward(dy, ca));
  }
  b.eval();
  MatD same = x;
  b.forward_in_place(same, cb);
  CHECK(same == x);
  CHECK(cb.mask.size() == 0);
  b.backward_in_place(same, cb);
  CHECK(same == x);
  eftest::check_throws_with([&] { b.backward_in_place(same = MatD::Ones(3, 8), cb); },
                            {"Dropout::backward_in_place", "'dy'", "(3, 8)", "(6, 8)"});
}

TEST_CASE("Dropout on a temporary drops out in place and gives what the copying forms give") {
  Rng rng(8);
  const MatD x = eftest::random_matrix(5, 7, rng);
  const MatD dy = eftest::random_matrix(5, 7, rng);
  Dropout<double> a(0.3, 9), b(0.3, 9);
  Dropout<double>::Cache ca, cb;
  const MatD y = a.forward(x, ca);  // an lvalue: the copying forward
  MatD temp = x;
  const double* buffer = temp.data();
  const MatD y_moved = b.forward(std::move(temp), cb);
  CHECK(y_moved == y);
  CHECK(y_moved.data() == buffer);  // the temporary's buffer was handed on
  CHECK(b.backward(MatD(dy), cb) == a.backward(dy, ca));
  eftest::check_throws_with([&] { b.backward(MatD(MatD::Ones(2, 7)), cb); },
                            {"Dropout::backward", "'dy'", "(2, 7)", "(5, 7)"});
}

TEST_CASE("Dropout backward rejects a cache whose mask does not have the recorded shape") {
  Dropout<float> drop(0.5f, 2);
  Dropout<float>::Cache cache;
  drop.forward(Matrix<float>::Ones(3, 4), cache);
  cache.mask.resize(2, 4);  // e.g. a hand-built cache
  for (const char* func : {"Dropout::backward", "Dropout::backward_in_place"}) {
    CAPTURE(func);
    Matrix<float> dy = Matrix<float>::Ones(3, 4);
    eftest::check_throws_with(
        [&] {
          if (std::string(func) == "Dropout::backward") drop.backward(dy, cache);
          else drop.backward_in_place(dy, cache);
        },
        {func, "'cache.mask'", "(2, 4)", "(3, 4)"});
    CHECK(dy == Matrix<float>::Ones(3, 4));
  }
}
