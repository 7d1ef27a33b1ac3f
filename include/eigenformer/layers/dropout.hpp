// Dropout (inverted, as PyTorch's nn.Dropout): in training, each element is kept with probability
// 1 - p and kept elements are scaled by 1 / (1 - p), so the expected output equals the input; in
// evaluation, and when p = 0, it is the identity. The layer owns an Rng seeded by the caller, so
// the same seed gives the same masks; the mask is kept in the cache for backward.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include "../core/param.hpp"
#include "../core/random.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless 0 <= p < 1.
template <class Scalar>
void check_dropout_p(const std::string& func, Scalar p) {
  if (p >= Scalar(0) && p < Scalar(1)) return;
  std::ostringstream got;
  got << p;
  throw_argument(func, "p", "must be in [0, 1), got " + got.str());
}

}  // namespace detail

template <class Scalar = float>
class Dropout {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat mask;          // (N, C) 0 or 1 / (1 - p); empty when the forward was the identity
    Index rows = 0;    // the input's shape
    Index cols = 0;
  };

  bool training = true;  // false: the identity

  Dropout() = default;

  Dropout(Scalar p, std::uint64_t seed) : p_(p), rng_(seed) {
    detail::check_dropout_p("Dropout::Dropout", p);
  }

  Scalar p() const { return p_; }
  void train(bool on = true) { training = on; }
  void eval() { training = false; }

  /// x (N, C) -> x: inference is the identity.
  Mat forward(ConstRef<Scalar> x) const { return x; }

  /// x (N, C) -> x * mask (N, C); draws a new mask in training (advancing the rng).
  Mat forward(ConstRef<Scalar> x, Cache& cache) {
    cache.rows = x.rows();
    cache.cols = x.cols();
    cache.mask.resize(0, 0);
    if (!training || p_ == Scalar(0)) return x;
    draw_mask(cache.mask, x.rows(), x.cols());
    return x.cwiseProduct(cache.mask);
  }

  /// dy (N, C) -> dx = dy * mask, with the forward's mask.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) const {
    detail::check_shape("Dropout::backward", "dy", dy, cache.rows, cache.cols);
    if (cache.mask.size() == 0) return dy;
    return dy.cwiseProduct(cache.mask);
  }

  ParamList<Scalar> parameters() { return {}; }

  void zero_grad() {}

 private:
  Scalar p_ = Scalar(0);
  Rng rng_;

  void draw_mask(Mat& mask, Index rows, Index cols) {
    const double p = static_cast<double>(p_);
    const Scalar scale = Scalar(1) / (Scalar(1) - p_);
    mask.resize(rows, cols);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j) mask(i, j) = rng_.uniform() < p ? Scalar(0) : scale;
  }
};

}  // namespace eigenformer
