#include <eigenformer/layers/multihead_attention.hpp>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;
using MHA = MultiHeadAttention<double>;

namespace {

void check_self_attention_grads(const AttentionMask& mask, Index B, Index T) {
  Rng rng(11);
  MHA attn(8, 2, rng);
  MatD x = eftest::random_matrix(B * T, 8, rng);
  const MatD R = eftest::random_matrix(B * T, 8, rng);
  auto loss = [&] {
    MHA::Cache c;
    return projection(attn.forward(x, B, mask, c), R);
  };
  attn.zero_grad();
  MHA::Cache cache;
  attn.forward(x, B, mask, cache);
  const MatD dx = attn.backward(R, cache);
  eftest::check_grad(x, dx, loss, "x");
  eftest::check_param_grads(attn.parameters(), loss, [&] {
    MHA::Cache c;
    attn.forward(x, B, mask, c);
    attn.backward(R, c);
  });
}

}  // namespace

TEST_CASE("self-attention gradients match finite differences with each mask kind") {
  SUBCASE("no mask") { check_self_attention_grads({}, 2, 4); }
  SUBCASE("causal") {
    AttentionMask m;
    m.causal = true;
    check_self_attention_grads(m, 2, 4);
  }
  SUBCASE("key padding") {
    AttentionMask m;
    m.key_padding = BoolMatrix::Zero(2, 4);
    m.key_padding(1, 2) = m.key_padding(1, 3) = true;
    check_self_attention_grads(m, 2, 4);
  }
  SUBCASE("arbitrary mask, with a fully masked query") {
    AttentionMask m;
    m.attn_mask = BoolMatrix::Zero(4, 4);
    m.attn_mask.row(0).setConstant(true);
    m.attn_mask(2, 1) = true;
    check_self_attention_grads(m, 2, 4);
  }
}

TEST_CASE("cross-attention gradients reach both the queries and the memory") {
  Rng rng(12);
  const Index B = 2, Tq = 3, Tk = 5;
  MHA attn(8, 4, rng);
  MatD query = eftest::random_matrix(B * Tq, 8, rng);
  MatD memory = eftest::random_matrix(B * Tk, 8, rng);
  const MatD R = eftest::random_matrix(B * Tq, 8, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, Tk);
  mask.key_padding(0, 4) = true;
  auto loss = [&] {
    MHA::Cache c;
    return projection(attn.forward(query, memory, B, mask, c), R);
  };
  MHA::Cache cache;
  attn.forward(query, memory, B, mask, cache);
  MatD dmemory;
  const MatD dquery = attn.backward(R, cache, &dmemory);
  eftest::check_grad(query, dquery, loss, "query");
  eftest::check_grad(memory, dmemory, loss, "memory");
  CHECK(dmemory.block(4, 0, 1, 8).isZero());  // the padded key of sequence 0 gets no gradient
  eftest::check_param_grads(attn.parameters(), loss, [&] {
    MHA::Cache c;
    attn.forward(query, memory, B, mask, c);
    MatD dm;
    attn.backward(R, c, &dm);
  });
}

