// The output projection: hidden states (N, d) -> logits (N, V), either its own Linear (with bias)
// or tied to an embedding matrix E (V, d): logits = h E^T, the paper's weight sharing.
// The model passes its embedding to every call rather than the head keeping a pointer, so copies
// of a model stay tied to their own embedding.
#pragma once

#include "../core/precompiled.hpp"
#include "../layers/embedding.hpp"
#include "../layers/linear.hpp"
#include "../ops/linear.hpp"

namespace eigenformer {

template <class Scalar = float>
class OutputHead {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat h;       // (N, d) the input
    Mat logits;  // (N, V) the output
  };

  Linear<Scalar> proj;  // (V, d) weight and (1, V) bias; empty when tied

  OutputHead() = default;
  /// Untied: its own Linear(d_model, vocab) with bias, drawn from rng (ArgumentError unless
  /// d_model and vocab are positive). Tied: nothing of its own; every call then uses the
  /// (vocab, d_model) weight of the embedding it is given, and d_model and vocab are not checked.
  OutputHead(Index d_model, Index vocab, bool tied, Rng& rng) : tied_(tied) {
    if (!tied_) proj = Linear<Scalar>(d_model, vocab, rng);
  }

  /// Whether the projection is the embedding's matrix.
  bool tied() const { return tied_; }

  /// h (N, d) -> logits (N, V). `embedding` is used only when tied.
  /// Throws ArgumentError naming OutputHead::forward unless h has d columns.
  Mat forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding) const;

  /// forward(h, embedding), keeping h in cache for backward (written only on success). The
  /// logits are cache.logits, valid until the next forward with cache (h must not be them).
  const Mat& forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding, Cache& cache) const {
    project(cache.logits, h, embedding);
    cache.h = h;
    return cache.logits;
  }

  /// dlogits (N, V) -> dh (N, d), a buffer of this head valid until its next backward; the weight
  /// gradient is added (to the embedding if tied). cache comes from forward, embedding is the
  /// forward's. Throws ArgumentError naming OutputHead::backward, changing nothing, unless
  /// dlogits is (N, V) for the cache's N.
  const Mat& backward(ConstRef<Scalar> dlogits, const Cache& cache, Embedding<Scalar>& embedding);

  /// Empty when tied: the shared matrix belongs to the embedding.
  ParamList<Scalar> parameters() { return tied_ ? ParamList<Scalar>{} : proj.parameters(); }

 private:
  bool tied_ = false;
  struct BackwardBuffers {
    Mat dh;  // (N, d)
  };
  detail::Scratch<BackwardBuffers> scratch_;

  /// logits (N, V) = h (N, d) times the projection; throws before writing logits.
  void project(Mat& logits, ConstRef<Scalar> h, const Embedding<Scalar>& embedding) const;

  const Param<Scalar>& weight(const Embedding<Scalar>& e) const {
    return tied_ ? e.weight : proj.weight;
  }
  Param<Scalar>& weight(Embedding<Scalar>& e) { return tied_ ? e.weight : proj.weight; }
};

template <class Scalar>
auto OutputHead<Scalar>::forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding) const
    -> Mat {
  Mat logits;
  project(logits, h, embedding);
  return logits;
}

template <class Scalar>
void OutputHead<Scalar>::project(Mat& logits, ConstRef<Scalar> h,
                                 const Embedding<Scalar>& embedding) const {
  const Param<Scalar>& w = weight(embedding);
  detail::check_shape("OutputHead::forward", "h", h, -1, w.value.cols());
  linear_forward<Scalar>(logits, h, w.value, tied_ ? nullptr : &proj.bias.value);
}

template <class Scalar>
auto OutputHead<Scalar>::backward(ConstRef<Scalar> dlogits, const Cache& cache,
                                  Embedding<Scalar>& embedding) -> const Mat& {
  Param<Scalar>& w = weight(embedding);
  detail::require_filled_cache("OutputHead::backward", cache.h.cols() != 0);
  detail::check_shape("OutputHead::backward", "dlogits", dlogits, cache.h.rows(), w.value.rows());
  Mat& dh = scratch_.buffers.dh;
  linear_backward<Scalar>(dh, &w.grad, tied_ ? nullptr : &proj.bias.grad, dlogits, cache.h,
                          w.value);
  return dh;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(OutputHead)

}  // namespace eigenformer
