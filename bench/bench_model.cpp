// Whole-model benchmarks on the encoder-decoder of common.hpp (d_model 256, 4 heads, 3 + 3 layers,
// d_ff 1024, vocabularies of 1000, dropout 0.1):
//  - BM_seq2seq_train_step: one Adam step on a batch of 32 pairs of 32-token sequences in training
//    mode (dropout on): zero_grad, forward, cross-entropy, backward, optimizer step.
//  - BM_greedy_decode/N: greedy decoding of exactly N tokens for one 32-token source in eval mode.
//    The output bias of EOS is set to -1e9 so that the model never emits it and every run decodes
//    N steps (checked). greedy_decode keeps past keys and values in a KV cache, so each step
//    runs the decoder on one new token and the cost grows about linearly in N.
//  - BM_gpt_train_step/<config>: one AdamW step of a GPT-2-style decoder-only model (pre-norm,
//    learned positions, GELU tanh, output tied to the embedding, no dropout): 0 = the GPT-2 124M
//    shape (12 layers, width 768, 12 heads, vocabulary 50257, batch 4 x 64 tokens), 1 = GPT mini
//    (4 layers, width 256, 4 heads, vocabulary 8192, batch 8 x 128). Embeddings are scaled by
//    sqrt(width) (drawn from N(0, 1/width)), so the tied logits start at unit size. FLOP counts 6 x (matmul
//    parameters, the tied output projection included) x tokens plus 12 B T^2 C per layer for
//    attention (every score, as if not causal); "peak" is FLOP/s over bench_peak's FMA peak.
//  - BM_beam_search: beam search of width 4 for exactly 20 tokens over a 32,000-token target
//    vocabulary (the same model otherwise), one 32-token source. Most of a step is the search
//    itself: ranking 4 x 32,000 candidates, each checked for NaN.
//
// Threads: OMP_NUM_THREADS (see common.hpp), recorded in the output's context. Time is wall-clock
// time; the rates are per wall-clock second (common.hpp, WallTimer).
#include <benchmark/benchmark.h>

#include <string>

#include "common.hpp"
#include "eigenformer/decode/beam.hpp"
#include "eigenformer/decode/greedy.hpp"
#include "eigenformer/model/language_models.hpp"
#include "eigenformer/model/transformer.hpp"
#include "eigenformer/train/loss.hpp"
#include "eigenformer/train/optim.hpp"

