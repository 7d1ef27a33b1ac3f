// How an attention layer scores a query against a key, and what follows from the scores: the
// softmax-weighted sum of the values. The Attention layer (layers/attention.hpp) owns the
// projections and the positions and hands its projected queries, keys and values to one of these:
//   dot_product  DotProductScore: q_i . k_j / sqrt(dh) ("Attention Is All You Need"), with the
//                plain kernel (ops/attention.hpp) or the tiled one (ops/flash_attention.hpp)
//   additive     AdditiveScore: v_h^T tanh(Uq_h q_i + Uk_h k_j + c_h) per head (Bahdanau et al.
//                2015, ops/additive_attention.hpp), a small score network of width d_attn
// Every scoring takes the same masks (ops/attention.hpp) and the same per-distance position bias
// (H, Tq + Tk - 1) of the position schemes (layers/attention_positions.hpp).
//
// Incremental decoding: a KV cache keeps each key as key_features(k) and each step turns its
// queries into query_features(q), so that a step only projects its new positions. For dot
// products both are the projections themselves; the additive score keeps Uk k (H*d_attn wide).
//
// Adding a scoring touches this header and its test: a value in AttentionScoring and its name, an
// AttentionScore subclass, and a case in make_attention_score. The layer, the models, decoding
// and checkpoints follow.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/additive_attention.hpp"
#include "../ops/attention.hpp"
#include "../ops/flash_attention.hpp"

namespace eigenformer {

enum class AttentionScoring { dot_product, additive };

/// "dot" or "additive": the name parse_attention_scoring accepts and checkpoints store.
/// Throws ArgumentError for a value that is not an AttentionScoring enumerator.
inline std::string attention_scoring_name(AttentionScoring scoring) {
  switch (scoring) {
    case AttentionScoring::dot_product:
      return "dot";
    case AttentionScoring::additive:
      return "additive";
  }
  detail::throw_argument(
      "attention_scoring_name", "scoring",
      "is " + std::to_string(static_cast<int>(scoring)) + ", not an AttentionScoring");
}

/// The same as attention_scoring_name (the overload set of the other config enums).
inline std::string to_string(AttentionScoring scoring) { return attention_scoring_name(scoring); }

/// "dot" or "additive"; anything else throws ArgumentError.
inline AttentionScoring parse_attention_scoring(const std::string& name) {
  if (name == "dot") return AttentionScoring::dot_product;
  if (name == "additive") return AttentionScoring::additive;
  detail::throw_argument("parse_attention_scoring", "name",
                         "is '" + name + "', expected 'dot' or 'additive'");
}

/// What a scoring keeps from a forward for its backward; each fills the fields it uses.
template <class Scalar>
struct ScoreCache {
  Matrix<Scalar> probs;  // (B*H*Tq, Tk) attention weights (plain kernels; empty after tiled)
  Matrix<Scalar> lse;    // (B*H, Tq) log-sum-exp per query (tiled kernel; empty after plain)
  AttentionMask mask;    // the forward's mask, for the tiled backward and weights
  AdditiveAttentionCache<Scalar> additive;  // additive: score projections aq and ak
};

/// The scoring interface. q (B*Tq, H*dh), k and v (B*Tk, H*dh) in the layout of
/// ops/attention.hpp; bias is the positions' (H, Tq + Tk - 1) score bias or null.
template <class Scalar>
class AttentionScore {
 public:
  using Mat = Matrix<Scalar>;
  virtual ~AttentionScore() = default;
  /// A copy of this scoring (each copy of a layer holds its own), and its kind.
  virtual std::unique_ptr<AttentionScore> clone() const = 0;
  virtual AttentionScoring kind() const = 0;

  /// context (B*Tq, H*dh) = softmax(score(q, k) + bias + mask) v; keeps what backward needs in
  /// cache. impl picks the dot-product kernel (ignored by scorings with one kernel).
  virtual void forward(Mat& context, ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
                       const Mat& v, const AttentionDims& d, const AttentionMask& mask,
                       const Mat* bias, AttentionImpl impl) const = 0;

