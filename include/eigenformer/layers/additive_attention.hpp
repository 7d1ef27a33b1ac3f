// Multi-head additive (Bahdanau) attention, shaped like MultiHeadAttention so a model can use
// either: H heads of width dh = d_model / H over projected queries, keys and values, each head
// scoring with its own small network of width d_attn, then an output projection:
//   Q = query Wq^T + bq,  K = memory Wk^T + bk,  V = memory Wv^T + bv          (B*T, d_model)
//   per head: score_ij = v_h^T tanh(Uq_h Q_i + Uk_h K_j + c_h), a = softmax_j(score + mask),
//             context_i = sum_j a_ij V_j  (ops/additive_attention.hpp)       (B*Tq, d_model)
//   y = context Wo^T + bo                                                     (B*Tq, d_model)
// Self-attention takes memory = query; cross-attention takes keys and values from another sequence
// of a different length (e.g. the encoder output); gradients reach both. Masks, the gradient
// contract and the Cache are MultiHeadAttention's (the Cache adds the score projections), so code
// that reads a cache's dims and probs (attention_weights, heat maps) works for both.
//
// Positions inside self-attention (AttentionPositions, as in MultiHeadAttention; cross-attention
// has none): rotary rotates each head of Q and K before the score network (the score then sees
// rotated vectors; unlike a dot product it does not reduce to a function of j - i, but it does see
// both positions); relative adds T5's bucketed bias relative_bias(bucket(j - i), h) to the scores.
//
// Incremental decoding works as in MultiHeadAttention (forward_step, cache_memory,
// forward_cached_memory), except that the KVCache holds each key's score projection Uk K
// (B*max_len, H*d_attn) in place of the key, since that is all the score needs: each step projects
// only its new positions. make_cache allocates such a cache.
//
// Parameters: q_proj.*, k_proj.*, v_proj.*, out_proj.* (as in MultiHeadAttention), and
// score.q_weight, score.k_weight (H*d_attn, dh): head h's Uq_h / Uk_h in rows [h*d_attn, (h+1)*
// d_attn); score.bias (H*d_attn) the c_h (absent without bias); score.v (H, d_attn);
// relative_bias (num_buckets, H) with relative positions.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "../core/param.hpp"
#include "../core/random.hpp"
#include "../decode/kv_cache.hpp"
#include "../ops/additive_attention.hpp"
#include "../ops/linear.hpp"
#include "../ops/relative_position.hpp"
#include "../ops/rotary.hpp"
#include "linear.hpp"
#include "multihead_attention.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless the fields that positions.kind uses are valid for heads of width dh (the rules of
/// MultiHeadAttention's constructor). arg names the positions in messages.
inline void check_attention_positions(std::string_view func, const AttentionPositions& p, Index dh,
                                      const std::string& arg = "positions") {
  using Kind = AttentionPositions::Kind;
  if (p.kind == Kind::rotary) {
    require(dh % 2 == 0, func, arg + ".kind", [&] {
      return "is rotary, which needs an even head_dim (d_model / n_heads), got " +
             std::to_string(dh);
    });
    require(p.rotary_base > 0.0 && std::isfinite(p.rotary_base), func, arg + ".rotary_base",
            [&] { return "must be positive and finite, got " + std::to_string(p.rotary_base); });
  } else if (p.kind == Kind::relative) {
    const Index min_buckets = p.bidirectional ? 4 : 2;  // 2 per direction
    require(p.num_buckets >= min_buckets, func, arg + ".num_buckets", [&] {
      return "must be at least " + std::to_string(min_buckets) + " (2 per direction" +
             (p.bidirectional ? ", bidirectional" : "") + "), got " + std::to_string(p.num_buckets);
    });
    const Index max_exact = (p.bidirectional ? p.num_buckets / 2 : p.num_buckets) / 2;
    require(p.max_distance > max_exact, func, arg + ".max_distance", [&] {
      return "must be above the " + std::to_string(max_exact) +
             " exactly bucketed distances, got " + std::to_string(p.max_distance);
    });
  }
}

}  // namespace detail

template <class Scalar = float>
class AdditiveAttention {
 public:
  using Mat = Matrix<Scalar>;
  using Kind = AttentionPositions::Kind;
  /// MultiHeadAttention's cache (dims, self, query, memory, q, k, v, probs (B*H*Tq, Tk), context,
  /// rotary, pos_bias, buckets; lse and mask stay empty) and the score projections aq
  /// (B*Tq, H*d_attn), ak (B*Tk, H*d_attn).
  struct Cache : MultiHeadAttention<Scalar>::Cache {
    AdditiveAttentionCache<Scalar> score;
  };

