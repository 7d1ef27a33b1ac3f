#include <eigenformer/train/loss.hpp>

#include <cmath>
#include <limits>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

/// An (n, 1) id column from a list.
IdMatrix ids(std::initializer_list<Index> values) {
  IdMatrix m(static_cast<Index>(values.size()), 1);
  Index i = 0;
  for (Index v : values) m(i++, 0) = v;
  return m;
}

/// The loss of one row written out from the definition: -sum_j q_j log p_j.
double reference_row_loss(const MatD& logits, Index i, Index t, double eps) {
  const Index V = logits.cols();
  double z = 0.0;
  for (Index j = 0; j < V; ++j) z += std::exp(logits(i, j));
  double loss = 0.0;
  for (Index j = 0; j < V; ++j) {
    const double q = (j == t ? 1.0 - eps : 0.0) + eps / static_cast<double>(V);
    loss -= q * std::log(std::exp(logits(i, j)) / z);
  }
  return loss;
}

}  // namespace

TEST_CASE_TEMPLATE("cross_entropy_forward matches a hand-computed 2x3 example", Scalar, float,
                   double) {
  Matrix<Scalar> logits(2, 3);
  logits << 1, 2, 3, 0.5, -1, 0;
  const IdMatrix targets = ids({2, 0});
  CrossEntropyCache<Scalar> cache;
  const Scalar loss = cross_entropy_forward(cache, logits, targets);
  const double row0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double row1 = -std::log(std::exp(0.5) / (std::exp(0.5) + std::exp(-1.0) + std::exp(0.0)));
  CHECK(static_cast<double>(loss) == doctest::Approx((row0 + row1) / 2).epsilon(1e-6));
  CHECK(cache.count == 2);
  CHECK(cache.correct == 2);
  CHECK(static_cast<double>(cache.probs(0, 2)) ==
        doctest::Approx(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0))));

  // The gradient of the mean: (p - one_hot) / 2.
  const Matrix<Scalar> d = cross_entropy_backward(cache);
  CHECK(static_cast<double>(d(0, 2)) == doctest::Approx((std::exp(-row0) - 1.0) / 2));
  CHECK(static_cast<double>(d(1, 1)) ==
        doctest::Approx(static_cast<double>(cache.probs(1, 1)) / 2));
}

TEST_CASE("cross_entropy_forward applies label smoothing and ignore_id from the definition") {
  Rng rng(11);
  const MatD logits = eftest::random_matrix(6, 5, rng, 2.0);
  const IdMatrix targets = ids({4, 0, 7, 2, 7, 1});
  for (double eps : {0.0, 0.1, 1.0}) {
    CAPTURE(eps);
    CrossEntropyCache<double> cache;
    const double loss = cross_entropy_forward(cache, logits, targets, {7, eps});
    double expected = 0.0;
    for (Index i = 0; i < 6; ++i)
      if (targets(i, 0) != 7) expected += reference_row_loss(logits, i, targets(i, 0), eps);
    CHECK(loss == doctest::Approx(expected / 4).epsilon(1e-12));
    CHECK(cache.count == 4);
  }
}