  /// dq, dk, dv, fresh, from dcontext and forward's cache, inputs and context; adds the gradients
  /// of the scoring's own parameters. dbias, when not null, gets the bias gradient, fresh.
  virtual void backward(Mat& dq, Mat& dk, Mat& dv, Mat* dbias, const Mat& dcontext,
                        const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k, const Mat& v,
                        const Mat& context, const AttentionDims& d, const Mat* bias) = 0;

  /// The attention weights (Tq, Tk) of head h of sequence b, from forward's cache and inputs.
  virtual Mat weights(const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
                      const AttentionDims& d, Index b, Index h, const Mat* bias) const = 0;

  /// Width of key_features' rows for heads of total width d_model.
  virtual Index key_width(Index d_model) const = 0;
  /// What a KV cache keeps of keys k (N, H*dh) / what a step scores of queries q (N, H*dh).
  virtual void key_features(Mat& out, const Mat& k, Index H) const = 0;
  virtual void query_features(Mat& out, const Mat& q, Index H) const = 0;
  /// One sequence (d.B == 1): out (Tq, H*dh) and probs (H*Tq, Tk) from query features (Tq, *),
  /// cached key features (Tk, key_width) and values (Tk, H*dh).
  virtual void attend(Mat& out, Mat& probs, ConstRef<Scalar> q_features,
                      ConstRef<Scalar> k_features, ConstRef<Scalar> v, const AttentionDims& d,
                      const AttentionMask& mask, const Mat* bias) const = 0;

  /// The scoring's own parameters (none for dot products), named as checkpoints store them after
  /// the layer's "score." prefix.
  virtual ParamList<Scalar> parameters() { return {}; }
};

/// Scaled dot products, no parameters of their own.
template <class Scalar>
class DotProductScore : public AttentionScore<Scalar> {
 public:
  using Mat = Matrix<Scalar>;

  std::unique_ptr<AttentionScore<Scalar>> clone() const override {
    return std::make_unique<DotProductScore>(*this);
  }
  AttentionScoring kind() const override { return AttentionScoring::dot_product; }

  void forward(Mat& context, ScoreCache<Scalar>& cache, const Mat& q, const Mat& k, const Mat& v,
               const AttentionDims& d, const AttentionMask& mask, const Mat* bias,
               AttentionImpl impl) const override;

  void backward(Mat& dq, Mat& dk, Mat& dv, Mat* dbias, const Mat& dcontext,
                const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k, const Mat& v,
                const Mat& context, const AttentionDims& d, const Mat* bias) override;

  Mat weights(const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k, const AttentionDims& d,
              Index b, Index h, const Mat* bias) const override;

  Index key_width(Index d_model) const override { return d_model; }
  void key_features(Mat& out, const Mat& k, Index) const override { out = k; }
  void query_features(Mat& out, const Mat& q, Index) const override { out = q; }

