// The attention layer of every model: H heads of width dh = d_model / H over projected queries,
// keys and values, then an output projection:
//   Q = query Wq^T + bq,  K = memory Wk^T + bk,  V = memory Wv^T + bv        (B*T, d_model)
//   positions (self-attention only): Q, K rotated and/or a score bias       (attention_positions)
//   context = softmax(score(Q, K) + bias + mask) V per head                  (attention_score)
//   y = context Wo^T + bo                                                    (B*Tq, d_model)
// Self-attention takes memory = query; cross-attention takes queries from one sequence and keys
// and values from another (e.g. the encoder output) of a different length; gradients reach both.
// As nn.MultiheadAttention's kdim/vdim, the key and value inputs of cross-attention may have their
// own widths (AttentionOptions::kdim, vdim): k_proj is then (d_model, kdim), v_proj (d_model,
// vdim), and forward(query, key, value, ...) takes them apart.
//
// The scoring (dot product, additive) and the position scheme (none, rotary, relative) are
// components chosen at run time from AttentionOptions, so every model type compiles once whatever
// its config, and a new scheme is a change to one of the two component headers. The layer itself
// owns what every combination shares: the projections, the checks, the caches, KV-cache decoding
// and the backward's buffers.
//
// Parameter names: q_proj.*, k_proj.*, v_proj.*, out_proj.* (PyTorch's nn.MultiheadAttention
// maps onto them), then the scoring's own as score.* (additive: score.q_weight, score.k_weight,
// score.bias, score.v), then the position scheme's (relative: relative_bias).
//
// forward(x, ...) gives the tokens of every sequence positions 0 .. T-1 (queries and keys);
// forward_step gives its new tokens positions cache.len .. cache.len + t - 1, so a step equals
// the last rows of a full causal forward.
#pragma once

#include <cmath>
#include <string>
#include <string_view>

#include "../core/clone_ptr.hpp"
#include "../core/parallel.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../ops/linear.hpp"
#include "attention_positions.hpp"
#include "attention_score.hpp"
#include "kv_cache.hpp"
#include "linear.hpp"

namespace eigenformer {

/// What an attention layer is made of besides its width and heads.
struct AttentionOptions {
  AttentionScoring scoring = AttentionScoring::dot_product;
  Index additive_dim = 0;        // additive: the score network's width d_attn; 0: head_dim
  bool bias = true;              // biases in the projections (and the additive score network)
  Index kdim = 0;                // cross-attention's key input width (PyTorch's kdim); 0: d_model
  Index vdim = 0;                // its value input width (PyTorch's vdim); 0: d_model
  AttentionPositions positions;  // acting inside self-attention (relative, rotary) or none
};

template <class Scalar = float>
class Attention {
 public:
  using Mat = Matrix<Scalar>;
  /// What forward keeps for backward and for attention_weights.
  struct Cache {
    AttentionDims dims;  // B == 0: no forward filled this cache
    bool self = true;
    Mat query;    // (B*Tq, d) the query input
    Mat memory;   // (B*Tk, kdim) the key/value input (the key input); empty for self-attention
    Mat value;    // (B*Tk, vdim) the value input of forward(query, key, value); else empty
    Mat q, k, v;  // (B*Tq, d), (B*Tk, d), (B*Tk, d) projections, after the positions (rotary)
    Mat context;  // (B*Tq, d) attention output before the output projection
    Mat out;      // (B*Tq, d) the output (not read by backward: the caller may overwrite it)
    ScoreCache<Scalar> score;
    PositionCache<Scalar> positions;
  };

  Linear<Scalar> q_proj, k_proj, v_proj, out_proj;
  /// Kernel of the dot-product scoring (ops/flash_attention.hpp). automatic: the plain kernel
  /// (keeps the (B*H*Tq, Tk) probabilities) for short sequences, the tiled one (keeps a (B*H, Tq)
  /// log-sum-exp, memory linear in T) from Tq*Tk >= 256*256 when causal and >= 512*512
  /// otherwise. Both give the same results up to rounding; other scorings ignore it.
  AttentionImpl impl = AttentionImpl::automatic;

