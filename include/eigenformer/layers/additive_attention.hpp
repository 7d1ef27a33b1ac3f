// Multi-head additive (Bahdanau) attention, shaped like MultiHeadAttention so a model can use
// either: H heads of width dh = d_model / H over projected queries, keys and values, each head
// scoring with its own small network of width d_attn, then an output projection:
//   Q = query Wq^T + bq,  K = memory Wk^T + bk,  V = memory Wv^T + bv          (B*T, d_model)
//   per head: score_ij = v_h^T tanh(Uq_h Q_i + Uk_h K_j + c_h), a = softmax_j(score + mask),
//             context_i = sum_j a_ij V_j  (ops/additive_attention.hpp)       (B*Tq, d_model)
//   y = context Wo^T + bo                                                     (B*Tq, d_model)
// Self-attention takes memory = query; cross-attention takes keys and values from another sequence
// of a different length (e.g. the encoder output); gradients reach both. Masks, caches and the
// gradient contract are MultiHeadAttention's.
//
// Parameters: q_proj.*, k_proj.*, v_proj.*, out_proj.* (as in MultiHeadAttention), and
// score.q_weight, score.k_weight (H*d_attn, dh): head h's Uq_h / Uk_h in rows [h*d_attn, (h+1)*
// d_attn); score.bias (H*d_attn) the c_h (absent without bias); score.v (H, d_attn).
#pragma once

#include <cmath>
#include <string>

#include "../core/param.hpp"
#include "../core/random.hpp"
#include "../ops/additive_attention.hpp"
#include "../ops/linear.hpp"
#include "linear.hpp"

namespace eigenformer {

template <class Scalar = float>
class AdditiveAttention {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    AttentionDims dims;
    bool self = true;
    Mat query;    // (B*Tq, d) the query input
    Mat memory;   // (B*Tk, d) the key/value input; empty for self-attention
    Mat q, k, v;  // (B*Tq, d), (B*Tk, d), (B*Tk, d) projections
    AdditiveAttentionCache<Scalar> score;  // the score projections and (B*H*Tq, Tk) weights
    Mat context;  // (B*Tq, d) attention output before the output projection
  };

  Linear<Scalar> q_proj, k_proj, v_proj, out_proj;
  Param<Scalar> score_q;     // (H*d_attn, dh)
  Param<Scalar> score_k;     // (H*d_attn, dh)
  Param<Scalar> score_bias;  // (1, H*d_attn); empty without bias
  Param<Scalar> score_v;     // (H, d_attn)

  AdditiveAttention() = default;

  /// Projections initialised like MultiHeadAttention's (Xavier-uniform input weights, zero
  /// biases); each head's score weights Xavier-uniform, score.v from U(-1/sqrt(d_attn),
  /// 1/sqrt(d_attn)), score.bias zero. bias = false drops every bias.
  AdditiveAttention(Index d_model, Index d_attn, Index n_heads, Rng& rng, bool bias = true)
      : n_heads_(n_heads) {
    const std::string func = "AdditiveAttention::AdditiveAttention";
    detail::check_positive(func, "d_model", d_model);
    detail::check_positive(func, "d_attn", d_attn);
    detail::check_positive(func, "n_heads", n_heads);
    detail::require(d_model % n_heads == 0, func, "n_heads",
                    "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
                        std::to_string(n_heads));
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
  }

  /// One head.
  AdditiveAttention(Index d_model, Index d_attn, Rng& rng, bool bias = true)
      : AdditiveAttention(d_model, d_attn, 1, rng, bias) {}

  Index d_model() const { return q_proj.in_features(); }
  Index n_heads() const { return n_heads_; }
  Index head_dim() const { return d_model() / n_heads_; }
  Index d_attn() const { return score_v.value.cols(); }
  bool has_bias() const { return score_bias.size() > 0; }

