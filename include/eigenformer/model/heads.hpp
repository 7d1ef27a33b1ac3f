// Task heads on an encoder's hidden states h (B*T, d), each with a forward and a backward that
// returns dh for the encoder (EncoderOnlyModel::hidden / backward_hidden):
//  - Pooler: BERT's dense + tanh on one vector per sequence: (B, d) -> (B, d).
//  - ClassificationHead: one vector per sequence (its first token, or the mean of its unpadded
//    tokens), an optional Pooler, dropout and a Linear: h (B*T, d) -> logits (B, n_classes).
//  - MaskedLMHead: BERT's transform (dense, activation, LayerNorm), then the vocabulary projection
//    (the token embedding's matrix when tied, else its own) plus a bias: (N, d) -> (N, vocab).
// Parameter names follow Hugging Face's BERT below its prefixes (bert.pooler. / classifier. /
// cls.predictions.), so a checkpoint maps by swapping prefixes:
//   Pooler                "dense.weight", "dense.bias"
//   ClassificationHead    "pooler.dense.*" (with a pooler), "classifier.weight", "classifier.bias"
//   MaskedLMHead          "transform.dense.*", "transform.LayerNorm.*" (with the transform),
//                         "decoder.weight" (untied), "bias"
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "../core/precompiled.hpp"
#include "../layers/activation.hpp"
#include "../layers/dropout.hpp"
#include "../layers/embedding.hpp"
#include "../layers/layernorm.hpp"
#include "../layers/linear.hpp"
#include "../ops/linear.hpp"

namespace eigenformer {

/// How ClassificationHead makes one vector of each sequence: its first token's hidden state
/// (BERT's [CLS]), or the mean over its tokens that are not padding.
enum class Pooling { first, mean };

/// "first" or "mean"; parse_pooling is its inverse (ArgumentError for any other text).
inline std::string pooling_name(Pooling p) { return p == Pooling::mean ? "mean" : "first"; }
/// The Pooling called name ("first" or "mean"); throws ArgumentError naming parse_pooling
/// otherwise.
inline Pooling parse_pooling(const std::string& name) {
  if (name == "first") return Pooling::first;
  detail::require(name == "mean", "parse_pooling", "name",
                  [&] { return "is '" + name + "', expected 'first' or 'mean'"; });
  return Pooling::mean;
}

/// The classification head's settings. The defaults are BERT's sequence classifier.
struct ClassifierConfig {
  Index n_classes = 2;
  Pooling pooling = Pooling::first;
  bool pooler = true;    // BERT's dense + tanh between the pooled vector and the classifier
  double dropout = 0.1;  // on the (pooled) vector before the classifier, in training mode

  /// Throws ArgumentError naming func and the field unless n_classes > 0, pooling is a Pooling
  /// and 0 <= dropout < 1.
  void validate(std::string_view func) const {
    detail::check_positive(func, "head.n_classes", n_classes);
    detail::require(pooling == Pooling::first || pooling == Pooling::mean, func, "head.pooling",
                    [&] { return "is " + std::to_string(int(pooling)) + ", not a Pooling"; });
    detail::require(dropout >= 0.0 && dropout < 1.0, func, "head.dropout",
                    [&] { return "must be in [0, 1), got " + std::to_string(dropout); });
  }
};

/// The masked-LM head's settings; whether the vocabulary projection is tied to the token
/// embedding comes from TransformerConfig::tie_output.
struct MaskedLMConfig {
  bool transform = true;  // BERT's dense + activation + LayerNorm before the projection
};

/// BERT's pooler: y = tanh(x W^T + b), x (B, d) -> y (B, d).
template <class Scalar = float>
class Pooler {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Linear<Scalar>::Cache dense;
    Mat y;  // (B, d) the output, whose 1 - y^2 is tanh's derivative
  };

  Linear<Scalar> dense;  // (d, d)

  Pooler() = default;
  /// dense: Linear(d_model, d_model) drawn from rng. Throws ArgumentError unless d_model > 0.
  Pooler(Index d_model, Rng& rng) : dense(d_model, d_model, rng) {}

  /// x (B, d) -> tanh(dense(x)) (B, d), inference only. Throws ArgumentError naming
  /// Linear::forward unless x has d columns.
  Mat forward(ConstRef<Scalar> x) const { return dense.forward(x).array().tanh().matrix(); }

  /// forward(x), keeping what backward needs in cache.
  Mat forward(ConstRef<Scalar> x, Cache& cache) const;

  /// dy (B, d) -> dx (B, d) fresh; adds into dense's gradients. Throws ArgumentError naming
  /// Pooler::backward, changing nothing, unless dy has the shape of the forward's output.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache);