  /// An empty layer: every call but assignment throws.
  Attention() = default;

  /// d_model features in n_heads heads (n_heads must divide d_model). The projections are
  /// initialised like PyTorch's nn.MultiheadAttention (Xavier-uniform input weights, zero biases);
  /// then the scoring and the position scheme draw their own parameters from rng, in that order.
  /// Throws ArgumentError naming the setting that is out of range.
  Attention(Index d_model, Index n_heads, Rng& rng, const AttentionOptions& options = {});

  /// The width d_model, the heads and their width head_dim = d_model / n_heads, the scoring and the
  /// position settings. scoring() throws ArgumentError on an empty layer.
  Index d_model() const { return q_proj.in_features(); }
  Index n_heads() const { return n_heads_; }
  Index head_dim() const { return d_model() / n_heads_; }
  /// The widths of the key and value inputs (kdim, vdim of the options; d_model by default).
  Index kdim() const { return k_proj.in_features(); }
  Index vdim() const { return v_proj.in_features(); }
  AttentionScoring scoring() const { return score().kind(); }
  const AttentionPositions& positions() const { return positions_; }
  /// The scoring component (its own parameters, e.g. AdditiveScore's, are reachable by downcast
  /// or by name through parameters()). Throws on an empty layer.
  const AttentionScore<Scalar>& score() const;
  /// The position scheme acting in this layer, or null (none, or positions at the input).
  const PositionScheme<Scalar>* position_scheme() const { return scheme_.get(); }

  /// Self-attention over x (B*T, d) holding B sequences; returns (B*T, d).
  /// mask as in ops/attention.hpp with Tq = Tk = T; token t of each sequence is at position t.
  /// Fills cache for backward and attention_weights. The result is cache.out, valid until the
  /// next forward with cache (x must not be it), which backward does not read: the caller may
  /// change it in place (e.g. dropout). Throws ArgumentError naming Attention::forward, before
  /// writing cache, when the layer is empty, B <= 0, x is not (B*T, d_model) with T >= 1, or the
  /// mask does not fit.
  Mat& forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache) const;