// Reference values from PyTorch 1.13 (float64), made by:
//   x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 0.25, -1.0, 2.0], [2.0, 2.0, -3.0, 0.0]],
//                    dtype=torch.float64, requires_grad=True)
//   t = torch.tensor([3, 0, 1])
//   l = F.cross_entropy(x, t, ignore_index=ign, label_smoothing=eps); l.backward()
//   print(repr(l.item())); print(x.grad.tolist())
TEST_CASE_TEMPLATE("cross_entropy matches PyTorch's F.cross_entropy", Scalar, float, double) {
  Matrix<Scalar> logits(3, 4);
  logits << 1.0, -2.0, 0.5, 3.0, 0.0, 0.25, -1.0, 2.0, 2.0, 2.0, -3.0, 0.0;
  const IdMatrix targets = ids({3, 0, 1});
  struct Case {
    double eps;
    Index ignore;
    double loss;
    double grad[12];
  };
  const Case cases[] = {
      {0.0,
       -1,
       1.090233476472234,
       {0.03685125012057974, 0.001834715709194557, 0.022351413046870494, -0.06103737887664477,
        -0.30013597953743704, 0.04262624604070609, 0.01221262396280498, 0.24529710953392597,
        0.1556124826305101, -0.1777208507028232, 0.001048508660360485, 0.021059859411952556}},
      {0.1,
       -1,
       1.2173168098055673,
       {0.028517916787246415, -0.006498617624138776, 0.014018079713537163, -0.03603737887664475,
        -0.27513597953743707, 0.03429291270737277, 0.0038792906294716507, 0.23696377620059272,
        0.14727914929717684, -0.15272085070282318, -0.007284824672972848, 0.012726526078619228}},
      {0.1,
       0,
       0.6882638034528132,
       {0.04277687518086962, -0.009747926436208166, 0.02102711957030574, -0.054056068314967176, 0,
        0, 0, 0, 0.22091872394576517, -0.22908127605423484, -0.010927237009459273,
        0.019089789117928833}},
  };
  const double tol = std::is_same<Scalar, float>::value ? 1e-6 : 1e-13;
  for (const Case& c : cases) {
    CAPTURE(c.eps);
    CAPTURE(c.ignore);
    CrossEntropyCache<Scalar> cache;
    const Scalar loss = cross_entropy_forward(cache, logits, targets, {c.ignore, c.eps});
    CHECK(std::abs(static_cast<double>(loss) - c.loss) <= tol * c.loss);
    const Matrix<Scalar> d = cross_entropy_backward(cache);
    for (Index k = 0; k < 12; ++k)
      CHECK(std::abs(static_cast<double>(d(k / 4, k % 4)) - c.grad[k]) <= tol);
  }
}

TEST_CASE("cross_entropy gradients match finite differences") {
  Rng rng(12);
  const IdMatrix targets = ids({3, -1, 0, 6, 2, -1, 5});
  for (double eps : {0.0, 0.1}) {
    for (double dloss : {1.0, 0.7}) {
      CAPTURE(eps);
      CAPTURE(dloss);
      MatD logits = eftest::random_matrix(7, 7, rng);
      auto loss = [&] {
        CrossEntropyCache<double> c;
        return dloss * cross_entropy_forward(c, logits, targets, {-1, eps});
      };
      CrossEntropyCache<double> cache;
      cross_entropy_forward(cache, logits, targets, {-1, eps});
      const MatD d = cross_entropy_backward(cache, dloss);
      CHECK(d.row(1).isZero());
      CHECK(d.row(5).isZero());
      eftest::check_grad(logits, d, loss, "logits");
    }
  }
}

TEST_CASE_TEMPLATE("cross_entropy with every row ignored gives zero loss and gradient", Scalar,
                   float, double) {
  const Matrix<Scalar> logits = Matrix<Scalar>::Ones(3, 4);
  CrossEntropyCache<Scalar> cache;
  const Scalar loss = cross_entropy_forward(cache, logits, ids({0, 0, 0}), {0, 0.1});
  CHECK(loss == Scalar(0));
  CHECK(cache.count == 0);
  CHECK(cache.correct == 0);
  const Matrix<Scalar> d = cross_entropy_backward(cache);
  CHECK(d.rows() == 3);
  CHECK(d.cols() == 4);
  CHECK(d.isZero());

  CrossEntropyCache<Scalar> empty;
  CHECK(cross_entropy_forward(empty, Matrix<Scalar>(0, 4), IdMatrix(0, 1)) == Scalar(0));
  CHECK(cross_entropy_backward(empty).size() == 0);
}

TEST_CASE_TEMPLATE("cross_entropy stays finite and exact for logits of +-1e4", Scalar, float,
                   double) {
  Matrix<Scalar> logits(2, 3);
  logits << 1e4, -1e4, 0, -1e4, 1e4, 1e4;
  for (double eps : {0.0, 0.1}) {
    CAPTURE(eps);
    CrossEntropyCache<Scalar> cache;
    const Scalar loss = cross_entropy_forward(cache, logits, ids({1, 2}), {-1, eps});
    // Row 0: -log p_1 = 2e4; row 1: -log p_2 = log 2. Smoothing adds eps/3 of the -log p_j.
    const double nll0 = 2e4, nll1 = std::log(2.0);
    const double smooth0 = (0.0 + 2e4 + 1e4) / 3, smooth1 = (2e4 + 3 * std::log(2.0)) / 3;
    const double expected = ((1 - eps) * (nll0 + nll1) + eps * (smooth0 + smooth1)) / 2;
    CHECK(std::isfinite(static_cast<double>(loss)));
    CHECK(static_cast<double>(loss) == doctest::Approx(expected).epsilon(1e-6));
    const Matrix<Scalar> d = cross_entropy_backward(cache);
    CHECK(d.allFinite());
    // Row 0 is wrong; row 1 ties at 1e4 and the first maximum (column 1) is not the target.
    CHECK(cache.correct == 0);
  }
}

