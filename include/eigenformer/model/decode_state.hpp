// What a model keeps between its decode_step calls (incremental decoding, inference only).
#pragma once

#include <vector>

#include "../layers/kv_cache.hpp"

namespace eigenformer {

/// One self-attention KV cache per layer, one memory cache per layer (encoder-decoder only), the
/// batch size and the position of the next step's first token. begin_decode of a model makes it;
/// beam search reorders its self-attention caches by parent hypothesis.
template <class Scalar = float>
struct DecodeState {
  std::vector<KVCache<Scalar>> self;    // per layer: self-attention keys/values, grows per step
  std::vector<KVCache<Scalar>> memory;  // per layer: cross-attention keys/values of the source
  Index B = 0;                          // sequences
  Index position = 0;                   // position of the next decode_step's first token
  Index max_len = 0;                    // positions the self-attention caches hold
  Index dropped = 0;                    // positions a sliding window dropped (slide_window)

  /// The keys each self-attention layer attends over in a step of new_tokens tokens: the cached
  /// ones and the new ones (0 with no layer).
  Index self_keys_after(Index new_tokens) const {
    return self.empty() ? 0 : self.front().len + new_tokens;
  }
};

namespace detail {

/// Multiply-adds of one decode step of rows token rows: per layer the self-attention projections
/// (4 d^2), the cross-attention's query and output projections when memory_keys > 0 (2 d^2; its
/// keys and values are cached), the feed-forward block (2 d d_ff) and the scores and weighted sums
/// over the cached keys (2 d each); then the output projection (vocab d). It decides whether the
/// step is worth threads (SerialIfSmall).
inline double decode_step_work(Index rows, Index layers, Index d, Index d_ff, Index self_keys,
                               Index memory_keys, Index vocab) {
  const double D = static_cast<double>(d);
  const double cross = memory_keys > 0 ? 2.0 * D * D + 2.0 * D * double(memory_keys) : 0.0;
  const double layer = 4.0 * D * D + 2.0 * D * double(d_ff) + 2.0 * D * double(self_keys) + cross;
  return double(rows) * (double(layers) * layer + double(vocab) * D);
}

}  // namespace detail

}  // namespace eigenformer
