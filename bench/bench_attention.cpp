// Multi-head self-attention (layers/attention.hpp) in float: forward, and forward +
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
#include "eigenformer/layers/attention.hpp"
#include "eigenformer/ops/attention.hpp"
#include "eigenformer/ops/flash_attention.hpp"

namespace {

using eigenformer::Attention;
using eigenformer::AttentionMask;
using eigenformer::Index;
using eigenformer::Matrix;

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
  const Attention<float> mha(s.D, s.H, rng);
  const Matrix<float> x = bench::random_matrix(s.B * s.T, s.D, 2);  // (B*T, D)
  AttentionMask mask;
  mask.causal = s.causal;
  Attention<float>::Cache cache;
  benchmark::DoNotOptimize(mha.forward(x, s.B, mask, cache).data());  // warm-up, untimed
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
  Attention<float> mha(s.D, s.H, rng);
  const Matrix<float> x = bench::random_matrix(s.B * s.T, s.D, 2);   // (B*T, D)
  const Matrix<float> dy = bench::random_matrix(s.B * s.T, s.D, 3);  // (B*T, D)
  AttentionMask mask;
  mask.causal = s.causal;
  Attention<float>::Cache cache;
  mha.forward(x, s.B, mask, cache);  // warm-up, untimed
  benchmark::DoNotOptimize(mha.backward(dy, cache).data());
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

// The attention op alone, forward + backward, head width 64: the plain kernel (ops/attention.hpp,
// which holds the (B*H*T, T) probabilities) against the tiled one (ops/flash_attention.hpp).
// Arguments B, T, H, causal, and for the tiled kernel the tile sizes block_q, block_k.
// FLOP/s counts the full T x T products of the plain kernel (6 GEMMs of 2*B*H*T*T*dh) for both.
struct OpInputs {
  eigenformer::AttentionDims d;
  AttentionMask mask;
  Matrix<float> q, k, v, dout;
};

OpInputs op_inputs(const benchmark::State& state) {
  OpInputs in;
  in.d = {state.range(0), state.range(1), state.range(1), state.range(2), 64};
  in.mask.causal = state.range(3) != 0;
  const Index rows = in.d.B * in.d.Tq, cols = in.d.H * in.d.dh;
  in.q = bench::random_matrix(rows, cols, 4);
  in.k = bench::random_matrix(rows, cols, 5);
  in.v = bench::random_matrix(rows, cols, 6);
  in.dout = bench::random_matrix(rows, cols, 7);
  return in;
}

void set_op_counters(benchmark::State& state, const OpInputs& in, double wall_seconds) {
  const eigenformer::AttentionDims& d = in.d;
  const double flops = 6.0 * 2.0 * double(d.B * d.H) * double(d.Tq) * double(d.Tk) * double(d.dh);
  state.counters["FLOP/s"] = bench::wall_rate(state, flops, wall_seconds);
}

void BM_attention_plain(benchmark::State& state) {
  const OpInputs in = op_inputs(state);
  Matrix<float> out, probs, dq, dk, dv;
  const bench::WallTimer timer;
  for (auto _ : state) {
    eigenformer::attention_forward<float>(out, probs, in.q, in.k, in.v, in.d, in.mask);
    eigenformer::attention_backward<float>(dq, dk, dv, in.dout, probs, in.q, in.k, in.v, in.d);
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  set_op_counters(state, in, timer.seconds());
}

void BM_attention_tiled(benchmark::State& state) {
  const OpInputs in = op_inputs(state);
  const eigenformer::AttentionBlocks blocks{state.range(4), state.range(5)};
  Matrix<float> out, lse, dq, dk, dv;
  const bench::WallTimer timer;
  for (auto _ : state) {
    eigenformer::flash_attention_forward<float>(out, lse, in.q, in.k, in.v, in.d, in.mask, blocks);
    eigenformer::flash_attention_backward<float>(dq, dk, dv, in.dout, out, lse, in.q, in.k, in.v,
                                                 in.d, in.mask, blocks);
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  set_op_counters(state, in, timer.seconds());
}

BENCHMARK(BM_attention_plain)
    ->Args({8, 128, 8, 0})
    ->Args({8, 256, 8, 1})
    ->Args({1, 1024, 8, 1})
    ->Args({1, 1024, 8, 0})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_attention_tiled)
    ->Args({8, 128, 8, 0, 64, 128})
    ->Args({8, 256, 8, 1, 64, 128})
    ->Args({1, 1024, 8, 1, 64, 128})
    ->Args({1, 1024, 8, 0, 64, 128})
    ->Args({1, 1024, 8, 1, 32, 64})
    ->Args({1, 1024, 8, 1, 64, 64})
    ->Args({1, 1024, 8, 1, 128, 128})
    ->Args({1, 1024, 8, 1, 128, 256})
    ->Args({1, 1024, 8, 1, 256, 256})
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