  /// Cross-attention: queries from query (B*Tq, d), keys and values from memory (B*Tk, kdim).
  /// Throws when the layer has positions (they apply to self-attention only) or kdim != vdim.
  /// Also throws, before writing cache, as forward(x, ...) does for query (B*Tq, d), memory
  /// (B*Tk, d) and a mask of Tq queries over Tk keys. Returns cache.out as forward(x, ...).
  Mat& forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
               Cache& cache) const;

  /// Cross-attention with keys and values of their own widths (nn.MultiheadAttention's kdim and
  /// vdim): queries from query (B*Tq, d), keys from key (B*Tk, kdim), values from value (B*Tk,
  /// vdim). Throws, before writing cache, as forward(query, memory, ...) does, and unless value
  /// is (key rows, vdim). Returns cache.out as forward(x, ...). Its backward is
  /// backward(dy, cache, dkey, dvalue).
  Mat& forward(ConstRef<Scalar> query, ConstRef<Scalar> key, ConstRef<Scalar> value, Index B,
               const AttentionMask& mask, Cache& cache) const;

  /// dy (B*Tq, d) -> gradient with respect to the query input, a buffer of this layer valid until
  /// its next backward (kept between calls, as PyTorch's caching allocator keeps its blocks);
  /// parameter gradients are added. For self-attention that is the whole input gradient (dmemory
  /// must be null). For cross-attention the memory gradient is assigned to *dmemory when it is
  /// not null. Throws, changing nothing, unless cache comes from a forward of a layer of this
  /// shape (and not from forward(query, key, value, ...)).
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory = nullptr);

  /// The backward of forward(query, key, value, ...): returns the query gradient; the key and
  /// value gradients are assigned to *dkey (B*Tk, kdim) and *dvalue (B*Tk, vdim) when not null.
  /// The query gradient is a buffer of this layer, as backward(dy, cache, dmemory). Throws,
  /// changing nothing, unless cache comes from such a forward of a layer of this shape.
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dkey, Mat* dvalue);

  /// Attention weights (Tq, Tk) of head h for sequence b from a forward's cache (recomputed for
  /// that head when the tiled kernel ran).
  /// Throws ArgumentError unless cache comes from a forward of this layer, 0 <= b < B and
  /// 0 <= h < n_heads().
  Mat attention_weights(const Cache& cache, Index b, Index h) const;

  // Incremental decoding (inference only: no cache for backward, dropout does not apply).

  /// An empty self-attention cache for B sequences of up to max_len positions, with keys as the
  /// scoring keeps them.
  /// Throws ArgumentError on an empty layer, or unless B and max_len are positive.
  KVCache<Scalar> make_cache(Index B, Index max_len) const {
    return KVCache<Scalar>(B, max_len, score().key_width(d_model()), d_model());
  }

  /// Self-attention step: projects x_new (B*t, d), the next t positions of B sequences, appends
  /// their keys and values to cache (from make_cache), and attends over every cached position,
  /// causally (new position i sees the cached prefix and new positions <= i). new_key_padding
  /// (B, t), when not empty, marks padded new positions; padded keys of earlier steps stay
  /// masked. The new tokens have positions cache.offset + cache.len .. (offset: the positions
  /// KVCache::drop_front dropped; rotary positions use it, relative ones need only distances,
  /// which stay those among the cached positions). Returns (B*t, d),
  /// equal (up to rounding) to the last t rows of each sequence of a full causal forward.
  /// Throws ArgumentError naming Attention::forward_step, with cache unchanged, unless x_new is
  /// (B*t, d_model), cache was made by make_cache for B sequences, new_key_padding is (B, t) or
  /// empty, and t more positions fit.
  Mat forward_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                   const BoolMatrix& new_key_padding = BoolMatrix()) const;

  /// Cross-attention, first half: the keys and values of memory (B*S, d), computed once into
  /// cache (reset to hold exactly S positions), with its key padding (B, S) (empty: none).
  /// Throws when the layer has positions (they apply to self-attention only).
  /// Also throws ArgumentError, with cache unchanged, unless memory is (B*S, d_model) and
  /// key_padding is (B, S) or empty.
  void cache_memory(ConstRef<Scalar> memory, Index B, const BoolMatrix& key_padding,
                    KVCache<Scalar>& cache) const;

  /// Cross-attention, second half: query (B*Tq, d) attends over the memory of cache_memory (no
  /// causal mask, the memory's padding masked) -> (B*Tq, d). Throws when the layer has positions.
  /// Also throws ArgumentError unless query is (B*Tq, d_model) and cache holds the memory of B
  /// sequences from cache_memory.
  Mat forward_cached_memory(ConstRef<Scalar> query, Index B, const KVCache<Scalar>& cache) const;

  /// q_proj.*, k_proj.*, v_proj.*, out_proj.*, the scoring's score.* and the position scheme's
  /// relative_bias (see the top of the file): pointers into this layer.
  ParamList<Scalar> parameters();

  /// Sets the parameters' gradients to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  struct BackwardBuffers {
    Mat dcontext, dq, dk, dv, dmem, tmp, dbias, dquery;
  };

  Index n_heads_ = 1;
  AttentionPositions positions_;
  detail::ClonePtr<AttentionScore<Scalar>> score_;   // null only in an empty layer
  detail::ClonePtr<PositionScheme<Scalar>> scheme_;  // null: no positions inside the attention
  detail::Scratch<BackwardBuffers> scratch_;

  static GradOut<Scalar> bias_grad(Linear<Scalar>& l) {
    return l.has_bias() ? GradOut<Scalar>(&l.bias.grad) : nullptr;
  }
  static void project(Mat& out, const Linear<Scalar>& l, ConstRef<Scalar> x) {
    linear_forward<Scalar>(out, x, l.weight.value, l.has_bias() ? &l.bias.value : nullptr);
  }

  void require_no_positions(std::string_view func, std::string_view arg) const;
  /// Throws unless kdim == vdim == d_model (self-attention) or, with self false, kdim == vdim.
  void require_widths(std::string_view func, bool self) const;
  const Mat& backward_impl(const char* func, ConstRef<Scalar> dy, const Cache& cache, Mat* dkey,
                           Mat* dvalue, bool separate);

  /// The dims of query (B*Tq, query_width) attending over memory (B*Tk, memory_width); throws
  /// unless they and the mask fit this layer.
  AttentionDims check_inputs(std::string_view func, ConstRef<Scalar> query, ConstRef<Scalar> memory,
                             Index B, const AttentionMask& mask, Index query_width,
                             Index memory_width) const;

  /// Throws unless cache was filled by a forward of a layer of this shape.
  void check_forward_cache(std::string_view func, const Cache& cache) const;

  /// Throws unless cache holds B sequences laid out as make_cache makes them (and, if non_empty,
  /// some positions).
  void check_kv_cache(std::string_view func, const KVCache<Scalar>& cache, Index B,
                      bool non_empty) const;

  Mat& run(const Mat& query, const Mat& memory, const Mat& value, const AttentionDims& d,
           const AttentionMask& mask, Cache& cache) const;

  /// Query features (B*Tq, *) over the cached keys and values -> output projection (B*Tq, d).
  /// Sequences are attended one at a time: the cache's rows of sequence b are a (len, *) block.
  /// The queries are the last Tq cached positions (self-attention steps) or have no positions;
  /// bias is the positions' (H, Tq + len - 1) score bias or empty.
  Mat attend_cached(const Mat& q_features, Index B, Index Tq, const KVCache<Scalar>& cache,
                    bool causal, const Mat& bias) const;
};

