// How tokens get their positions, and the position schemes that act inside self-attention.
//
// PositionalKind is the one list of schemes. sinusoidal and learned add a table to the token
// embeddings (layers/positional.hpp, model/token_input.hpp); relative and rotary act inside every
// self-attention layer, through a PositionScheme that the Attention layer (layers/attention.hpp)
// calls between its projections and its scores:
//   rotary    RoPE (ops/rotary.hpp) turns each head of the queries and keys by their positions,
//             and the backward turns the gradients back;
//   relative  T5's bucketed bias (ops/relative_position.hpp): a trainable (num_buckets, H) table
//             relative_bias; query i and key j get relative_bias(bucket(j - i), h) added to their
//             score, as a per-distance bias (H, Tq + Tk - 1) that every scoring takes.
// Positions act in self-attention only: a cross-attention's queries and keys live in different
// sequences.
//
// Adding a scheme (ALiBi, say) touches this header and its test: a value in PositionalKind and its
// name, a PositionScheme subclass, a case in make_position_scheme, and its rules in
// AttentionPositions::validate. The Attention layer, the models, decoding and checkpoints follow.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/relative_position.hpp"
#include "../ops/rotary.hpp"

namespace eigenformer {

/// How a model gives its tokens positions (TransformerConfig::positional) and which scheme acts in
/// an attention layer (AttentionPositions::kind; there none, sinusoidal and learned all mean
/// "nothing inside the attention").
enum class PositionalKind {
  none,        // no positional signal anywhere
  sinusoidal,  // the paper's fixed sin/cos table added to the embeddings
  learned,     // a trained table added to the embeddings (GPT-2)
  relative,    // T5's bucketed bias in every self-attention
  rotary,      // RoPE in every self-attention
};

/// The name of kind, as parse_positional_kind accepts it and checkpoint metadata stores it.
/// Throws ArgumentError for a value that is not a PositionalKind enumerator.
inline std::string positional_kind_name(PositionalKind kind) {
  switch (kind) {
    case PositionalKind::none:
      return "none";
    case PositionalKind::sinusoidal:
      return "sinusoidal";
    case PositionalKind::learned:
      return "learned";
    case PositionalKind::relative:
      return "relative";
    case PositionalKind::rotary:
      return "rotary";
  }
  detail::throw_argument("positional_kind_name", "kind",
                         "is " + std::to_string(static_cast<int>(kind)) + ", not a PositionalKind");
}

/// The same as positional_kind_name (the overload set of the other config enums).
inline std::string to_string(PositionalKind kind) { return positional_kind_name(kind); }

/// "none", "sinusoidal", "learned", "relative" or "rotary"; anything else throws ArgumentError.
inline PositionalKind parse_positional_kind(const std::string& name) {
  for (PositionalKind kind :
       {PositionalKind::none, PositionalKind::sinusoidal, PositionalKind::learned,
        PositionalKind::relative, PositionalKind::rotary})
    if (name == positional_kind_name(kind)) return kind;
  detail::throw_argument(
      "parse_positional_kind", "name",
      "is '" + name + "', expected 'none', 'sinusoidal', 'learned', 'relative' or 'rotary'");
}

/// True for the kinds that act inside self-attention rather than at the input.
inline bool acts_in_attention(PositionalKind kind) {
  return kind == PositionalKind::relative || kind == PositionalKind::rotary;
}

/// What AttentionPositions::validate calls each setting in its messages: the layer's names by
/// default; TransformerConfig passes its own field names.
struct PositionArgNames {
  const char* kind = "positions.kind";
  const char* rotary_base = "positions.rotary_base";
  const char* num_buckets = "positions.num_buckets";
  const char* max_distance = "positions.max_distance";
};

/// The position settings of one self-attention layer.
struct AttentionPositions {
  PositionalKind kind = PositionalKind::none;  // only relative and rotary act in the attention
  double rotary_base = 10000.0;  // rotary: RoPE theta, pair i turns by pos * base^(-2i/dh)
  Index num_buckets = 32;        // relative: T5's buckets (half per sign if bidirectional)
  Index max_distance = 128;      // relative: distances beyond share the last bucket
  bool bidirectional = true;     // relative: true for encoders, false for causal stacks

