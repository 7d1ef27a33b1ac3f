// Multi-head attention: H heads of width dh = d_model / H over projected queries, keys and values,
// then an output projection:
//   Q = query Wq^T + bq,  K = memory Wk^T + bk,  V = memory Wv^T + bv       (B*T, d_model)
//   context = attention(Q, K, V) per head (ops/attention.hpp)               (B*Tq, d_model)
//   y = context Wo^T + bo                                                   (B*Tq, d_model)
// Self-attention takes memory = query; cross-attention takes queries from one sequence and keys and
// values from another (e.g. the encoder output) of a different length; gradients reach both.
//
// Positions inside self-attention (AttentionPositions, optional; cross-attention has none):
//  - rotary: RoPE (ops/rotary.hpp, the "rotate half" convention of GPT-NeoX / HF LLaMA) rotates
//    each head of Q and K after the projections, before the scores; V is untouched. The backward
//    rotates dQ and dK back before the projections' backward.
//  - relative: T5's bucketed relative position bias (ops/relative_position.hpp): a trainable
//    relative_bias (num_buckets, H), T5's nn.Embedding(num_buckets, n_heads); query i and key j
//    get relative_bias(bucket(j - i), h) added to their score. Unlike T5 the scores keep their
//    1/sqrt(dh) scaling; the bias is added after it, before the masks and the softmax:
//      scores = Q K^T / sqrt(dh) + relative_bias(bucket(j - i), h).
//    Both kernels take the bias per distance, (H, Tq + Tk - 1), never as an (H, Tq, Tk) tensor.
// forward(x, ...) gives the tokens of every sequence positions 0 .. T-1 (queries and keys);
// forward_step gives its new tokens positions cache.len .. cache.len + t - 1, so a step equals the
// last rows of a full causal forward.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "../core/param.hpp"
#include "../core/random.hpp"
#include "../decode/kv_cache.hpp"
#include "../ops/attention.hpp"
#include "../ops/flash_attention.hpp"
#include "../ops/linear.hpp"
#include "../ops/relative_position.hpp"
#include "../ops/rotary.hpp"
#include "linear.hpp"

namespace eigenformer {

/// How token positions enter a self-attention layer's scores (cross-attention has none).
struct AttentionPositions {
  enum class Kind { none, rotary, relative } kind = Kind::none;
  double rotary_base = 10000.0;  // RoPE theta: pair i turns by pos * rotary_base^(-2i/dh)
  Index num_buckets = 32;        // T5 relative attention buckets (half per sign if bidirectional)
  Index max_distance = 128;      // T5: distances beyond this share the last bucket
  bool bidirectional = true;     // T5: true for encoders, false for causal decoders
};

template <class Scalar = float>
class MultiHeadAttention {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    AttentionDims dims;
    bool self = true;
    Mat query;    // (B*Tq, d) the query input
    Mat memory;   // (B*Tk, d) the key/value input; empty for self-attention
    Mat q, k, v;  // (B*Tq, d), (B*Tk, d), (B*Tk, d) projections
    Mat probs;    // (B*H*Tq, Tk) attention weights (plain kernel; empty after the tiled one)
    Mat lse;      // (B*H, Tq) per-row log-sum-exp (tiled kernel; empty after the plain one)
    AttentionMask mask;  // the forward's mask, kept for the tiled backward and weights
    Mat context;  // (B*Tq, d) attention output before the output projection
    // Positions (empty for kind none): q and k above are already rotated (rotary); the relative
    // bias per distance and the bucket of each distance column (relative).
    RotaryTable<Scalar> rotary;  // (T, dh/2) cos and sin of positions 0 .. T-1
    Mat pos_bias;                // (H, Tq + Tk - 1)
    std::vector<Index> buckets;  // (Tq + Tk - 1)
  };