template <class Scalar>
Attention<Scalar>::Attention(Index d_model, Index n_heads, Rng& rng,
                             const AttentionOptions& options)
    : n_heads_(n_heads), positions_(options.positions) {
  const char* func = "Attention::Attention";
  detail::check_positive(func, "d_model", d_model);
  detail::check_positive(func, "n_heads", n_heads);
  detail::require(d_model % n_heads == 0, func, "n_heads", [&] {
    return "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
           std::to_string(n_heads);
  });
  detail::require(options.kdim >= 0 && options.vdim >= 0, func, "options.kdim", [&] {
    return "and options.vdim must be >= 0 (0: d_model), got " + std::to_string(options.kdim) +
           " and " + std::to_string(options.vdim);
  });
  detail::require(options.additive_dim >= 0, func, "options.additive_dim", [&] {
    return "must be >= 0 (0: head_dim), got " + std::to_string(options.additive_dim);
  });
  detail::require(options.scoring == AttentionScoring::dot_product ||
                      options.scoring == AttentionScoring::additive,
                  func, "options.scoring", [&] {
                    return "is " + std::to_string(static_cast<int>(options.scoring)) +
                           ", not an AttentionScoring";
                  });
  options.positions.validate(func, d_model / n_heads);
  const Index in[] = {d_model, options.kdim > 0 ? options.kdim : d_model,
                      options.vdim > 0 ? options.vdim : d_model, d_model};
  Linear<Scalar>* const projections[] = {&q_proj, &k_proj, &v_proj, &out_proj};
  for (int i = 0; i < 4; ++i) {
    *projections[i] = Linear<Scalar>(in[i], d_model, rng, options.bias);
    if (options.bias) projections[i]->bias.value.setZero();
  }
  for (Linear<Scalar>* p : {&q_proj, &k_proj, &v_proj}) fill_xavier_uniform(p->weight.value, rng);
  score_ = detail::ClonePtr<AttentionScore<Scalar>>(make_attention_score<Scalar>(
      options.scoring, n_heads, d_model / n_heads, options.additive_dim, options.bias, rng));
  scheme_ = detail::ClonePtr<PositionScheme<Scalar>>(
      make_position_scheme<Scalar>(options.positions, d_model, n_heads, rng));
}

