// The input stage of every model: token embedding, optional sqrt(d_model) scaling, positional
// encoding (sinusoidal or learned; nothing for relative and rotary positions, which act inside the
// self-attention layers, or for none) and dropout.
//   ids (B, T) -> (B*T, d_model)
#pragma once

#include <cmath>

#include "../core/precompiled.hpp"
#include "../layers/attention_positions.hpp"
#include "../layers/dropout.hpp"
#include "../layers/embedding.hpp"
#include "../layers/positional.hpp"
#include "config.hpp"

namespace eigenformer {

template <class Scalar = float>
class TokenInput {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    IdMatrix ids;  // (B, T)
    Index start_pos = 0;
    typename Dropout<Scalar>::Cache dropout;
  };

  Embedding<Scalar> embedding;
  SinusoidalPositionalEncoding<Scalar> sinusoidal;  // used when kind == sinusoidal
  LearnedPositionalEncoding<Scalar> learned;        // used when kind == learned
  Dropout<Scalar> dropout;

  TokenInput() = default;
  /// Embedding (vocab, c.d_model) with padding id c.pad_id, drawn from N(0, 1/d_model) when
  /// c.scale_embeddings (N(0, 1) otherwise); the table c.positional asks for (sinusoidal, or
  /// learned drawn from rng); dropout c.dropout seeded by rng.split(). Throws ArgumentError from
  /// the parts for a setting out of range.
  TokenInput(Index vocab, const TransformerConfig& c, Rng& rng);

  /// Longest sequence: the table's length, or the config's max_len without a table.
  Index max_len() const { return max_len_; }

  /// ids (B, T) at positions start_pos.. -> (B*T, d_model).
  /// Embedding, times sqrt(d_model) with scale_embeddings, plus the positional table, then
  /// dropout (in training mode); fills cache. Throws ArgumentError for an id outside [0, vocab),
  /// B or T of 0, start_pos < 0 or start_pos + T > max_len().
  Mat forward(const IdMatrix& ids, Cache& cache, Index start_pos = 0);

  /// dy (B*T, d_model): adds into the embedding (and learned position) gradients.
  /// cache comes from forward. Throws ArgumentError for a dy that does not fit the cache.
  void backward(ConstRef<Scalar> dy, const Cache& cache);

  /// Dropout on (training) or off.
  void train(bool on) { dropout.training = on; }

  /// "embedding.weight", and "position.weight" with learned positions: pointers into this stage.
  ParamList<Scalar> parameters();

 private:
  PositionalKind kind_ = PositionalKind::sinusoidal;
  Index max_len_ = 0;
  Scalar scale_ = Scalar(1);
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
}

template <class Scalar>
auto TokenInput<Scalar>::forward(const IdMatrix& ids, Cache& cache, Index start_pos) -> Mat {
  Mat x = embedding.forward(ids);
  if (scale_ != Scalar(1)) x *= scale_;
  if (kind_ == PositionalKind::sinusoidal)
    x = sinusoidal.forward(x, ids.rows(), ids.cols(), start_pos);
  else if (kind_ == PositionalKind::learned)
    x = learned.forward(x, ids.rows(), ids.cols(), start_pos);
  else  // positions act in the attention; keep the tables' limit all the same
    detail::check_positions<Scalar>("TokenInput::forward", "x", x, ids.rows(), ids.cols(),
                                    start_pos, x.cols(), max_len_);
  cache.ids = ids;
  cache.start_pos = start_pos;
  return dropout.forward(x, cache.dropout);
}

template <class Scalar>
void TokenInput<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) {
  detail::require_filled_cache("TokenInput::backward", cache.ids.size() != 0);
  Mat d = dropout.backward(dy, cache.dropout);
  if (kind_ == PositionalKind::learned)
    d = learned.backward(d, cache.ids.rows(), cache.ids.cols(), cache.start_pos);
  if (scale_ != Scalar(1)) d *= scale_;
  embedding.backward(d, cache.ids);
}

template <class Scalar>
auto TokenInput<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "embedding", embedding.parameters());
  if (kind_ == PositionalKind::learned) append_params(out, "position", learned.parameters());
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(TokenInput)

}  // namespace eigenformer
