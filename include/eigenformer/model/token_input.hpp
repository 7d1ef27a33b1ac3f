// The input stage of every model: token embedding, optional sqrt(d_model) scaling, positional
// encoding (sinusoidal or learned; nothing for relative and rotary positions, which act inside the
// self-attention layers, or for none), optional token-type embedding and LayerNorm (BERT's), and
// dropout.
//   ids (B, T) [, token types (B, T)] -> (B*T, d_model)
#pragma once

#include <cmath>

#include "../core/precompiled.hpp"
#include "../layers/attention_positions.hpp"
#include "../layers/dropout.hpp"
#include "../layers/embedding.hpp"
#include "../layers/layernorm.hpp"
#include "../layers/positional.hpp"
#include "config.hpp"

namespace eigenformer {

template <class Scalar = float>
class TokenInput {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    IdMatrix ids;          // (B, T)
    IdMatrix token_types;  // (B, T), or empty: every token of type 0
    Index start_pos = 0;
    typename LayerNorm<Scalar>::Cache norm;
    typename Dropout<Scalar>::Cache dropout;
    Mat out;  // (B*T, d_model) the output
  };

  Embedding<Scalar> embedding;
  SinusoidalPositionalEncoding<Scalar> sinusoidal;  // used when kind == sinusoidal
  LearnedPositionalEncoding<Scalar> learned;        // used when kind == learned
  Embedding<Scalar> token_type;  // (type_vocab, d_model) when config.type_vocab > 0
  LayerNorm<Scalar> norm;        // on the sum, when config.input_norm
  Dropout<Scalar> dropout;

  TokenInput() = default;
  /// Embedding (vocab, c.d_model) with padding id c.pad_id, drawn from N(0, 1/d_model) when
  /// c.scale_embeddings (N(0, 1) otherwise); the table c.positional asks for (sinusoidal, or
  /// learned drawn from rng); dropout c.dropout seeded by rng.split(); then, when c asks for
  /// them, the token-type table (N(0, 1) from rng) and the LayerNorm. Throws ArgumentError from
  /// the parts for a setting out of range.
  TokenInput(Index vocab, const TransformerConfig& c, Rng& rng);

  /// Longest sequence: the table's length, or the config's max_len without a table.
  Index max_len() const { return max_len_; }
  /// The number of token types (0: no token-type table).
  Index type_vocab() const { return token_type.vocab_size(); }

  /// ids (B, T) at positions start_pos.. -> (B*T, d_model).
  /// Embedding, times sqrt(d_model) with scale_embeddings, plus the positional table, plus the
  /// token-type embedding of type 0 (with a table), then the LayerNorm (input_norm) and dropout
  /// (in training mode); fills cache. The result is cache.out, valid until the next forward with
  /// cache. Throws ArgumentError for an id outside [0, vocab), B or T of 0, start_pos < 0 or
  /// start_pos + T > max_len(), before anything changes.
  const Mat& forward(const IdMatrix& ids, Cache& cache, Index start_pos = 0) {
    return forward(ids, IdMatrix(), cache, start_pos);
  }

  /// The same with token types (B, T) (BERT's segment ids; empty: all 0).
  /// Throws ArgumentError naming TokenInput::forward and 'token_types', before anything changes,
  /// unless token_types is empty or has ids' shape with every type in [0, type_vocab()) (a model
  /// without a token-type table takes only empty types); and as the other forward.
  const Mat& forward(const IdMatrix& ids, const IdMatrix& token_types, Cache& cache,
                     Index start_pos = 0);

  /// dy (B*T, d_model): adds into the embedding (and learned position) gradients.
  /// cache comes from forward. Throws ArgumentError for a dy that does not fit the cache.
  void backward(ConstRef<Scalar> dy, const Cache& cache);

  /// Dropout on (training) or off.
  void train(bool on) { dropout.training = on; }

  /// "embedding.weight", "position.weight" with learned positions, "token_type.weight" with token
  /// types and "input_norm.weight" / ".bias" with input_norm: pointers into this stage.
  ParamList<Scalar> parameters();

 private:
  PositionalKind kind_ = PositionalKind::sinusoidal;
  Index max_len_ = 0;
  Scalar scale_ = Scalar(1);
  struct BackwardBuffers {
    Mat d;  // (B*T, d_model) dy, through dropout (and the norm, and the scaling)
  };
  detail::Scratch<BackwardBuffers> scratch_;

  /// The name under which the positions of forward are checked: the positional table's forward,
  /// or TokenInput::forward without a table.
  const char* positions_func() const;
  /// x (B*T, d_model) += the token-type embedding of types (B, T) (empty: type 0 everywhere).
  void add_token_types(Mat& x, const IdMatrix& types) const;
};