  void attend(Mat& out, Mat& probs, ConstRef<Scalar> q, ConstRef<Scalar> k, ConstRef<Scalar> v,
              const AttentionDims& d, const AttentionMask& mask, const Mat* bias) const override {
    attention_forward<Scalar>(out, probs, q, k, v, d, mask, bias);
  }
};

template <class Scalar>
void DotProductScore<Scalar>::forward(Mat& context, ScoreCache<Scalar>& cache, const Mat& q,
                                      const Mat& k, const Mat& v, const AttentionDims& d,
                                      const AttentionMask& mask, const Mat* bias,
                                      AttentionImpl impl) const {
  if (use_tiled_attention(impl, d, mask)) {
    cache.probs.resize(0, 0);
    cache.mask = mask;
    flash_attention_forward<Scalar>(context, cache.lse, q, k, v, d, mask, {}, bias);
  } else {
    cache.lse.resize(0, 0);
    cache.mask = AttentionMask();
    attention_forward<Scalar>(context, cache.probs, q, k, v, d, mask, bias);
  }
}

template <class Scalar>
void DotProductScore<Scalar>::backward(Mat& dq, Mat& dk, Mat& dv, Mat* dbias, const Mat& dcontext,
                                       const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
                                       const Mat& v, const Mat& context, const AttentionDims& d,
                                       const Mat* bias) {
  if (cache.lse.size() != 0)
    flash_attention_backward<Scalar>(dq, dk, dv, dcontext, context, cache.lse, q, k, v, d,
                                     cache.mask, {}, bias, dbias);
  else
    attention_backward<Scalar>(dq, dk, dv, dcontext, cache.probs, q, k, v, d, dbias);
}

template <class Scalar>
auto DotProductScore<Scalar>::weights(const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
                                      const AttentionDims& d, Index b, Index h,
                                      const Mat* bias) const -> Mat {
  if (cache.lse.size() != 0)  // the tiled kernel kept no probabilities: recompute this head's
    return flash_attention_weights<Scalar>(q, k, cache.lse, d, cache.mask, b, h, bias);
  return cache.probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
}

/// Bahdanau's score network per head: parameters q_weight, k_weight (H*d_attn, dh): head h's
/// Uq_h / Uk_h in rows [h*d_attn, (h+1)*d_attn); bias (H*d_attn) the c_h (absent without bias);
/// v (H, d_attn).
template <class Scalar>
class AdditiveScore : public AttentionScore<Scalar> {
 public:
  using Mat = Matrix<Scalar>;
  Param<Scalar> q_weight, k_weight;  // (H*d_attn, dh)
  Param<Scalar> bias;                // (1, H*d_attn); empty without bias
  Param<Scalar> v;                   // (H, d_attn)

  /// Each head's Uq_h, Uk_h Xavier-uniform, v from U(-1/sqrt(d_attn), 1/sqrt(d_attn)), bias zero.
  AdditiveScore(Index n_heads, Index head_dim, Index d_attn, bool with_bias, Rng& rng);

  std::unique_ptr<AttentionScore<Scalar>> clone() const override {
    return std::make_unique<AdditiveScore>(*this);
  }
  AttentionScoring kind() const override { return AttentionScoring::additive; }
  /// The score network's width d_attn, and whether it has the bias c_h.
  Index d_attn() const { return v.value.cols(); }
  bool has_bias() const { return bias.size() > 0; }

  void forward(Mat& context, ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
               const Mat& values, const AttentionDims& d, const AttentionMask& mask,
               const Mat* pos_bias, AttentionImpl) const override;

  void backward(Mat& dq, Mat& dk, Mat& dv, Mat* dbias, const Mat& dcontext,
                const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k, const Mat& values,
                const Mat&, const AttentionDims& d, const Mat*) override;

  Mat weights(const ScoreCache<Scalar>& cache, const Mat&, const Mat&, const AttentionDims& d,
              Index b, Index h, const Mat*) const override {
    return cache.probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
  }

  Index key_width(Index) const override { return v.value.rows() * d_attn(); }
  void key_features(Mat& out, const Mat& k, Index H) const override {
    additive_score_projection<Scalar>(out, k, k_weight.value, nullptr, H);
  }
  void query_features(Mat& out, const Mat& q, Index H) const override {
    additive_score_projection<Scalar>(out, q, q_weight.value, bias_value(), H);
  }

  void attend(Mat& out, Mat& probs, ConstRef<Scalar> aq, ConstRef<Scalar> ak,
              ConstRef<Scalar> values, const AttentionDims& d, const AttentionMask& mask,
              const Mat* pos_bias) const override;

  ParamList<Scalar> parameters() override;