namespace {

using eigenformer::IdMatrix;
using eigenformer::Index;
using eigenformer::Matrix;
using eigenformer::Transformer;

constexpr Index kBatch = 32, kSrcLen = 32, kTgtLen = 32;

void BM_seq2seq_train_step(benchmark::State& state) {
  const eigenformer::TransformerConfig config = bench::seq2seq_config();
  eigenformer::Rng rng(1);
  Transformer<float> model(config, rng);
  model.train();
  eigenformer::Adam<float> opt(model.parameters(), 1e-4);
  const IdMatrix src = bench::random_ids(kBatch, kSrcLen, config.src_vocab, 2);      // (B, S)
  const IdMatrix tgt = bench::random_ids(kBatch, kTgtLen, config.tgt_vocab, 3);      // (B, T)
  const IdMatrix tgt_in = eigenformer::shift_right(tgt, bench::kBos);                // (B, T)
  const eigenformer::CrossEntropyOptions ce_options{bench::kPad, 0.0};
  Transformer<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  Matrix<float> dlogits;  // (B*T, V), reused
  float loss = 0;
  auto step = [&] {
    opt.zero_grad();
    const Matrix<float>& logits = model.forward(src, tgt_in, cache);  // (B*T, V), in cache
    loss = eigenformer::cross_entropy_forward(ce, logits, tgt, ce_options);
    eigenformer::cross_entropy_backward(dlogits, ce);
    model.backward(dlogits, cache);
    opt.step();
  };
  step();  // warm-up, untimed, as compare_pytorch.py warms PyTorch up
  const bench::WallTimer timer;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  const double seconds = timer.seconds();
  // 6 x matmul parameters x the tokens they see (encoder layers: source tokens; decoder layers and
  // the output projection: target tokens) + 12 B Tq Tk d per attention (36.3 GFLOP here).
  const double d = double(config.d_model), ff = double(config.d_ff);
  const double enc = double(config.n_encoder_layers) * (4 * d * d + 2 * d * ff);
  const double dec = double(config.n_decoder_layers) * (8 * d * d + 2 * d * ff);
  const double out = d * double(config.tgt_vocab);
  const double src_tokens = double(kBatch * kSrcLen), tgt_tokens = double(kBatch * kTgtLen);
  const double attention = 12.0 * double(kBatch) * d *
                           (double(config.n_encoder_layers) * kSrcLen * kSrcLen +
                            double(config.n_decoder_layers) * (kTgtLen * kTgtLen + kTgtLen * kSrcLen));
  bench::set_flop_counters(state, 6 * (enc * src_tokens + (dec + out) * tgt_tokens) + attention,
                           seconds);
  state.counters["loss"] = loss;
  state.counters["tokens/s"] = bench::wall_rate(state, src_tokens + tgt_tokens, seconds);
}

void BM_greedy_decode(benchmark::State& state) {
  const Index n = state.range(0);
  const eigenformer::TransformerConfig config = bench::seq2seq_config();  // max_len 512 > n
  eigenformer::Rng rng(1);
  Transformer<float> model(config, rng);
  model.eval();
  model.head.proj.bias.value(0, bench::kEos) = -1e9f;  // never emitted: decode exactly n tokens
  const IdMatrix src = bench::random_ids(1, kSrcLen, config.src_vocab, 2);  // (1, S)
  eigenformer::GreedyOptions options;
  options.bos = bench::kBos;
  options.eos = bench::kEos;
  options.max_len = n;
  benchmark::DoNotOptimize(eigenformer::greedy_decode(model, src, options).data());  // warm-up
  const bench::WallTimer timer;
  for (auto _ : state) {
    const IdMatrix out = eigenformer::greedy_decode(model, src, options);  // (1, L)
    if (out.cols() != n) {
      state.SkipWithError(("decoded " + std::to_string(out.cols()) + " tokens, expected " +
                           std::to_string(n))
                              .c_str());
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens/s"] = bench::wall_rate(state, double(n), timer.seconds());
}

/// The two GPT shapes of BM_gpt_train_step (compare_pytorch.py builds the same in PyTorch).
struct GptShape {
  Index layers, width, heads, vocab, batch, tokens;
};
constexpr GptShape kGptShapes[] = {{12, 768, 12, 50257, 4, 64}, {4, 256, 4, 8192, 8, 128}};

void BM_gpt_train_step(benchmark::State& state) {
  const GptShape g = kGptShapes[state.range(0)];
  eigenformer::TransformerConfig c;
  c.vocab = g.vocab;
  c.n_layers = g.layers;
  c.d_model = g.width;
  c.n_heads = g.heads;
  c.d_ff = 4 * g.width;
  c.dropout = 0.0;
  c.norm = eigenformer::NormPlacement::pre;
  c.activation = eigenformer::Activation::gelu_tanh;
  c.positional = eigenformer::PositionalKind::learned;
  // Embeddings from N(0, 1/d) times sqrt(d): unit-size inputs and, tied, logits of unit size
  // (an untrained model's loss near log V).
  c.scale_embeddings = true;
  c.tie_output = true;
  c.max_len = 1024;
  eigenformer::Rng rng(1);
  eigenformer::DecoderOnlyLM<float> model(c, rng);
  model.train();
  eigenformer::AdamW<float> opt(eigenformer::weight_decay_groups(model.parameters(), 0.1), 3e-4);
  const IdMatrix ids = bench::random_ids(g.batch, g.tokens + 1, g.vocab, 2);  // (B, T + 1)
  const IdMatrix input = ids.leftCols(g.tokens), target = ids.rightCols(g.tokens);
  eigenformer::DecoderOnlyLM<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  Matrix<float> dlogits;  // (B*T, V), reused
  float loss = 0;
  auto step = [&] {
    opt.zero_grad();
    const Matrix<float>& logits = model.forward(input, cache);  // (B*T, V), in cache
    loss = eigenformer::cross_entropy_forward(ce, logits, target);
    eigenformer::cross_entropy_backward(dlogits, ce);
    model.backward(dlogits, cache);
    opt.step();
  };
  step();  // warm-up, untimed
  const bench::WallTimer timer;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  const double tokens = double(g.batch * g.tokens);
  const double matmul_params =
      double(g.layers) * 12.0 * double(g.width * g.width) + double(g.vocab * g.width);
  const double attention = 12.0 * double(g.batch) * double(g.tokens * g.tokens) *
                           double(g.width) * double(g.layers);
  const double seconds = timer.seconds();
  bench::set_flop_counters(state, 6.0 * matmul_params * tokens + attention, seconds);
  state.counters["loss"] = loss;
  state.counters["tokens/s"] = bench::wall_rate(state, tokens, seconds);
}

void BM_beam_search(benchmark::State& state) {
  eigenformer::TransformerConfig config = bench::seq2seq_config();
  config.tgt_vocab = 32000;
  eigenformer::Rng rng(1);
  Transformer<float> model(config, rng);
  model.eval();
  model.head.proj.bias.value(0, bench::kEos) = -1e9f;  // never emitted: search exactly 20 steps
  const IdMatrix src = bench::random_ids(1, kSrcLen, config.src_vocab, 2);  // (1, S)
  eigenformer::BeamOptions options;
  options.bos = bench::kBos;
  options.eos = bench::kEos;
  options.max_len = 20;
  options.beam_width = 4;
  benchmark::DoNotOptimize(eigenformer::beam_search(model, src, options).data());  // warm-up
  const bench::WallTimer timer;
  for (auto _ : state) {
    const IdMatrix out = eigenformer::beam_search(model, src, options);  // (1, 20)
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens/s"] = bench::wall_rate(state, double(options.max_len), timer.seconds());
}

BENCHMARK(BM_seq2seq_train_step)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_greedy_decode)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_beam_search)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gpt_train_step)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
