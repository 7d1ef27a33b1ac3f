// Activation layer: y = f(x) elementwise, f one of relu, gelu_tanh, gelu_erf (see
// ops/activations.hpp). No parameters.
#pragma once

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../ops/activations.hpp"

namespace eigenformer {

template <class Scalar = float>
class ActivationLayer {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat x;  // (N, C) the input
  };

  ActivationLayer() = default;

  /// f = kind (a default-constructed layer is relu). Throws ArgumentError unless kind is one of
  /// the Activation enumerators.
  explicit ActivationLayer(Activation kind) : kind_(kind) {
    detail::check_activation("ActivationLayer::ActivationLayer", kind);
  }

  /// The activation f.
  Activation kind() const { return kind_; }

  /// x (N, C) -> f(x) (N, C), inference only.
  Mat forward(ConstRef<Scalar> x) const {
    Mat y;
    activation_forward<Scalar>(y, x, kind_);
    return y;
  }

  /// x (N, C) -> f(x) (N, C), keeping the input in cache.
  Mat forward(ConstRef<Scalar> x, Cache& cache) const {
    Mat y = forward(x);
    cache.x = x;
    return y;
  }

  /// dy (N, C) -> dx (N, C) = dy * f'(x).
  /// dx is fresh; cache comes from forward(x, cache). Throws ArgumentError naming
  /// ActivationLayer::backward unless dy has the shape of cache.x.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) const;

  /// None: the layer has no parameters.
  ParamList<Scalar> parameters() { return {}; }

  /// Nothing to clear.
  void zero_grad() {}

 private:
  Activation kind_ = Activation::relu;
};

template <class Scalar>
auto ActivationLayer<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) const -> Mat {
  detail::require_filled_cache("ActivationLayer::backward", cache.x.cols() != 0);
  detail::check_shape("ActivationLayer::backward", "dy", dy, cache.x.rows(), cache.x.cols());
  Mat dx;
  activation_backward<Scalar>(dx, dy, cache.x, kind_);
  return dx;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(ActivationLayer)

}  // namespace eigenformer