  Linear<Scalar> q_proj, k_proj, v_proj, out_proj;
  Param<Scalar> score_q;     // (H*d_attn, dh)
  Param<Scalar> score_k;     // (H*d_attn, dh)
  Param<Scalar> score_bias;  // (1, H*d_attn); empty without bias
  Param<Scalar> score_v;     // (H, d_attn)
  /// T5's relative attention bias (num_buckets, H); empty unless positions().kind == relative.
  Param<Scalar> relative_bias;

  AdditiveAttention() = default;

  /// Projections initialised like MultiHeadAttention's (Xavier-uniform input weights, zero
  /// biases); each head's score weights Xavier-uniform, score.v from U(-1/sqrt(d_attn),
  /// 1/sqrt(d_attn)), score.bias zero; relative_bias last, from N(0, 1/d_model) as
  /// MultiHeadAttention draws it. bias = false drops every bias.
  AdditiveAttention(Index d_model, Index d_attn, Index n_heads, Rng& rng, bool bias = true,
                    const AttentionPositions& positions = {})
      : n_heads_(n_heads), positions_(positions) {
    const char* func = "AdditiveAttention::AdditiveAttention";
    detail::check_positive(func, "d_model", d_model);
    detail::check_positive(func, "n_heads", n_heads);
    detail::require(d_model % n_heads == 0, func, "n_heads", [&] {
      return "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
             std::to_string(n_heads);
    });
    detail::check_positive(func, "d_attn", d_attn);
    detail::check_attention_positions(func, positions, d_model / n_heads);
    for (Linear<Scalar>* p : {&q_proj, &k_proj, &v_proj, &out_proj}) {
      *p = Linear<Scalar>(d_model, d_model, rng, bias);
      if (bias) p->bias.value.setZero();
    }
    for (Linear<Scalar>* p : {&q_proj, &k_proj, &v_proj}) fill_xavier_uniform(p->weight.value, rng);
    const Index dh = d_model / n_heads;
    score_q = Param<Scalar>(n_heads * d_attn, dh);
    score_k = Param<Scalar>(n_heads * d_attn, dh);
    for (Param<Scalar>* p : {&score_q, &score_k})
      for (Index h = 0; h < n_heads; ++h) {
        Eigen::Block<Mat> head = p->value.block(h * d_attn, 0, d_attn, dh);
        fill_xavier_uniform(head, rng);
      }
    if (bias) score_bias = Param<Scalar>(1, n_heads * d_attn, true);
    score_v = Param<Scalar>(n_heads, d_attn);
    const double bound = 1.0 / std::sqrt(static_cast<double>(d_attn));
    fill_uniform(score_v.value, -bound, bound, rng);
    if (positions.kind == Kind::relative) {
      relative_bias = Param<Scalar>(positions.num_buckets, n_heads);
      fill_normal(relative_bias.value, 0.0, 1.0 / std::sqrt(static_cast<double>(d_model)), rng);
    }
  }

  /// One head.
  AdditiveAttention(Index d_model, Index d_attn, Rng& rng, bool bias = true)
      : AdditiveAttention(d_model, d_attn, 1, rng, bias) {}

  Index d_model() const { return q_proj.in_features(); }
  Index n_heads() const { return n_heads_; }
  Index head_dim() const { return d_model() / n_heads_; }
  Index d_attn() const { return score_v.value.cols(); }
  bool has_bias() const { return score_bias.size() > 0; }
  const AttentionPositions& positions() const { return positions_; }