template <class Scalar>
auto Attention<Scalar>::score() const -> const AttentionScore<Scalar>& {
  detail::require(score_.get() != nullptr, "Attention::score", "this", "is an empty layer");
  return *score_;
}

template <class Scalar>
auto Attention<Scalar>::forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask,
                                Cache& cache) const -> Mat& {
  require_widths("Attention::forward", true);
  const AttentionDims d = check_inputs("Attention::forward", x, x, B, mask, d_model(), d_model());
  cache.self = true;
  cache.memory.resize(0, 0);
  cache.value.resize(0, 0);
  detail::parallel_assign(cache.query, x);
  return run(cache.query, cache.query, cache.query, d, mask, cache);
}

template <class Scalar>
auto Attention<Scalar>::forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B,
                                const AttentionMask& mask, Cache& cache) const -> Mat& {
  require_no_positions("Attention::forward", "memory");
  require_widths("Attention::forward", false);
  const AttentionDims d =
      check_inputs("Attention::forward", query, memory, B, mask, d_model(), kdim());
  cache.self = false;
  detail::parallel_assign(cache.query, query);
  detail::parallel_assign(cache.memory, memory);
  cache.value.resize(0, 0);
  return run(cache.query, cache.memory, cache.memory, d, mask, cache);
}

template <class Scalar>
auto Attention<Scalar>::forward(ConstRef<Scalar> query, ConstRef<Scalar> key,
                                ConstRef<Scalar> value, Index B, const AttentionMask& mask,
                                Cache& cache) const -> Mat& {
  const char* func = "Attention::forward";
  require_no_positions(func, "key");
  const AttentionDims d = check_inputs(func, query, key, B, mask, d_model(), kdim());
  detail::check_shape(func, "value", value, key.rows(), vdim());
  cache.self = false;
  detail::parallel_assign(cache.query, query);
  detail::parallel_assign(cache.memory, key);
  detail::parallel_assign(cache.value, value);
  return run(cache.query, cache.memory, cache.value, d, mask, cache);
}

template <class Scalar>
auto Attention<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory)
    -> const Mat& {
  return backward_impl("Attention::backward", dy, cache, dmemory, nullptr, false);
}

template <class Scalar>
auto Attention<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dkey, Mat* dvalue)
    -> const Mat& {
  return backward_impl("Attention::backward", dy, cache, dkey, dvalue, true);
}

