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
    Mat y;     // (N, d) the output, reused by the next forward of the same shape
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
    run_forward(scratch.y, x, scratch.mean, scratch.rstd);
    return std::move(scratch.y);
  }

  /// x (N, d) -> (N, d), keeping what backward needs in cache. The result is cache.y, valid
  /// until the next forward with this cache; x must not be cache.y.
  /// Throws as forward(x), before writing cache.
  const Mat& forward(ConstRef<Scalar> x, Cache& cache) const {
    run_forward(cache.y, x, cache.mean, cache.rstd);
    cache.x = x;
    return cache.y;
  }

  /// dy (N, d) -> dx (N, d); adds into weight.grad and bias.grad.
  /// dx is a buffer of this layer, valid until its next backward (kept between calls, so that a
  /// training step does not allocate it); cache comes from forward(x, cache). Throws
  /// ArgumentError naming LayerNorm::backward, changing nothing, unless cache holds x (N, d),
  /// mean and rstd (N, 1) and dy is (N, d).
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache);

  /// "weight" (gamma) and "bias" (beta): pointers into this layer.
  ParamList<Scalar> parameters() { return {{"weight", &weight}, {"bias", &bias}}; }

  /// Sets the parameters' gradients to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  Scalar eps_ = Scalar(1e-5);
  struct BackwardBuffers {
    Mat dx;  // (N, d)
  };
  detail::Scratch<BackwardBuffers> scratch_;

  void run_forward(Mat& y, ConstRef<Scalar> x, Mat& mean, Mat& rstd) const;
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
auto LayerNorm<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) -> const Mat& {
  // The cache first, so that an empty or foreign cache is named as such (not as a bad dy).
  detail::require_filled_cache("LayerNorm::backward", cache.x.cols() != 0);
  detail::check_shape("LayerNorm::backward", "cache.x", cache.x, -1, features());
  detail::check_shape("LayerNorm::backward", "cache.mean", cache.mean, cache.x.rows(), 1);
  detail::check_shape("LayerNorm::backward", "cache.rstd", cache.rstd, cache.x.rows(), 1);
  detail::check_shape("LayerNorm::backward", "dy", dy, cache.x.rows(), features());
  Mat& dx = scratch_.buffers.dx;
  layernorm_backward<Scalar>(dx, &weight.grad, &bias.grad, dy, cache.x, weight.value, cache.mean,
                             cache.rstd);
  return dx;
}

template <class Scalar>
void LayerNorm<Scalar>::run_forward(Mat& y, ConstRef<Scalar> x, Mat& mean, Mat& rstd) const {
  detail::check_shape("LayerNorm::forward", "x", x, -1, features());
  layernorm_forward<Scalar>(y, mean, rstd, x, weight.value, bias.value, eps_);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(LayerNorm)

}  // namespace eigenformer
