// LayerNorm layer: y = (x - mean) / sqrt(var + eps) * weight + bias over each row's d features,
// with the biased variance, as PyTorch's nn.LayerNorm(d, eps) (whose weights load unchanged).
#pragma once

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../ops/layernorm.hpp"

namespace eigenformer {

template <class Scalar = float>
class LayerNorm {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat x;     // (N, d) the input
    Mat mean;  // (N, 1)
    Mat rstd;  // (N, 1)
  };

  Param<Scalar> weight;  // (1, d) gamma, initialised to 1
  Param<Scalar> bias;    // (1, d) beta, initialised to 0

  LayerNorm() = default;

  /// Normalises over d features with variance epsilon eps; weight starts at ones and bias at
  /// zeros, as in PyTorch. Throws ArgumentError unless d > 0 and eps is positive and finite.
  explicit LayerNorm(Index d, Scalar eps = Scalar(1e-5));

  /// The number of features d, and the epsilon added to the variance.
  Index features() const { return weight.value.cols(); }
  Scalar eps() const { return eps_; }

  /// x (N, d) -> (N, d), inference only.
  /// Throws ArgumentError naming LayerNorm::forward and 'x' unless x has features() columns.
  Mat forward(ConstRef<Scalar> x) const {
    Cache scratch;
    return run_forward(x, scratch.mean, scratch.rstd);
  }

  /// x (N, d) -> (N, d), keeping what backward needs in cache.
  /// Throws as forward(x), before writing cache.
  Mat forward(ConstRef<Scalar> x, Cache& cache) const {
    Mat y = run_forward(x, cache.mean, cache.rstd);
    cache.x = x;
    return y;
  }

  /// dy (N, d) -> dx (N, d); adds into weight.grad and bias.grad.
  /// dx is fresh; cache comes from forward(x, cache). Throws ArgumentError naming
  /// LayerNorm::backward, changing nothing, unless cache holds x (N, d), mean and rstd (N, 1)
  /// and dy is (N, d).
  Mat backward(ConstRef<Scalar> dy, const Cache& cache);

  /// "weight" (gamma) and "bias" (beta): pointers into this layer.
  ParamList<Scalar> parameters() { return {{"weight", &weight}, {"bias", &bias}}; }

  /// Sets the parameters' gradients to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  Scalar eps_ = Scalar(1e-5);

  Mat run_forward(ConstRef<Scalar> x, Mat& mean, Mat& rstd) const;
};

template <class Scalar>
LayerNorm<Scalar>::LayerNorm(Index d, Scalar eps) : eps_(eps) {
  detail::check_positive("LayerNorm::LayerNorm", "d", d);
  detail::check_eps("LayerNorm::LayerNorm", eps);
  weight = Param<Scalar>(1, d, true);
  weight.value.setOnes();
  bias = Param<Scalar>(1, d, true);
}

template <class Scalar>
auto LayerNorm<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) -> Mat {
  // The cache first, so that an empty or foreign cache is named as such (not as a bad dy).
  detail::require_filled_cache("LayerNorm::backward", cache.x.cols() != 0);
  detail::check_shape("LayerNorm::backward", "cache.x", cache.x, -1, features());
  detail::check_shape("LayerNorm::backward", "cache.mean", cache.mean, cache.x.rows(), 1);
  detail::check_shape("LayerNorm::backward", "cache.rstd", cache.rstd, cache.x.rows(), 1);
  detail::check_shape("LayerNorm::backward", "dy", dy, cache.x.rows(), features());
  Mat dx;
  layernorm_backward<Scalar>(dx, &weight.grad, &bias.grad, dy, cache.x, weight.value, cache.mean,
                             cache.rstd);
  return dx;
}

template <class Scalar>
auto LayerNorm<Scalar>::run_forward(ConstRef<Scalar> x, Mat& mean, Mat& rstd) const -> Mat {
  detail::check_shape("LayerNorm::forward", "x", x, -1, features());
  Mat y;
  layernorm_forward<Scalar>(y, mean, rstd, x, weight.value, bias.value, eps_);
  return y;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(LayerNorm)

}  // namespace eigenformer
