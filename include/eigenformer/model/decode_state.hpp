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
};

}  // namespace eigenformer
