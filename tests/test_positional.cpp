// Positional encodings added to the embeddings (layers/positional.hpp), and the two position
// schemes that act inside attention: RoPE (ops/rotary.hpp) and T5's buckets
// (ops/relative_position.hpp).
#include <eigenformer/layers/attention_positions.hpp>
#include <eigenformer/layers/positional.hpp>
#include <eigenformer/ops/relative_position.hpp>
#include <eigenformer/ops/rotary.hpp>

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

TEST_CASE_TEMPLATE("Sinusoidal table matches the paper's formula", Scalar, float, double) {
  const double tol = std::is_same<Scalar, float>::value ? 1e-6 : 1e-15;
  SinusoidalPositionalEncoding<Scalar> pe(8, 20);
  CHECK(pe.d_model() == 8);
  CHECK(pe.max_len() == 20);
  CHECK(pe.scale() == Scalar(1));
  const Matrix<Scalar>& table = pe.table();
  for (Index j = 0; j < 8; ++j) CHECK(table(0, j) == Scalar(j % 2 == 0 ? 0 : 1));  // sin 0, cos 0
  // pos 5, i 3: 10000^(2*3/8) = 1000, so the angle is 5/1000.
  CHECK(std::abs(table(5, 6) - std::sin(0.005)) <= tol);
  CHECK(std::abs(table(5, 7) - std::cos(0.005)) <= tol);
  // i 0: angle = pos; i 1: 10000^(2/8) = 10, angle = pos/10.
  CHECK(std::abs(table(3, 0) - std::sin(3.0)) <= tol);
  CHECK(std::abs(table(3, 1) - std::cos(3.0)) <= tol);
  CHECK(std::abs(table(19, 2) - std::sin(1.9)) <= tol);
  CHECK(std::abs(table(19, 3) - std::cos(1.9)) <= tol);
}

TEST_CASE("Sinusoidal table with odd d_model ends in a sin column") {
  SinusoidalPositionalEncoding<double> pe(5, 10);
  // columns: sin(p), cos(p), sin(p/10000^(2/5)), cos(p/10000^(2/5)), sin(p/10000^(4/5))
  const double pos = 7.0;
  CHECK(std::abs(pe.table()(7, 2) - std::sin(pos / std::pow(10000.0, 0.4))) <= 1e-15);
  CHECK(std::abs(pe.table()(7, 3) - std::cos(pos / std::pow(10000.0, 0.4))) <= 1e-15);
  CHECK(std::abs(pe.table()(7, 4) - std::sin(pos / std::pow(10000.0, 0.8))) <= 1e-15);
  CHECK(pe.table()(0, 4) == 0.0);
}

TEST_CASE_TEMPLATE("Sinusoidal forward adds PE[start_pos + t] with optional scaling", Scalar,
                   float, double) {
  Rng rng(1);
  const Index B = 2, T = 3, d = 4;
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(B * T, d, rng);
  for (bool scale : {false, true}) {
    SinusoidalPositionalEncoding<Scalar> pe(d, 10, scale);
    const Scalar s = scale ? Scalar(2) : Scalar(1);  // sqrt(4)
    CHECK(pe.scale() == s);
    for (Index start : {0, 7}) {
      const Matrix<Scalar> y = pe.forward(x, B, T, start);
      for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) {
          const Matrix<Scalar> expected = x.row(b * T + t) * s + pe.table().row(start + t);
          CHECK((y.row(b * T + t) - expected).cwiseAbs().maxCoeff() == Scalar(0));
        }
    }
  }
}

TEST_CASE("Incremental decoding sees the same encodings as a full pass") {
  Rng rng(2);
  SinusoidalPositionalEncoding<double> pe(6, 8, true);
  LearnedPositionalEncoding<double> lpe(6, 8, rng);
  const MatD x = eftest::random_matrix(5, 6, rng);
  const MatD full = pe.forward(x, 1, 5);
  const MatD full_learned = lpe.forward(x, 1, 5);
  for (Index t = 0; t < 5; ++t) {
    CHECK(pe.forward(x.row(t), 1, 1, t) == full.row(t));
    CHECK(lpe.forward(x.row(t), 1, 1, t) == full_learned.row(t));
  }
}

