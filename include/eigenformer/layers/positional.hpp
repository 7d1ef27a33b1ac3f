// Positional encodings, added to a (B*T, d_model) batch matrix: token (b, t) gets the encoding of
// position start_pos + t (start_pos > 0 when decoding incrementally).
//
//  - SinusoidalPositionalEncoding: the fixed table of "Attention Is All You Need",
//      PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)),
//    optionally scaling the input by sqrt(d_model) first (the paper's embedding scaling).
//  - LearnedPositionalEncoding: a trainable (max_len, d_model) table as in GPT-2, initialised
//    N(0, 0.02^2) like GPT-2 by default (PyTorch has no such module); the models draw it at the
//    scale of their token embeddings.
//
// Both follow the gradient contract of core/param.hpp.
#pragma once

#include <cmath>
#include <string>

#include "../core/parallel.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless B and T are positive and positions start_pos .. start_pos+T-1 fit in max_len.
inline void check_position_range(std::string_view func, Index B, Index T, Index start_pos,
                                 Index max_len) {
  check_positive(func, "B", B);
  check_positive(func, "T", T);
  require(start_pos >= 0, func, "start_pos",
          [&] { return "must be >= 0, got " + std::to_string(start_pos); });
  require(start_pos + T <= max_len, func, "T", [&] {
    return "is " + std::to_string(T) + " with start_pos " + std::to_string(start_pos) +
           ": position " + std::to_string(start_pos + T - 1) + " is beyond max_len " +
           std::to_string(max_len);
  });
}

/// Throws unless x is (B*T, d_model) and positions start_pos .. start_pos+T-1 fit in max_len.
template <class Scalar>
void check_positions(std::string_view func, std::string_view arg, ConstRef<Scalar> x, Index B,
                     Index T, Index start_pos, Index d_model, Index max_len) {
  check_position_range(func, B, T, start_pos, max_len);
  check_shape(func, arg, x, B * T, d_model);
}

/// y (B*T, d) = x (B*T, d) * scale + table (max_len, d) rows start_pos .. start_pos+T-1, added
/// to each of the B sequences. y has x's shape; it may be x.
template <class Scalar>
void add_positions(Matrix<Scalar>& y, ConstRef<Scalar> x, Scalar scale, const Matrix<Scalar>& table,
                   Index B, Index T, Index start_pos) {
  const Index d = x.cols();
  parallel_for(B, static_cast<double>(T * d), [&](Index b) {
    y.block(b * T, 0, T, d) = x.block(b * T, 0, T, d) * scale + table.block(start_pos, 0, T, d);
  });
}

}  // namespace detail

template <class Scalar = float>
class SinusoidalPositionalEncoding {
 public:
  using Mat = Matrix<Scalar>;

  SinusoidalPositionalEncoding() = default;

  /// Precomputes the (max_len, d_model) table in double. With odd d_model the last column is a sin.
  /// scale_embeddings: forward multiplies its input by sqrt(d_model) before adding the table.
  /// Throws ArgumentError unless d_model and max_len are positive.
  SinusoidalPositionalEncoding(Index d_model, Index max_len, bool scale_embeddings = false);

  /// The table's width, and its length: positions 0 .. max_len - 1.
  Index d_model() const { return table_.cols(); }
  Index max_len() const { return table_.rows(); }
  /// The input multiplier: sqrt(d_model) with scale_embeddings, else 1.
  Scalar scale() const { return scale_; }
  /// PE: (max_len, d_model).
  const Mat& table() const { return table_; }

  /// x (B*T, d_model) -> x * scale + PE[start_pos + t] for token (b, t).
  /// Throws ArgumentError naming SinusoidalPositionalEncoding::forward unless B and T are positive,
  /// start_pos >= 0, start_pos + T <= max_len() and x is (B*T, d_model).
  Mat forward(ConstRef<Scalar> x, Index B, Index T, Index start_pos = 0) const;

  /// forward(x, B, T, start_pos) written over x. Throws as forward, leaving x as it was.
  void forward_in_place(Mat& x, Index B, Index T, Index start_pos = 0) const;

  /// dy (N, d_model) -> dx = dy * scale (fresh). There are no parameters.
  /// Throws ArgumentError unless dy has d_model() columns.
  Mat backward(ConstRef<Scalar> dy) const;

  /// None: the table is fixed; zero_grad has nothing to clear.
  ParamList<Scalar> parameters() { return {}; }
  void zero_grad() {}

 private:
  Mat table_;  // (max_len, d_model)
  Scalar scale_ = Scalar(1);
};