TEST_CASE("cross_entropy reads a (B, T) target matrix row-major, like (B*T, V) logits") {
  Rng rng(13);
  const MatD logits = eftest::random_matrix(6, 4, rng);
  IdMatrix bt(2, 3);
  bt << 0, 1, 2, 3, 0, 1;
  const IdMatrix column = ids({0, 1, 2, 3, 0, 1});
  CrossEntropyCache<double> a, b;
  CHECK(cross_entropy_forward(a, logits, bt) == cross_entropy_forward(b, logits, column));
  CHECK(a.targets == b.targets);
  CHECK(cross_entropy_forward(b, logits, IdMatrix(column.transpose())) ==
        cross_entropy_forward(a, logits, bt));
}

TEST_CASE("cross_entropy on many rows (the threaded path) counts loss and accuracy exactly") {
  Rng rng(14);
  const Index N = 3000, V = 40;
  const MatD logits = eftest::random_matrix(N, V, rng, 3.0);
  IdMatrix targets(N, 1);
  Index expected_correct = 0, expected_count = 0;
  double expected = 0.0;
  for (Index i = 0; i < N; ++i) {
    targets(i, 0) = i % 5 == 0 ? -1 : rng.index(V);
    if (targets(i, 0) < 0) continue;
    Index argmax = 0;
    logits.row(i).maxCoeff(&argmax);
    expected_correct += argmax == targets(i, 0);
    ++expected_count;
    expected += reference_row_loss(logits, i, targets(i, 0), 0.05);
  }
  CrossEntropyCache<double> cache;
  const double loss = cross_entropy_forward(cache, logits, targets, {-1, 0.05});
  CHECK(loss == doctest::Approx(expected / static_cast<double>(expected_count)).epsilon(1e-12));
  CHECK(cache.count == expected_count);
  CHECK(cache.correct == expected_correct);
  CHECK(cache.correct > 0);
  const MatD d = cross_entropy_backward(cache);
  // Each counted row of the gradient sums to zero; ignored rows are zero.
  CHECK(d.rowwise().sum().cwiseAbs().maxCoeff() < 1e-15);
  CHECK(d.row(0).isZero());
}

TEST_CASE("cross_entropy_backward returns a fresh gradient each call") {
  Rng rng(15);
  const MatD logits = eftest::random_matrix(3, 4, rng);
  CrossEntropyCache<double> cache;
  cross_entropy_forward(cache, logits, ids({0, 1, 2}));
  const MatD d1 = cross_entropy_backward(cache);
  const MatD d2 = cross_entropy_backward(cache);
  CHECK(d1 == d2);
  CHECK((cross_entropy_backward(cache, 2.0) - 2.0 * d1).cwiseAbs().maxCoeff() < 1e-16);
}