template <class Scalar>
TokenInput<Scalar>::TokenInput(Index vocab, const TransformerConfig& c, Rng& rng)
    : embedding(vocab, c.d_model, rng, c.pad_id),
      dropout(Scalar(c.dropout), rng.split()),
      kind_(c.positional),
      max_len_(c.max_len),
      scale_(c.scale_embeddings ? std::sqrt(Scalar(c.d_model)) : Scalar(1)) {
  // With sqrt(d_model) scaling, draw the embedding from N(0, 1/d_model) as tensor2tensor does, so
  // scaled embeddings have unit size like the positional signal instead of drowning it.
  if (c.scale_embeddings) {
    fill_normal(embedding.weight.value, 0.0, 1.0 / std::sqrt(double(c.d_model)), rng);
    if (c.pad_id >= 0) embedding.weight.value.row(c.pad_id).setZero();
  }
  if (kind_ == PositionalKind::sinusoidal)
    sinusoidal = SinusoidalPositionalEncoding<Scalar>(c.d_model, c.max_len);
  else if (kind_ == PositionalKind::learned)
    // At the scale of the token embeddings as they reach the sum (about 1 with or without the
    // sqrt(d_model) scaling): GPT-2's 0.02 next to unit-size embeddings hides the positions (a
    // masked-token task learned 31-34% with it against 100% with sinusoidal positions).
    learned = LearnedPositionalEncoding<Scalar>(c.d_model, c.max_len, rng, /*init_std=*/1.0);
  if (c.type_vocab > 0) token_type = Embedding<Scalar>(c.type_vocab, c.d_model, rng);
  if (c.input_norm) norm = LayerNorm<Scalar>(c.d_model, Scalar(c.eps));
}

template <class Scalar>
auto TokenInput<Scalar>::forward(const IdMatrix& ids, const IdMatrix& token_types, Cache& cache,
                                 Index start_pos) -> const Mat& {
  const char* func = "TokenInput::forward";
  if (token_types.size() > 0) {
    detail::require(type_vocab() > 0, func, "token_types",
                    "is not empty, but the model has no token-type table (config.type_vocab 0)");
    detail::require(token_types.rows() == ids.rows() && token_types.cols() == ids.cols(), func,
                    "token_types", [&] {
                      return "has shape " + detail::shape_of(token_types) + ", expected ids' " +
                             detail::shape_of(ids);
                    });
    detail::check_embedding_ids(func, "token_types", token_types, type_vocab());
  }
  // Every check before cache.out changes: the ids (Embedding's), then the positions, named as
  // the positional table names them.
  detail::check_embedding_ids("Embedding::forward", "ids", ids, embedding.vocab_size());
  detail::check_position_range(positions_func(), ids.rows(), ids.cols(), start_pos, max_len_);
  Mat& x = cache.out;  // (B*T, d_model), built in place
  embedding.forward_into(x, ids);
  if (scale_ != Scalar(1)) x *= scale_;
  if (kind_ == PositionalKind::sinusoidal)
    sinusoidal.forward_in_place(x, ids.rows(), ids.cols(), start_pos);
  else if (kind_ == PositionalKind::learned)
    learned.forward_in_place(x, ids.rows(), ids.cols(), start_pos);
  if (type_vocab() > 0) add_token_types(x, token_types);
  if (norm.features() > 0) {
    norm.forward(x, cache.norm);  // into cache.norm.y; the norm keeps its input in cache.norm.x
    x.swap(cache.norm.y);         // the output in cache.out; the old buffer serves the next forward
  }
  cache.ids = ids;
  cache.token_types = token_types;
  cache.start_pos = start_pos;
  dropout.forward_in_place(x, cache.dropout);
  return x;
}

template <class Scalar>
void TokenInput<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) {
  detail::require_filled_cache("TokenInput::backward", cache.ids.size() != 0);
  Mat& d = scratch_.buffers.d;  // (B*T, d_model)
  d = dy;
  dropout.backward_in_place(d, cache.dropout);
  if (norm.features() > 0) d = norm.backward(d, cache.norm);
  if (type_vocab() > 0) {
    if (cache.token_types.size() > 0) {
      token_type.backward(d, cache.token_types);
    } else {  // every token of type 0 (the order of Embedding::backward's sum)
      auto grad0 = token_type.weight.grad.row(0);
      for (Index n = 0; n < d.rows(); ++n) grad0 += d.row(n);
    }
  }
  if (kind_ == PositionalKind::learned)
    learned.add_grad(d, cache.ids.rows(), cache.ids.cols(), cache.start_pos);
  if (scale_ != Scalar(1)) d *= scale_;
  embedding.backward(d, cache.ids);
}

template <class Scalar>
const char* TokenInput<Scalar>::positions_func() const {
  if (kind_ == PositionalKind::sinusoidal) return "SinusoidalPositionalEncoding::forward";
  if (kind_ == PositionalKind::learned) return "LearnedPositionalEncoding::forward";
  return "TokenInput::forward";
}

template <class Scalar>
void TokenInput<Scalar>::add_token_types(Mat& x, const IdMatrix& types) const {
  const Mat& table = token_type.weight.value;  // (type_vocab, d_model)
  if (types.size() == 0) {
    x.rowwise() += table.row(0);
    return;
  }
  const Index* id = types.data();  // (B*T) row-major: token b*T+t
  for (Index n = 0; n < x.rows(); ++n) x.row(n) += table.row(id[n]);
}

template <class Scalar>
auto TokenInput<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "embedding", embedding.parameters());
  if (kind_ == PositionalKind::learned) append_params(out, "position", learned.parameters());
  if (type_vocab() > 0) append_params(out, "token_type", token_type.parameters());
  if (norm.features() > 0) append_params(out, "input_norm", norm.parameters());
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(TokenInput)

}  // namespace eigenformer
