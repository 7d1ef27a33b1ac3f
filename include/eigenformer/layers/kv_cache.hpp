// Key/value caches for incremental (step-by-step) decoding, inference only. A layer-level type:
// the attention layer fills it; the models keep one per layer in a DecodeState
// (model/decode_state.hpp).
//
// Decoding one token at a time with a full forward pass recomputes the keys and values of every
// earlier position at every step, so a sequence of N tokens costs O(N^2) projections and layer
// work. A KVCache keeps, per attention layer, the projected keys and values of the positions seen
// so far; each step projects only its new positions, appends them, and attends over the cache.
//
// KVCache: preallocated buffers for B sequences of up to max_len positions:
//   k            (B*max_len, key_width)    position t of sequence b is row b*max_len + t
//   v            (B*max_len, value_width)
//   key_padding  (B, max_len)              true marks a padded (masked) key
//   len                                    positions filled, the same for every sequence
// What a key row holds is the attention scoring's choice (Attention::make_cache): the projected
// key (width d_model) for dot-product scores, its score projection for additive ones.
// The self-attention cache of a decoder layer grows by each step's positions. The cross-attention
// cache holds the encoder memory's keys and values, projected once per source
// (Attention::cache_memory) with the source padding, and never grows.
#pragma once

#include <string>

#include "../core/error.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

template <class Scalar = float>
struct KVCache {
  using Mat = Matrix<Scalar>;

  Mat k;                   // (B*max_len, key_width)
  Mat v;                   // (B*max_len, value_width)
  BoolMatrix key_padding;  // (B, max_len), true = masked key
  Index B = 0, max_len = 0, len = 0;
  /// Positions dropped from the front by drop_front (a sliding window): cached row t holds
  /// position offset + t. Rotary positions rotate new keys by their absolute position.
  Index offset = 0;

  KVCache() = default;
  /// Keys and values of width d_model.
  KVCache(Index batch, Index capacity, Index d_model) { reset(batch, capacity, d_model, d_model); }
  KVCache(Index batch, Index capacity, Index key_width, Index value_width) {
    reset(batch, capacity, key_width, value_width);
  }

  /// Allocates room for batch sequences of capacity positions with keys of key_width and values
  /// of value_width features; empties the cache.
  /// Throws ArgumentError naming KVCache::reset, changing nothing, unless all four are positive.
  void reset(Index batch, Index capacity, Index key_width, Index value_width);

  /// reset with keys and values of width d_model.
  void reset(Index batch, Index capacity, Index d_model) {
    reset(batch, capacity, d_model, d_model);
  }

  /// Forgets the cached positions, keeping the buffers.
  void clear() { len = 0, offset = 0; }

  /// Sliding window: forgets the n oldest cached positions of every sequence (the rest move to the
  /// front), making room for n more; offset grows by n. Throws ArgumentError naming
  /// KVCache::drop_front, changing nothing, unless 0 <= n <= len.
  void drop_front(Index n);

  /// The width of a cached key row and of a value row, and the positions that still fit
  /// (max_len - len).
  Index key_width() const { return k.cols(); }
  Index value_width() const { return v.cols(); }
  Index room() const { return max_len - len; }

  /// Keys (len, key_width) / values (len, value_width) of sequence b, 0 <= b < B, in place.
  /// Throws ArgumentError naming the function and 'b' for b outside [0, B).
  Eigen::Block<const Mat> keys(Index b) const {
    check_sequence("KVCache::keys", b);
    return k.block(b * max_len, 0, len, k.cols());
  }
  Eigen::Block<const Mat> values(Index b) const {
    check_sequence("KVCache::values", b);
    return v.block(b * max_len, 0, len, v.cols());
  }

  /// Throws (naming func and the lengths) unless t more positions fit.
  /// Also throws (ArgumentError naming func and 'cache') when the cache is not allocated (B == 0).
  void check_room(std::string_view func, std::string_view arg, Index t) const;