  /// Self-attention over x (B*T, d) holding B sequences, positions 0 .. T-1; returns (B*T, d).
  Mat forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache) const {
    const AttentionDims d = check_inputs("AdditiveAttention::forward", x, x, B, mask);
    cache.self = true;
    cache.memory.resize(0, 0);
    cache.query = x;
    return run(cache.query, cache.query, d, mask, cache);
  }

  /// Cross-attention: queries from query (B*Tq, d), keys and values from memory (B*Tk, d).
  /// Throws when the layer has positions (they apply to self-attention only).
  Mat forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
              Cache& cache) const {
    require_no_positions("AdditiveAttention::forward", "memory");
    const AttentionDims d = check_inputs("AdditiveAttention::forward", query, memory, B, mask);
    cache.self = false;
    cache.query = query;
    cache.memory = memory;
    return run(cache.query, cache.memory, d, mask, cache);
  }

  /// Batch forms of the two above.
  Mat forward(const Batch<Scalar>& x, const AttentionMask& mask, Cache& cache) const {
    return forward(x.data(), x.batch(), mask, cache);
  }
  Mat forward(const Batch<Scalar>& query, const Batch<Scalar>& memory, const AttentionMask& mask,
              Cache& cache) const {
    detail::require(query.batch() == memory.batch(), "AdditiveAttention::forward", "memory", [&] {
      return "holds " + std::to_string(memory.batch()) + " sequences, query holds " +
             std::to_string(query.batch());
    });
    return forward(query.data(), memory.data(), query.batch(), mask, cache);
  }

  /// dy (B*Tq, d) -> gradient with respect to the query input, fresh; parameter gradients are
  /// added. For self-attention that is the whole input gradient (dmemory must be null). For
  /// cross-attention the memory gradient is assigned to *dmemory when it is not null.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory = nullptr) {
    const char* func = "AdditiveAttention::backward";
    const AttentionDims& d = cache.dims;
    detail::check_shape(func, "dy", dy, d.B * d.Tq, d_model());
    detail::require(!(cache.self && dmemory), func, "dmemory",
                    "must be null for a self-attention cache");
    const bool has_pos_bias = cache.pos_bias.size() != 0;
    detail::require(!has_pos_bias || positions_.kind == Kind::relative, func, "cache",
                    "holds a relative position bias, but this layer has none");
    Mat dcontext, dq, dk, dv, dquery, dmem, tmp, dpos_bias;
    linear_backward<Scalar>(dcontext, &out_proj.weight.grad, bias_grad(out_proj), dy,
                            cache.context, out_proj.weight.value);
    AdditiveScoreGrads<Scalar> grads;
    grads.w_q = &score_q.grad;
    grads.w_k = &score_k.grad;
    grads.bias = has_bias() ? &score_bias.grad : nullptr;
    grads.w = &score_v.grad;
    additive_attention_backward<Scalar>(dq, dk, dv, grads, dcontext, cache.probs, cache.score,
                                        cache.q, cache.k, cache.v, weights(), d,
                                        has_pos_bias ? &dpos_bias : nullptr);
    if (has_pos_bias) relative_bias_backward<Scalar>(relative_bias.grad, dpos_bias, cache.buckets);
    if (cache.rotary.length() != 0) {  // gradients of the unrotated projections
      rotary_backward<Scalar>(dq, d.H, cache.rotary);
      rotary_backward<Scalar>(dk, d.H, cache.rotary);
    }
    const Mat& memory = cache.self ? cache.query : cache.memory;
    linear_backward<Scalar>(dquery, &q_proj.weight.grad, bias_grad(q_proj), dq, cache.query,
                            q_proj.weight.value);
    linear_backward<Scalar>(dmem, &k_proj.weight.grad, bias_grad(k_proj), dk, memory,
                            k_proj.weight.value);
    linear_backward<Scalar>(tmp, &v_proj.weight.grad, bias_grad(v_proj), dv, memory,
                            v_proj.weight.value);
    dmem += tmp;
    if (cache.self) {
      dquery += dmem;
    } else if (dmemory) {
      *dmemory = std::move(dmem);
    }
    return dquery;
  }

  /// Attention weights of head h for sequence b from a forward's cache: (Tq, Tk).
  static Mat attention_weights(const Cache& cache, Index b, Index h) {
    const AttentionDims& d = cache.dims;
    detail::require(b >= 0 && b < d.B, "AdditiveAttention::attention_weights", "b", [&] {
      return "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(d.B);
    });
    detail::require(h >= 0 && h < d.H, "AdditiveAttention::attention_weights", "h", [&] {
      return "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(d.H);
    });
    return cache.probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
  }

  // Incremental decoding (inference only: no cache for backward, dropout does not apply).

  /// An empty cache for B sequences of up to max_len positions: values (B*max_len, d) and key
  /// score projections (B*max_len, H*d_attn).
  KVCache<Scalar> make_cache(Index B, Index max_len) const {
    KVCache<Scalar> cache(B, max_len, d_model());
    cache.k.resize(B * max_len, n_heads_ * d_attn());
    return cache;
  }

  /// Self-attention step, as MultiHeadAttention::forward_step: x_new (B*t, d), the next t
  /// positions of B sequences (positions cache.len ..), attends causally over cache (from
  /// make_cache), which it extends. new_key_padding (B, t), when not empty, marks padded new
  /// positions. Returns (B*t, d), equal up to rounding to the last t rows of each sequence of a
  /// full causal forward.
  Mat forward_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                   const BoolMatrix& new_key_padding = BoolMatrix()) const {
    const char* func = "AdditiveAttention::forward_step";
    const AttentionDims d = check_inputs(func, x_new, x_new, B, AttentionMask());
    check_cache(func, cache, B, false);
    if (new_key_padding.size() != 0)
      detail::check_shape(func, "new_key_padding", new_key_padding, B, d.Tq);
    cache.check_room(func, "x_new", d.Tq);
    Mat q, k, v, aq, ak;
    linear_forward<Scalar>(q, x_new, q_proj.weight.value, bias_value(q_proj));
    linear_forward<Scalar>(k, x_new, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(v, x_new, v_proj.weight.value, bias_value(v_proj));
    if (positions_.kind == Kind::rotary) {
      const RotaryTable<Scalar> tab =
          rotary_table<Scalar>(cache.len, d.Tq, head_dim(), positions_.rotary_base);
      rotary_forward<Scalar>(q, n_heads_, tab);
      rotary_forward<Scalar>(k, n_heads_, tab);
    }
    additive_score_projection<Scalar>(aq, q, score_q.value, score_bias_value(), n_heads_);
    additive_score_projection<Scalar>(ak, k, score_k.value, nullptr, n_heads_);
    cache.append(ak, v, new_key_padding);
    return attend_cached(aq, B, d.Tq, cache, true);
  }

  /// Cross-attention, first half: the score projections of the keys and the values of memory
  /// (B*S, d), computed once into cache (reset to hold exactly S positions), with its key
  /// padding (B, S) (empty: none). Throws when the layer has positions.
  void cache_memory(ConstRef<Scalar> memory, Index B, const BoolMatrix& key_padding,
                    KVCache<Scalar>& cache) const {
    const char* func = "AdditiveAttention::cache_memory";
    require_no_positions(func, "memory");
    const AttentionDims d = check_inputs(func, memory, memory, B, AttentionMask());
    if (key_padding.size() != 0) detail::check_shape(func, "key_padding", key_padding, B, d.Tk);
    cache = make_cache(B, d.Tk);
    Mat k, v, ak;
    linear_forward<Scalar>(k, memory, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(v, memory, v_proj.weight.value, bias_value(v_proj));
    additive_score_projection<Scalar>(ak, k, score_k.value, nullptr, n_heads_);
    cache.append(ak, v, key_padding);
  }

  /// Cross-attention, second half: query (B*Tq, d) attends over the cache of cache_memory (no
  /// causal mask, the memory's padding masked) -> (B*Tq, d). Throws when the layer has positions.
  Mat forward_cached_memory(ConstRef<Scalar> query, Index B, const KVCache<Scalar>& cache) const {
    const char* func = "AdditiveAttention::forward_cached_memory";
    require_no_positions(func, "query");
    const AttentionDims d = check_inputs(func, query, query, B, AttentionMask());
    check_cache(func, cache, B, true);
    Mat q, aq;
    linear_forward<Scalar>(q, query, q_proj.weight.value, bias_value(q_proj));
    additive_score_projection<Scalar>(aq, q, score_q.value, score_bias_value(), n_heads_);
    return attend_cached(aq, B, d.Tq, cache, false);
  }

  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "q_proj", q_proj.parameters());
    append_params(out, "k_proj", k_proj.parameters());
    append_params(out, "v_proj", v_proj.parameters());
    append_params(out, "out_proj", out_proj.parameters());
    out.push_back({"score.q_weight", &score_q});
    out.push_back({"score.k_weight", &score_k});
    if (has_bias()) out.push_back({"score.bias", &score_bias});
    out.push_back({"score.v", &score_v});
    if (positions_.kind == Kind::relative) out.push_back({"relative_bias", &relative_bias});
    return out;
  }

  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  Index n_heads_ = 1;
  AttentionPositions positions_;

  static Mat* bias_grad(Linear<Scalar>& l) { return l.has_bias() ? &l.bias.grad : nullptr; }
  static const Mat* bias_value(const Linear<Scalar>& l) {
    return l.has_bias() ? &l.bias.value : nullptr;
  }
  const Mat* score_bias_value() const { return has_bias() ? &score_bias.value : nullptr; }

  AdditiveScoreWeights<Scalar> weights() const {
    return {score_q.value, score_k.value, score_bias_value(), score_v.value};
  }

  void require_no_positions(std::string_view func, std::string_view arg) const {
    detail::require(positions_.kind == Kind::none, func, arg, [&] {
      return std::string("is for cross-attention, but this layer has ") +
             (positions_.kind == Kind::rotary ? "rotary" : "relative") +
             " positions: positions apply to self-attention only";
    });
  }

  /// The relative bias (H, Tq + Tk - 1) of a (Tq, Tk) attention, queries aligned at the end;
  /// buckets receives each distance column's bucket.
  void relative_pos_bias(Index Tq, Index Tk, Mat& pos_bias, std::vector<Index>& buckets) const {
    buckets = relative_position_buckets(Tq, Tk, positions_.bidirectional, positions_.num_buckets,
                                        positions_.max_distance);
    relative_bias_forward<Scalar>(pos_bias, relative_bias.value, buckets);
  }

  /// Throws unless cache holds B sequences laid out as make_cache makes them (and, if non_empty,
  /// some positions).
  void check_cache(std::string_view func, const KVCache<Scalar>& cache, Index B,
                   bool non_empty) const {
    detail::require(cache.B == B && cache.v.cols() == d_model() &&
                        cache.k.cols() == n_heads_ * d_attn() && (!non_empty || cache.len > 0),
                    func, "cache", [&] {
                      return "holds " + std::to_string(cache.B) + " sequences of " +
                             std::to_string(cache.len) + " positions with key width " +
                             std::to_string(cache.k.cols()) + " and value width " +
                             std::to_string(cache.v.cols()) + ", expected " + std::to_string(B) +
                             (non_empty ? " non-empty" : "") + " sequences with key width " +
                             std::to_string(n_heads_ * d_attn()) + " and value width " +
                             std::to_string(d_model()) + " (see make_cache)";
                    });
  }

  AttentionDims check_inputs(std::string_view func, ConstRef<Scalar> query, ConstRef<Scalar> memory,
                             Index B, const AttentionMask& mask) const {
    detail::check_positive(func, "B", B);
    detail::check_shape(func, "query", query, -1, d_model());
    detail::check_shape(func, "memory", memory, -1, d_model());
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

  Mat run(const Mat& query, const Mat& memory, const AttentionDims& d, const AttentionMask& mask,
          Cache& cache) const {
    cache.dims = d;
    cache.lse.resize(0, 0);
    linear_forward<Scalar>(cache.q, query, q_proj.weight.value, bias_value(q_proj));
    linear_forward<Scalar>(cache.k, memory, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(cache.v, memory, v_proj.weight.value, bias_value(v_proj));
    cache.rotary = RotaryTable<Scalar>();
    cache.pos_bias.resize(0, 0);
    cache.buckets.clear();
    if (positions_.kind == Kind::rotary) {  // self-attention: Tq == Tk
      cache.rotary = rotary_table<Scalar>(0, d.Tq, d.dh, positions_.rotary_base);
      rotary_forward<Scalar>(cache.q, d.H, cache.rotary);
      rotary_forward<Scalar>(cache.k, d.H, cache.rotary);
    } else if (positions_.kind == Kind::relative) {
      relative_pos_bias(d.Tq, d.Tk, cache.pos_bias, cache.buckets);
    }
    additive_attention_forward<Scalar>(cache.context, cache.probs, cache.score, cache.q, cache.k,
                                       cache.v, weights(), d, mask,
                                       cache.pos_bias.size() != 0 ? &cache.pos_bias : nullptr);
    Mat y;
    linear_forward<Scalar>(y, cache.context, out_proj.weight.value, bias_value(out_proj));
    return y;
  }

  /// Query score projections aq (B*Tq, H*d_attn) over the cached key projections and values ->
  /// output projection (B*Tq, d). Sequences are attended one at a time: the cache's rows of
  /// sequence b are a (len, *) block. The queries are the last Tq cached positions (self-attention
  /// steps) or have no positions.
  Mat attend_cached(const Mat& aq, Index B, Index Tq, const KVCache<Scalar>& cache,
                    bool causal) const {
    AttentionDims d;
    d.B = 1;
    d.Tq = Tq;
    d.Tk = cache.len;
    d.H = n_heads_;
    d.dh = head_dim();
    Mat context(B * Tq, d_model()), out, probs, pos_bias;
    std::vector<Index> buckets;
    if (positions_.kind == Kind::relative) relative_pos_bias(Tq, d.Tk, pos_bias, buckets);
    for (Index b = 0; b < B; ++b) {
      AttentionMask mask;
      mask.causal = causal && Tq > 1;  // one new query sees every cached key
      if (cache.any_padding(b)) mask.key_padding = cache.key_padding.block(b, 0, 1, cache.len);
      additive_attention_attend<Scalar>(out, probs, aq.middleRows(b * Tq, Tq), cache.keys(b),
                                        cache.values(b), score_v.value, d, mask,
                                        pos_bias.size() != 0 ? &pos_bias : nullptr);
      context.middleRows(b * Tq, Tq) = out;
    }
    Mat y;
    linear_forward<Scalar>(y, context, out_proj.weight.value, bias_value(out_proj));
    return y;
  }
};

}  // namespace eigenformer
