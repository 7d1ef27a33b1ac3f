// The encoder-decoder Transformer ("Attention Is All You Need").
//   source ids (B, S), decoder input ids (B, T) -> logits (B*T, tgt_vocab)
// Masks come from the ids: source padding masks the encoder's keys and the cross-attention keys;
// the decoder's self-attention is causal and masks target padding. forward also takes custom
// masks as nn.Transformer does (TransformerMasks: src_mask, tgt_mask, memory_mask), e.g. a
// prefix LM's target mask, per-head masks or additive biases.
// Teacher forcing: the decoder input is the target shifted right behind BOS (shift_right()).
#pragma once

#include <optional>
#include <string>

#include "../core/precompiled.hpp"
#include "config.hpp"
#include "decoder.hpp"
#include "encoder.hpp"
#include "output_head.hpp"

namespace eigenformer {

/// Masks a caller gives Transformer::forward, as nn.Transformer's src_mask (the encoder's
/// self-attention, (S, S) shapes), tgt_mask (the decoder's self-attention, (T, T)) and memory_mask
/// (the cross-attention, (T, S)); shapes as in ops/attention.hpp: shared, per sequence (B*Tq rows)
/// or per sequence and head (B*H*Tq rows), attn_mask boolean and attn_bias additive. A given
/// mask's causal flag replaces the model's default (causal for tgt only), so a prefix LM sets
/// tgt->causal = false with its own attn_mask; the padding masks of the ids always apply too.
struct TransformerMasks {
  std::optional<AttentionMask> src, tgt, memory;
};

namespace detail {
/// The mask m holds, or null: passed on without a copy.
inline const AttentionMask* mask_of(const std::optional<AttentionMask>& m) {
  return m ? &*m : nullptr;
}
}  // namespace detail

template <class Scalar = float>
class Transformer {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Encoder<Scalar>::Cache encoder;
    typename Decoder<Scalar>::Cache decoder;
    typename OutputHead<Scalar>::Cache head;
    // The masks of the last forward, kept so that their buffers serve the next one.
    AttentionMask src_mask, tgt_mask, memory_mask;
  };

  Encoder<Scalar> encoder;
  Decoder<Scalar> decoder;
  OutputHead<Scalar> head;

  Transformer() = default;
  /// Builds the encoder, the decoder and the output head from config, drawing their weights from
  /// rng in that order. Throws ArgumentError naming Transformer::Transformer and the field unless
  /// config is valid (TransformerConfig::validate, with a source).
  Transformer(const TransformerConfig& config, Rng& rng);

  /// The config the model was built with.
  const TransformerConfig& config() const { return config_; }
  /// The target vocabulary: config().tgt_vocab, the width of the logits.
  Index vocab_size() const { return config_.tgt_vocab; }

  /// src (B, S) -> memory (B*S, d).
  /// Fills cache for Encoder::backward (Transformer::forward keeps it as cache.encoder). Throws
  /// ArgumentError naming Transformer::encode and 'src' unless src is non-empty, S <= max_len and
  /// every id is in [0, src_vocab).
  /// The memory is a buffer of cache, valid until its next forward.
  const Mat& encode(const IdMatrix& src, typename Encoder<Scalar>::Cache& cache);

  /// Decoder input ids (B, T) at positions start_pos.. over memory (B*S, d) of src (B, S)
  /// -> logits (B*T, tgt_vocab).
  /// memory must be encode(src)'s: decode does not check its shape (the cross-attention checks
  /// its width, and its length only against src's padding mask, when pad_id >= 0).
  /// Fills cache.decoder and cache.head. Throws ArgumentError naming Transformer::decode unless
  /// tgt_in is non-empty with T <= max_len and ids in [0, tgt_vocab) and has src's B; and from
  /// the layers for start_pos + T beyond max_len or a memory that does not fit.
  /// The logits are a buffer of cache, valid until its next forward.
  const Mat& decode(const IdMatrix& tgt_in, const IdMatrix& src, ConstRef<Scalar> memory,
                    Cache& cache, Index start_pos = 0);

