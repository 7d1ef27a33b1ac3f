// Decoder layer and decoder stack of the encoder-decoder Transformer.
//
// DecoderLayer: masked (causal) self-attention, cross-attention over the encoder output (memory),
// feed-forward; each inside a residual block with LayerNorm (post- or pre-norm). Both attentions
// use LayerConfig's scoring; only the self-attention gets its positions (rotary or relative).
// Decoder: token input, N layers, and a final LayerNorm for pre-norm.
//   target ids (B, T), memory (B*S, d) -> hidden states (B*T, d)
// The memory feeds every layer, so backward ADDS each layer's memory gradient into one matrix.
#pragma once

#include <string>
#include <vector>

#include "../core/precompiled.hpp"
#include "decode_state.hpp"
#include "encoder.hpp"

namespace eigenformer {

template <class Scalar = float>
class DecoderLayer {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Residual<Scalar>::Cache self_block, cross_block, ffn_block;
    typename Attention<Scalar>::Cache self_attn, cross_attn;
    typename Dropout<Scalar>::Cache self_drop, cross_drop, ffn_drop;
    typename FeedForward<Scalar>::Cache ffn;
  };

  Attention<Scalar> self_attn, cross_attn;
  FeedForward<Scalar> ffn;
  Residual<Scalar> self_block, cross_block, ffn_block;  // hold norm1, norm2, norm3
  Dropout<Scalar> self_drop, cross_drop, ffn_drop;

  DecoderLayer() = default;
  /// Causal self-attention (with c's positions), cross-attention (without), feed-forward, three
  /// residual blocks and their dropouts, drawing weights and dropout seeds from rng. Throws
  /// ArgumentError naming DecoderLayer::DecoderLayer and the field unless c is valid.
  DecoderLayer(const LayerConfig& c, Rng& rng)
      : self_attn(c.checked("DecoderLayer::DecoderLayer").d_model, c.n_heads, rng,
                  c.attention_options(/*self=*/true)),
        cross_attn(c.d_model, c.n_heads, rng, c.attention_options(/*self=*/false)),
        ffn(c.d_model, c.d_ff, c.activation, Scalar(c.dropout), rng),
        self_block(c.d_model, c.norm, Scalar(c.eps)),
        cross_block(c.d_model, c.norm, Scalar(c.eps)),
        ffn_block(c.d_model, c.norm, Scalar(c.eps)),
        self_drop(Scalar(c.dropout), rng.split()),
        cross_drop(Scalar(c.dropout), rng.split()),
        ffn_drop(Scalar(c.dropout), rng.split()) {}

  /// x (B*T, d), memory (B*S, d) -> (B*T, d). self_mask usually causal + target padding;
  /// cross_mask usually the source padding.
  /// Fills cache; in training mode draws new dropout masks. The result is a buffer of cache, valid
  /// until its next forward (x must not be it). Throws ArgumentError from the sub-layers for a B,
  /// x, memory or mask that does not fit.
  const Mat& forward(ConstRef<Scalar> x, ConstRef<Scalar> memory, Index B,
                     const AttentionMask& self_mask, const AttentionMask& cross_mask, Cache& cache);

  /// dy (B*T, d) -> dx (B*T, d), a buffer of this layer valid until its next backward; the memory
  /// gradient is ADDED into dmemory (B*S, d).
  /// dmemory must be empty (then set to zeros first) or (B*S, d): a non-empty dmemory of another
  /// shape is not checked. Parameter gradients are added too.
  /// cache comes from forward. Throws ArgumentError from the sub-layers for a dy or cache that
  /// does not fit.
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache, Mat& dmemory);

  /// Incremental decoding, inference only: x_new (B*t, d), the next t target positions, attends
  /// causally over self_cache (which it extends) and over the memory keys/values of memory_cache
  /// (Attention::cache_memory) -> (B*t, d). new_key_padding (B, t): padded new positions.
  /// Throws as Attention::forward_step and Attention::forward_cached_memory.
  Mat decode_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& self_cache,
                  const KVCache<Scalar>& memory_cache,
                  const BoolMatrix& new_key_padding = BoolMatrix()) const;

  /// Dropout on (training) or off in every sub-layer.
  void train(bool on) {
    ffn.train(on);
    self_drop.training = cross_drop.training = ffn_drop.training = on;
  }

  /// Names follow PyTorch's nn.TransformerDecoderLayer (multihead_attn is the cross-attention).
  ParamList<Scalar> parameters();

  /// Sets every parameter gradient to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  struct BackwardBuffers {
    Mat dmem;  // (B*S, d) the cross-attention's memory gradient
  };
  detail::Scratch<BackwardBuffers> scratch_;
};