 private:
  const Mat* bias_value() const { return has_bias() ? &bias.value : nullptr; }
  AdditiveScoreWeights<Scalar> weights() const {
    return {q_weight.value, k_weight.value, bias_value(), v.value};
  }
};

template <class Scalar>
AdditiveScore<Scalar>::AdditiveScore(Index n_heads, Index head_dim, Index d_attn, bool with_bias,
                                     Rng& rng)
    : q_weight(n_heads * d_attn, head_dim),
      k_weight(n_heads * d_attn, head_dim),
      v(n_heads, d_attn) {
  for (Param<Scalar>* p : {&q_weight, &k_weight})
    for (Index h = 0; h < n_heads; ++h) {
      Eigen::Block<Mat> head = p->value.block(h * d_attn, 0, d_attn, head_dim);
      fill_xavier_uniform(head, rng);
    }
  if (with_bias) bias = Param<Scalar>(1, n_heads * d_attn, true);
  const double bound = 1.0 / std::sqrt(static_cast<double>(d_attn));
  fill_uniform(v.value, -bound, bound, rng);
}

template <class Scalar>
void AdditiveScore<Scalar>::forward(Mat& context, ScoreCache<Scalar>& cache, const Mat& q,
                                    const Mat& k, const Mat& values, const AttentionDims& d,
                                    const AttentionMask& mask, const Mat* pos_bias,
                                    AttentionImpl) const {
  cache.lse.resize(0, 0);
  cache.mask = AttentionMask();
  additive_attention_forward<Scalar>(context, cache.probs, cache.additive, q, k, values, weights(),
                                     d, mask, pos_bias);
}

template <class Scalar>
void AdditiveScore<Scalar>::backward(Mat& dq, Mat& dk, Mat& dv, Mat* dbias, const Mat& dcontext,
                                     const ScoreCache<Scalar>& cache, const Mat& q, const Mat& k,
                                     const Mat& values, const Mat&, const AttentionDims& d,
                                     const Mat*) {
  AdditiveScoreGrads<Scalar> grads;
  grads.w_q = &q_weight.grad;
  grads.w_k = &k_weight.grad;
  grads.bias = has_bias() ? &bias.grad : nullptr;
  grads.w = &v.grad;
  additive_attention_backward<Scalar>(dq, dk, dv, grads, dcontext, cache.probs, cache.additive, q,
                                      k, values, weights(), d, dbias);
}

template <class Scalar>
void AdditiveScore<Scalar>::attend(Mat& out, Mat& probs, ConstRef<Scalar> aq, ConstRef<Scalar> ak,
                                   ConstRef<Scalar> values, const AttentionDims& d,
                                   const AttentionMask& mask, const Mat* pos_bias) const {
  additive_attention_attend<Scalar>(out, probs, aq, ak, values, v.value, d, mask, pos_bias);
}

template <class Scalar>
auto AdditiveScore<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out{{"q_weight", &q_weight}, {"k_weight", &k_weight}};
  if (has_bias()) out.push_back({"bias", &bias});
  out.push_back({"v", &v});
  return out;
}

/// The scoring for heads of width head_dim; d_attn is the additive network's width (0: head_dim)
/// and with_bias its c_h. Additive draws its parameters from rng.
/// Throws ArgumentError for a scoring that is not an AttentionScoring enumerator; the sizes are
/// not checked here (the Attention constructor checks them first).
template <class Scalar>
std::unique_ptr<AttentionScore<Scalar>> make_attention_score(AttentionScoring scoring,
                                                             Index n_heads, Index head_dim,
                                                             Index d_attn, bool with_bias,
                                                             Rng& rng) {
  switch (scoring) {
    case AttentionScoring::dot_product:
      return std::make_unique<DotProductScore<Scalar>>();
    case AttentionScoring::additive:
      return std::make_unique<AdditiveScore<Scalar>>(
          n_heads, head_dim, d_attn > 0 ? d_attn : head_dim, with_bias, rng);
  }
  detail::throw_argument(
      "make_attention_score", "scoring",
      "is " + std::to_string(static_cast<int>(scoring)) + ", not an AttentionScoring");
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ATTENTION_SCORE_TEMPLATES(S)                                                \
  EIGENFORMER_FOR(S, std::unique_ptr<AttentionScore<S>> make_attention_score<S>(                \
                         AttentionScoring scoring, Index n_heads, Index head_dim, Index d_attn, \
                         bool with_bias, Rng& rng))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ATTENTION_SCORE_TEMPLATES)
EIGENFORMER_STRUCT_TEMPLATES(ScoreCache)
EIGENFORMER_CLASS_TEMPLATES(AttentionScore)
EIGENFORMER_CLASS_TEMPLATES(DotProductScore)
EIGENFORMER_CLASS_TEMPLATES(AdditiveScore)
// clang-format on

}  // namespace eigenformer
