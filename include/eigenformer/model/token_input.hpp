// The input stage of every model: token embedding, optional sqrt(d_model) scaling, positional
// encoding (sinusoidal or learned) and dropout.
//   ids (B, T) -> (B*T, d_model)
#pragma once

#include <cmath>

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
  TokenInput(Index vocab, const TransformerConfig& c, Rng& rng)
      : embedding(vocab, c.d_model, rng, c.pad_id), dropout(Scalar(c.dropout), rng.split()),
        kind_(c.positional),
        scale_(c.scale_embeddings ? std::sqrt(Scalar(c.d_model)) : Scalar(1)) {
    // With sqrt(d_model) scaling, draw the embedding from N(0, 1/d_model) as tensor2tensor does, so
    // scaled embeddings have unit size like the positional signal instead of drowning it.
    if (c.scale_embeddings) {
      fill_normal(embedding.weight.value, 0.0, 1.0 / std::sqrt(double(c.d_model)), rng);
      if (c.pad_id >= 0) embedding.weight.value.row(c.pad_id).setZero();
    }
    if (kind_ == PositionalKind::sinusoidal)
      sinusoidal = SinusoidalPositionalEncoding<Scalar>(c.d_model, c.max_len);
    else
      learned = LearnedPositionalEncoding<Scalar>(c.d_model, c.max_len, rng);
  }

  Index max_len() const {
    return kind_ == PositionalKind::sinusoidal ? sinusoidal.max_len() : learned.max_len();
  }

  /// ids (B, T) at positions start_pos.. -> (B*T, d_model).
  Mat forward(const IdMatrix& ids, Cache& cache, Index start_pos = 0) {
    Mat x = embedding.forward(ids);
    if (scale_ != Scalar(1)) x *= scale_;
    x = kind_ == PositionalKind::sinusoidal
            ? sinusoidal.forward(x, ids.rows(), ids.cols(), start_pos)
            : learned.forward(x, ids.rows(), ids.cols(), start_pos);
    cache.ids = ids;
    cache.start_pos = start_pos;
    return dropout.forward(x, cache.dropout);
  }

  /// dy (B*T, d_model): adds into the embedding (and learned position) gradients.
  void backward(ConstRef<Scalar> dy, const Cache& cache) {
    Mat d = dropout.backward(dy, cache.dropout);
    if (kind_ == PositionalKind::learned)
      d = learned.backward(d, cache.ids.rows(), cache.ids.cols(), cache.start_pos);
    if (scale_ != Scalar(1)) d *= scale_;
    embedding.backward(d, cache.ids);
  }

  void train(bool on) { dropout.training = on; }

  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "embedding", embedding.parameters());
    if (kind_ == PositionalKind::learned) append_params(out, "position", learned.parameters());
    return out;
  }

 private:
  PositionalKind kind_ = PositionalKind::sinusoidal;
  Scalar scale_ = Scalar(1);
};

}  // namespace eigenformer