template <class Scalar>
auto DecoderLayer<Scalar>::forward(ConstRef<Scalar> x, ConstRef<Scalar> memory, Index B,
                                   const AttentionMask& self_mask, const AttentionMask& cross_mask,
                                   Cache& cache) -> const Mat& {
  // Each sub-layer's output is a buffer of its cache, dropped out in place.
  const Mat& h1 = self_block.forward(x, cache.self_block, [&](ConstRef<Scalar> in) -> const Mat& {
    Mat& a = self_attn.forward(in, B, self_mask, cache.self_attn);
    self_drop.forward_in_place(a, cache.self_drop);
    return a;
  });
  const Mat& h2 =
      cross_block.forward(h1, cache.cross_block, [&](ConstRef<Scalar> in) -> const Mat& {
        Mat& a = cross_attn.forward(in, memory, B, cross_mask, cache.cross_attn);
        cross_drop.forward_in_place(a, cache.cross_drop);
        return a;
      });
  return ffn_block.forward(h2, cache.ffn_block, [&](ConstRef<Scalar> in) -> const Mat& {
    Mat& f = ffn.forward(in, cache.ffn);
    ffn_drop.forward_in_place(f, cache.ffn_drop);
    return f;
  });
}

template <class Scalar>
auto DecoderLayer<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache, Mat& dmemory)
    -> const Mat& {
  detail::require_filled_cache("DecoderLayer::backward", cache.self_attn.dims.B > 0);
  // d is the residual block's own copy of the gradient: dropout's backward runs in place on it.
  const Mat& dh2 = ffn_block.backward(dy, cache.ffn_block, [&](Mat& d) -> const Mat& {
    ffn_drop.backward_in_place(d, cache.ffn_drop);
    return ffn.backward(d, cache.ffn);
  });
  const Mat& dh1 = cross_block.backward(dh2, cache.cross_block, [&](Mat& d) -> const Mat& {
    Mat& dmem = scratch_.buffers.dmem;
    cross_drop.backward_in_place(d, cache.cross_drop);
    const Mat& dq = cross_attn.backward(d, cache.cross_attn, &dmem);
    if (dmemory.size() == 0) dmemory = Mat::Zero(dmem.rows(), dmem.cols());
    dmemory += dmem;
    return dq;
  });
  return self_block.backward(dh1, cache.self_block, [&](Mat& d) -> const Mat& {
    self_drop.backward_in_place(d, cache.self_drop);
    return self_attn.backward(d, cache.self_attn);
  });
}

template <class Scalar>
auto DecoderLayer<Scalar>::decode_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& self_cache,
                                       const KVCache<Scalar>& memory_cache,
                                       const BoolMatrix& new_key_padding) const -> Mat {
  const Mat h1 = self_block.forward(x_new, [&](ConstRef<Scalar> in) {
    return self_attn.forward_step(in, B, self_cache, new_key_padding);
  });
  const Mat h2 = cross_block.forward(h1, [&](ConstRef<Scalar> in) {
    return cross_attn.forward_cached_memory(in, B, memory_cache);
  });
  return ffn_block.forward(h2, [&](ConstRef<Scalar> in) { return ffn.forward(in); });
}