  /// Starts incremental decoding (inference only) of src (B, S) whose encoder output is memory
  /// (B*S, d), e.g. from encode(): the cross-attention keys and values of every decoder layer are
  /// projected once, and the self-attention caches hold up to max_len target positions.
  /// Throws ArgumentError naming Transformer::begin_decode unless src is valid (as for encode),
  /// memory is (B*S, d_model) and 1 <= max_len <= config().max_len.
  DecodeState<Scalar> begin_decode(const IdMatrix& src, ConstRef<Scalar> memory,
                                   Index max_len) const;

  /// Encodes src (B, S) and starts incremental decoding for up to max_len target positions.
  /// Throws as the other begin_decode (there is no memory argument to check).
  DecodeState<Scalar> begin_decode(const IdMatrix& src, Index max_len);

  /// Incremental decoding, inference only: the next decoder input ids (B, t) (usually t = 1) at
  /// positions state.position.. -> their logits (B*t, tgt_vocab), equal up to rounding to the
  /// last t rows per sequence of decode() over the whole prefix. Extends state's caches. The
  /// layers apply no dropout; call eval() first so that the token input's dropout is off too.
  /// Throws ArgumentError, with state unchanged, for ids outside [0, tgt_vocab) or more than
  /// max_len columns, a batch other than state.B, a state not from begin_decode of this model, or
  /// more positions than state holds.
  Mat decode_step(const IdMatrix& ids, DecodeState<Scalar>& state);

  /// Training forward: src (B, S), tgt_in (B, T) -> logits (B*T, tgt_vocab).
  /// Teacher forcing: tgt_in is usually shift_right(targets, bos). Fills cache for backward; in
  /// training mode draws new dropout masks. The logits are a buffer of cache, valid until its next
  /// forward (so a training loop allocates them once). Throws ArgumentError as encode and decode.
  const Mat& forward(const IdMatrix& src, const IdMatrix& tgt_in, Cache& cache);

  /// The same with custom masks (see TransformerMasks), which backward needs no more of.
  /// Throws ArgumentError as the other forward, and naming Transformer::forward for a mask that
  /// does not fit.
  const Mat& forward(const IdMatrix& src, const IdMatrix& tgt_in, const TransformerMasks& masks,
                     Cache& cache);

  /// dlogits (B*T, tgt_vocab): adds every parameter's gradient. ready, when set, is called with
  /// each layer's parameters as soon as their gradients are final (output head, decoder layers
  /// last to first, decoder input, encoder likewise): data-parallel training starts summing them
  /// across processes while backward goes on (dist/data_parallel.hpp).
  /// cache comes from forward. Throws ArgumentError from the layers for a dlogits or cache that
  /// does not fit (OutputHead::backward checks dlogits before any gradient changes).
  void backward(ConstRef<Scalar> dlogits, const Cache& cache,
                const GradReady<Scalar>& ready = nullptr);

  /// Training mode turns dropout on; eval mode (for decoding) turns it off.
  void train(bool on = true) {
    encoder.train(on);
    decoder.train(on);
  }
  void eval() { train(false); }

  /// Names: encoder.*, decoder.*, and output.* unless tied to decoder.embedding.weight.
  ParamList<Scalar> parameters();

  // Token ids of another type (Eigen::MatrixXi, std::vector): a short compile error naming to_ids.
  EIGENFORMER_REJECT_FOREIGN_IDS(forward)
  EIGENFORMER_REJECT_FOREIGN_IDS(encode)
  EIGENFORMER_REJECT_FOREIGN_IDS(decode)
  EIGENFORMER_REJECT_FOREIGN_IDS(decode_step)

  /// Sets every parameter gradient to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  TransformerConfig config_;

  static const TransformerConfig& checked(const TransformerConfig& c) {
    c.validate("Transformer::Transformer", true);
    return c;
  }

  AttentionMask source_mask(const IdMatrix& src) const {
    AttentionMask m;
    m.key_padding = key_padding_mask(src, config_.pad_id);
    return m;
  }

  void check_ids(std::string_view func, std::string_view arg, const IdMatrix& ids,
                 Index vocab) const;
  void check_same_batch(std::string_view func, const IdMatrix& tgt_in, const IdMatrix& src) const;
  void check_max_len(std::string_view func, Index max_len) const;

  // encode and decode on arguments the public entry has checked: each is checked once.
  const Mat& run_encode(const IdMatrix& src, typename Encoder<Scalar>::Cache& cache);
  const Mat& run_decode(const IdMatrix& tgt_in, const IdMatrix& src, ConstRef<Scalar> memory,
                        Cache& cache, Index start_pos);
};