TEST_CASE("cross_entropy rejects bad targets and options and leaves the cache unchanged") {
  const Matrix<float> logits = Matrix<float>::Zero(4, 5);
  CrossEntropyCache<float> cache;
  cross_entropy_forward(cache, Matrix<float>::Ones(2, 3), ids({1, 2}));
  const Matrix<float> before = cache.probs;
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 5, 2}));
      },
      {"cross_entropy_forward", "'targets'", "id 5", "row 2", "V = 5"});
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, -1, -2, 2}), {-2});
      },
      {"cross_entropy_forward", "'targets'", "id -1", "row 1", "V = 5"});
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 2}));
      },
      {"cross_entropy_forward", "'targets'", "(3, 1)", "4 ids", "(4, 5)"});
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 2, 3}), {-1, 1.5});
      },
      {"cross_entropy_forward", "'label_smoothing'", "must be in [0, 1]", "1.5"});
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, Matrix<float>(4, 0), ids({0, 1, 2, 3}));
      },
      {"cross_entropy_forward", "'logits.cols()'", "0"});
  CHECK(cache.probs == before);
  CHECK(cache.count == 2);

  CrossEntropyCache<float> bad;
  bad.probs = Matrix<float>::Zero(2, 3);
  eftest::check_throws_with([&] { cross_entropy_backward(bad); },
                            {"cross_entropy_backward", "'cache'", "(2, 3)"});
  CrossEntropyCache<float> good;
  cross_entropy_forward(good, logits, ids({0, 1, 2, 3}));
  eftest::check_throws_with(
      [&] { cross_entropy_backward(good, std::numeric_limits<float>::quiet_NaN()); },
      {"cross_entropy_backward", "'dloss'", "must be finite", "got nan"});
}

namespace {

/// Row i's loss from the definition with class weights w: (1 - eps) w_t (-log p_t) +
/// eps / V sum_j w_j (-log p_j).
double reference_weighted_row(const MatD& logits, Index i, Index t, double eps,
                              const Eigen::VectorXd& w) {
  const Index V = logits.cols();
  double z = 0.0;
  for (Index j = 0; j < V; ++j) z += std::exp(logits(i, j));
  double loss = 0.0;
  for (Index j = 0; j < V; ++j) {
    const double q = (j == t ? (1.0 - eps) : 0.0) + eps / static_cast<double>(V);
    loss -= q * w(j) * std::log(std::exp(logits(i, j)) / z);
  }
  return loss;
}

}  // namespace