template <class Scalar>
auto Attention<Scalar>::backward_impl(const char* func, ConstRef<Scalar> dy, const Cache& cache,
                                      Mat* dmemory, Mat* dvalue, bool separate) -> const Mat& {
  check_forward_cache(func, cache);
  detail::require(separate == (cache.value.size() != 0), func, "cache",
                  separate ? "is not from forward(query, key, value): use backward(dy, cache, "
                             "dmemory)"
                           : "is from forward(query, key, value): use backward(dy, cache, dkey, "
                             "dvalue)");
  const AttentionDims& d = cache.dims;
  detail::check_shape(func, "dy", dy, d.B * d.Tq, d_model());
  detail::require(!(cache.self && dmemory), func, "dmemory",
                  "must be null for a self-attention cache");
  const Mat* bias = cache.positions.bias.size() != 0 ? &cache.positions.bias : nullptr;
  // (B*Tq, d) and (B*Tk, d) gradients, kept between calls; only dquery is handed out.
  auto& [dcontext, dq, dk, dv, dmem, tmp, dbias, dquery] = scratch_.buffers;
  linear_backward<Scalar>(dcontext, &out_proj.weight.grad, bias_grad(out_proj), dy, cache.context,
                          out_proj.weight.value);
  score_->backward(dq, dk, dv, bias ? &dbias : nullptr, dcontext, cache.score, cache.q, cache.k,
                   cache.v, cache.context, d, bias);
  if (scheme_ && cache.self) scheme_->backward(dq, dk, bias ? &dbias : nullptr, cache.positions);
  linear_backward<Scalar>(dquery, &q_proj.weight.grad, bias_grad(q_proj), dq, cache.query,
                          q_proj.weight.value);
  if (cache.self) {  // x fed all three projections: their products add straight into dquery
    linear_backward_add<Scalar>(dquery, &k_proj.weight.grad, bias_grad(k_proj), dk, cache.query,
                                k_proj.weight.value);
    linear_backward_add<Scalar>(dquery, &v_proj.weight.grad, bias_grad(v_proj), dv, cache.query,
                                v_proj.weight.value);
    return dquery;
  }
  linear_backward<Scalar>(dmem, &k_proj.weight.grad, bias_grad(k_proj), dk, cache.memory,
                          k_proj.weight.value);
  if (separate) {  // copies, so that the buffers stay for the next call
    linear_backward<Scalar>(tmp, &v_proj.weight.grad, bias_grad(v_proj), dv, cache.value,
                            v_proj.weight.value);
    if (dmemory) detail::parallel_assign(*dmemory, dmem);
    if (dvalue) detail::parallel_assign(*dvalue, tmp);
    return dquery;
  }
  linear_backward_add<Scalar>(dmem, &v_proj.weight.grad, bias_grad(v_proj), dv, cache.memory,
                              v_proj.weight.value);
  // A copy, so that the buffer stays for the next call.
  if (dmemory) detail::parallel_assign(*dmemory, dmem);
  return dquery;
}

template <class Scalar>
auto Attention<Scalar>::attention_weights(const Cache& cache, Index b, Index h) const -> Mat {
  const char* func = "Attention::attention_weights";
  check_forward_cache(func, cache);
  const AttentionDims& d = cache.dims;
  detail::require(b >= 0 && b < d.B, func, "b", [&] {
    return "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(d.B);
  });
  detail::require(h >= 0 && h < d.H, func, "h", [&] {
    return "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(d.H);
  });
  const Mat* bias = cache.positions.bias.size() != 0 ? &cache.positions.bias : nullptr;
  return score_->weights(cache.score, cache.q, cache.k, d, b, h, bias);
}

template <class Scalar>
auto Attention<Scalar>::forward_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                                     const BoolMatrix& new_key_padding) const -> Mat {
  const char* func = "Attention::forward_step";
  require_widths(func, true);
  const AttentionDims d =
      check_inputs(func, x_new, x_new, B, AttentionMask(), d_model(), d_model());
  check_kv_cache(func, cache, B, false);
  if (new_key_padding.size() != 0)
    detail::check_shape(func, "new_key_padding", new_key_padding, B, d.Tq);
  cache.check_room(func, "x_new", d.Tq);
  Mat q, k, v, q_features, k_features;
  project(q, q_proj, x_new);
  project(k, k_proj, x_new);
  project(v, v_proj, x_new);
  PositionCache<Scalar> positions;
  // Rotary turns each new key once, by its absolute position (offset + len ..: past a sliding
  // window's drops); relative biases depend only on the len + Tq keys the new queries see.
  const Index dropped = positions_.kind == PositionalKind::rotary ? cache.offset : 0;
  if (scheme_) scheme_->forward(q, k, d.H, d.Tq, dropped + cache.len + d.Tq, positions);
  score_->query_features(q_features, q, d.H);
  score_->key_features(k_features, k, d.H);
  cache.append(k_features, v, new_key_padding);
  return attend_cached(q_features, B, d.Tq, cache, true, positions.bias);
}