template <class Scalar>
Transformer<Scalar>::Transformer(const TransformerConfig& config, Rng& rng)
    : config_(checked(config)) {
  encoder = Encoder<Scalar>(config.src_vocab, config.n_encoder_layers, config, rng);
  decoder = Decoder<Scalar>(config.tgt_vocab, config.n_decoder_layers, config, rng);
  head = OutputHead<Scalar>(config.d_model, config.tgt_vocab, config.tie_output, rng);
}

template <class Scalar>
auto Transformer<Scalar>::encode(const IdMatrix& src, typename Encoder<Scalar>::Cache& cache)
    -> const Mat& {
  check_ids("Transformer::encode", "src", src, config_.src_vocab);
  return run_encode(src, cache);
}

template <class Scalar>
auto Transformer<Scalar>::run_encode(const IdMatrix& src, typename Encoder<Scalar>::Cache& cache)
    -> const Mat& {
  return encoder.forward(src, source_mask(src), cache);
}

template <class Scalar>
auto Transformer<Scalar>::decode(const IdMatrix& tgt_in, const IdMatrix& src,
                                 ConstRef<Scalar> memory, Cache& cache, Index start_pos)
    -> const Mat& {
  check_ids("Transformer::decode", "tgt_in", tgt_in, config_.tgt_vocab);
  check_same_batch("Transformer::decode", tgt_in, src);
  return run_decode(tgt_in, src, memory, cache, start_pos);
}

template <class Scalar>
auto Transformer<Scalar>::run_decode(const IdMatrix& tgt_in, const IdMatrix& src,
                                     ConstRef<Scalar> memory, Cache& cache, Index start_pos)
    -> const Mat& {
  AttentionMask self_mask;
  self_mask.causal = true;
  self_mask.key_padding = key_padding_mask(tgt_in, config_.pad_id);
  const Mat& h =
      decoder.forward(tgt_in, memory, self_mask, source_mask(src), cache.decoder, start_pos);
  return head.forward(h, decoder.input.embedding, cache.head);
}

template <class Scalar>
auto Transformer<Scalar>::begin_decode(const IdMatrix& src, ConstRef<Scalar> memory,
                                       Index max_len) const -> DecodeState<Scalar> {
  check_ids("Transformer::begin_decode", "src", src, config_.src_vocab);
  detail::check_shape("Transformer::begin_decode", "memory", memory, src.rows() * src.cols(),
                      config_.d_model);
  check_max_len("Transformer::begin_decode", max_len);
  return decoder.begin_decode(memory, src.rows(), key_padding_mask(src, config_.pad_id), max_len);
}

template <class Scalar>
auto Transformer<Scalar>::begin_decode(const IdMatrix& src, Index max_len) -> DecodeState<Scalar> {
  check_ids("Transformer::begin_decode", "src", src, config_.src_vocab);
  check_max_len("Transformer::begin_decode", max_len);
  typename Encoder<Scalar>::Cache cache;
  const Mat& memory = run_encode(src, cache);
  return decoder.begin_decode(memory, src.rows(), key_padding_mask(src, config_.pad_id), max_len);
}

template <class Scalar>
auto Transformer<Scalar>::decode_step(const IdMatrix& ids, DecodeState<Scalar>& state) -> Mat {
  check_ids("Transformer::decode_step", "ids", ids, config_.tgt_vocab);
  const Index memory_keys = state.memory.empty() ? 1 : state.memory.front().len;
  const detail::SerialIfSmall serial(
      detail::decode_step_work(ids.size(), config_.n_decoder_layers, config_.d_model, config_.d_ff,
                               state.self_keys_after(ids.cols()), memory_keys, config_.tgt_vocab));
  const Mat h = decoder.decode_step(ids, state, key_padding_mask(ids, config_.pad_id));
  return head.forward(h, decoder.input.embedding);
}

template <class Scalar>
auto Transformer<Scalar>::forward(const IdMatrix& src, const IdMatrix& tgt_in, Cache& cache)
    -> const Mat& {
  return forward(src, tgt_in, TransformerMasks(), cache);
}