TEST_CASE("cross_entropy reductions and class weights follow the definition") {
  Rng rng(16);
  const MatD logits = eftest::random_matrix(6, 5, rng, 2.0);
  const IdMatrix targets = ids({4, 0, 7, 2, 7, 1});
  Eigen::VectorXd w(5);
  w << 0.5, 2.0, 1.0, 0.0, 3.0;
  for (double eps : {0.0, 0.2}) {
    CAPTURE(eps);
    double sum = 0.0, weight_sum = 0.0;
    Eigen::VectorXd rows = Eigen::VectorXd::Zero(6);
    for (Index i = 0; i < 6; ++i) {
      const Index t = targets(i, 0);
      if (t == 7) continue;
      rows(i) = reference_weighted_row(logits, i, t, eps, w);
      sum += rows(i);
      weight_sum += w(t);
    }
    CrossEntropyOptions o{7, eps, LossReduction::mean, w};
    CrossEntropyCache<double> cache;
    CHECK(cross_entropy_forward(cache, logits, targets, o) ==
          doctest::Approx(sum / weight_sum).epsilon(1e-12));
    CHECK(cache.divisor == doctest::Approx(weight_sum));
    o.reduction = LossReduction::sum;
    CHECK(cross_entropy_forward(cache, logits, targets, o) == doctest::Approx(sum).epsilon(1e-12));
    o.reduction = LossReduction::none;
    CHECK(cross_entropy_forward(cache, logits, targets, o) == doctest::Approx(sum).epsilon(1e-12));
    CHECK((cache.losses - rows).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(cache.count == 4);
    // Weights of 1 are no weights.
    CrossEntropyCache<double> plain, ones;
    const double a = cross_entropy_forward(plain, logits, targets, {7, eps});
    const double b = cross_entropy_forward(ones, logits, targets,
                                           {7, eps, LossReduction::mean, Eigen::VectorXd::Ones(5)});
    CHECK(a == doctest::Approx(b).epsilon(1e-14));
    CHECK((cross_entropy_backward(plain) - cross_entropy_backward(ones)).cwiseAbs().maxCoeff() <
          1e-15);
  }
}

TEST_CASE("cross_entropy's weighted divisor is summed in double, even in float") {
  // 1000 rows of weight 0.1: a float sum drifts to 99.99905, a double one rounds to 100. The
  // same sum is dist::loss_divisor's, so one rank's share path matches cross_entropy bit for bit.
  const Index n = 1000;
  IdMatrix targets(n, 1);
  targets.setZero();
  Eigen::VectorXd w(2);
  w << 0.1, 1.0;
  CrossEntropyCache<float> cache;
  cross_entropy_forward(cache, Matrix<float>::Zero(n, 2), targets,
                        {-1, 0.0, LossReduction::mean, w});
  CHECK(cache.divisor == 100.0f);
  CHECK(detail::counted_weight(targets, {-1, 0.0, LossReduction::mean, w}) ==
        doctest::Approx(100.0).epsilon(1e-13));
}

TEST_CASE("cross_entropy gradients match finite differences for every reduction, with weights") {
  Rng rng(17);
  const IdMatrix targets = ids({3, -1, 0, 6, 2, -1, 5});
  Eigen::VectorXd w(7);
  w << 0.3, 1.2, 0.0, 2.5, 0.8, 1.0, 1.7;
  for (LossReduction r : {LossReduction::mean, LossReduction::sum, LossReduction::none})
    for (bool weighted : {false, true})
      for (double eps : {0.0, 0.15}) {
        CAPTURE(int(r));
        CAPTURE(weighted);
        CAPTURE(eps);
        const CrossEntropyOptions o{-1, eps, r, weighted ? w : Eigen::VectorXd()};
        MatD logits = eftest::random_matrix(7, 7, rng);
        const double dloss = 0.7;
        auto loss = [&] {
          CrossEntropyCache<double> c;
          return dloss * cross_entropy_forward(c, logits, targets, o);
        };
        CrossEntropyCache<double> cache;
        cross_entropy_forward(cache, logits, targets, o);
        const MatD d = cross_entropy_backward(cache, dloss);
        CHECK(d.row(1).isZero());
        eftest::check_grad(logits, d, loss, "logits");
        if (r != LossReduction::none) continue;
        // Per-row upstream gradients: the gradient of sum_i dlosses_i l_i.
        const Eigen::VectorXd dlosses = Eigen::VectorXd::LinSpaced(7, -1.0, 2.0);
        auto weighted_loss = [&] {
          CrossEntropyCache<double> c;
          cross_entropy_forward(c, logits, targets, o);
          return c.losses.dot(dlosses);
        };
        eftest::check_grad(logits, cross_entropy_backward(cache, dlosses), weighted_loss,
                           "logits, per-row dlosses");
      }
}

TEST_CASE("cross_entropy rejects bad class weights, reductions and per-row gradients") {
  const Matrix<float> logits = Matrix<float>::Zero(3, 4);
  CrossEntropyCache<float> cache;
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 2}),
                              {-1, 0.0, LossReduction::mean, Eigen::VectorXd::Ones(3)});
      },
      {"cross_entropy_forward", "'class_weights'", "3 entries", "V = 4"});
  Eigen::VectorXd negative = Eigen::VectorXd::Ones(4);
  negative(2) = -1.0;
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 2}),
                              {-1, 0.0, LossReduction::mean, negative});
      },
      {"cross_entropy_forward", "'class_weights'", "finite and >= 0"});
  eftest::check_throws_with(
      [&] {
        cross_entropy_forward(cache, logits, ids({0, 1, 2}), {-1, 0.0, LossReduction(7)});
      },
      {"cross_entropy_forward", "'reduction'", "is 7"});
  CHECK(cache.probs.size() == 0);  // unchanged
  eftest::check_throws_with(
      [&] { cross_entropy_backward(cache); },
      {"cross_entropy_backward", "'cache'", "is empty", "no cross_entropy_forward"});
  cross_entropy_forward(cache, logits, ids({0, 1, 2}));
  const Eigen::VectorXf dlosses = Eigen::VectorXf::Ones(3);
  eftest::check_throws_with([&] { cross_entropy_backward(cache, dlosses); },
                            {"cross_entropy_backward", "'dlosses'", "reduction none"});
  cross_entropy_forward(cache, logits, ids({0, 1, 2}), {-1, 0.0, LossReduction::none});
  eftest::check_throws_with(
      [&] { cross_entropy_backward(cache, Eigen::VectorXf(Eigen::VectorXf::Ones(2))); },
      {"cross_entropy_backward", "'dlosses'", "2 entries", "3"});
}