  /// Appends k_new (B*t, k.cols()), v_new (B*t, v.cols()) and their key padding (B, t) (empty:
  /// none padded). Throws, changing nothing, unless they fit and t more positions fit.
  void append(ConstRef<Scalar> k_new, ConstRef<Scalar> v_new, const BoolMatrix& pad_new);

  /// True if some cached key of sequence b (0 <= b < B) is padded.
  /// Throws ArgumentError for b outside [0, B).
  bool any_padding(Index b) const {
    check_sequence("KVCache::any_padding", b);
    return key_padding.row(b).head(len).any();
  }

 private:
  void check_sequence(const char* func, Index b) const;
};

template <class Scalar>
void KVCache<Scalar>::reset(Index batch, Index capacity, Index key_width, Index value_width) {
  detail::check_positive("KVCache::reset", "batch", batch);
  detail::check_positive("KVCache::reset", "max_len", capacity);
  detail::check_positive("KVCache::reset", "key_width", key_width);
  detail::check_positive("KVCache::reset", "value_width", value_width);
  B = batch;
  max_len = capacity;
  len = 0;
  offset = 0;
  k.resize(B * max_len, key_width);
  v.resize(B * max_len, value_width);
  key_padding = BoolMatrix::Constant(B, max_len, false);
}

template <class Scalar>
void KVCache<Scalar>::check_room(std::string_view func, std::string_view arg, Index t) const {
  detail::require(B > 0, func, "cache", "is not allocated (call reset or begin_decode first)");
  detail::require(t <= room(), func, arg, [&] {
    return "adds " + std::to_string(t) + " positions to a KV cache holding " + std::to_string(len) +
           " of max_len " + std::to_string(max_len);
  });
}

template <class Scalar>
void KVCache<Scalar>::append(ConstRef<Scalar> k_new, ConstRef<Scalar> v_new,
                             const BoolMatrix& pad_new) {
  const char* func = "KVCache::append";
  detail::require(B > 0, func, "cache", "is not allocated (call reset or begin_decode first)");
  detail::require(k_new.rows() % B == 0 && k_new.cols() == k.cols(), func, "k_new", [&] {
    return "has shape " + detail::shape_of(k_new) + ", expected (B*t, " + std::to_string(k.cols()) +
           ") with B = " + std::to_string(B);
  });
  const Index t = k_new.rows() / B;
  detail::check_shape(func, "v_new", v_new, B * t, v.cols());
  if (pad_new.size() != 0) detail::check_shape(func, "pad_new", pad_new, B, t);
  check_room(func, "k_new", t);
  for (Index b = 0; b < B; ++b) {
    k.block(b * max_len + len, 0, t, k.cols()) = k_new.middleRows(b * t, t);
    v.block(b * max_len + len, 0, t, v.cols()) = v_new.middleRows(b * t, t);
  }
  if (pad_new.size() != 0)
    key_padding.block(0, len, B, t) = pad_new;
  else
    key_padding.block(0, len, B, t).setConstant(false);
  len += t;
}

template <class Scalar>
void KVCache<Scalar>::drop_front(Index n) {
  detail::require(n >= 0 && n <= len, "KVCache::drop_front", "n", [&] {
    return "is " + std::to_string(n) + ", expected 0 <= n <= len = " + std::to_string(len);
  });
  const Index kept = len - n;
  for (Index b = 0; b < B; ++b) {  // rows move up within the sequence's block: no overlap issue
    for (Index t = 0; t < kept; ++t) {
      k.row(b * max_len + t) = k.row(b * max_len + n + t);
      v.row(b * max_len + t) = v.row(b * max_len + n + t);
    }
    for (Index t = 0; t < kept; ++t) key_padding(b, t) = key_padding(b, n + t);
  }
  len = kept;
  offset += n;
}

template <class Scalar>
void KVCache<Scalar>::check_sequence(const char* func, Index b) const {
  if (b < 0 || b >= B)
    detail::throw_argument(func, "b",
                           "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(B));
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_STRUCT_TEMPLATES(KVCache)

}  // namespace eigenformer