  Linear<Scalar> q_proj, k_proj, v_proj, out_proj;
  /// Attention kernel of forward/backward (ops/flash_attention.hpp). automatic: the plain kernel
  /// (ops/attention.hpp, caches the (B*H*Tq, Tk) probabilities) for short sequences, the tiled
  /// one (caches a (B*H, Tq) log-sum-exp, memory linear in T) from Tq*Tk >= 256*256 when causal
  /// and >= 512*512 otherwise (use_tiled_attention). Both give the same results up to rounding,
  /// and attention_weights() works after either (recomputed per head after the tiled one).
  AttentionImpl impl = AttentionImpl::automatic;
  /// T5's relative attention bias (num_buckets, H), row = bucket, column = head; empty (0, 0)
  /// unless positions().kind == relative.
  Param<Scalar> relative_bias;

  MultiHeadAttention() = default;

  /// Projections initialised like PyTorch's nn.MultiheadAttention: Xavier-uniform input weights,
  /// zero biases. With relative positions, relative_bias is drawn after them from
  /// N(0, 1/d_model), as Hugging Face's T5 initialises it (std d_model^-0.5), so the projections
  /// are the same as without positions for the same rng.
  MultiHeadAttention(Index d_model, Index n_heads, Rng& rng, bool bias = true,
                     const AttentionPositions& positions = {})
      : n_heads_(n_heads), positions_(positions) {
    const char* func = "MultiHeadAttention::MultiHeadAttention";
    detail::check_positive(func, "d_model", d_model);
    detail::check_positive(func, "n_heads", n_heads);
    detail::require(d_model % n_heads == 0, func, "n_heads", [&] {
      return "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
             std::to_string(n_heads);
    });
    check_positions(func, positions, d_model / n_heads);
    for (Linear<Scalar>* p : {&q_proj, &k_proj, &v_proj, &out_proj}) {
      *p = Linear<Scalar>(d_model, d_model, rng, bias);
      if (bias) p->bias.value.setZero();
    }
    for (Linear<Scalar>* p : {&q_proj, &k_proj, &v_proj}) fill_xavier_uniform(p->weight.value, rng);
    if (positions.kind == AttentionPositions::Kind::relative) {
      relative_bias = Param<Scalar>(positions.num_buckets, n_heads);
      fill_normal(relative_bias.value, 0.0, 1.0 / std::sqrt(static_cast<double>(d_model)), rng);
    }
  }

  Index d_model() const { return q_proj.in_features(); }
  Index n_heads() const { return n_heads_; }
  Index head_dim() const { return d_model() / n_heads_; }
  const AttentionPositions& positions() const { return positions_; }