  /// Throws ArgumentError naming func and the setting unless the settings that kind uses are
  /// valid for heads of width head_dim: the one rule for layers and configs.
  void validate(std::string_view func, Index head_dim, const PositionArgNames& names = {}) const {
    if (kind == PositionalKind::rotary) {
      detail::require(head_dim % 2 == 0, func, names.kind, [&] {
        return "is rotary, which needs an even head_dim (d_model / n_heads), got " +
               std::to_string(head_dim);
      });
      detail::require(
          rotary_base > 0.0 && std::isfinite(rotary_base), func, names.rotary_base,
          [&] { return "must be positive and finite, got " + std::to_string(rotary_base); });
    } else if (kind == PositionalKind::relative) {
      detail::check_bucketing(func, bidirectional, num_buckets, max_distance, names.num_buckets,
                              names.max_distance);
    }
  }
};

/// What a position scheme keeps from a forward for its backward; a scheme fills what it uses.
template <class Scalar>
struct PositionCache {
  RotaryTable<Scalar> rotary;  // rotary: cos and sin of the query positions (Tq, dh/2)
  Matrix<Scalar> bias;         // relative: the score bias per head and distance (H, Tq + Tk - 1)
  std::vector<Index> buckets;  // relative: the bucket of each distance column (Tq + Tk - 1)
};

/// A scheme acting inside self-attention. The Attention layer calls forward on its projected
/// queries and keys before scoring, and backward on their gradients after.
template <class Scalar>
class PositionScheme {
 public:
  using Mat = Matrix<Scalar>;
  virtual ~PositionScheme() = default;
  /// A copy of this scheme (each copy of a layer holds its own), and its kind.
  virtual std::unique_ptr<PositionScheme> clone() const = 0;
  virtual PositionalKind kind() const = 0;

  /// A (Tq, Tk) attention whose Tq queries hold the last Tq of the Tk key positions (positions
  /// Tk - Tq .. Tk - 1: a whole sequence when Tq == Tk, a decoding step over a KV cache
  /// otherwise). q (B*Tq, H*dh) are the queries and k_new (B*Tq, H*dh) the keys at the same
  /// positions; the scheme may change both in place and may set cache.bias (H, Tq + Tk - 1).
  virtual void forward(Mat& q, Mat& k_new, Index H, Index Tq, Index Tk,
                       PositionCache<Scalar>& cache) const = 0;

  /// The transpose: dq and dk, the gradients of forward's q and k_new, become those of its
  /// inputs, in place. dbias (H, Tq + Tk - 1), when cache.bias was set, is the gradient of the
  /// bias: the scheme adds it into its parameters' gradients.
  virtual void backward(Mat& dq, Mat& dk, const Mat* dbias, const PositionCache<Scalar>& cache) = 0;

  /// The scheme's trainable parameters (none by default), listed by the layer without a prefix
  /// (relative: "relative_bias"): pointers into this scheme.
  virtual ParamList<Scalar> parameters() { return {}; }
};

/// RoPE in the "rotate half" convention of GPT-NeoX and Hugging Face LLaMA (ops/rotary.hpp).
template <class Scalar>
class RotaryPositions : public PositionScheme<Scalar> {
 public:
  using Mat = Matrix<Scalar>;
  /// RoPE with theta base. base is not checked here (AttentionPositions::validate checks it): one
  /// that is not positive and finite makes forward throw ArgumentError (rotary_table).
  explicit RotaryPositions(double base) : base_(base) {}

  std::unique_ptr<PositionScheme<Scalar>> clone() const override {
    return std::make_unique<RotaryPositions>(*this);
  }
  PositionalKind kind() const override { return PositionalKind::rotary; }

  void forward(Mat& q, Mat& k_new, Index H, Index Tq, Index Tk,
               PositionCache<Scalar>& cache) const override;

  void backward(Mat& dq, Mat& dk, const Mat*, const PositionCache<Scalar>& cache) override;