  /// Self-attention over x (B*T, d) holding B sequences; returns (B*T, d).
  Mat forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache) const {
    const AttentionDims d = check_inputs("AdditiveAttention::forward", x, x, B, mask);
    cache.self = true;
    cache.memory.resize(0, 0);
    cache.query = x;
    return run(cache.query, cache.query, d, mask, cache);
  }

  /// Cross-attention: queries from query (B*Tq, d), keys and values from memory (B*Tk, d).
  Mat forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
              Cache& cache) const {
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
    detail::require(query.batch() == memory.batch(), "AdditiveAttention::forward", "memory",
                    "holds " + std::to_string(memory.batch()) + " sequences, query holds " +
                        std::to_string(query.batch()));
    return forward(query.data(), memory.data(), query.batch(), mask, cache);
  }

  /// dy (B*Tq, d) -> gradient with respect to the query input, fresh; parameter gradients are
  /// added. For self-attention that is the whole input gradient (dmemory must be null). For
  /// cross-attention the memory gradient is assigned to *dmemory when it is not null.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory = nullptr) {
    const AttentionDims& d = cache.dims;
    detail::check_shape("AdditiveAttention::backward", "dy", dy, d.B * d.Tq, d_model());
    detail::require(!(cache.self && dmemory), "AdditiveAttention::backward", "dmemory",
                    "must be null for a self-attention cache");
    Mat dcontext, dq, dk, dv, dquery, dmem, tmp;
    linear_backward<Scalar>(dcontext, &out_proj.weight.grad, bias_grad(out_proj), dy,
                            cache.context, out_proj.weight.value);
    AdditiveScoreGrads<Scalar> grads;
    grads.w_q = &score_q.grad;
    grads.w_k = &score_k.grad;
    grads.bias = has_bias() ? &score_bias.grad : nullptr;
    grads.w = &score_v.grad;
    additive_attention_backward<Scalar>(dq, dk, dv, grads, dcontext, cache.score, cache.q,
                                        cache.k, cache.v, weights(), d);
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
    detail::require(b >= 0 && b < d.B, "AdditiveAttention::attention_weights", "b",
                    "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(d.B));
    detail::require(h >= 0 && h < d.H, "AdditiveAttention::attention_weights", "h",
                    "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(d.H));
    return cache.score.probs.block((b * d.H + h) * d.Tq, 0, d.Tq, d.Tk);
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
    return out;
  }

  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  Index n_heads_ = 1;

  static Mat* bias_grad(Linear<Scalar>& l) { return l.has_bias() ? &l.bias.grad : nullptr; }
  static const Mat* bias_value(const Linear<Scalar>& l) {
    return l.has_bias() ? &l.bias.value : nullptr;
  }

  AdditiveScoreWeights<Scalar> weights() const {
    return {score_q.value, score_k.value, has_bias() ? &score_bias.value : nullptr,
            score_v.value};
  }

  AttentionDims check_inputs(const std::string& func, ConstRef<Scalar> query,
                             ConstRef<Scalar> memory, Index B, const AttentionMask& mask) const {
    detail::check_positive(func, "B", B);
    detail::check_shape(func, "query", query, -1, d_model());
    detail::check_shape(func, "memory", memory, -1, d_model());
    detail::require(query.rows() % B == 0 && query.rows() > 0, func, "query",
                    "has " + std::to_string(query.rows()) + " rows, not a positive multiple of B = " +
                        std::to_string(B));
    detail::require(memory.rows() % B == 0 && memory.rows() > 0, func, "memory",
                    "has " + std::to_string(memory.rows()) +
                        " rows, not a positive multiple of B = " + std::to_string(B));
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
    additive_attention_forward<Scalar>(cache.context, cache.score, cache.q, cache.k, cache.v,
                                       weights(), d, mask);
    Mat y;
    linear_forward<Scalar>(y, cache.context, out_proj.weight.value, bias_value(out_proj));
    return y;
  }
};

}  // namespace eigenformer
