#include <eigenformer/layers/feed_forward.hpp>

#include <tuple>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

using FF = FeedForward<double>;

/// Gradient checks of the input and every parameter. The dropout is reset to `start` before each
/// forward, so every loss evaluation and the backward replay the same mask.
void check_all_grads(FF& ff, MatD& x, const MatD& R) {
  const Dropout<double> start = ff.dropout;
  auto run = [&](FF::Cache& c) {
    ff.dropout = start;
    return ff.forward(x, c);
  };
  auto loss = [&] {
    FF::Cache c;
    return projection(run(c), R);
  };
  FF::Cache cache;
  run(cache);
  ff.zero_grad();
  const MatD dx = ff.backward(R, cache);
  eftest::check_grad(x, dx, loss, "x");
  eftest::check_param_grads(ff.parameters(), loss, [&] {
    FF::Cache c;
    run(c);
    ff.backward(R, c);
  });
}

}  // namespace

TEST_CASE_TEMPLATE("FeedForward computes linear2(f(linear1(x)))", Scalar, float, double) {
  Rng rng(1);
  FeedForward<Scalar> ff(4, 7, Activation::gelu_erf, Scalar(0.2), rng);
  ff.eval();
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(5, 4, rng);
  Matrix<Scalar> h, a;
  linear_forward<Scalar>(h, x, ff.linear1.weight.value, &ff.linear1.bias.value);
  activation_forward<Scalar>(a, h, Activation::gelu_erf);
  const Matrix<Scalar> expected = ff.linear2.forward(a);
  CHECK(ff.forward(x) == expected);
  typename FeedForward<Scalar>::Cache cache;
  CHECK(ff.forward(x, cache) == expected);
  CHECK(ff.d_model() == 4);
  CHECK(ff.d_ff() == 7);
}

TEST_CASE("FeedForward parameters use PyTorch's TransformerEncoderLayer names") {
  Rng rng(2);
  FF ff(4, 8, Activation::relu, 0.1, rng);
  const ParamList<double> params = ff.parameters();
  REQUIRE(params.size() == 4);
  CHECK(params[0].name == "linear1.weight");
  CHECK(params[1].name == "linear1.bias");
  CHECK(params[2].name == "linear2.weight");
  CHECK(params[3].name == "linear2.bias");
  CHECK(params[0].param->shape() == std::vector<Index>{8, 4});
  CHECK(params[3].param->shape() == std::vector<Index>{4});
  CHECK(count_params(params) == 8 * 4 + 8 + 4 * 8 + 4);
}

TEST_CASE("FeedForward gradients match finite differences without dropout") {
  for (Activation act : {Activation::relu, Activation::gelu_tanh, Activation::gelu_erf}) {
    INFO(to_string(act));
    Rng rng(3);
    FF ff(4, 6, act, 0.0, rng);
    MatD x = eftest::random_matrix(5, 4, rng);
    const MatD R = eftest::random_matrix(5, 4, rng);
    check_all_grads(ff, x, R);
  }
}

TEST_CASE("FeedForward gradients match finite differences with dropout 0.3 in training") {
  Rng rng(4);
  FF ff(4, 6, Activation::gelu_tanh, 0.3, rng);
  REQUIRE(ff.training());
  MatD x = eftest::random_matrix(5, 4, rng);
  const MatD R = eftest::random_matrix(5, 4, rng);
  // The mask really drops something, and differs from inference.
  const Dropout<double> start = ff.dropout;
  FF::Cache cache;
  const MatD y = ff.forward(x, cache);
  REQUIRE(cache.dropout.mask.size() == 5 * 6);
  CHECK((cache.dropout.mask.array() == 0.0).count() > 0);
  CHECK((cache.dropout.mask.array() != 0.0).count() > 0);
  CHECK(y != ff.forward(x));
  ff.dropout = start;
  check_all_grads(ff, x, R);
}

TEST_CASE("FeedForward forwards its training flag to the dropout") {
  Rng rng(5);
  FF ff(3, 5, Activation::relu, 0.5, rng);
  const MatD x = eftest::random_matrix(4, 3, rng);
  ff.train(false);
  CHECK_FALSE(ff.training());
  CHECK_FALSE(ff.dropout.training);
  FF::Cache cache;
  CHECK(ff.forward(x, cache) == ff.forward(x));
  CHECK(cache.dropout.mask.size() == 0);
  ff.train();
  CHECK(ff.dropout.training);
  ff.eval();
  CHECK_FALSE(ff.dropout.training);
}

TEST_CASE("FeedForward from the same seed is the same, masks included") {
  Rng rng_a(6), rng_b(6);
  FF a(3, 5, Activation::relu, 0.5, rng_a), b(3, 5, Activation::relu, 0.5, rng_b);
  const MatD x = MatD::Ones(4, 3);
  FF::Cache ca, cb;
  CHECK(a.forward(x, ca) == b.forward(x, cb));
  CHECK(ca.dropout.mask == cb.dropout.mask);
  CHECK(rng_a.next_u64() == rng_b.next_u64());
}