 private:
  double base_;
};

template <class Scalar>
void RotaryPositions<Scalar>::forward(Mat& q, Mat& k_new, Index H, Index Tq, Index Tk,
                                      PositionCache<Scalar>& cache) const {
  cache.rotary = rotary_table<Scalar>(Tk - Tq, Tq, q.cols() / H, base_);
  rotary_forward<Scalar>(q, H, cache.rotary);
  rotary_forward<Scalar>(k_new, H, cache.rotary);
}

template <class Scalar>
void RotaryPositions<Scalar>::backward(Mat& dq, Mat& dk, const Mat*,
                                       const PositionCache<Scalar>& cache) {
  const Index H = dq.cols() / (2 * cache.rotary.half());
  rotary_backward<Scalar>(dq, H, cache.rotary);
  rotary_backward<Scalar>(dk, H, cache.rotary);
}

/// T5's relative position bias (ops/relative_position.hpp), one table per layer.
template <class Scalar>
class RelativePositions : public PositionScheme<Scalar> {
 public:
  using Mat = Matrix<Scalar>;
  /// The (num_buckets, H) table, T5's nn.Embedding(num_buckets, n_heads); row = bucket, column =
  /// head. Unlike T5 the scores keep their 1/sqrt(dh) scaling: the bias is added after it.
  Param<Scalar> relative_bias;

  /// relative_bias drawn from N(0, 1/d_model), as Hugging Face's T5 initialises it.
  /// Requires p valid for the layer (AttentionPositions::validate, which the Attention
  /// constructor calls); it is not checked here.
  RelativePositions(const AttentionPositions& p, Index d_model, Index n_heads, Rng& rng);

  std::unique_ptr<PositionScheme<Scalar>> clone() const override {
    return std::make_unique<RelativePositions>(*this);
  }
  PositionalKind kind() const override { return PositionalKind::relative; }

  void forward(Mat&, Mat&, Index, Index Tq, Index Tk, PositionCache<Scalar>& cache) const override;

  void backward(Mat&, Mat&, const Mat* dbias, const PositionCache<Scalar>& cache) override {
    if (dbias) relative_bias_backward<Scalar>(relative_bias.grad, *dbias, cache.buckets);
  }

  ParamList<Scalar> parameters() override { return {{"relative_bias", &relative_bias}}; }

 private:
  AttentionPositions settings_;
};

template <class Scalar>
RelativePositions<Scalar>::RelativePositions(const AttentionPositions& p, Index d_model,
                                             Index n_heads, Rng& rng)
    : relative_bias(p.num_buckets, n_heads), settings_(p) {
  fill_normal(relative_bias.value, 0.0, 1.0 / std::sqrt(static_cast<double>(d_model)), rng);
}

template <class Scalar>
void RelativePositions<Scalar>::forward(Mat&, Mat&, Index, Index Tq, Index Tk,
                                        PositionCache<Scalar>& cache) const {
  cache.buckets = relative_position_buckets(Tq, Tk, settings_.bidirectional, settings_.num_buckets,
                                            settings_.max_distance);
  relative_bias_forward<Scalar>(cache.bias, relative_bias.value, cache.buckets);
}

/// The scheme that acts inside the attention for p (valid for heads of width d_model / n_heads),
/// or null when p.kind acts elsewhere or not at all. Relative draws its table from rng.
/// p is not validated here: the Attention constructor validates it first.
template <class Scalar>
std::unique_ptr<PositionScheme<Scalar>> make_position_scheme(const AttentionPositions& p,
                                                             Index d_model, Index n_heads,
                                                             Rng& rng) {
  switch (p.kind) {
    case PositionalKind::rotary:
      return std::make_unique<RotaryPositions<Scalar>>(p.rotary_base);
    case PositionalKind::relative:
      return std::make_unique<RelativePositions<Scalar>>(p, d_model, n_heads, rng);
    default:
      return nullptr;
  }
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ATTENTION_POSITIONS_TEMPLATES(S)                             \
  EIGENFORMER_FOR(S, std::unique_ptr<PositionScheme<S>> make_position_scheme<S>( \
                         const AttentionPositions& p, Index d_model, Index n_heads, Rng& rng))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ATTENTION_POSITIONS_TEMPLATES)
EIGENFORMER_STRUCT_TEMPLATES(PositionCache)
EIGENFORMER_CLASS_TEMPLATES(PositionScheme)
EIGENFORMER_CLASS_TEMPLATES(RotaryPositions)
EIGENFORMER_CLASS_TEMPLATES(RelativePositions)
// clang-format on

}  // namespace eigenformer
