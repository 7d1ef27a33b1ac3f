// Position-wise feed-forward network: y = linear2(dropout(f(linear1(x)))), with linear1
// (d_model -> d_ff), f an activation and linear2 (d_ff -> d_model), as the feed-forward block of
// PyTorch's nn.TransformerEncoderLayer (whose parameter names it uses).
#pragma once

#include <string>

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/activations.hpp"
#include "activation.hpp"
#include "dropout.hpp"
#include "linear.hpp"

namespace eigenformer {

template <class Scalar = float>
class FeedForward {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Linear<Scalar>::Cache linear1;              // x (N, d_model)
    typename ActivationLayer<Scalar>::Cache activation;  // linear1's output (N, d_ff)
    typename Dropout<Scalar>::Cache dropout;             // mask (N, d_ff)
    typename Linear<Scalar>::Cache linear2;              // dropout's output (N, d_ff)
    Mat out;  // (N, d_model) the output (not read by backward: the caller may overwrite it)
  };

  Linear<Scalar> linear1;  // (d_ff, d_model)
  ActivationLayer<Scalar> activation;
  Dropout<Scalar> dropout;
  Linear<Scalar> linear2;  // (d_model, d_ff)

  FeedForward() = default;

  /// Linear layers initialised from rng as PyTorch's nn.Linear; the dropout seeded by rng.split().
  /// Throws ArgumentError unless d_model and d_ff are positive, act is an Activation enumerator
  /// and 0 <= dropout_p < 1.
  FeedForward(Index d_model, Index d_ff, Activation act, Scalar dropout_p, Rng& rng);

  /// The input and output width d_model, and the hidden width d_ff.
  Index d_model() const { return linear1.in_features(); }
  Index d_ff() const { return linear1.out_features(); }

  /// Training mode (dropout active) on or off.
  void train(bool on = true) { dropout.train(on); }
  void eval() { dropout.eval(); }
  bool training() const { return dropout.training; }

  /// x (N, d_model) -> (N, d_model), inference only (no dropout).
  /// Throws ArgumentError naming FeedForward::forward and 'x' unless x has d_model() columns.
  Mat forward(ConstRef<Scalar> x) const;

  /// x (N, d_model) -> (N, d_model), keeping what backward needs in cache; in training, draws a
  /// new dropout mask. The (N, d_ff) activations are written straight into the cache's buffers,
  /// which are reused when the cache held the same shapes (so x must not be a view of them).
  /// The result is cache.out, valid until the next forward with cache, which backward does not
  /// read (the caller may change it in place). Throws as forward(x), before writing cache.
  Mat& forward(ConstRef<Scalar> x, Cache& cache);

  /// dy (N, d_model) -> dx (N, d_model); adds into the linear layers' gradients. The two
  /// (N, d_ff) gradients stay allocated between calls (held after training, as PyTorch's caching
  /// allocator holds its blocks; a copy of the layer starts without them).
  /// dx is such a buffer too, valid until the next backward; cache comes from forward(x, cache).
  /// Throws ArgumentError naming FeedForward::backward, changing nothing, unless cache holds a
  /// forward of this layer (every piece for the same N rows) and dy is (N, d_model).
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache);

  /// "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias" (PyTorch's names):
  /// pointers into this layer.
  ParamList<Scalar> parameters();

  /// Sets the parameters' gradients to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  /// Throws unless cache holds a forward of this layer: every piece for the same N rows.
  void check_cache(std::string_view func, const Cache& cache) const;

  struct BackwardBuffers {
    Mat dh, dpre;  // (N, d_ff)
    Mat dx;        // (N, d_model)
  };
  detail::Scratch<BackwardBuffers> backward_scratch_;
};

template <class Scalar>
FeedForward<Scalar>::FeedForward(Index d_model, Index d_ff, Activation act, Scalar dropout_p,
                                 Rng& rng) {
  detail::check_positive("FeedForward::FeedForward", "d_model", d_model);
  detail::check_positive("FeedForward::FeedForward", "d_ff", d_ff);
  detail::check_activation("FeedForward::FeedForward", act);
  detail::check_dropout_p("FeedForward::FeedForward", dropout_p);
  linear1 = Linear<Scalar>(d_model, d_ff, rng);
  activation = ActivationLayer<Scalar>(act);
  linear2 = Linear<Scalar>(d_ff, d_model, rng);
  dropout = Dropout<Scalar>(dropout_p, rng.split());
}

template <class Scalar>
auto FeedForward<Scalar>::forward(ConstRef<Scalar> x) const -> Mat {
  detail::check_shape("FeedForward::forward", "x", x, -1, d_model());
  return linear2.forward(activation.forward(linear1.forward(x)));
}

template <class Scalar>
auto FeedForward<Scalar>::forward(ConstRef<Scalar> x, Cache& cache) -> Mat& {
  detail::check_shape("FeedForward::forward", "x", x, -1, d_model());
  cache.linear1.x = x;
  Mat& pre = cache.activation.x;  // (N, d_ff) linear1's output
  Mat& h = cache.linear2.x;       // (N, d_ff) f(pre), then dropped out in place
  linear1.forward_into(pre, x);
  activation_forward<Scalar>(h, pre, activation.kind());
  dropout.forward_in_place(h, cache.dropout);
  linear2.forward_into(cache.out, h);
  return cache.out;
}

template <class Scalar>
auto FeedForward<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) -> const Mat& {
  check_cache("FeedForward::backward", cache);
  detail::check_shape("FeedForward::backward", "dy", dy, cache.linear1.x.rows(), d_model());
  auto& [dh, dpre, dx] = backward_scratch_.buffers;
  linear2.backward_into(dh, dy, cache.linear2.x);
  dropout.backward_in_place(dh, cache.dropout);
  activation_backward<Scalar>(dpre, dh, cache.activation.x, activation.kind());
  linear1.backward_into(dx, dpre, cache.linear1.x);
  return dx;
}

template <class Scalar>
auto FeedForward<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "linear1", linear1.parameters());
  append_params(out, "linear2", linear2.parameters());
  return out;
}

template <class Scalar>
void FeedForward<Scalar>::check_cache(std::string_view func, const Cache& cache) const {
  const Index n = cache.linear1.x.rows();
  detail::require_filled_cache(func, cache.linear1.x.cols() != 0);
  detail::check_shape(func, "cache.linear1.x", cache.linear1.x, -1, d_model());
  detail::check_shape(func, "cache.activation.x", cache.activation.x, n, d_ff());
  detail::check_shape(func, "cache.linear2.x", cache.linear2.x, n, d_ff());
  detail::require(cache.dropout.rows == n && cache.dropout.cols == d_ff(), func, "cache.dropout",
                  [&] {
                    return "is for " + detail::shape_str(cache.dropout.rows, cache.dropout.cols) +
                           ", expected " + detail::shape_str(n, d_ff());
                  });
  Dropout<Scalar>::check_mask(func, cache.dropout);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(FeedForward)

}  // namespace eigenformer
