// The small model config the model-level tests start from; each test changes the fields it is
// about, so that what a test depends on is written in the test.
#pragma once

#include <eigenformer/core/tensor.hpp>
#include <eigenformer/model/config.hpp>

namespace eftest {

/// Vocabularies of 7 (source) and 6 (target; also the single-stack models' vocab), width 8 in 2
/// heads, d_ff 12, 2 + 2 layers (2 for the single-stack models), no dropout, max_len 16, pad id 0;
/// the rest TransformerConfig's defaults (post-norm, ReLU, sinusoidal positions, dot-product
/// attention, untied output).
inline eigenformer::TransformerConfig tiny_config() {
  eigenformer::TransformerConfig c;
  c.src_vocab = 7;
  c.tgt_vocab = 6;
  c.vocab = 6;
  c.d_model = 8;
  c.n_heads = 2;
  c.d_ff = 12;
  c.n_encoder_layers = 2;
  c.n_decoder_layers = 2;
  c.n_layers = 2;
  c.dropout = 0.0;
  c.max_len = 16;
  c.pad_id = 0;
  return c;
}

/// A source batch of B = 2 with lengths 5 and 3, padded with id 0.
inline eigenformer::IdMatrix padded_source() {
  eigenformer::IdMatrix src(2, 5);
  src << 3, 4, 5, 6, 7,  //
      8, 9, 10, 0, 0;
  return src;
}

}  // namespace eftest
