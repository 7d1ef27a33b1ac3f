// The matrix products alone, on the models' shapes, on the calling thread (run with
// OMP_NUM_THREADS=1: the "peak" counter is bench_peak's peak for that many threads):
//  - BM_gemm/M/K/N/kind: detail::gemm_add as the layers call it, through whatever does a build's
//    float products (eigenformer's kernel with AVX2 or AVX-512, else Eigen's GEMM; a BLAS with
//    -DEIGENFORMER_USE_BLAS=ON);
//  - BM_gemm_eigen/M/K/N/kind (builds without BLAS): the same product through Eigen's GEMM.
// kind is the layer's product: 0 forward, out (M, N) = x (M, K) W^T with W (N, K); 1 input
// gradient, dx (M, N) = dy (M, K) W with W (K, N); 2 weight gradient, dW (M, N) = dy^T x with dy
// (K, M) and x (K, N). Shapes: the seq2seq model's (1024 tokens, width 256, feed-forward 1024),
// the GPT-2 shape's (256 tokens, 768, 3072, 50,257 words), GPT mini's logits (1024 tokens,
// 8,192 words), and attention's per-head products over 32 and 128 tokens.
#include <benchmark/benchmark.h>

#include <vector>

#include "common.hpp"
#include "eigenformer/core/gemm.hpp"

namespace {

using bench::Index;
using eigenformer::Matrix;
using MatF = Matrix<float>;

/// Operands of a product of the given kind: lhs and rhs storage, as the layers hold them.
struct Operands {
  MatF a, b, out;
  Operands(Index M, Index K, Index N, int kind) : out(MatF::Zero(M, N)) {
    a = kind == 2 ? MatF::Random(K, M) : MatF::Random(M, K);
    b = kind == 0 ? MatF::Random(N, K) : MatF::Random(K, N);
  }
};

/// Runs product(out, lhs, rhs) on the operands of state's case, with FLOP counters.
template <class Product>
void run_gemm(benchmark::State& state, Product&& product) {
  const Index M = state.range(0), K = state.range(1), N = state.range(2);
  const int kind = int(state.range(3));
  Operands x(M, K, N, kind);
  auto once = [&] {
    if (kind == 0) product(x.out, x.a, x.b.transpose());
    if (kind == 1) product(x.out, x.a, x.b);
    if (kind == 2) product(x.out, x.a.transpose(), x.b);
  };
  once();  // packing buffers grown before timing
  const bench::WallTimer timer;
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(x.out.data());
  }
  bench::set_flop_counters(state, 2.0 * double(M) * double(K) * double(N), timer.seconds());
}

void BM_gemm(benchmark::State& state) {
  run_gemm(state, [](MatF& out, const auto& lhs, const auto& rhs) {
    eigenformer::detail::gemm_add(out, lhs, rhs);
  });
}

#ifndef EIGEN_USE_BLAS
void BM_gemm_eigen(benchmark::State& state) {
  run_gemm(state, [](MatF& out, const auto& lhs, const auto& rhs) {
    eigenformer::detail::eigen_gemm_add(out, lhs, rhs, 1.0f);
  });
}
#endif

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "K", "N", "kind"});
  for (auto s : {std::vector<int64_t>{1024, 256, 256, 0},
                 {1024, 256, 1024, 0},
                 {1024, 1024, 256, 1},
                 {256, 1024, 1024, 2},
                 {256, 768, 3072, 0},
                 {256, 3072, 768, 1},
                 {768, 256, 3072, 2},
                 {256, 768, 50257, 0},
                 {1024, 256, 8192, 0},
                 {1024, 8192, 256, 1},
                 {8192, 1024, 256, 2},
                 // attention's products per head (64 features) over 32 and 128 tokens:
                 // scores q k^T, probs v and the gradients of v and k
                 {32, 64, 32, 0},
                 {32, 32, 64, 1},
                 {32, 32, 64, 2},
                 {128, 64, 128, 0},
                 {128, 128, 64, 1},
                 {128, 128, 64, 2}})
    b->Args(s);
  b->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_gemm)->Apply(shapes);
#ifndef EIGEN_USE_BLAS
BENCHMARK(BM_gemm_eigen)->Apply(shapes);
#endif

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