template <class Scalar>
auto DecoderLayer<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "self_attn", self_attn.parameters());
  append_params(out, "multihead_attn", cross_attn.parameters());
  for (const auto& p : ffn.parameters()) out.push_back(p);
  append_params(out, "norm1", self_block.norm.parameters());
  append_params(out, "norm2", cross_block.norm.parameters());
  append_params(out, "norm3", ffn_block.norm.parameters());
  return out;
}

template <class Scalar = float>
class Decoder {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename TokenInput<Scalar>::Cache input;
    std::vector<typename DecoderLayer<Scalar>::Cache> layers;
    typename LayerNorm<Scalar>::Cache final_norm;
  };

  TokenInput<Scalar> input;
  std::vector<DecoderLayer<Scalar>> layers;
  LayerNorm<Scalar> final_norm;  // empty for post-norm

  Decoder() = default;
  /// Token input over vocab ids and n_layers causal decoder layers from c and rng, and a final
  /// LayerNorm for pre-norm. Throws ArgumentError from the parts for a setting out of range.
  Decoder(Index vocab, Index n_layers, const TransformerConfig& c, Rng& rng);

  /// ids (B, T), memory (B*S, d) -> (B*T, d). start_pos: position of ids' first column.
  /// Fills cache; the result is a buffer of it, valid until its next forward. Throws
  /// ArgumentError for an id outside [0, vocab), start_pos + T beyond max_len, or a memory or
  /// mask that does not fit.
  const Mat& forward(const IdMatrix& ids, ConstRef<Scalar> memory, const AttentionMask& self_mask,
                     const AttentionMask& cross_mask, Cache& cache, Index start_pos = 0);

  /// dy (B*T, d) -> the memory gradient (B*S, d), a buffer of the decoder valid until its next
  /// backward. Empty (0, 0) when the decoder has no layers. Adds every parameter gradient of the
  /// decoder. cache comes from forward. ready, when set, gets the final norm's parameters, each
  /// layer's (last to first), then the token input's, each as soon as their gradients are final.
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache,
                      const GradReady<Scalar>& ready = nullptr);

  /// Starts incremental decoding over memory (B*S, d) with source key padding (B, S) (empty:
  /// none): projects every layer's cross-attention keys and values once and allocates
  /// self-attention caches for max_len target positions.
  /// Throws ArgumentError unless max_len > 0 and memory, B and the padding fit
  /// (Attention::cache_memory).
  DecodeState<Scalar> begin_decode(ConstRef<Scalar> memory, Index B,
                                   const BoolMatrix& memory_key_padding, Index max_len) const;

  /// Incremental forward, inference only: ids (B, t) at positions state.position.. -> hidden
  /// states (B*t, d); extends the caches and advances state.position by t. new_key_padding
  /// (B, t) marks padded ids (empty: none).
  /// Throws ArgumentError naming Decoder::decode_step, before extending the caches, unless ids is
  /// (state.B, t > 0), state comes from begin_decode of this decoder and t more positions fit;
  /// and as the token input for ids outside [0, vocab). The token input's dropout applies in
  /// training mode: call train(false) first.
  Mat decode_step(const IdMatrix& ids, DecodeState<Scalar>& state,
                  const BoolMatrix& new_key_padding = BoolMatrix());

  /// Dropout on (training) or off in the input and every layer.
  void train(bool on) {
    input.train(on);
    for (auto& l : layers) l.train(on);
  }

  /// The token input's, then "layers.<i>.*" per layer, then "norm.*" (pre-norm only).
  ParamList<Scalar> parameters();

 private:
  bool pre_norm_ = false;
  struct BackwardBuffers {
    Mat dmemory;  // (B*S, d)
  };
  detail::Scratch<BackwardBuffers> scratch_;
};

template <class Scalar>
Decoder<Scalar>::Decoder(Index vocab, Index n_layers, const TransformerConfig& c, Rng& rng)
    : input(vocab, c, rng), pre_norm_(c.norm == NormPlacement::pre) {
  for (Index i = 0; i < n_layers; ++i) layers.emplace_back(c.layer(/*causal=*/true), rng);
  if (pre_norm_) final_norm = LayerNorm<Scalar>(c.d_model, Scalar(c.eps));
}

