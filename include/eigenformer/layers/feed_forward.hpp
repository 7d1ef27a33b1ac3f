// Position-wise feed-forward network: y = linear2(dropout(f(linear1(x)))), with linear1
// (d_model -> d_ff), f an activation and linear2 (d_ff -> d_model), as the feed-forward block of
// PyTorch's nn.TransformerEncoderLayer (whose parameter names it uses).
#pragma once

#include "../core/param.hpp"
#include "../core/random.hpp"
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
  };

  Linear<Scalar> linear1;  // (d_ff, d_model)
  ActivationLayer<Scalar> activation;
  Dropout<Scalar> dropout;
  Linear<Scalar> linear2;  // (d_model, d_ff)

  FeedForward() = default;

  /// Linear layers initialised from rng as PyTorch's nn.Linear; the dropout seeded by rng.split().
  FeedForward(Index d_model, Index d_ff, Activation act, Scalar dropout_p, Rng& rng) {
    detail::check_positive("FeedForward::FeedForward", "d_model", d_model);
    detail::check_positive("FeedForward::FeedForward", "d_ff", d_ff);
    detail::check_activation("FeedForward::FeedForward", act);
    detail::check_dropout_p("FeedForward::FeedForward", dropout_p);
    linear1 = Linear<Scalar>(d_model, d_ff, rng);
    activation = ActivationLayer<Scalar>(act);
    linear2 = Linear<Scalar>(d_ff, d_model, rng);
    dropout = Dropout<Scalar>(dropout_p, rng.split());
  }

  Index d_model() const { return linear1.in_features(); }
  Index d_ff() const { return linear1.out_features(); }

  /// Training mode (dropout active) on or off.
  void train(bool on = true) { dropout.train(on); }
  void eval() { dropout.eval(); }
  bool training() const { return dropout.training; }

  /// x (N, d_model) -> (N, d_model), inference only (no dropout).
  Mat forward(ConstRef<Scalar> x) const {
    detail::check_shape("FeedForward::forward", "x", x, -1, d_model());
    return linear2.forward(activation.forward(linear1.forward(x)));
  }

  /// x (N, d_model) -> (N, d_model), keeping what backward needs in cache; in training, draws a
  /// new dropout mask.
  Mat forward(ConstRef<Scalar> x, Cache& cache) {
    detail::check_shape("FeedForward::forward", "x", x, -1, d_model());
    const Mat h = activation.forward(linear1.forward(x, cache.linear1), cache.activation);
    return linear2.forward(dropout.forward(h, cache.dropout), cache.linear2);
  }

  /// dy (N, d_model) -> dx (N, d_model); adds into the linear layers' gradients.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) {
    detail::check_shape("FeedForward::backward", "dy", dy, cache.linear2.x.rows(), d_model());
    const Mat dh = dropout.backward(linear2.backward(dy, cache.linear2), cache.dropout);
    return linear1.backward(activation.backward(dh, cache.activation), cache.linear1);
  }

  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "linear1", linear1.parameters());
    append_params(out, "linear2", linear2.parameters());
    return out;
  }

  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

}  // namespace eigenformer
