#include <eigenformer/layers/embedding.hpp>

#include <cmath>
#include <initializer_list>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

IdMatrix make_ids(Index B, Index T, std::initializer_list<Index> values) {
  IdMatrix ids(B, T);
  Index n = 0;
  for (Index v : values) {
    ids(n / T, n % T) = v;
    ++n;
  }
  return ids;
}

}  // namespace

TEST_CASE_TEMPLATE("Embedding forward gathers rows in batch order", Scalar, float, double) {
  Rng rng(1);
  Embedding<Scalar> emb(5, 3, rng);
  const IdMatrix ids = make_ids(2, 3, {4, 0, 2, 2, 1, 4});
  const Matrix<Scalar> y = emb.forward(ids);
  REQUIRE(y.rows() == 6);
  REQUIRE(y.cols() == 3);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 3; ++t) CHECK(y.row(b * 3 + t) == emb.weight.value.row(ids(b, t)));
}

TEST_CASE_TEMPLATE("Embedding initialises N(0, 1) with a zero padding row", Scalar, float, double) {
  Rng rng(2);
  Embedding<Scalar> emb(200, 50, rng, 7);
  CHECK(emb.vocab_size() == 200);
  CHECK(emb.d_model() == 50);
  CHECK(emb.weight.value.row(7).isZero());
  const Matrix<double> w = emb.weight.value.template cast<double>();
  const double mean = w.mean();
  const double var = (w.array() - mean).square().mean();
  CHECK(std::abs(mean) < 0.04);  // 4 standard errors of a mean of 10000 draws
  CHECK(std::abs(var - 1.0) < 0.06);
  CHECK(emb.parameters().size() == 1);
  CHECK(emb.parameters()[0].name == "weight");
}

TEST_CASE("Embedding gradients match finite differences, repeated ids accumulate") {
  Rng rng(3);
  Embedding<double> emb(6, 4, rng);
  const IdMatrix ids = make_ids(2, 4, {1, 3, 1, 5, 3, 1, 0, 1});  // id 1 four times, 3 twice
  const MatD R = eftest::random_matrix(8, 4, rng);
  auto loss = [&] { return projection(emb.forward(ids), R); };
  eftest::check_param_grads(emb.parameters(), loss, [&] { emb.backward(R, ids); });

  emb.zero_grad();
  emb.backward(R, ids);
  const MatD expected_row1 = R.row(0) + R.row(2) + R.row(5) + R.row(7);
  CHECK((emb.weight.grad.row(1) - expected_row1).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(emb.weight.grad.row(2).isZero());
  CHECK(emb.weight.grad.row(4).isZero());
}

TEST_CASE("Embedding padding rows get no gradient") {
  Rng rng(4);
  Embedding<double> emb(5, 3, rng, 0);
  const IdMatrix ids = make_ids(2, 3, {2, 0, 0, 4, 2, 0});
  CHECK(emb.forward(ids).row(1).isZero());
  const MatD R = eftest::random_matrix(6, 3, rng);
  emb.zero_grad();
  emb.backward(R, ids);
  CHECK(emb.weight.grad.row(0).isZero());
  const MatD expected_row2 = R.row(0) + R.row(4);
  CHECK((emb.weight.grad.row(2) - expected_row2).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((emb.weight.grad.row(4) - R.row(3)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Embedding follows the gradient contract (parameters only: ids have no gradient)") {
  Rng rng(5);
  Embedding<double> emb(6, 4, rng, 2);
  const IdMatrix ids = make_ids(2, 3, {1, 2, 1, 5, 0, 1});
  const MatD R = eftest::random_matrix(6, 4, rng);
  eftest::check_gradient_contract(emb.parameters(), [&] {
    emb.forward(ids);
    emb.backward(R, ids);
    return MatD(MatD::Zero(1, 1));  // no input gradient
  });
}

TEST_CASE("Embedding ops work directly on a table") {
  Rng rng(6);
  const MatD table = eftest::random_matrix(4, 2, rng);
  const IdMatrix ids = make_ids(1, 3, {3, 3, 0});
  MatD out;
  embedding_forward<double>(out, ids, table);
  CHECK(out.row(0) == table.row(3));
  CHECK(out.row(2) == table.row(0));
  MatD dtable = MatD::Constant(4, 2, 1.0);
  const MatD dout = eftest::random_matrix(3, 2, rng);
  embedding_backward<double>(dtable, dout, ids, 0);
  const MatD expected_row3 = MatD::Ones(1, 2) + dout.row(0) + dout.row(1);
  CHECK((dtable.row(3) - expected_row3).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((dtable.row(0).array() == 1.0).all());  // padding id 0: untouched
  const IdMatrix bad = make_ids(1, 2, {0, 4});
  eftest::check_throws_with([&] { embedding_forward<double>(out, bad, table); },
                            {"embedding_forward", "'ids'", "id 4", "(0, 1)", "[0, 4)"});
  eftest::check_throws_with([&] { embedding_backward<double>(dtable, MatD::Zero(2, 2), ids, -1); },
                            {"embedding_backward", "'dout'", "(2, 2)", "(3, 2)"});
  const MatD before = dtable;
  eftest::check_throws_with(
      [&] { embedding_backward<double>(dtable, MatD::Ones(3, 2), ids, -2); },
      {"embedding_backward", "'padding_id'", "must be -1 (none) or in [0, 4)", "got -2"});
  eftest::check_throws_with(
      [&] { embedding_backward<double>(dtable, MatD::Ones(3, 2), ids, 4); },
      {"embedding_backward", "'padding_id'", "got 4"});
  CHECK(dtable == before);
}

TEST_CASE("Embedding rejects bad ids and shapes and leaves its parameters unchanged") {
  Rng rng(7);
  Embedding<float> emb(5, 3, rng);
  const Matrix<float> before = emb.weight.value;
  const IdMatrix too_big = make_ids(2, 3, {0, 1, 2, 3, 4, 5});
  eftest::check_throws_with([&] { emb.forward(too_big); },
                            {"Embedding::forward", "'ids'", "id 5", "(b, t) = (1, 2)",
                             "vocab size 5"});
  const IdMatrix negative = make_ids(1, 2, {-1, 0});
  eftest::check_throws_with([&] { emb.forward(negative); },
                            {"Embedding::forward", "id -1", "(0, 0)", "[0, 5)"});
  const IdMatrix ids = make_ids(2, 2, {0, 1, 2, 3});
  eftest::check_throws_with([&] { emb.backward(Matrix<float>::Ones(4, 2), ids); },
                            {"Embedding::backward", "'dy'", "(4, 2)", "(4, 3)"});
  const IdMatrix bad = make_ids(2, 2, {0, 1, 9, 3});
  eftest::check_throws_with([&] { emb.backward(Matrix<float>::Ones(4, 3), bad); },
                            {"Embedding::backward", "id 9", "(1, 0)"});
  CHECK(emb.weight.value == before);
  CHECK(emb.weight.grad.isZero());
  eftest::check_throws_with([&] { Embedding<float>(0, 3, rng); },
                            {"Embedding::Embedding", "vocab"});
  eftest::check_throws_with([&] { Embedding<float>(5, 0, rng); },
                            {"Embedding::Embedding", "d_model"});
  eftest::check_throws_with([&] { Embedding<float>(5, 3, rng, 5); },
                            {"Embedding::Embedding", "padding_id", "[0, 5)", "got 5"});
}