template <class Scalar>
auto Transformer<Scalar>::forward(const IdMatrix& src, const IdMatrix& tgt_in,
                                  const TransformerMasks& masks, Cache& cache) -> const Mat& {
  const char* func = "Transformer::forward";
  check_ids(func, "src", src, config_.src_vocab);
  check_ids(func, "tgt_in", tgt_in, config_.tgt_vocab);
  check_same_batch(func, tgt_in, src);
  const Index B = src.rows(), S = src.cols(), T = tgt_in.cols();
  const Index H = config_.n_heads, dh = config_.d_model / config_.n_heads;
  check_model_mask(func, detail::mask_of(masks.src), {B, S, S, H, dh});
  check_model_mask(func, detail::mask_of(masks.tgt), {B, T, T, H, dh});
  check_model_mask(func, detail::mask_of(masks.memory), {B, T, S, H, dh});
  const BoolMatrix src_pad = key_padding_mask(src, config_.pad_id);
  model_mask(cache.src_mask, detail::mask_of(masks.src), false, src_pad);
  model_mask(cache.tgt_mask, detail::mask_of(masks.tgt), true,
             key_padding_mask(tgt_in, config_.pad_id));
  model_mask(cache.memory_mask, detail::mask_of(masks.memory), false, src_pad);
  const Mat& memory = encoder.forward(src, cache.src_mask, cache.encoder);
  const Mat& h =
      decoder.forward(tgt_in, memory, cache.tgt_mask, cache.memory_mask, cache.decoder, 0);
  return head.forward(h, decoder.input.embedding, cache.head);
}

template <class Scalar>
void Transformer<Scalar>::backward(ConstRef<Scalar> dlogits, const Cache& cache,
                                   const GradReady<Scalar>& ready) {
  detail::require_filled_cache("Transformer::backward", cache.head.h.cols() != 0);
  const Mat& dh = head.backward(dlogits, cache.head, decoder.input.embedding);
  if (ready) ready(head.parameters());
  const Mat& dmemory = decoder.backward(dh, cache.decoder, ready);
  encoder.backward(dmemory, cache.encoder, ready);
}

template <class Scalar>
auto Transformer<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "encoder", encoder.parameters());
  append_params(out, "decoder", decoder.parameters());
  append_params(out, "output", head.parameters());
  return out;
}

template <class Scalar>
void Transformer<Scalar>::check_ids(std::string_view func, std::string_view arg,
                                    const IdMatrix& ids, Index vocab) const {
  detail::require(ids.rows() > 0 && ids.cols() > 0, func, arg, [&] {
    return "has shape " + detail::shape_of(ids) + ", expected a non-empty (B, T)";
  });
  detail::require(ids.cols() <= config_.max_len, func, arg, [&] {
    return "has " + std::to_string(ids.cols()) + " positions, more than max_len " +
           std::to_string(config_.max_len);
  });
  detail::check_embedding_ids(func, arg, ids, vocab);
}

template <class Scalar>
void Transformer<Scalar>::check_same_batch(std::string_view func, const IdMatrix& tgt_in,
                                           const IdMatrix& src) const {
  detail::require(tgt_in.rows() == src.rows(), func, "tgt_in", [&] {
    return "has " + std::to_string(tgt_in.rows()) + " sequences, src has " +
           std::to_string(src.rows());
  });
}

template <class Scalar>
void Transformer<Scalar>::check_max_len(std::string_view func, Index max_len) const {
  detail::require(max_len > 0 && max_len <= config_.max_len, func, "max_len", [&] {
    return "is " + std::to_string(max_len) + ", expected 1.." + std::to_string(config_.max_len) +
           " (the model's max_len)";
  });
}

/// Teacher forcing: (B, T) targets -> (B, T) decoder input [bos, t0, ..., t_{T-2}].
/// Throws ArgumentError unless T >= 1; bos is not checked.
inline IdMatrix shift_right(const IdMatrix& targets, Index bos) {
  detail::require(targets.cols() >= 1, "shift_right", "targets", [&] {
    return "has shape " + detail::shape_of(targets) + ", expected (B, T) with T >= 1";
  });
  IdMatrix in(targets.rows(), targets.cols());
  in.col(0).setConstant(bos);
  if (targets.cols() > 1) in.rightCols(targets.cols() - 1) = targets.leftCols(targets.cols() - 1);
  return in;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Transformer)

}  // namespace eigenformer
