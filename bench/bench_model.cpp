// Whole-model benchmarks on the encoder-decoder of common.hpp (d_model 256, 4 heads, 3 + 3 layers,
// d_ff 1024, vocabularies of 1000, dropout 0.1):
//  - BM_seq2seq_train_step: one Adam step on a batch of 32 pairs of 32-token sequences in training
//    mode (dropout on): zero_grad, forward, cross-entropy, backward, optimizer step.
//  - BM_greedy_decode/N: greedy decoding of exactly N tokens for one 32-token source in eval mode.
//    The output bias of EOS is set to -1e9 so that the model never emits it and every run decodes
//    N steps (checked). greedy_decode keeps past keys and values in a KV cache, so each step
//    runs the decoder on one new token and the cost grows about linearly in N.
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
  eigenformer::Adam<float> opt(model.parameters(), 1e-4f);
  const IdMatrix src = bench::random_ids(kBatch, kSrcLen, config.src_vocab, 2);      // (B, S)
  const IdMatrix tgt = bench::random_ids(kBatch, kTgtLen, config.tgt_vocab, 3);      // (B, T)
  const IdMatrix tgt_in = eigenformer::shift_right(tgt, bench::kBos);                // (B, T)
  const eigenformer::CrossEntropyOptions ce_options{bench::kPad, 0.0};
  Transformer<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  float loss = 0;
  auto step = [&] {
    opt.zero_grad();
    const Matrix<float> logits = model.forward(src, tgt_in, cache);  // (B*T, V)
    loss = eigenformer::cross_entropy_forward(ce, logits, tgt, ce_options);
    const Matrix<float> dlogits = eigenformer::cross_entropy_backward(ce);  // (B*T, V)
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
  state.counters["loss"] = loss;
  state.counters["tokens/s"] =
      bench::wall_rate(state, double(kBatch * (kSrcLen + kTgtLen)), timer.seconds());
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

}  // namespace

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
