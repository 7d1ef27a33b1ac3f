// Decoder layer and decoder stack of the encoder-decoder Transformer.
//
// DecoderLayer: masked (causal) self-attention, cross-attention over the encoder output (memory),
// feed-forward; each inside a residual block with LayerNorm (post- or pre-norm).
// Decoder: token input, N layers, and a final LayerNorm for pre-norm.
//   target ids (B, T), memory (B*S, d) -> hidden states (B*T, d)
// The memory feeds every layer, so backward ADDS each layer's memory gradient into one matrix.
#pragma once

#include <string>
#include <vector>

#include "encoder.hpp"

namespace eigenformer {

template <class Scalar = float>
class DecoderLayer {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Residual<Scalar>::Cache self_block, cross_block, ffn_block;
    typename MultiHeadAttention<Scalar>::Cache self_attn, cross_attn;
    typename Dropout<Scalar>::Cache self_drop, cross_drop, ffn_drop;
    typename FeedForward<Scalar>::Cache ffn;
  };

  MultiHeadAttention<Scalar> self_attn, cross_attn;
  FeedForward<Scalar> ffn;
  Residual<Scalar> self_block, cross_block, ffn_block;  // hold norm1, norm2, norm3
  Dropout<Scalar> self_drop, cross_drop, ffn_drop;

  DecoderLayer() = default;
  DecoderLayer(const LayerConfig& c, Rng& rng)
      : self_attn(c.checked("DecoderLayer::DecoderLayer").d_model, c.n_heads, rng),
        cross_attn(c.d_model, c.n_heads, rng),
        ffn(c.d_model, c.d_ff, c.activation, Scalar(c.dropout), rng),
        self_block(c.d_model, c.norm, Scalar(c.eps)),
        cross_block(c.d_model, c.norm, Scalar(c.eps)),
        ffn_block(c.d_model, c.norm, Scalar(c.eps)),
        self_drop(Scalar(c.dropout), rng.split()),
        cross_drop(Scalar(c.dropout), rng.split()),
        ffn_drop(Scalar(c.dropout), rng.split()) {}

  /// x (B*T, d), memory (B*S, d) -> (B*T, d). self_mask usually causal + target padding;
  /// cross_mask usually the source padding.
  Mat forward(ConstRef<Scalar> x, ConstRef<Scalar> memory, Index B, const AttentionMask& self_mask,
              const AttentionMask& cross_mask, Cache& cache) {
    const Mat h1 = self_block.forward(x, cache.self_block, [&](const Mat& in) {
      return self_drop.forward(self_attn.forward(in, B, self_mask, cache.self_attn),
                               cache.self_drop);
    });
    const Mat h2 = cross_block.forward(h1, cache.cross_block, [&](const Mat& in) {
      return cross_drop.forward(cross_attn.forward(in, memory, B, cross_mask, cache.cross_attn),
                                cache.cross_drop);
    });
    return ffn_block.forward(h2, cache.ffn_block, [&](const Mat& in) {
      return ffn_drop.forward(ffn.forward(in, cache.ffn), cache.ffn_drop);
    });
  }

  /// dy (B*T, d) -> dx (B*T, d) fresh; the memory gradient is ADDED into dmemory (B*S, d).
  Mat backward(ConstRef<Scalar> dy, const Cache& cache, Mat& dmemory) {
    const Mat dh2 = ffn_block.backward(dy, cache.ffn_block, [&](const Mat& d) {
      return ffn.backward(ffn_drop.backward(d, cache.ffn_drop), cache.ffn);
    });
    const Mat dh1 = cross_block.backward(dh2, cache.cross_block, [&](const Mat& d) {
      Mat dmem;
      Mat dq = cross_attn.backward(cross_drop.backward(d, cache.cross_drop), cache.cross_attn,
                                   &dmem);
      if (dmemory.size() == 0) dmemory = Mat::Zero(dmem.rows(), dmem.cols());
      dmemory += dmem;
      return dq;
    });
    return self_block.backward(dh1, cache.self_block, [&](const Mat& d) {
      return self_attn.backward(self_drop.backward(d, cache.self_drop), cache.self_attn);
    });
  }

  void train(bool on) {
    ffn.train(on);
    self_drop.training = cross_drop.training = ffn_drop.training = on;
  }

  /// Names follow PyTorch's nn.TransformerDecoderLayer (multihead_attn is the cross-attention).
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    append_params(out, "self_attn", self_attn.parameters());
    append_params(out, "multihead_attn", cross_attn.parameters());
    for (const auto& p : ffn.parameters()) out.push_back(p);
    append_params(out, "norm1", self_block.norm.parameters());
    append_params(out, "norm2", cross_block.norm.parameters());
    append_params(out, "norm3", ffn_block.norm.parameters());
    return out;
  }

  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

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
  Decoder(Index vocab, Index n_layers, const TransformerConfig& c, Rng& rng)
      : input(vocab, c, rng), pre_norm_(c.norm == NormPlacement::pre) {
    for (Index i = 0; i < n_layers; ++i) layers.emplace_back(c.layer(), rng);
    if (pre_norm_) final_norm = LayerNorm<Scalar>(c.d_model, Scalar(c.eps));
  }

  /// ids (B, T), memory (B*S, d) -> (B*T, d). start_pos: position of ids' first column.
  Mat forward(const IdMatrix& ids, ConstRef<Scalar> memory, const AttentionMask& self_mask,
              const AttentionMask& cross_mask, Cache& cache, Index start_pos = 0) {
    Mat h = input.forward(ids, cache.input, start_pos);
    cache.layers.resize(layers.size());
    for (size_t i = 0; i < layers.size(); ++i)
      h = layers[i].forward(h, memory, ids.rows(), self_mask, cross_mask, cache.layers[i]);
    if (pre_norm_) h = final_norm.forward(h, cache.final_norm);
    return h;
  }

  /// dy (B*T, d) -> the memory gradient (B*S, d), fresh.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) {
    Mat d = pre_norm_ ? final_norm.backward(dy, cache.final_norm) : Mat(dy);
    Mat dmemory;
    for (size_t i = layers.size(); i-- > 0;) d = layers[i].backward(d, cache.layers[i], dmemory);
    input.backward(d, cache.input);
    return dmemory;
  }

  void train(bool on) {
    input.train(on);
    for (auto& l : layers) l.train(on);
  }

  ParamList<Scalar> parameters() {
    ParamList<Scalar> out = input.parameters();
    for (size_t i = 0; i < layers.size(); ++i)
      append_params(out, "layers." + std::to_string(i), layers[i].parameters());
    if (pre_norm_) append_params(out, "norm", final_norm.parameters());
    return out;
  }

 private:
  bool pre_norm_ = false;
};

}  // namespace eigenformer