template <class Scalar>
auto Decoder<Scalar>::forward(const IdMatrix& ids, ConstRef<Scalar> memory,
                              const AttentionMask& self_mask, const AttentionMask& cross_mask,
                              Cache& cache, Index start_pos) -> const Mat& {
  const Mat* h = &input.forward(ids, cache.input, start_pos);  // the last output, in cache
  cache.layers.resize(layers.size());
  for (size_t i = 0; i < layers.size(); ++i)
    h = &layers[i].forward(*h, memory, ids.rows(), self_mask, cross_mask, cache.layers[i]);
  if (pre_norm_) h = &final_norm.forward(*h, cache.final_norm);
  return *h;
}

template <class Scalar>
auto Decoder<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache,
                               const GradReady<Scalar>& ready) -> const Mat& {
  detail::require_filled_cache("Decoder::backward",
                               cache.input.ids.size() != 0 && cache.layers.size() == layers.size());
  // d: the last gradient, a buffer of a layer (null: dy itself).
  const Mat* d = pre_norm_ ? &final_norm.backward(dy, cache.final_norm) : nullptr;
  if (ready && pre_norm_) ready(final_norm.parameters());
  Mat& dmemory = scratch_.buffers.dmemory;  // (B*S, kdim) the layers add into it
  if (layers.empty()) {
    dmemory.resize(0, 0);
  } else {
    const Mat& memory = cache.layers[0].cross_attn.memory;  // (B*S, kdim) the forward's memory
    dmemory.setZero(memory.rows(), memory.cols());
  }
  for (size_t i = layers.size(); i-- > 0;) {
    d = &layers[i].backward(d ? ConstRef<Scalar>(*d) : dy, cache.layers[i], dmemory);
    if (ready) ready(layers[i].parameters());
  }
  input.backward(d ? ConstRef<Scalar>(*d) : dy, cache.input);
  if (ready) ready(input.parameters());
  return dmemory;
}

template <class Scalar>
auto Decoder<Scalar>::begin_decode(ConstRef<Scalar> memory, Index B,
                                   const BoolMatrix& memory_key_padding, Index max_len) const
    -> DecodeState<Scalar> {
  detail::check_positive("Decoder::begin_decode", "max_len", max_len);
  DecodeState<Scalar> state;
  state.B = B;
  state.max_len = max_len;
  state.memory.resize(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].cross_attn.cache_memory(memory, B, memory_key_padding, state.memory[i]);
    state.self.push_back(layers[i].self_attn.make_cache(B, max_len));
  }
  return state;
}

template <class Scalar>
auto Decoder<Scalar>::decode_step(const IdMatrix& ids, DecodeState<Scalar>& state,
                                  const BoolMatrix& new_key_padding) -> Mat {
  const char* func = "Decoder::decode_step";
  detail::require(ids.rows() == state.B && ids.cols() > 0, func, "ids", [&] {
    return "has shape " + detail::shape_of(ids) + ", expected (" + std::to_string(state.B) +
           ", t > 0)";
  });
  detail::require(state.self.size() == layers.size() && state.memory.size() == layers.size(), func,
                  "state", "is not from begin_decode of this decoder");
  for (const auto& c : state.self) c.check_room(func, "ids", ids.cols());
  typename TokenInput<Scalar>::Cache scratch;
  Mat h = input.forward(ids, scratch, state.position);
  for (size_t i = 0; i < layers.size(); ++i)
    h = layers[i].decode_step(h, state.B, state.self[i], state.memory[i], new_key_padding);
  if (pre_norm_) h = final_norm.forward(h);
  state.position += ids.cols();
  return h;
}

template <class Scalar>
auto Decoder<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out = input.parameters();
  for (size_t i = 0; i < layers.size(); ++i)
    append_params(out, "layers." + std::to_string(i), layers[i].parameters());
  if (pre_norm_) append_params(out, "norm", final_norm.parameters());
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(DecoderLayer)
EIGENFORMER_CLASS_TEMPLATES(Decoder)

}  // namespace eigenformer
