// Residual connection around a sublayer f, with a LayerNorm in one of two places:
//   post-norm (the original paper, PyTorch's norm_first=False):  y = LN(x + f(x))
//   pre-norm  (norm_first=True):                                  y = x + f(LN(x))
// f is any callable, so attention (which needs masks and a second input) fits as well as a
// feed-forward block: the caller passes a lambda that runs the sublayer's forward with the
// sublayer's own cache, and later one that runs its backward.
#pragma once

#include <string>

#include "../core/parallel.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "layernorm.hpp"

namespace eigenformer {

enum class NormPlacement { post, pre };

/// "post" or "pre".
/// Throws ArgumentError for a value that is not a NormPlacement enumerator.
inline std::string to_string(NormPlacement placement) {
  switch (placement) {
    case NormPlacement::post: return "post";
    case NormPlacement::pre: return "pre";
  }
  detail::throw_argument("to_string", "placement",
                         "is not a NormPlacement (value " +
                             std::to_string(static_cast<int>(placement)) + ")");
}

/// "post" or "pre".
/// Throws ArgumentError naming parse_norm_placement for any other name.
inline NormPlacement parse_norm_placement(const std::string& name) {
  if (name == "post") return NormPlacement::post;
  if (name == "pre") return NormPlacement::pre;
  detail::throw_argument("parse_norm_placement", "name",
                         "is '" + name + "', expected one of post, pre");
}

template <class Scalar = float>
class Residual {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename LayerNorm<Scalar>::Cache norm;  // the norm's input: x + f(x) (post) or x (pre)
    Mat out;  // (N, d_model) x + f(x): the output (pre), the norm's input (post)
  };

  LayerNorm<Scalar> norm;  // over d_model features

  Residual() = default;

  /// A LayerNorm over d_model features with epsilon eps, after (post) or before (pre) the
  /// sublayer. Throws ArgumentError unless placement is post or pre, d_model > 0 and eps is
  /// positive and finite.
  Residual(Index d_model, NormPlacement placement, Scalar eps = Scalar(1e-5));

  /// Where the norm sits, and the width it normalises.
  NormPlacement placement() const { return placement_; }
  Index d_model() const { return norm.features(); }

  /// x (N, d_model) -> (N, d_model), inference only. sublayer(ConstRef<Scalar> in) -> Mat
  /// (N, d_model) runs the sublayer's inference forward (a sublayer taking const Mat& works too,
  /// at the cost of a copy of x when the norm comes after it).
  /// Throws ArgumentError naming Residual::forward unless x has d_model() columns and the
  /// sublayer's output is (N, d_model); the sublayer's own exceptions pass through.
  template <class F>
  Mat forward(ConstRef<Scalar> x, F&& sublayer) const {
    check_input(x);
    if (placement_ == NormPlacement::pre) return x + checked(sublayer(norm.forward(x)), x.rows());
    const Mat s = x + checked(sublayer(x), x.rows());
    return norm.forward(s);
  }

  /// x (N, d_model) -> (N, d_model), keeping what backward needs in cache.
  /// sublayer(ConstRef<Scalar> in) -> (N, d_model) runs the sublayer's forward, keeping the
  /// sublayer's own cache; it may return a Mat or a reference to a buffer of its own. The result
  /// is a buffer of cache, valid until the next forward with it; x must not be that buffer.
  /// Throws as forward(x, sublayer).
  template <class F>
  const Mat& forward(ConstRef<Scalar> x, Cache& cache, F&& sublayer) const {
    check_input(x);
    // The sums read the sublayer's result through a ConstRef: a sublayer returning an expression
    // (a product) has it evaluated once, not once by each thread of parallel_assign.
    if (placement_ == NormPlacement::pre) {
      auto&& s = sublayer(norm.forward(x, cache.norm));
      check_output(s, x.rows());
      detail::parallel_assign(cache.out, x + ConstRef<Scalar>(s));
      return cache.out;
    }
    auto&& s = sublayer(x);
    check_output(s, x.rows());
    detail::parallel_assign(cache.out, x + ConstRef<Scalar>(s));
    return norm.forward(cache.out, cache.norm);
  }