template <class Scalar>
void Attention<Scalar>::cache_memory(ConstRef<Scalar> memory, Index B,
                                     const BoolMatrix& key_padding, KVCache<Scalar>& cache) const {
  const char* func = "Attention::cache_memory";
  require_no_positions(func, "memory");
  require_widths(func, false);
  const AttentionDims d = check_inputs(func, memory, memory, B, AttentionMask(), kdim(), kdim());
  if (key_padding.size() != 0) detail::check_shape(func, "key_padding", key_padding, B, d.Tk);
  cache.reset(B, d.Tk, score_->key_width(d_model()), d_model());
  Mat k, v, k_features;
  project(k, k_proj, memory);
  project(v, v_proj, memory);
  score_->key_features(k_features, k, d.H);
  cache.append(k_features, v, key_padding);
}

template <class Scalar>
auto Attention<Scalar>::forward_cached_memory(ConstRef<Scalar> query, Index B,
                                              const KVCache<Scalar>& cache) const -> Mat {
  const char* func = "Attention::forward_cached_memory";
  require_no_positions(func, "query");
  const AttentionDims d =
      check_inputs(func, query, query, B, AttentionMask(), d_model(), d_model());
  check_kv_cache(func, cache, B, true);
  Mat q, q_features;
  project(q, q_proj, query);
  score_->query_features(q_features, q, d.H);
  return attend_cached(q_features, B, d.Tq, cache, false, Mat());
}

template <class Scalar>
auto Attention<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "q_proj", q_proj.parameters());
  append_params(out, "k_proj", k_proj.parameters());
  append_params(out, "v_proj", v_proj.parameters());
  append_params(out, "out_proj", out_proj.parameters());
  if (score_) append_params(out, "score", score_->parameters());
  if (scheme_)
    for (const auto& p : scheme_->parameters()) out.push_back(p);
  return out;
}

template <class Scalar>
void Attention<Scalar>::require_no_positions(std::string_view func, std::string_view arg) const {
  detail::require(!scheme_, func, arg, [&] {
    return "is for cross-attention, but this layer has " + positional_kind_name(positions_.kind) +
           " positions: positions apply to self-attention only";
  });
}

template <class Scalar>
void Attention<Scalar>::require_widths(std::string_view func, bool self) const {
  detail::require(score_.get() != nullptr, func, "this", "is an empty (default-constructed) layer");
  const bool ok = kdim() == vdim() && (!self || kdim() == d_model());
  detail::require(ok, func, "this", [&] {
    return "has kdim " + std::to_string(kdim()) + " and vdim " + std::to_string(vdim()) +
           (self ? ": self-attention needs both equal to d_model " + std::to_string(d_model())
                 : ": pass keys and values apart, forward(query, key, value, ...)");
  });
}

template <class Scalar>
auto Attention<Scalar>::check_inputs(std::string_view func, ConstRef<Scalar> query,
                                     ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
                                     Index query_width, Index memory_width) const -> AttentionDims {
  detail::require(score_.get() != nullptr, func, "this", "is an empty (default-constructed) layer");
  detail::check_positive(func, "B", B);
  detail::check_shape(func, "query", query, -1, query_width);
  detail::check_shape(func, "memory", memory, -1, memory_width);
  detail::require(query.rows() % B == 0 && query.rows() > 0, func, "query", [&] {
    return "has " + std::to_string(query.rows()) +
           " rows, not a positive multiple of B = " + std::to_string(B);
  });
  detail::require(memory.rows() % B == 0 && memory.rows() > 0, func, "memory", [&] {
    return "has " + std::to_string(memory.rows()) +
           " rows, not a positive multiple of B = " + std::to_string(B);
  });
  AttentionDims d;
  d.B = B;
  d.Tq = query.rows() / B;
  d.Tk = memory.rows() / B;
  d.H = n_heads_;
  d.dh = head_dim();
  detail::check_mask(func, mask, d);
  return d;
}

