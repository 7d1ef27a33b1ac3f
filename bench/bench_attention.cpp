// Multi-head self-attention (layers/multihead_attention.hpp) in float: forward, and forward +
// backward, for B sequences of T tokens, d_model D, H heads, with or without a causal mask.
// Arguments are registered in the order B, T, D, H, causal: BM_mha_forward/8/128/512/8/0.
//
// Counter FLOP/s: the multiply-adds of the GEMMs, counted 2 per multiply-add, per second:
//   forward  = 4 projections (q, k, v, out): 4 * 2*N*D*D with N = B*T
//            + 2 attention GEMMs per head (Q K^T and P V): 2 * 2*B*T*T*D
//   backward = 2x the forward (each GEMM has two gradient GEMMs: dX and dW for the projections;
//              dV, dP, dQ, dK for attention), so forward + backward = 3x the forward.
// Causal cases count the full T x T products (the kernel computes all of them, then masks), so
// their FLOP/s is comparable with the non-causal cases; the useful work is about half the
// attention part. Softmax, bias, mask and copy work is not counted.
//
// Threads: OMP_NUM_THREADS (see common.hpp), recorded in the output's context. Time is wall-clock
// time; the rates are per wall-clock second (common.hpp, WallTimer).
#include <benchmark/benchmark.h>

#include "common.hpp"
#include "eigenformer/layers/multihead_attention.hpp"

namespace {

using eigenformer::AttentionMask;
using eigenformer::Index;
using eigenformer::Matrix;
using eigenformer::MultiHeadAttention;

struct Shape {
  Index B, T, D, H;
  bool causal;
};

Shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), state.range(3), state.range(4) != 0};
}

double forward_flops(const Shape& s) {
  const double N = double(s.B) * double(s.T), D = double(s.D), T = double(s.T);
  return 4.0 * 2.0 * N * D * D + 2.0 * 2.0 * N * T * D;
}

void set_counters(benchmark::State& state, const Shape& s, double flops_per_iteration,
                  double wall_seconds) {
  state.counters["FLOP/s"] = bench::wall_rate(state, flops_per_iteration, wall_seconds);
  state.counters["tokens/s"] = bench::wall_rate(state, double(s.B * s.T), wall_seconds);
}

void BM_mha_forward(benchmark::State& state) {
  const Shape s = shape_of(state);
  eigenformer::Rng rng(1);
  const MultiHeadAttention<float> mha(s.D, s.H, rng);
  const Matrix<float> x = bench::random_matrix(s.B * s.T, s.D, 2);  // (B*T, D)
  AttentionMask mask;
  mask.causal = s.causal;
  MultiHeadAttention<float>::Cache cache;
  const bench::WallTimer timer;
  for (auto _ : state) {
    Matrix<float> y = mha.forward(x, s.B, mask, cache);  // (B*T, D)
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, forward_flops(s), timer.seconds());
}

void BM_mha_forward_backward(benchmark::State& state) {
  const Shape s = shape_of(state);
  eigenformer::Rng rng(1);
  MultiHeadAttention<float> mha(s.D, s.H, rng);
  const Matrix<float> x = bench::random_matrix(s.B * s.T, s.D, 2);   // (B*T, D)
  const Matrix<float> dy = bench::random_matrix(s.B * s.T, s.D, 3);  // (B*T, D)
  AttentionMask mask;
  mask.causal = s.causal;
  MultiHeadAttention<float>::Cache cache;
  const bench::WallTimer timer;
  for (auto _ : state) {
    Matrix<float> y = mha.forward(x, s.B, mask, cache);  // (B*T, D)
    benchmark::DoNotOptimize(y.data());
    Matrix<float> dx = mha.backward(dy, cache);  // (B*T, D); parameter gradients accumulate
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, 3.0 * forward_flops(s), timer.seconds());
}

// B, T, D, H, causal.
void attention_shapes(benchmark::internal::Benchmark* b) {
  b->Args({8, 128, 512, 8, 0});
  b->Args({8, 128, 512, 8, 1});
  b->Args({32, 32, 256, 4, 0});
  b->Args({1, 1024, 512, 8, 1});
  b->Args({1, 4096, 512, 8, 1});
  b->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_mha_forward)->Apply(attention_shapes);
BENCHMARK(BM_mha_forward_backward)->Apply(attention_shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::add_thread_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