  /// "dense.weight", "dense.bias".
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "dense", dense.parameters());
    return out;
  }

  /// Sets the parameters' gradients to zero.
  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

/// Sequence classification: h (B*T, d) -> logits (B, n_classes).
template <class Scalar = float>
class ClassificationHead {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Index B = 0, T = 0;
    Mat weights;  // (B, T) each token's share of its sequence's vector (first: 1 at t = 0)
    typename Pooler<Scalar>::Cache pooler;
    typename Dropout<Scalar>::Cache dropout;
    typename Linear<Scalar>::Cache classifier;
  };

  Pooler<Scalar> pooler;  // empty without config().pooler
  Dropout<Scalar> dropout;
  Linear<Scalar> classifier;  // (n_classes, d)

  ClassificationHead() = default;
  /// A head for d_model-wide hidden states, drawn from rng (dropout seeded by rng.split()).
  /// Throws ArgumentError naming ClassificationHead::ClassificationHead unless d_model > 0 and
  /// config is valid (ClassifierConfig::validate).
  ClassificationHead(Index d_model, const ClassifierConfig& config, Rng& rng);

  /// The settings the head was built with.
  const ClassifierConfig& config() const { return config_; }

  /// h (B*T, d) of B sequences -> logits (B, n_classes). key_padding (B, T), true at padding, is
  /// used by mean pooling only (empty: no padding); a sequence that is all padding pools to zeros.
  /// Fills cache; draws a dropout mask in training mode. Throws ArgumentError naming
  /// ClassificationHead::forward, before any change, unless B > 0 divides h's rows, h has d
  /// columns and key_padding is empty or (B, T).
  Mat forward(ConstRef<Scalar> h, Index B, const BoolMatrix& key_padding, Cache& cache);

  /// dlogits (B, n_classes) -> dh (B*T, d), for the encoder's backward: a buffer of this head,
  /// valid until its next backward (kept between calls, so that a training step does not allocate
  /// it); adds into the head's gradients. Throws ArgumentError naming ClassificationHead::backward,
  /// changing nothing, unless dlogits is (B, n_classes) for the cache's B.
  const Mat& backward(ConstRef<Scalar> dlogits, const Cache& cache);

  /// Dropout on (training) or off.
  void train(bool on = true) { dropout.training = on; }

  /// "pooler.dense.*" (with a pooler), "classifier.weight", "classifier.bias".
  ParamList<Scalar> parameters();

  /// Sets the parameters' gradients to zero.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  ClassifierConfig config_;
  struct BackwardBuffers {
    Mat dh;  // (B*T, d)
  };
  detail::Scratch<BackwardBuffers> scratch_;
};

/// Masked-token prediction: h (N, d) -> logits (N, vocab), BERT's BertLMPredictionHead.
/// The model passes its token embedding to every call (used when tied), as with OutputHead.
template <class Scalar = float>
class MaskedLMHead {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Linear<Scalar>::Cache dense;
    typename ActivationLayer<Scalar>::Cache act;
    typename LayerNorm<Scalar>::Cache norm;
    Mat x;       // (N, d) the projection's input
    Mat logits;  // (N, vocab) the output of forward(h, embedding, cache)
  };

  Linear<Scalar> dense;  // (d, d), empty without the transform
  ActivationLayer<Scalar> act;
  LayerNorm<Scalar> norm;  // over d, empty without the transform
  Linear<Scalar> decoder;  // (vocab, d) without a bias; empty when tied
  Param<Scalar> bias;      // (1, vocab), zeros at first, as BERT's

  MaskedLMHead() = default;
  /// A head for d_model-wide states over vocab ids: the transform (with config.transform) uses
  /// activation and LayerNorm epsilon eps; the projection is the embedding's when tied, else its
  /// own, drawn from rng. Throws ArgumentError naming MaskedLMHead::MaskedLMHead unless d_model
  /// and vocab are positive, activation is an Activation and eps is positive.
  MaskedLMHead(Index d_model, Index vocab, bool tied, const MaskedLMConfig& config,
               Activation activation, double eps, Rng& rng);

  /// Whether the projection is the embedding's matrix; the settings the head was built with.
  bool tied() const { return tied_; }
  const MaskedLMConfig& config() const { return config_; }

  /// h (N, d) -> logits (N, vocab), inference only. embedding: the model's token embedding,
  /// used when tied. Throws ArgumentError naming MaskedLMHead::forward unless h has d columns
  /// (and, tied, the embedding is (vocab, d)).
  Mat forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding) const {
    Cache scratch;
    run_forward(h, embedding, scratch);
    return std::move(scratch.logits);
  }

  /// forward(h, embedding), keeping what backward needs in cache. The logits are cache.logits,
  /// valid until the next forward with cache (h must not be a buffer of cache).
  const Mat& forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding, Cache& cache) const {
    run_forward(h, embedding, cache);
    return cache.logits;
  }

  /// dlogits (N, vocab) -> dh (N, d), a buffer of this head valid until its next backward; adds
  /// into the head's gradients (and the embedding's when tied). Throws ArgumentError naming
  /// MaskedLMHead::backward, changing nothing, unless dlogits is (N, vocab) for the cache's N.
  const Mat& backward(ConstRef<Scalar> dlogits, const Cache& cache, Embedding<Scalar>& embedding);

  /// "transform.dense.*", "transform.LayerNorm.*" (with the transform), "decoder.weight"
  /// (untied), "bias".
  ParamList<Scalar> parameters();

  /// Sets the gradients of the head's own parameters to zero (not the tied embedding's).
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  bool tied_ = false;
  Index d_ = 0;
  MaskedLMConfig config_;

  const Param<Scalar>& weight(const Embedding<Scalar>& e) const {
    return tied_ ? e.weight : decoder.weight;
  }
  void run_forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding, Cache& cache) const;

  struct BackwardBuffers {
    Mat dx, dpre, dh;  // (N, d) the gradients of the projection's, the activation's, h
  };
  detail::Scratch<BackwardBuffers> scratch_;
};