TEST_CASE("Sinusoidal input gradient matches finite differences and comes back fresh") {
  Rng rng(3);
  for (bool scale : {false, true}) {
    SinusoidalPositionalEncoding<double> pe(5, 12, scale);
    MatD x = eftest::random_matrix(2 * 4, 5, rng);
    const MatD R = eftest::random_matrix(2 * 4, 5, rng);
    auto loss = [&] { return projection(pe.forward(x, 2, 4, 3), R); };
    const MatD dx = pe.backward(R);
    eftest::check_grad(x, dx, loss, scale ? "x (scaled)" : "x");
  }
  SinusoidalPositionalEncoding<double> pe(5, 12, true);
  CHECK(pe.parameters().empty());
  const MatD x = eftest::random_matrix(4, 5, rng);
  const MatD R = eftest::random_matrix(4, 5, rng);
  eftest::check_gradient_contract(pe.parameters(), [&] {
    pe.forward(x, 2, 2);
    return pe.backward(R);
  });
}

TEST_CASE_TEMPLATE("Learned encoding initialises N(0, 0.02^2)", Scalar, float, double) {
  Rng rng(4);
  LearnedPositionalEncoding<Scalar> lpe(64, 100, rng);
  CHECK(lpe.d_model() == 64);
  CHECK(lpe.max_len() == 100);
  const Matrix<double> w = lpe.weight.value.template cast<double>();
  const double mean = w.mean();
  const double stddev = std::sqrt((w.array() - mean).square().mean());
  CHECK(std::abs(mean) < 0.001);  // 4 standard errors of a mean of 6400 draws
  CHECK(std::abs(stddev - 0.02) < 0.001);
  REQUIRE(lpe.parameters().size() == 1);
  CHECK(lpe.parameters()[0].name == "weight");
  CHECK(lpe.weight.grad.isZero());
}