template <class Scalar>
void Attention<Scalar>::check_forward_cache(std::string_view func, const Cache& cache) const {
  detail::require(score_.get() != nullptr, func, "this", "is an empty (default-constructed) layer");
  const AttentionDims& d = cache.dims;
  detail::require_filled_cache(func, d.B > 0);
  const bool fits = d.H == n_heads_ && d.dh == head_dim() && cache.q.rows() == d.B * d.Tq &&
                    cache.q.cols() == d_model() && cache.context.rows() == d.B * d.Tq &&
                    cache.k.rows() == d.B * d.Tk && cache.v.rows() == d.B * d.Tk &&
                    cache.query.rows() == d.B * d.Tq &&
                    (cache.self || cache.memory.rows() == d.B * d.Tk) &&
                    (cache.value.size() == 0 ||
                     (cache.value.rows() == d.B * d.Tk && cache.value.cols() == vdim()));
  detail::require(fits, func, "cache", [&] {
    return "holds " + std::to_string(d.H) + " heads of width " + std::to_string(d.dh) +
           " and projections " + detail::shape_of(cache.q) + ", expected " +
           std::to_string(n_heads_) + " heads of width " + std::to_string(head_dim()) +
           " (a forward of another layer?)";
  });
  detail::require(!(cache.positions.bias.size() != 0 && !scheme_), func, "cache",
                  "holds a position bias, but this layer has no positions");
}

template <class Scalar>
void Attention<Scalar>::check_kv_cache(std::string_view func, const KVCache<Scalar>& cache, Index B,
                                       bool non_empty) const {
  const Index key_width = score_->key_width(d_model());
  const bool fits = cache.B == B && cache.key_width() == key_width &&
                    cache.value_width() == d_model() && (!non_empty || cache.len > 0);
  detail::require(fits, func, "cache", [&] {
    return "holds " + std::to_string(cache.B) + " sequences of " + std::to_string(cache.len) +
           " positions with key width " + std::to_string(cache.key_width()) + " and value width " +
           std::to_string(cache.value_width()) + ", expected " + std::to_string(B) +
           (non_empty ? " non-empty" : "") + " sequences with key width " +
           std::to_string(key_width) + " and value width " + std::to_string(d_model()) +
           " (see make_cache)";
  });
}

template <class Scalar>
auto Attention<Scalar>::run(const Mat& query, const Mat& memory, const Mat& value,
                            const AttentionDims& d, const AttentionMask& mask, Cache& cache) const
    -> Mat& {
  cache.dims = d;
  project(cache.q, q_proj, query);
  project(cache.k, k_proj, memory);
  project(cache.v, v_proj, value);
  cache.positions.bias.resize(0, 0);
  cache.positions.buckets.clear();
  cache.positions.rotary = RotaryTable<Scalar>();
  if (scheme_) scheme_->forward(cache.q, cache.k, d.H, d.Tq, d.Tk, cache.positions);
  const Mat* bias = cache.positions.bias.size() != 0 ? &cache.positions.bias : nullptr;
  score_->forward(cache.context, cache.score, cache.q, cache.k, cache.v, d, mask, bias, impl);
  project(cache.out, out_proj, cache.context);
  return cache.out;
}

template <class Scalar>
auto Attention<Scalar>::attend_cached(const Mat& q_features, Index B, Index Tq,
                                      const KVCache<Scalar>& cache, bool causal,
                                      const Mat& bias) const -> Mat {
  AttentionDims d;
  d.B = 1;
  d.Tq = Tq;
  d.Tk = cache.len;
  d.H = n_heads_;
  d.dh = head_dim();
  Mat context(B * Tq, d_model()), out, probs;
  for (Index b = 0; b < B; ++b) {
    AttentionMask mask;
    mask.causal = causal && Tq > 1;  // one new query sees every cached key
    if (cache.any_padding(b)) mask.key_padding = cache.key_padding.block(b, 0, 1, cache.len);
    score_->attend(out, probs, q_features.middleRows(b * Tq, Tq), cache.keys(b), cache.values(b), d,
                   mask, bias.size() != 0 ? &bias : nullptr);
    context.middleRows(b * Tq, Tq) = out;
  }
  Mat y;
  project(y, out_proj, context);
  return y;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Attention)

}  // namespace eigenformer