template <class Scalar>
auto Pooler<Scalar>::forward(ConstRef<Scalar> x, Cache& cache) const -> Mat {
  Mat y = dense.forward(x, cache.dense).array().tanh().matrix();
  cache.y = y;
  return y;
}

template <class Scalar>
auto Pooler<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) -> Mat {
  detail::check_shape("Pooler::backward", "dy", dy, cache.y.rows(), cache.y.cols());
  const Mat dz = (dy.array() * (Scalar(1) - cache.y.array().square())).matrix();  // tanh'
  return dense.backward(dz, cache.dense);
}

template <class Scalar>
ClassificationHead<Scalar>::ClassificationHead(Index d_model, const ClassifierConfig& config,
                                               Rng& rng)
    : config_(config) {
  const char* func = "ClassificationHead::ClassificationHead";
  detail::check_positive(func, "d_model", d_model);
  config.validate(func);
  if (config.pooler) pooler = Pooler<Scalar>(d_model, rng);
  dropout = Dropout<Scalar>(Scalar(config.dropout), rng.split());
  classifier = Linear<Scalar>(d_model, config.n_classes, rng);
}

template <class Scalar>
auto ClassificationHead<Scalar>::forward(ConstRef<Scalar> h, Index B, const BoolMatrix& key_padding,
                                         Cache& cache) -> Mat {
  const char* func = "ClassificationHead::forward";
  detail::require(B > 0 && h.rows() > 0 && h.rows() % B == 0, func, "B", [&] {
    return "is " + std::to_string(B) + ", expected a positive divisor of h's " +
           std::to_string(h.rows()) + " rows (B*T)";
  });
  const Index T = h.rows() / B;
  detail::check_shape(func, "h", h, B * T, classifier.in_features());
  if (key_padding.size() > 0) detail::check_shape(func, "key_padding", key_padding, B, T);
  // Each sequence's vector is a weighted sum of its rows: pooled (B, d) = W_b h_b.
  Mat weights = Mat::Zero(B, T);  // (B, T)
  if (config_.pooling == Pooling::first) {
    weights.col(0).setOnes();
  } else {
    for (Index b = 0; b < B; ++b) {
      Index n = 0;
      for (Index t = 0; t < T; ++t) n += key_padding.size() == 0 || !key_padding(b, t);
      for (Index t = 0; t < T; ++t)
        if (key_padding.size() == 0 || !key_padding(b, t)) weights(b, t) = Scalar(1) / Scalar(n);
    }
  }
  Mat pooled(B, h.cols());  // (B, d)
  for (Index b = 0; b < B; ++b) pooled.row(b).noalias() = weights.row(b) * h.middleRows(b * T, T);
  if (config_.pooler) pooled = pooler.forward(pooled, cache.pooler);
  const Mat dropped = dropout.forward(pooled, cache.dropout);
  Mat logits = classifier.forward(dropped, cache.classifier);
  cache.B = B;
  cache.T = T;
  cache.weights = std::move(weights);
  return logits;
}