  /// Self-attention over x (B*T, d) holding B sequences; returns (B*T, d).
  Mat forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache) const {
    const AttentionDims d = check_inputs("MultiHeadAttention::forward", x, x, B, mask);
    cache.self = true;
    cache.memory.resize(0, 0);
    cache.query = x;
    return run(cache.query, cache.query, d, mask, cache);
  }

  /// Cross-attention: queries from query (B*Tq, d), keys and values from memory (B*Tk, d).
  /// Throws when the layer has positions (they apply to self-attention only).
  Mat forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
              Cache& cache) const {
    require_no_positions("MultiHeadAttention::forward", "memory");
    const AttentionDims d = check_inputs("MultiHeadAttention::forward", query, memory, B, mask);
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
    detail::require(query.batch() == memory.batch(), "MultiHeadAttention::forward", "memory", [&] {
      return "holds " + std::to_string(memory.batch()) + " sequences, query holds " +
             std::to_string(query.batch());
    });
    return forward(query.data(), memory.data(), query.batch(), mask, cache);
  }

  /// dy (B*Tq, d) -> gradient with respect to the query input, fresh; parameter gradients are
  /// added (relative_bias.grad gets the score gradients of every (b, i, j) added to the row of
  /// bucket(j - i)). For self-attention that is the whole input gradient (dmemory must be null).
  /// For cross-attention the memory gradient is assigned to *dmemory when it is not null.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory = nullptr) {
    const AttentionDims& d = cache.dims;
    detail::check_shape("MultiHeadAttention::backward", "dy", dy, d.B * d.Tq, d_model());
    detail::require(!(cache.self && dmemory), "MultiHeadAttention::backward", "dmemory",
                    "must be null for a self-attention cache");
    const bool has_bias = cache.pos_bias.size() != 0;
    detail::require(!has_bias || positions_.kind == AttentionPositions::Kind::relative,
                    "MultiHeadAttention::backward", "cache",
                    "holds a relative position bias, but this layer has none");
    // (B*Tq, d) and (B*Tk, d) gradients, reused across calls; only dquery is handed out.
    auto& [dcontext, dq, dk, dv, dmem, tmp] = backward_scratch_.buffers;
    Mat dquery, dbias;
    const Mat* bias = has_bias ? &cache.pos_bias : nullptr;
    Mat* dbias_out = has_bias ? &dbias : nullptr;
    linear_backward<Scalar>(dcontext, &out_proj.weight.grad, bias_grad(out_proj), dy,
                            cache.context, out_proj.weight.value);
    if (cache.lse.size() != 0)
      flash_attention_backward<Scalar>(dq, dk, dv, dcontext, cache.context, cache.lse, cache.q,
                                       cache.k, cache.v, d, cache.mask, {}, bias, dbias_out);
    else
      attention_backward<Scalar>(dq, dk, dv, dcontext, cache.probs, cache.q, cache.k, cache.v, d,
                                 dbias_out);
    if (has_bias) relative_bias_backward<Scalar>(relative_bias.grad, dbias, cache.buckets);
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
      *dmemory = dmem;  // a copy, so the buffer stays for the next call
    }
    return dquery;
  }

  /// Attention weights of head h for sequence b from a forward's cache: (Tq, Tk).
  static Mat attention_weights(const Cache& cache, Index b, Index h) {
    const AttentionDims& d = cache.dims;
    detail::require(b >= 0 && b < d.B, "MultiHeadAttention::attention_weights", "b", [&] {
      return "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(d.B);
    });
    detail::require(h >= 0 && h < d.H, "MultiHeadAttention::attention_weights", "h", [&] {
      return "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(d.H);
    });
    if (cache.lse.size() != 0)
      return flash_attention_weights<Scalar>(cache.q, cache.k, cache.lse, d, cache.mask, b, h,
                                             cache.pos_bias.size() != 0 ? &cache.pos_bias
                                                                        : nullptr);
    return cache.probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
  }

  // Incremental decoding (inference only: no cache for backward, dropout does not apply).

  /// Self-attention step: projects x_new (B*t, d), the next t positions of B sequences, appends
  /// their keys and values to cache, and attends over every cached position, causally (new
  /// position i sees the cached prefix and new positions <= i). new_key_padding (B, t), when not
  /// empty, marks padded new positions; padded keys of earlier steps stay masked. The new tokens
  /// have positions cache.len .. cache.len + t - 1: RoPE rotates their queries and keys by those
  /// (the cache holds rotated keys), the relative bias uses their distances to every cached key.
  /// Returns (B*t, d), equal (up to rounding) to the last t rows of each sequence of a full causal
  /// forward.
  Mat forward_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                   const BoolMatrix& new_key_padding = BoolMatrix()) const {
    const char* func = "MultiHeadAttention::forward_step";
    const AttentionDims d = check_inputs(func, x_new, x_new, B, AttentionMask());
    detail::require(cache.B == B && cache.d_model() == d_model(), func, "cache", [&] {
      return "holds " + std::to_string(cache.B) + " sequences of width " +
             std::to_string(cache.d_model()) + ", expected " + std::to_string(B) + " of width " +
             std::to_string(d_model());
    });
    if (new_key_padding.size() != 0)
      detail::check_shape(func, "new_key_padding", new_key_padding, B, d.Tq);
    cache.check_room(func, "x_new", d.Tq);
    Mat q, k, v;
    linear_forward<Scalar>(q, x_new, q_proj.weight.value, bias_value(q_proj));
    linear_forward<Scalar>(k, x_new, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(v, x_new, v_proj.weight.value, bias_value(v_proj));
    if (positions_.kind == AttentionPositions::Kind::rotary) {
      const RotaryTable<Scalar> tab =
          rotary_table<Scalar>(cache.len, d.Tq, head_dim(), positions_.rotary_base);
      rotary_forward<Scalar>(q, n_heads_, tab);
      rotary_forward<Scalar>(k, n_heads_, tab);
    }
    cache.append(k, v, new_key_padding);
    return attend_cached(q, B, d.Tq, cache, true);
  }

  /// Cross-attention, first half: projects the keys and values of memory (B*S, d) once into
  /// cache (reset to hold exactly S positions), with its key padding (B, S) (empty: none).
  /// Throws when the layer has positions (they apply to self-attention only).
  void cache_memory(ConstRef<Scalar> memory, Index B, const BoolMatrix& key_padding,
                    KVCache<Scalar>& cache) const {
    const char* func = "MultiHeadAttention::cache_memory";
    require_no_positions(func, "memory");
    const AttentionDims d = check_inputs(func, memory, memory, B, AttentionMask());
    if (key_padding.size() != 0) detail::check_shape(func, "key_padding", key_padding, B, d.Tk);
    cache.reset(B, d.Tk, d_model());
    Mat k, v;
    linear_forward<Scalar>(k, memory, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(v, memory, v_proj.weight.value, bias_value(v_proj));
    cache.append(k, v, key_padding);
  }

  /// Cross-attention, second half: query (B*Tq, d) attends over the memory keys and values of
  /// cache_memory (no causal mask, the memory's padding masked) -> (B*Tq, d). Throws when the
  /// layer has positions.
  Mat forward_cached_memory(ConstRef<Scalar> query, Index B, const KVCache<Scalar>& cache) const {
    const char* func = "MultiHeadAttention::forward_cached_memory";
    require_no_positions(func, "query");
    const AttentionDims d = check_inputs(func, query, query, B, AttentionMask());
    detail::require(
        cache.B == B && cache.len > 0 && cache.d_model() == d_model(), func, "cache", [&] {
          return "holds " + std::to_string(cache.B) + " sequences of " + std::to_string(cache.len) +
                 " positions of width " + std::to_string(cache.d_model()) + ", expected " +
                 std::to_string(B) + " non-empty sequences of width " + std::to_string(d_model());
        });
    Mat q;
    linear_forward<Scalar>(q, query, q_proj.weight.value, bias_value(q_proj));
    return attend_cached(q, B, d.Tq, cache, false);
  }

 private:
  struct BackwardBuffers {
    Mat dcontext, dq, dk, dv, dmem, tmp;
  };
  detail::Scratch<BackwardBuffers> backward_scratch_;

  /// Projected queries q (B*Tq, d) over the cached keys/values -> output projection (B*Tq, d).
  /// Sequences are attended one at a time: the cache's rows of sequence b are a (len, d) block.
  /// The queries are the last Tq cached positions (self-attention steps) or have no positions.
  Mat attend_cached(const Mat& q, Index B, Index Tq, const KVCache<Scalar>& cache,
                    bool causal) const {
    AttentionDims d;
    d.B = 1;
    d.Tq = Tq;
    d.Tk = cache.len;
    d.H = n_heads_;
    d.dh = head_dim();
    Mat context(B * Tq, d_model()), out, probs, bias;
    if (positions_.kind == AttentionPositions::Kind::relative)
      relative_bias_forward<Scalar>(bias, relative_bias.value, distance_buckets(Tq, d.Tk));
    for (Index b = 0; b < B; ++b) {
      AttentionMask mask;
      mask.causal = causal && Tq > 1;  // one new query sees every cached key
      if (cache.any_padding(b)) mask.key_padding = cache.key_padding.block(b, 0, 1, cache.len);
      attention_forward<Scalar>(out, probs, q.middleRows(b * Tq, Tq), cache.keys(b),
                                cache.values(b), d, mask, bias.size() != 0 ? &bias : nullptr);
      context.middleRows(b * Tq, Tq) = out;
    }
    Mat y;
    linear_forward<Scalar>(y, context, out_proj.weight.value, bias_value(out_proj));
    return y;
  }

 public:
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "q_proj", q_proj.parameters());
    append_params(out, "k_proj", k_proj.parameters());
    append_params(out, "v_proj", v_proj.parameters());
    append_params(out, "out_proj", out_proj.parameters());
    if (positions_.kind == AttentionPositions::Kind::relative)
      out.push_back({"relative_bias", &relative_bias});
    return out;
  }

  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  Index n_heads_ = 1;
  AttentionPositions positions_;

  /// Throws unless the fields that positions.kind uses are valid for heads of width dh.
  static void check_positions(std::string_view func, const AttentionPositions& p, Index dh) {
    using Kind = AttentionPositions::Kind;
    if (p.kind == Kind::rotary) {
      detail::require(dh % 2 == 0, func, "positions.kind", [&] {
        return "is rotary, which needs an even head_dim (d_model / n_heads), got " +
               std::to_string(dh);
      });
      detail::require(
          p.rotary_base > 0.0 && std::isfinite(p.rotary_base), func, "positions.rotary_base",
          [&] { return "must be positive and finite, got " + std::to_string(p.rotary_base); });
    } else if (p.kind == Kind::relative) {
      detail::check_bucketing(func, p.bidirectional, p.num_buckets, p.max_distance, "positions.");
    }
  }

  void require_no_positions(std::string_view func, std::string_view arg) const {
    const char* kind = positions_.kind == AttentionPositions::Kind::rotary ? "rotary" : "relative";
    detail::require(positions_.kind == AttentionPositions::Kind::none, func, arg, [&] {
      return std::string("is for cross-attention, but this layer has ") + kind +
             " positions: positions apply to self-attention only";
    });
  }

  /// Buckets of the distance columns of a (Tq, Tk) attention, queries aligned at the end.
  std::vector<Index> distance_buckets(Index Tq, Index Tk) const {
    return relative_position_buckets(Tq, Tk, positions_.bidirectional, positions_.num_buckets,
                                     positions_.max_distance);
  }

  static Mat* bias_grad(Linear<Scalar>& l) { return l.has_bias() ? &l.bias.grad : nullptr; }
  static const Mat* bias_value(const Linear<Scalar>& l) {
    return l.has_bias() ? &l.bias.value : nullptr;
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
    linear_forward<Scalar>(cache.q, query, q_proj.weight.value, bias_value(q_proj));
    linear_forward<Scalar>(cache.k, memory, k_proj.weight.value, bias_value(k_proj));
    linear_forward<Scalar>(cache.v, memory, v_proj.weight.value, bias_value(v_proj));
    cache.rotary = RotaryTable<Scalar>();
    cache.pos_bias.resize(0, 0);
    cache.buckets.clear();
    if (positions_.kind == AttentionPositions::Kind::rotary) {  // self-attention: Tq == Tk
      cache.rotary = rotary_table<Scalar>(0, d.Tq, d.dh, positions_.rotary_base);
      rotary_forward<Scalar>(cache.q, d.H, cache.rotary);
      rotary_forward<Scalar>(cache.k, d.H, cache.rotary);
    } else if (positions_.kind == AttentionPositions::Kind::relative) {
      cache.buckets = distance_buckets(d.Tq, d.Tk);
      relative_bias_forward<Scalar>(cache.pos_bias, relative_bias.value, cache.buckets);
    }
    const Mat* bias = cache.pos_bias.size() != 0 ? &cache.pos_bias : nullptr;
    if (use_tiled_attention(impl, d, mask)) {
      cache.probs.resize(0, 0);
      cache.mask = mask;
      flash_attention_forward<Scalar>(cache.context, cache.lse, cache.q, cache.k, cache.v, d,
                                      mask, {}, bias);
    } else {
      cache.lse.resize(0, 0);
      cache.mask = AttentionMask();
      attention_forward<Scalar>(cache.context, cache.probs, cache.q, cache.k, cache.v, d, mask,
                                bias);
    }
    Mat y;
    linear_forward<Scalar>(y, cache.context, out_proj.weight.value, bias_value(out_proj));
    return y;
  }
};

}  // namespace eigenformer