TEST_CASE("FeedForward follows the gradient contract") {
  Rng rng(7);
  FF ff(4, 6, Activation::gelu_erf, 0.3, rng);
  const MatD x = eftest::random_matrix(5, 4, rng);
  const MatD R = eftest::random_matrix(5, 4, rng);
  const Dropout<double> start = ff.dropout;
  eftest::check_gradient_contract(ff.parameters(), [&] {
    ff.dropout = start;
    FF::Cache c;
    ff.forward(x, c);
    return MatD(ff.backward(R, c));
  });
}

TEST_CASE("FeedForward rejects bad input and leaves everything unchanged") {
  Rng rng(8);
  FeedForward<float> ff(4, 6, Activation::relu, 0.1f, rng);
  const Matrix<float> before = ff.linear1.weight.value;
  eftest::check_throws_with([&] { ff.forward(Matrix<float>::Ones(3, 5)); },
                            {"FeedForward::forward", "'x'", "(3, 5)", "(*, 4)"});
  FeedForward<float>::Cache cache;
  eftest::check_throws_with([&] { ff.forward(Matrix<float>::Ones(3, 6), cache); },
                            {"FeedForward::forward", "'x'", "(3, 6)", "(*, 4)"});
  ff.forward(Matrix<float>::Ones(3, 4), cache);
  eftest::check_throws_with([&] { ff.backward(Matrix<float>::Ones(2, 4), cache); },
                            {"FeedForward::backward", "'dy'", "(2, 4)", "(3, 4)"});
  CHECK(ff.linear1.weight.value == before);
  for (const auto& p : ff.parameters()) CHECK(p.param->grad.isZero());

  const Rng saved = rng;
  eftest::check_throws_with([&] { FeedForward<float>(4, 6, Activation::relu, 1.0f, rng); },
                            {"FeedForward::FeedForward", "'p'"});
  eftest::check_throws_with([&] { FeedForward<float>(4, 0, Activation::relu, 0.1f, rng); },
                            {"FeedForward::FeedForward", "'d_ff'"});
  eftest::check_throws_with(
      [&] { FeedForward<float>(4, 6, static_cast<Activation>(9), 0.1f, rng); },
      {"FeedForward::FeedForward", "'kind'"});
  Rng copy = saved;
  CHECK(rng.next_u64() == copy.next_u64());  // the rng was not advanced by the failed calls
}

TEST_CASE("FeedForward reuses its buffers: repeated, reshaped and copied calls agree") {
  // The cache and the layer keep their (N, d_ff) buffers between calls; nothing of one call may
  // reach the next, whatever its shape.
  Rng rng(9);
  FF ff(4, 6, Activation::gelu_tanh, 0.3, rng);
  const Dropout<double> start = ff.dropout;
  const MatD small = eftest::random_matrix(3, 4, rng), big = eftest::random_matrix(7, 4, rng);
  FF::Cache shared;  // one cache for every call, as a training loop keeps it
  auto run = [&](FF& layer, const MatD& x) {
    layer.dropout = start;
    layer.zero_grad();
    const MatD y = layer.forward(x, shared);
    const MatD dx = layer.backward(x, shared);  // dy = x: any fixed upstream gradient
    return std::make_tuple(y, dx, MatD(layer.linear1.weight.grad), MatD(layer.linear2.bias.grad));
  };
  const auto first_small = run(ff, small);
  const auto first_big = run(ff, big);
  CHECK(run(ff, small) == first_small);  // after a larger call
  CHECK(run(ff, big) == first_big);
  FF copy = ff;
  CHECK(run(copy, big) == first_big);
  FF::Cache fresh;  // and the same as with a cache of its own
  ff.dropout = start;
  CHECK(MatD(ff.forward(big, fresh)) == std::get<0>(first_big));
}

TEST_CASE("FeedForward backward rejects a cache from elsewhere and leaves the gradients") {
  Rng rng(10);
  FeedForward<float> ff(4, 6, Activation::relu, 0.1f, rng), other(4, 5, Activation::relu, 0.1f,
                                                                  rng);
  FeedForward<float>::Cache empty, foreign;
  other.forward(Matrix<float>::Ones(3, 4), foreign);
  eftest::check_throws_with([&] { ff.backward(Matrix<float>::Ones(3, 4), foreign); },
                            {"FeedForward::backward", "'cache.activation.x'", "(3, 5)", "(3, 6)"});
  eftest::check_throws_with([&] { ff.backward(Matrix<float>::Ones(0, 4), empty); },
                            {"FeedForward::backward", "'cache'", "is empty: no forward pass"});
  for (const auto& p : ff.parameters()) CHECK(p.param->grad.isZero());
}