TEST_CASE("multi-head attention follows the gradient contract") {
  Rng rng(13);
  MHA attn(8, 2, rng);
  const MatD x = eftest::random_matrix(6, 8, rng);
  const MatD R = eftest::random_matrix(6, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  eftest::check_gradient_contract(attn.parameters(), [&] {
    MHA::Cache c;
    attn.forward(x, 2, causal, c);
    return attn.backward(R, c);
  });
}

TEST_CASE_TEMPLATE("causal self-attention: outputs 0..t ignore tokens after t", Scalar, float,
                   double) {
  Rng rng(14);
  MultiHeadAttention<Scalar> attn(8, 2, rng);
  const Index B = 2, T = 6, t = 2;
  Matrix<Scalar> x = eftest::random_matrix<Scalar>(B * T, 8, rng);
  AttentionMask causal;
  causal.causal = true;
  typename MultiHeadAttention<Scalar>::Cache c1, c2;
  const Matrix<Scalar> y1 = attn.forward(x, B, causal, c1);
  for (Index b = 0; b < B; ++b)
    x.block(b * T + t + 1, 0, T - t - 1, 8).setConstant(Scalar(7));
  const Matrix<Scalar> y2 = attn.forward(x, B, causal, c2);
  for (Index b = 0; b < B; ++b) {
    CHECK(y1.block(b * T, 0, t + 1, 8) == y2.block(b * T, 0, t + 1, 8));
    CHECK(y1.block(b * T + t + 1, 0, T - t - 1, 8) != y2.block(b * T + t + 1, 0, T - t - 1, 8));
  }
}

TEST_CASE_TEMPLATE("padded keys change nothing", Scalar, float, double) {
  Rng rng(15);
  MultiHeadAttention<Scalar> attn(8, 2, rng);
  const Index B = 2, Tq = 3, Tk = 4;
  const Matrix<Scalar> query = eftest::random_matrix<Scalar>(B * Tq, 8, rng);
  Matrix<Scalar> memory = eftest::random_matrix<Scalar>(B * Tk, 8, rng);
  AttentionMask mask;
  mask.key_padding = BoolMatrix::Zero(B, Tk);
  mask.key_padding(1, 2) = mask.key_padding(1, 3) = true;
  typename MultiHeadAttention<Scalar>::Cache c1, c2;
  const Matrix<Scalar> y1 = attn.forward(query, memory, B, mask, c1);
  memory.block(Tk + 2, 0, 2, 8).setConstant(Scalar(1e3));
  const Matrix<Scalar> y2 = attn.forward(query, memory, B, mask, c2);
  CHECK(y1 == y2);
  // Per-head weights: rows sum to 1 and the padded keys get exactly 0.
  for (Index h = 0; h < 2; ++h) {
    const Matrix<Scalar> w = MultiHeadAttention<Scalar>::attention_weights(c1, 1, h);
    CHECK(w.rows() == Tq);
    CHECK(w.cols() == Tk);
    for (Index i = 0; i < Tq; ++i) CHECK(w.row(i).sum() == doctest::Approx(1.0));
    CHECK(w.rightCols(2).isZero(0));
  }
}

TEST_CASE("multi-head attention rejects bad input and stays unchanged") {
  Rng rng(16);
  eftest::check_throws_with([&] { MultiHeadAttention<float>(10, 3, rng); },
                            {"MultiHeadAttention::MultiHeadAttention", "n_heads", "must divide"});
  MultiHeadAttention<float> attn(8, 2, rng);
  const Matrix<float> before = attn.q_proj.weight.value;
  MultiHeadAttention<float>::Cache c;
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(6, 7), 2, {}, c); },
                            {"MultiHeadAttention::forward", "'query'", "(6, 7)", "(*, 8)"});
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(7, 8), 2, {}, c); },
                            {"'query'", "7 rows", "B = 2"});
  eftest::check_throws_with(
      [&] { attn.forward(Matrix<float>::Ones(6, 8), Matrix<float>::Ones(6, 9), 2, {}, c); },
      {"'memory'", "(6, 9)", "(*, 8)"});
  AttentionMask bad;
  bad.key_padding = BoolMatrix::Zero(2, 4);
  eftest::check_throws_with([&] { attn.forward(Matrix<float>::Ones(6, 8), 2, bad, c); },
                            {"mask.key_padding", "(2, 4)", "(2, 3)"});
  attn.forward(Matrix<float>::Ones(6, 8), 2, {}, c);
  eftest::check_throws_with([&] { attn.backward(Matrix<float>::Ones(5, 8), c); },
                            {"MultiHeadAttention::backward", "'dy'", "(5, 8)", "(6, 8)"});
  CHECK(attn.q_proj.weight.value == before);
  CHECK(attn.q_proj.weight.grad.isZero());
}
