// Token embedding: ids (B, T) -> the (B*T, d_model) batch matrix whose row b*T+t is
// weight[ids(b, t)]. Weights load unchanged from PyTorch's nn.Embedding.
//
// backward adds into weight.grad (the gradient contract in core/param.hpp); ids have no gradient.
// With a padding id, that row is zeroed at construction and never receives gradient, as in
// PyTorch's padding_idx, so it stays zero under training unless the user sets it.
#pragma once

#include <string>

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/embedding.hpp"

namespace eigenformer {

template <class Scalar = float>
class Embedding {
 public:
  using Mat = Matrix<Scalar>;

  Param<Scalar> weight;   // (vocab, d_model)
  Index padding_id = -1;  // -1: none

  Embedding() = default;

  /// PyTorch's initialisation: weight from N(0, 1), with the padding row (if any) zeroed.
  /// Throws ArgumentError unless vocab and d_model are positive and padding_id is -1 (none) or
  /// in [0, vocab).
  Embedding(Index vocab, Index d_model, Rng& rng, Index padding_id = -1);

  /// The table's shape (vocab, d_model).
  Index vocab_size() const { return weight.value.rows(); }
  Index d_model() const { return weight.value.cols(); }

  /// ids (B, T) -> (B*T, d_model), row b*T+t for token (b, t).
  /// Throws ArgumentError naming Embedding::forward and the first id outside [0, vocab_size())
  /// with its (b, t).
  Mat forward(const IdMatrix& ids) const {
    Mat y;
    forward_into(y, ids);
    return y;
  }

  /// forward(ids) written into y, whose buffer is reused when it already has the shape
  /// (B*T, d_model). Throws as forward(ids), leaving y as it was.
  void forward_into(Mat& y, const IdMatrix& ids) const;

  /// dy (B*T, d_model) for ids (B, T): adds each row of dy into weight.grad[id], except for the
  /// padding id. There is no input gradient.
  /// Throws ArgumentError naming Embedding::backward, changing nothing, for an id outside
  /// [0, vocab_size()) or a dy that is not (B*T, d_model).
  void backward(ConstRef<Scalar> dy, const IdMatrix& ids);

  /// "weight": a pointer into this layer.
  ParamList<Scalar> parameters() { return {{"weight", &weight}}; }

  /// Sets weight.grad to zero: once per step, as backward adds into it.
  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

template <class Scalar>
Embedding<Scalar>::Embedding(Index vocab, Index d_model, Rng& rng, Index padding_id) {
  detail::check_positive("Embedding::Embedding", "vocab", vocab);
  detail::check_positive("Embedding::Embedding", "d_model", d_model);
  detail::require(padding_id >= -1 && padding_id < vocab, "Embedding::Embedding", "padding_id",
                  [&] {
                    return "must be -1 (none) or in [0, " + std::to_string(vocab) + "), got " +
                           std::to_string(padding_id);
                  });
  this->padding_id = padding_id;
  weight = Param<Scalar>(vocab, d_model);
  fill_normal(weight.value, 0.0, 1.0, rng);
  if (padding_id >= 0) weight.value.row(padding_id).setZero();
}

template <class Scalar>
void Embedding<Scalar>::forward_into(Mat& y, const IdMatrix& ids) const {
  detail::check_embedding_ids("Embedding::forward", "ids", ids, vocab_size());
  embedding_forward<Scalar>(y, ids, weight.value);
}

template <class Scalar>
void Embedding<Scalar>::backward(ConstRef<Scalar> dy, const IdMatrix& ids) {
  detail::check_embedding_ids("Embedding::backward", "ids", ids, vocab_size());
  detail::check_shape("Embedding::backward", "dy", dy, ids.size(), d_model());
  embedding_backward<Scalar>(weight.grad, dy, ids, padding_id);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Embedding)

}  // namespace eigenformer