  /// dy (N, d_model) -> dx (N, d_model); adds into norm's gradients. sublayer_backward(Mat& d_out)
  /// -> (N, d_model) runs the sublayer's backward and returns the gradient with respect to the
  /// sublayer's input (a Mat or a reference to a buffer of its own); it may overwrite d_out, a
  /// buffer of this layer.
  /// dx is a buffer of this layer, valid until its next backward; cache comes from
  /// forward(x, cache, sublayer). Throws ArgumentError naming Residual::backward unless dy is
  /// (N, d_model) for the cache's N and sublayer_backward returns (N, d_model). Post-norm adds the
  /// norm's gradients only once sublayer_backward has returned.
  template <class G>
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache, G&& sublayer_backward) {
    detail::require_filled_cache("Residual::backward", cache.norm.x.cols() != 0);
    detail::check_shape("Residual::backward", "dy", dy, cache.norm.x.rows(), d_model());
    const Index N = dy.rows();
    auto& [d_out, dx, ds, dgamma, dbeta] = scratch_.buffers;
    if (placement_ == NormPlacement::pre) {
      detail::parallel_assign(d_out, dy);
      auto&& dn = sublayer_backward(d_out);
      check_grad(dn, N);
      detail::parallel_assign(dx, norm.backward(dn, cache.norm) + dy);
      return dx;
    }
    // Post: the norm's gradients are added only once the sublayer's backward has succeeded.
    dgamma.setZero(1, d_model());
    dbeta.setZero(1, d_model());
    layernorm_backward<Scalar>(ds, &dgamma, &dbeta, dy, cache.norm.x, norm.weight.value,
                               cache.norm.mean, cache.norm.rstd);
    detail::parallel_assign(d_out, ds);
    auto&& dsub = sublayer_backward(d_out);
    check_grad(dsub, N);
    detail::parallel_assign(dx, ConstRef<Scalar>(dsub) + ds);
    norm.weight.grad += dgamma;
    norm.bias.grad += dbeta;
    return dx;
  }

  /// "norm.weight" and "norm.bias": pointers into this layer.
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "norm", norm.parameters());
    return out;
  }

  /// Sets the norm's gradients to zero: once per step, as backward adds into them.
  void zero_grad() { norm.zero_grad(); }

 private:
  NormPlacement placement_ = NormPlacement::post;

  void check_input(ConstRef<Scalar> x) const {
    detail::check_shape("Residual::forward", "x", x, -1, d_model());
  }

  struct BackwardBuffers {
    Mat d_out, dx, ds;  // (N, d_model)
    Mat dgamma, dbeta;  // (1, d_model)
  };
  detail::Scratch<BackwardBuffers> scratch_;

  Mat checked(Mat y, Index rows) const {
    check_output(y, rows);
    return y;
  }

  void check_output(ConstRef<Scalar> y, Index rows) const {
    detail::check_shape("Residual::forward", "sublayer output", y, rows, d_model());
  }

  void check_grad(ConstRef<Scalar> dx, Index rows) const {
    detail::check_shape("Residual::backward", "sublayer_backward output", dx, rows, d_model());
  }
};

template <class Scalar>
Residual<Scalar>::Residual(Index d_model, NormPlacement placement, Scalar eps)
    : placement_(placement) {
  detail::require(placement == NormPlacement::post || placement == NormPlacement::pre,
                  "Residual::Residual", "placement", [&] {
                    return "is not a NormPlacement (value " +
                           std::to_string(static_cast<int>(placement)) + ")";
                  });
  detail::check_positive("Residual::Residual", "d_model", d_model);
  detail::check_eps("Residual::Residual", eps);
  norm = LayerNorm<Scalar>(d_model, eps);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Residual)

}  // namespace eigenformer
