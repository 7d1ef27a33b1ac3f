// Linear layer: y = x W^T + b. Weights load unchanged from PyTorch's nn.Linear.
#pragma once

#include <cmath>

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/linear.hpp"

namespace eigenformer {

template <class Scalar = float>
class Linear {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat x;  // (N, in) the input
  };

  Param<Scalar> weight;  // (out, in)
  Param<Scalar> bias;    // (1, out); empty when the layer has no bias

  Linear() = default;

  /// PyTorch's default initialisation: weight and bias from U(-1/sqrt(in), 1/sqrt(in)).
  /// Without with_bias the layer has no bias (an empty Param). Throws ArgumentError unless
  /// in_features and out_features are positive.
  Linear(Index in_features, Index out_features, Rng& rng, bool with_bias = true);

  /// The widths: weight is (out_features, in_features); has_bias() is false for a layer built
  /// without a bias (or default-constructed).
  Index in_features() const { return weight.value.cols(); }
  Index out_features() const { return weight.value.rows(); }
  bool has_bias() const { return bias.size() > 0; }

  /// x (N, in) -> (N, out), inference only.
  /// Throws ArgumentError naming Linear::forward and 'x' unless x has in_features() columns.
  Mat forward(ConstRef<Scalar> x) const {
    Mat y;
    forward_into(y, x);
    return y;
  }

  /// forward(x) written into y, whose buffer is reused when it already has the shape (N, out).
  /// y must not alias x.
  /// Throws as forward(x), leaving y as it was.
  void forward_into(Mat& y, ConstRef<Scalar> x) const;

  /// x (N, in) -> (N, out), keeping what backward needs in cache.
  /// Throws as forward(x); cache is written only when the forward succeeds.
  Mat forward(ConstRef<Scalar> x, Cache& cache) const {
    Mat y = forward(x);
    cache.x = x;
    return y;
  }

  /// dy (N, out) -> dx (N, in); adds into weight.grad and bias.grad.
  /// dx is fresh; cache comes from forward(x, cache). Throws ArgumentError naming Linear::backward,
  /// changing nothing, unless cache.x has in_features() columns and dy is (N, out_features()).
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) {
    Mat dx;
    backward_into(dx, dy, cache.x);
    return dx;
  }

  /// backward for a forward whose input was x (N, in), the gradient written into dx, whose
  /// buffer is reused when it already has the shape (N, in). dx must not alias dy or x.
  /// Throws as backward, changing nothing.
  void backward_into(Mat& dx, ConstRef<Scalar> dy, ConstRef<Scalar> x);

  /// "weight", and "bias" when the layer has one: pointers into this layer.
  ParamList<Scalar> parameters();

  /// Sets the parameters' gradients to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

template <class Scalar>
Linear<Scalar>::Linear(Index in_features, Index out_features, Rng& rng, bool with_bias) {
  detail::check_positive("Linear::Linear", "in_features", in_features);
  detail::check_positive("Linear::Linear", "out_features", out_features);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight = Param<Scalar>(out_features, in_features);
  fill_uniform(weight.value, -bound, bound, rng);
  if (with_bias) {
    bias = Param<Scalar>(1, out_features, true);
    fill_uniform(bias.value, -bound, bound, rng);
  }
}

template <class Scalar>
void Linear<Scalar>::forward_into(Mat& y, ConstRef<Scalar> x) const {
  detail::check_shape("Linear::forward", "x", x, -1, in_features());
  linear_forward<Scalar>(y, x, weight.value, has_bias() ? &bias.value : nullptr);
}

template <class Scalar>
void Linear<Scalar>::backward_into(Mat& dx, ConstRef<Scalar> dy, ConstRef<Scalar> x) {
  detail::require_filled_cache("Linear::backward", x.cols() != 0);
  detail::check_shape("Linear::backward", "cache.x", x, -1, in_features());
  detail::check_shape("Linear::backward", "dy", dy, x.rows(), out_features());
  linear_backward<Scalar>(dx, &weight.grad, has_bias() ? &bias.grad : nullptr, dy, x, weight.value);
}

template <class Scalar>
auto Linear<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out{{"weight", &weight}};
  if (has_bias()) out.push_back({"bias", &bias});
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Linear)

}  // namespace eigenformer