template <class Scalar>
SinusoidalPositionalEncoding<Scalar>::SinusoidalPositionalEncoding(Index d_model, Index max_len,
                                                                   bool scale_embeddings)
    : scale_(scale_embeddings ? static_cast<Scalar>(std::sqrt(static_cast<double>(d_model)))
                              : Scalar(1)) {
  detail::check_positive("SinusoidalPositionalEncoding::SinusoidalPositionalEncoding", "d_model",
                         d_model);
  detail::check_positive("SinusoidalPositionalEncoding::SinusoidalPositionalEncoding", "max_len",
                         max_len);
  table_.resize(max_len, d_model);
  for (Index j = 0; j < d_model; ++j) {
    const double pair = static_cast<double>(j - j % 2);  // 2i
    const double inv_freq = std::pow(10000.0, -pair / static_cast<double>(d_model));
    for (Index pos = 0; pos < max_len; ++pos) {
      const double angle = static_cast<double>(pos) * inv_freq;
      table_(pos, j) = static_cast<Scalar>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  }
}

template <class Scalar>
auto SinusoidalPositionalEncoding<Scalar>::forward(ConstRef<Scalar> x, Index B, Index T,
                                                   Index start_pos) const -> Mat {
  detail::check_positions<Scalar>("SinusoidalPositionalEncoding::forward", "x", x, B, T, start_pos,
                                  d_model(), max_len());
  Mat y(x.rows(), x.cols());
  detail::add_positions<Scalar>(y, x, scale_, table_, B, T, start_pos);
  return y;
}

template <class Scalar>
void SinusoidalPositionalEncoding<Scalar>::forward_in_place(Mat& x, Index B, Index T,
                                                            Index start_pos) const {
  detail::check_positions<Scalar>("SinusoidalPositionalEncoding::forward", "x", x, B, T, start_pos,
                                  d_model(), max_len());
  detail::add_positions<Scalar>(x, x, scale_, table_, B, T, start_pos);
}

template <class Scalar>
auto SinusoidalPositionalEncoding<Scalar>::backward(ConstRef<Scalar> dy) const -> Mat {
  detail::check_shape("SinusoidalPositionalEncoding::backward", "dy", dy, -1, d_model());
  return dy * scale_;
}

template <class Scalar = float>
class LearnedPositionalEncoding {
 public:
  using Mat = Matrix<Scalar>;

  Param<Scalar> weight;  // (max_len, d_model)

  LearnedPositionalEncoding() = default;

  /// weight from N(0, init_std^2): 0.02 by default, as GPT-2 initialises its position embeddings
  /// (next to token embeddings of the same scale). The models pass the scale of their token
  /// embeddings, so that positions are neither drowned nor drowning. Throws ArgumentError unless
  /// d_model and max_len are positive.
  LearnedPositionalEncoding(Index d_model, Index max_len, Rng& rng, double init_std = 0.02);

  /// The table's width, and its length: positions 0 .. max_len - 1.
  Index d_model() const { return weight.value.cols(); }
  Index max_len() const { return weight.value.rows(); }

  /// x (B*T, d_model) -> x + W[start_pos + t] for token (b, t).
  /// Throws ArgumentError naming LearnedPositionalEncoding::forward unless B and T are positive,
  /// start_pos >= 0, start_pos + T <= max_len() and x is (B*T, d_model).
  Mat forward(ConstRef<Scalar> x, Index B, Index T, Index start_pos = 0) const;

  /// forward(x, B, T, start_pos) written over x. Throws as forward, leaving x as it was.
  void forward_in_place(Mat& x, Index B, Index T, Index start_pos = 0) const;

  /// dy (B*T, d_model) -> dx = dy (fresh); weight.grad rows start_pos .. start_pos+T-1 += the sum
  /// of dy over the B sequences.
  /// B, T and start_pos are the forward's. Throws ArgumentError naming
  /// LearnedPositionalEncoding::backward, changing nothing, unless they and dy pass the
  /// forward's checks.
  Mat backward(ConstRef<Scalar> dy, Index B, Index T, Index start_pos = 0);

  /// backward without the (unchanged) input gradient: only weight.grad changes. Throws as backward.
  void add_grad(ConstRef<Scalar> dy, Index B, Index T, Index start_pos = 0);

  /// "weight", a pointer into this layer; zero_grad sets its gradient to zero.
  ParamList<Scalar> parameters() { return {{"weight", &weight}}; }
  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

template <class Scalar>
LearnedPositionalEncoding<Scalar>::LearnedPositionalEncoding(Index d_model, Index max_len, Rng& rng,
                                                             double init_std) {
  detail::check_positive("LearnedPositionalEncoding::LearnedPositionalEncoding", "d_model",
                         d_model);
  detail::check_positive("LearnedPositionalEncoding::LearnedPositionalEncoding", "max_len",
                         max_len);
  weight = Param<Scalar>(max_len, d_model);
  fill_normal(weight.value, 0.0, init_std, rng);
}

template <class Scalar>
auto LearnedPositionalEncoding<Scalar>::forward(ConstRef<Scalar> x, Index B, Index T,
                                                Index start_pos) const -> Mat {
  detail::check_positions<Scalar>("LearnedPositionalEncoding::forward", "x", x, B, T, start_pos,
                                  d_model(), max_len());
  Mat y(x.rows(), x.cols());
  detail::add_positions<Scalar>(y, x, Scalar(1), weight.value, B, T, start_pos);
  return y;
}

template <class Scalar>
void LearnedPositionalEncoding<Scalar>::forward_in_place(Mat& x, Index B, Index T,
                                                         Index start_pos) const {
  detail::check_positions<Scalar>("LearnedPositionalEncoding::forward", "x", x, B, T, start_pos,
                                  d_model(), max_len());
  detail::add_positions<Scalar>(x, x, Scalar(1), weight.value, B, T, start_pos);
}

template <class Scalar>
auto LearnedPositionalEncoding<Scalar>::backward(ConstRef<Scalar> dy, Index B, Index T,
                                                 Index start_pos) -> Mat {
  add_grad(dy, B, T, start_pos);
  return dy;
}

template <class Scalar>
void LearnedPositionalEncoding<Scalar>::add_grad(ConstRef<Scalar> dy, Index B, Index T,
                                                 Index start_pos) {
  detail::check_positions<Scalar>("LearnedPositionalEncoding::backward", "dy", dy, B, T, start_pos,
                                  d_model(), max_len());
  const Index d = d_model();
  for (Index b = 0; b < B; ++b) weight.grad.block(start_pos, 0, T, d) += dy.block(b * T, 0, T, d);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(SinusoidalPositionalEncoding)
EIGENFORMER_CLASS_TEMPLATES(LearnedPositionalEncoding)

}  // namespace eigenformer