template <class Scalar>
auto ClassificationHead<Scalar>::backward(ConstRef<Scalar> dlogits, const Cache& cache)
    -> const Mat& {
  detail::check_shape("ClassificationHead::backward", "dlogits", dlogits, cache.B,
                      classifier.out_features());
  Mat dpooled = dropout.backward(classifier.backward(dlogits, cache.classifier), cache.dropout);
  if (config_.pooler) dpooled = pooler.backward(dpooled, cache.pooler);
  Mat& dh = scratch_.buffers.dh;  // (B*T, d), every row written below
  dh.resize(cache.B * cache.T, dpooled.cols());
  for (Index b = 0; b < cache.B; ++b)
    dh.middleRows(b * cache.T, cache.T).noalias() =
        cache.weights.row(b).transpose() * dpooled.row(b);
  return dh;
}

template <class Scalar>
auto ClassificationHead<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  if (config_.pooler) append_params(out, "pooler", pooler.parameters());
  append_params(out, "classifier", classifier.parameters());
  return out;
}

template <class Scalar>
MaskedLMHead<Scalar>::MaskedLMHead(Index d_model, Index vocab, bool tied,
                                   const MaskedLMConfig& config, Activation activation, double eps,
                                   Rng& rng)
    : tied_(tied), d_(d_model), config_(config) {
  const char* func = "MaskedLMHead::MaskedLMHead";
  detail::check_positive(func, "d_model", d_model);
  detail::check_positive(func, "vocab", vocab);
  detail::check_activation(func, activation);
  detail::require(eps > 0.0, func, "eps", "must be positive");
  if (config.transform) {
    dense = Linear<Scalar>(d_model, d_model, rng);
    act = ActivationLayer<Scalar>(activation);
    norm = LayerNorm<Scalar>(d_model, Scalar(eps));
  }
  if (!tied) decoder = Linear<Scalar>(d_model, vocab, rng, /*with_bias=*/false);
  bias = Param<Scalar>(1, vocab, true);
}

template <class Scalar>
void MaskedLMHead<Scalar>::run_forward(ConstRef<Scalar> h, const Embedding<Scalar>& embedding,
                                       Cache& cache) const {
  const char* func = "MaskedLMHead::forward";
  detail::check_shape(func, "h", h, -1, d_);
  const Param<Scalar>& w = weight(embedding);
  detail::check_shape(func, tied_ ? "embedding.weight" : "decoder.weight", w.value,
                      bias.value.cols(), d_);
  if (config_.transform) {
    // Each stage into a buffer of the cache: dense's output is the activation's input, and
    // cache.x carries the activation's output into the norm, whose output is swapped into it.
    dense.forward_into(cache.act.x, h);
    cache.dense.x = h;
    activation_forward<Scalar>(cache.x, cache.act.x, act.kind());
    norm.forward(cache.x, cache.norm);
    cache.x.swap(cache.norm.y);
  } else {
    cache.x = h;
  }
  linear_forward<Scalar>(cache.logits, cache.x, w.value, &bias.value);
}

template <class Scalar>
auto MaskedLMHead<Scalar>::backward(ConstRef<Scalar> dlogits, const Cache& cache,
                                    Embedding<Scalar>& embedding) -> const Mat& {
  const char* func = "MaskedLMHead::backward";
  Param<Scalar>& w = tied_ ? embedding.weight : decoder.weight;
  detail::check_shape(func, "cache.x", cache.x, -1, d_);
  detail::check_shape(func, "dlogits", dlogits, cache.x.rows(), bias.value.cols());
  detail::check_shape(func, tied_ ? "embedding.weight" : "decoder.weight", w.value,
                      bias.value.cols(), d_);
  auto& [dx, dpre, dh] = scratch_.buffers;
  linear_backward<Scalar>(dx, &w.grad, &bias.grad, dlogits, cache.x, w.value);
  if (!config_.transform) return dx;
  const Mat& dn = norm.backward(dx, cache.norm);
  detail::check_shape("ActivationLayer::backward", "dy", dn, cache.act.x.rows(),
                      cache.act.x.cols());
  activation_backward<Scalar>(dpre, dn, cache.act.x, act.kind());
  dense.backward_into(dh, dpre, cache.dense.x);
  return dh;
}

template <class Scalar>
auto MaskedLMHead<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  if (config_.transform) {
    append_params(out, "transform.dense", dense.parameters());
    append_params(out, "transform.LayerNorm", norm.parameters());
  }
  if (!tied_) append_params(out, "decoder", decoder.parameters());
  out.push_back({"bias", &bias});
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Pooler)
EIGENFORMER_CLASS_TEMPLATES(ClassificationHead)
EIGENFORMER_CLASS_TEMPLATES(MaskedLMHead)

}  // namespace eigenformer