TEST_CASE("Learned encoding gradients match finite differences") {
  Rng rng(5);
  LearnedPositionalEncoding<double> lpe(4, 9, rng);
  const Index B = 3, T = 4, start = 2;
  MatD x = eftest::random_matrix(B * T, 4, rng);
  const MatD R = eftest::random_matrix(B * T, 4, rng);
  auto loss = [&] { return projection(lpe.forward(x, B, T, start), R); };
  lpe.zero_grad();
  const MatD dx = lpe.backward(R, B, T, start);
  eftest::check_grad(x, dx, loss, "x");
  eftest::check_param_grads(lpe.parameters(), loss, [&] { lpe.backward(R, B, T, start); });
  // Rows outside start .. start+T-1 get nothing.
  CHECK(lpe.weight.grad.topRows(start).isZero());
  CHECK(lpe.weight.grad.bottomRows(9 - start - T).isZero());

  lpe.zero_grad();
  CHECK(lpe.backward(R, B, T, start) == R);
  const MatD expected = R.middleRows(0, T) + R.middleRows(T, T) + R.middleRows(2 * T, T);
  CHECK((lpe.weight.grad.middleRows(start, T) - expected).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Learned encoding follows the gradient contract") {
  Rng rng(6);
  LearnedPositionalEncoding<double> lpe(4, 6, rng);
  const MatD x = eftest::random_matrix(2 * 3, 4, rng);
  const MatD R = eftest::random_matrix(2 * 3, 4, rng);
  eftest::check_gradient_contract(lpe.parameters(), [&] {
    lpe.forward(x, 2, 3, 1);
    return lpe.backward(R, 2, 3, 1);
  });
}

TEST_CASE("Positional encodings reject bad shapes and positions, leaving parameters unchanged") {
  Rng rng(7);
  SinusoidalPositionalEncoding<float> pe(4, 6);
  LearnedPositionalEncoding<float> lpe(4, 6, rng);
  const Matrix<float> before = lpe.weight.value;
  const Matrix<float> x = Matrix<float>::Ones(6, 4);

  eftest::check_throws_with([&] { pe.forward(x, 2, 3, 4); },
                            {"SinusoidalPositionalEncoding::forward", "'T'", "start_pos 4",
                             "position 6", "max_len 6"});
  eftest::check_throws_with([&] { pe.forward(Matrix<float>::Ones(1, 4), 1, 7); },
                            {"SinusoidalPositionalEncoding::forward", "max_len 6"});
  eftest::check_throws_with([&] { pe.forward(x, 2, 2); },
                            {"SinusoidalPositionalEncoding::forward", "'x'", "(6, 4)", "(4, 4)"});
  eftest::check_throws_with([&] { pe.forward(Matrix<float>::Ones(6, 5), 2, 3); },
                            {"SinusoidalPositionalEncoding::forward", "'x'", "(6, 5)", "(6, 4)"});
  eftest::check_throws_with([&] { pe.forward(x, 2, 3, -1); },
                            {"SinusoidalPositionalEncoding::forward", "'start_pos'", "-1"});
  eftest::check_throws_with([&] { pe.forward(x, 0, 3); },
                            {"SinusoidalPositionalEncoding::forward", "'B'"});
  eftest::check_throws_with([&] { pe.backward(Matrix<float>::Ones(6, 3)); },
                            {"SinusoidalPositionalEncoding::backward", "'dy'", "(6, 3)", "(*, 4)"});

  eftest::check_throws_with([&] { lpe.forward(x, 1, 6, 1); },
                            {"LearnedPositionalEncoding::forward", "'T'", "max_len 6"});
  eftest::check_throws_with([&] { lpe.forward(x, 3, 3); },
                            {"LearnedPositionalEncoding::forward", "'x'", "(6, 4)", "(9, 4)"});
  eftest::check_throws_with([&] { lpe.backward(x, 2, 3, 4); },
                            {"LearnedPositionalEncoding::backward", "'T'", "max_len 6"});
  eftest::check_throws_with([&] { lpe.backward(Matrix<float>::Ones(6, 2), 2, 3); },
                            {"LearnedPositionalEncoding::backward", "'dy'", "(6, 2)", "(6, 4)"});
  CHECK(lpe.weight.value == before);
  CHECK(lpe.weight.grad.isZero());

  eftest::check_throws_with([&] { SinusoidalPositionalEncoding<float>(0, 6); },
                            {"SinusoidalPositionalEncoding", "d_model"});
  eftest::check_throws_with([&] { LearnedPositionalEncoding<float>(4, 0, rng); },
                            {"LearnedPositionalEncoding", "max_len"});
}

TEST_CASE("PositionalKind parses its names and rejects others") {
  CHECK(parse_positional_kind("sinusoidal") == PositionalKind::sinusoidal);
  CHECK(parse_positional_kind("learned") == PositionalKind::learned);
  CHECK(parse_positional_kind("relative") == PositionalKind::relative);
  CHECK(parse_positional_kind("rotary") == PositionalKind::rotary);
  for (PositionalKind kind : {PositionalKind::sinusoidal, PositionalKind::learned,
                              PositionalKind::relative, PositionalKind::rotary}) {
    CHECK(parse_positional_kind(positional_kind_name(kind)) == kind);
    CHECK(to_string(kind) == positional_kind_name(kind));
  }
  eftest::check_throws_with([] { parse_positional_kind("rope"); },
                            {"parse_positional_kind", "'rope'", "'sinusoidal'", "'learned'",
                             "'relative'", "'rotary'"});
}

TEST_CASE_TEMPLATE("RoPE keeps each head's norm and pairs feature i with i + dh/2", Scalar, float,
                   double) {
  const double tol = std::is_same<Scalar, float>::value ? 1e-5 : 1e-13;
  Rng rng(8);
  const Index B = 2, T = 5, H = 3, dh = 6;
  const Matrix<Scalar> x = eftest::random_matrix<Scalar>(B * T, H * dh, rng);
  const RotaryTable<Scalar> tab = rotary_table<Scalar>(7, T, dh, 100.0);
  CHECK(tab.length() == T);
  CHECK(tab.half() == 3);
  Matrix<Scalar> y = x;
  rotary_forward<Scalar>(y, H, tab);
  for (Index r = 0; r < B * T; ++r)
    for (Index h = 0; h < H; ++h) {
      const double nx = double(x.row(r).segment(h * dh, dh).norm());
      CHECK(std::abs(double(y.row(r).segment(h * dh, dh).norm()) - nx) <= tol * nx);
    }
  // Token t = 2 of sequence 1 (row 7) is at position 9; pair i = 1 of head 2 (features 13, 16)
  // turns by 9 * 100^(-2/6).
  const double angle = 9.0 * std::pow(100.0, -2.0 / 6.0);
  const double x1 = double(x(7, 13)), x2 = double(x(7, 16));
  CHECK(std::abs(double(y(7, 13)) - (x1 * std::cos(angle) - x2 * std::sin(angle))) <= tol);
  CHECK(std::abs(double(y(7, 16)) - (x2 * std::cos(angle) + x1 * std::sin(angle))) <= tol);
  // The backward is the inverse rotation.
  rotary_backward<Scalar>(y, H, tab);
  CHECK((y - x).cwiseAbs().maxCoeff() <= Scalar(tol));
}

TEST_CASE("RoPE: q . k depends on the positions only through their offset") {
  Rng rng(9);
  const Index H = 2, dh = 8;
  const MatD q = eftest::random_matrix(1, H * dh, rng), k = eftest::random_matrix(1, H * dh, rng);
  auto rotated_dot = [&](Index q_pos, Index k_pos, Index h) {
    MatD qr = q, kr = k;
    rotary_forward<double>(qr, H, rotary_table<double>(q_pos, 1, dh, 10000.0));
    rotary_forward<double>(kr, H, rotary_table<double>(k_pos, 1, dh, 10000.0));
    return qr.row(0).segment(h * dh, dh).dot(kr.row(0).segment(h * dh, dh));
  };
  for (Index h = 0; h < H; ++h)
    for (Index offset : {-3, 0, 2, 5}) {
      const double base = rotated_dot(10, 10 + offset, h);
      for (Index shift : {-10, -4, 7, 1000})
        CHECK(std::abs(rotated_dot(10 + shift, 10 + shift + offset, h) - base) <= 1e-11);
    }
  CHECK(std::abs(rotated_dot(3, 5, 0) - rotated_dot(3, 6, 0)) > 1e-3);  // but it does see it
}

TEST_CASE("RoPE gradient matches finite differences") {
  Rng rng(10);
  const Index B = 2, T = 3, H = 2, dh = 4;
  MatD x = eftest::random_matrix(B * T, H * dh, rng);
  const MatD R = eftest::random_matrix(B * T, H * dh, rng);
  const RotaryTable<double> tab = rotary_table<double>(2, T, dh, 10.0);
  auto loss = [&] {
    MatD y = x;
    rotary_forward<double>(y, H, tab);
    return projection(y, R);
  };
  MatD dx = R;
  rotary_backward<double>(dx, H, tab);
  eftest::check_grad(x, dx, loss, "x");
}

TEST_CASE("T5 buckets: exact near 0, log-spaced up to max_distance, clipped beyond") {
  // T5's defaults (32 buckets, max_distance 128), bidirectional: 16 buckets per sign, distances
  // 0..7 exact, then 8-11, 12-15, 16-22, 23-31, 32-45, 46-63, 64-90, 91+ (tools/make_fixtures.py
  // computes the whole table with PyTorch; test_pytorch_reference compares it).
  const std::pair<Index, Index> bidirectional[] = {
      {0, 0},    {-1, 1},   {-7, 7},   {-8, 8},    {-11, 8},   {-12, 9},   {-16, 10},
      {-22, 10}, {-23, 11}, {-45, 12}, {-46, 13},  {-90, 14},  {-91, 15},  {-1000, 15},
      {1, 17},   {7, 23},   {8, 24},   {15, 25},   {16, 26},   {127, 31},  {100000, 31}};
  // rel copied: CAPTURE's lambda cannot capture a structured binding in C++17 (clang enforces it).
  for (const auto& [r, bucket] : bidirectional) {
    const Index rel = r;
    CAPTURE(rel);
    CHECK(relative_position_bucket(rel, true, 32, 128) == bucket);
  }
  // Causal: all 32 buckets for earlier keys, 0..15 exact; later keys share bucket 0.
  const std::pair<Index, Index> causal[] = {{5, 0},     {0, 0},     {-15, 15}, {-16, 16},
                                            {-18, 16},  {-19, 17},  {-112, 30}, {-113, 31},
                                            {-500, 31}};
  for (const auto& [r, bucket] : causal) {
    const Index rel = r;
    CAPTURE(rel);
    CHECK(relative_position_bucket(rel, false, 32, 128) == bucket);
  }
  // Per distance column of a (2, 4) attention with queries at positions 2, 3: c - 3.
  const std::vector<Index> cols = relative_position_buckets(2, 4, true, 32, 128);
  REQUIRE(cols.size() == 5);
  CHECK(cols == std::vector<Index>{3, 2, 1, 0, 17});
}

TEST_CASE("relative bias: gathered per distance, its gradient added back per bucket") {
  Rng rng(11);
  MatD table = eftest::random_matrix(6, 2, rng);  // (num_buckets, H)
  const std::vector<Index> buckets = relative_position_buckets(4, 4, true, 6, 3);
  MatD bias;
  relative_bias_forward<double>(bias, table, buckets);
  REQUIRE(bias.rows() == 2);
  REQUIRE(bias.cols() == 7);
  for (Index c = 0; c < 7; ++c)
    for (Index h = 0; h < 2; ++h) CHECK(bias(h, c) == table(buckets[size_t(c)], h));
  const MatD R = eftest::random_matrix(2, 7, rng);
  MatD dtable = MatD::Constant(6, 2, 0.5);  // accumulates
  relative_bias_backward<double>(dtable, R, buckets);
  dtable.array() -= 0.5;
  auto loss = [&] {
    MatD b;
    relative_bias_forward<double>(b, table, buckets);
    return projection(b, R);
  };
  eftest::check_grad(table, dtable, loss, "table");
}

TEST_CASE("rotary and relative-position ops reject settings and shapes that do not fit") {
  eftest::check_throws_with([] { rotary_table<float>(0, 4, 3, 10000.0); },
                            {"rotary_table", "'dh'", "is 3", "even"});
  eftest::check_throws_with([] { rotary_table<float>(0, -1, 4, 10000.0); },
                            {"rotary_table", "'T'", "-1"});
  eftest::check_throws_with([] { rotary_table<float>(0, 4, 4, -2.0); },
                            {"rotary_table", "'base'", "positive and finite"});
  const RotaryTable<float> tab = rotary_table<float>(0, 4, 4, 10000.0);
  Matrix<float> x = Matrix<float>::Ones(8, 6);
  eftest::check_throws_with([&] { rotary_forward<float>(x, 2, tab); },
                            {"rotary_forward", "'x'", "(8, 6)", "(*, 8)"});
  Matrix<float> y = Matrix<float>::Ones(6, 8);
  eftest::check_throws_with([&] { rotary_backward<float>(y, 2, tab); },
                            {"rotary_backward", "'x'", "6 rows", "4 positions"});
  CHECK(y.isOnes());

  eftest::check_throws_with([] { relative_position_bucket(3, true, 2, 8); },
                            {"relative_position_bucket", "'num_buckets'", "is 2", "at least 4"});
  eftest::check_throws_with([] { relative_position_bucket(3, false, 8, 4); },
                            {"relative_position_bucket", "'max_distance'", "is 4",
                             "4 exactly bucketed"});
  eftest::check_throws_with([] { relative_position_buckets(0, 3, true, 8, 4); },
                            {"relative_position_buckets", "'Tq'"});
  Matrix<float> bias;
  const Matrix<float> table = Matrix<float>::Ones(4, 2);
  eftest::check_throws_with([&] { relative_bias_forward<float>(bias, table, {0, 7}); },
                            {"relative_bias_forward", "'buckets'", "7", "[0, 4)"});
  Matrix<float> dtable = Matrix<float>::Zero(4, 2);
  eftest::check_throws_with(
      [&] { relative_bias_backward<float>(dtable, Matrix<float>::Ones(2, 3), {0, 1}); },
      {"relative_bias_backward", "'dpos_bias'", "(2, 3)", "(2, 2)"});
  eftest::check_throws_with(
      [&] { relative_bias_backward<float>(dtable, Matrix<float>::Ones(2, 2), {0, -1}); },
      {"relative_bias_backward", "'buckets'", "-1"});
  CHECK(dtable.isZero());
}
