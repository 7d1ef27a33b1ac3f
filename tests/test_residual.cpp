#include <eigenformer/layers/feed_forward.hpp>
#include <eigenformer/layers/residual.hpp>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

using FF = FeedForward<double>;

const std::vector<NormPlacement> kPlacements = {NormPlacement::post, NormPlacement::pre};

/// A residual block around a feed-forward sublayer (dropout 0), with random norm parameters.
struct Block {
  Residual<double> res;
  FF ff;
  Block(NormPlacement placement, Rng& rng)
      : res(4, placement), ff(4, 6, Activation::gelu_erf, 0.0, rng) {
    res.norm.weight.value = eftest::random_matrix(1, 4, rng);
    res.norm.bias.value = eftest::random_matrix(1, 4, rng);
  }

  MatD forward(const MatD& x) const {
    return res.forward(x, [&](const MatD& in) { return ff.forward(in); });
  }

  /// One forward with caches and one backward with dy; returns dx.
  MatD step(const MatD& x, const MatD& dy) {
    Residual<double>::Cache cache;
    FF::Cache ff_cache;
    res.forward(x, cache, [&](const MatD& in) { return ff.forward(in, ff_cache); });
    return res.backward(dy, cache, [&](const MatD& d) { return ff.backward(d, ff_cache); });
  }

  ParamList<double> parameters() {
    ParamList<double> out = res.parameters();
    append_params(out, "ff", ff.parameters());
    return out;
  }
};

}  // namespace

TEST_CASE_TEMPLATE("Residual computes LN(x + f(x)) post-norm and x + f(LN(x)) pre-norm", Scalar,
                   float, double) {
  Rng rng(1);
  FeedForward<Scalar> ff(4, 6, Activation::relu, Scalar(0), rng);
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(5, 4, rng);
  auto f = [&](const Matrix<Scalar>& in) { return ff.forward(in); };
  Residual<Scalar> post(4, NormPlacement::post), pre(4, NormPlacement::pre);
  post.norm.weight.value.setConstant(Scalar(1.5));
  pre.norm.bias.value.setConstant(Scalar(-0.5));

  const Matrix<Scalar> x_plus_f = x + ff.forward(x);
  const Matrix<Scalar> expected_post = post.norm.forward(x_plus_f);
  const Matrix<Scalar> expected_pre = x + ff.forward(pre.norm.forward(x));
  CHECK(post.forward(x, f) == expected_post);
  CHECK(pre.forward(x, f) == expected_pre);

  typename Residual<Scalar>::Cache cache;
  typename FeedForward<Scalar>::Cache ff_cache;
  auto f_train = [&](const Matrix<Scalar>& in) { return ff.forward(in, ff_cache); };
  CHECK(post.forward(x, cache, f_train) == expected_post);
  CHECK(pre.forward(x, cache, f_train) == expected_pre);
}

TEST_CASE("Residual gradients match finite differences in both placements") {
  for (NormPlacement placement : kPlacements) {
    INFO(to_string(placement));
    Rng rng(2);
    Block block(placement, rng);
    MatD x = eftest::random_matrix(5, 4, rng);
    const MatD R = eftest::random_matrix(5, 4, rng);
    auto loss = [&] { return projection(block.forward(x), R); };
    const ParamList<double> params = block.parameters();
    zero_grad(params);
    const MatD dx = block.step(x, R);
    eftest::check_grad(x, dx, loss, "x");
    eftest::check_param_grads(params, loss, [&] { block.step(x, R); });
  }
}

TEST_CASE("Residual follows the gradient contract in both placements") {
  for (NormPlacement placement : kPlacements) {
    INFO(to_string(placement));
    Rng rng(3);
    Block block(placement, rng);
    const MatD x = eftest::random_matrix(5, 4, rng);
    const MatD R = eftest::random_matrix(5, 4, rng);
    eftest::check_gradient_contract(block.parameters(), [&] { return block.step(x, R); });
  }
}

TEST_CASE("Residual parameters are the norm's, with PyTorch-style names") {
  Residual<float> res(8, NormPlacement::pre, 1e-6f);
  const ParamList<float> params = res.parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].name == "norm.weight");
  CHECK(params[1].name == "norm.bias");
  CHECK(params[0].param == &res.norm.weight);
  CHECK(res.norm.eps() == 1e-6f);
  CHECK(res.d_model() == 8);
  CHECK(res.placement() == NormPlacement::pre);
}

TEST_CASE("parse_norm_placement and to_string round-trip") {
  for (NormPlacement p : kPlacements) CHECK(parse_norm_placement(to_string(p)) == p);
  eftest::check_throws_with([] { parse_norm_placement("middle"); },
                            {"parse_norm_placement", "'name'", "'middle'", "post, pre"});
  eftest::check_throws_with([] { to_string(static_cast<NormPlacement>(5)); },
                            {"to_string", "'placement'"});
}

TEST_CASE("Residual rejects bad input and leaves its parameters unchanged") {
  for (NormPlacement placement : kPlacements) {
    INFO(to_string(placement));
    Residual<float> res(4, placement);
    auto identity = [](const Matrix<float>& in) { return in; };
    auto wrong = [](const Matrix<float>& in) { return Matrix<float>(Matrix<float>::Ones(in.rows(), 3)); };
    Residual<float>::Cache cache;
    eftest::check_throws_with([&] { res.forward(Matrix<float>::Ones(3, 5), identity); },
                              {"Residual::forward", "'x'", "(3, 5)", "(*, 4)"});
    eftest::check_throws_with([&] { res.forward(Matrix<float>::Ones(3, 4), cache, wrong); },
                              {"Residual::forward", "'sublayer output'", "(3, 3)", "(3, 4)"});
    res.forward(Matrix<float>::Random(3, 4), cache, identity);
    eftest::check_throws_with([&] { res.backward(Matrix<float>::Ones(2, 4), cache, identity); },
                              {"Residual::backward", "'dy'", "(2, 4)", "(3, 4)"});
    eftest::check_throws_with([&] { res.backward(Matrix<float>::Ones(3, 4), cache, wrong); },
                              {"Residual::backward", "'sublayer_backward output'", "(3, 3)",
                               "(3, 4)"});
    CHECK(res.norm.weight.value.isOnes());
    CHECK(res.norm.weight.grad.isZero());
    CHECK(res.norm.bias.grad.isZero());
  }
  eftest::check_throws_with([] { Residual<float>(0, NormPlacement::pre); },
                            {"Residual::Residual", "'d_model'"});
  eftest::check_throws_with([] { Residual<float>(4, NormPlacement::pre, 0.0f); },
                            {"Residual::Residual", "'eps'"});
  eftest::check_throws_with([] { Residual<float>(4, static_cast<NormPlacement>(3)); },
                            {"Residual::Residual", "'placement'", "3"});
}
