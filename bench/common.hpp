// Shared helpers of the benchmark programs: the thread count recorded in the output, random inputs
// and the seq2seq model used by bench_model.cpp.
//
// Threads: every case runs with the same number of threads, the one OpenMP gives, i.e. the
// environment variable OMP_NUM_THREADS (OpenMP's default, all cores, when it is unset). It drives
// both eigenformer's own OpenMP loops and Eigen's GEMM (Eigen is compiled with OpenMP here). The
// benchmarks never call omp_set_num_threads or Eigen::setNbThreads.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "eigenformer/core/gemm_kernel.hpp"
#include "eigenformer/core/parallel.hpp"
#include "eigenformer/core/random.hpp"
#include "eigenformer/core/tensor.hpp"
#include "eigenformer/model/config.hpp"

namespace bench {

using eigenformer::Index;

/// Adds the thread settings and the SIMD level to the benchmark context, so that the JSON and
/// console outputs record what the numbers were measured with.
inline void add_thread_context() {
  const char* env = std::getenv("OMP_NUM_THREADS");
  benchmark::AddCustomContext("OMP_NUM_THREADS", env ? env : "unset");
  benchmark::AddCustomContext("eigenformer_threads", std::to_string(eigenformer::max_threads()));
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
#if defined(EIGEN_USE_BLAS)
  benchmark::AddCustomContext("eigen_gemm", "BLAS (EIGEN_USE_BLAS)");
#elif EIGENFORMER_GEMM_KERNEL
  // Float products from 65,536 multiply-adds, 32 rows and a tile's width; the rest through
  // Eigen's (core/gemm.hpp).
  benchmark::AddCustomContext("eigen_gemm", "eigenformer's float kernel and Eigen");
#else
  benchmark::AddCustomContext("eigen_gemm", "Eigen");
#endif
}

/// The main() of every benchmark program: Google Benchmark's flags, the thread context, the run.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  add_thread_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

/// Wall-clock seconds since construction. The benchmarks report rates (FLOP/s, tokens/s) per
/// wall-clock second measured around the timing loop, not per CPU second of the main thread (which
/// is what Google Benchmark's kIsRate uses unless UseRealTime(), and UseRealTime() would append
/// "/real_time" to every name). The Time column of the output is wall-clock time too.
class WallTimer {
 public:
  WallTimer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

/// amount_per_iteration * iterations / wall seconds, as a plain counter.
inline benchmark::Counter wall_rate(const benchmark::State& state, double amount_per_iteration,
                                    double wall_seconds) {
  return benchmark::Counter(wall_seconds > 0 ? amount_per_iteration *
                                                   static_cast<double>(state.iterations()) /
                                                   wall_seconds
                                             : 0.0);
}

/// (rows, cols) matrix with entries U(-1, 1) from a fixed seed.
inline eigenformer::Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  eigenformer::Rng rng(seed);
  eigenformer::Matrix<float> m(rows, cols);
  eigenformer::fill_uniform(m, -1.0, 1.0, rng);
  return m;
}

/// 10 independent chains of Eigen's widest float packet through steps fused multiply-adds each,
/// enough chains to hide the FMA latency on both pipes of current x86 cores; returns a lane sum
/// so the work cannot be dropped. 2 * lanes * 10 * steps FLOP.
inline float fma_chains(long steps) {
  using Packet = Eigen::internal::packet_traits<float>::type;
  using Eigen::internal::padd;
  using Eigen::internal::pmadd;
  using Eigen::internal::pset1;
  float factor = 0.999999f;
  benchmark::DoNotOptimize(factor);  // unknown to the compiler: the loop cannot be hoisted
  const Packet m = pset1<Packet>(factor), c = pset1<Packet>(1e-7f);
  Packet a0 = pset1<Packet>(1.0f), a1 = pset1<Packet>(1.1f), a2 = pset1<Packet>(1.2f),
         a3 = pset1<Packet>(1.3f), a4 = pset1<Packet>(1.4f), a5 = pset1<Packet>(1.5f),
         a6 = pset1<Packet>(1.6f), a7 = pset1<Packet>(1.7f), a8 = pset1<Packet>(1.8f),
         a9 = pset1<Packet>(1.9f);
  for (long s = 0; s < steps; ++s) {
    a0 = pmadd(a0, m, c), a1 = pmadd(a1, m, c), a2 = pmadd(a2, m, c), a3 = pmadd(a3, m, c);
    a4 = pmadd(a4, m, c), a5 = pmadd(a5, m, c), a6 = pmadd(a6, m, c), a7 = pmadd(a7, m, c);
    a8 = pmadd(a8, m, c), a9 = pmadd(a9, m, c);
  }
  const Packet sum = padd(padd(padd(a0, a1), padd(a2, a3)),
                          padd(padd(padd(a4, a5), padd(a6, a7)), padd(a8, a9)));
  return Eigen::internal::predux(sum);
}

/// The float multiply-add peak of OMP_NUM_THREADS threads in FLOP/s (bench_peak's measurement):
/// the best of 5 short runs, measured once per program.
inline double peak_flops() {
  static const double peak = [] {
    constexpr long kSteps = 1 << 20;
    const int threads = eigenformer::max_threads();
    const int lanes = Eigen::internal::packet_traits<float>::size;
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      float sink = 0;
      const WallTimer timer;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : sink)
#endif
      for (int t = 0; t < threads; ++t) sink += fma_chains(kSteps);
      benchmark::DoNotOptimize(sink);
      best = std::max(best, 2.0 * lanes * 10.0 * double(kSteps) * threads / timer.seconds());
    }
    return best;
  }();
  return peak;
}

/// Sets the FLOP/s and "peak" (share of peak_flops()) counters of a case that does
/// flop_per_iteration per iteration.
inline void set_flop_counters(benchmark::State& state, double flop_per_iteration,
                              double wall_seconds) {
  const double rate = wall_seconds > 0 ? flop_per_iteration * double(state.iterations()) /
                                             wall_seconds
                                       : 0.0;
  state.counters["FLOP/s"] = benchmark::Counter(rate);
  state.counters["peak"] = benchmark::Counter(rate / peak_flops());
}

/// Token ids reserved by the seq2seq benchmarks; random data uses ids from kFirstWord on.
constexpr Index kPad = 0, kBos = 1, kEos = 2, kFirstWord = 3;

/// (B, T) ids uniform in [kFirstWord, vocab): no padding.
inline eigenformer::IdMatrix random_ids(Index B, Index T, Index vocab, std::uint64_t seed) {
  eigenformer::Rng rng(seed);
  eigenformer::IdMatrix ids(B, T);
  for (Index i = 0; i < B; ++i)
    for (Index j = 0; j < T; ++j) ids(i, j) = kFirstWord + rng.index(vocab - kFirstWord);
  return ids;
}

/// The encoder-decoder of BM_seq2seq_train_step and BM_greedy_decode (compare_pytorch.py builds the
/// same one in PyTorch): d_model 256, 4 heads, 3 + 3 layers, d_ff 1024, vocabularies of 1000,
/// dropout 0.1, post-LayerNorm, ReLU, sinusoidal positions, untied output projection.
inline eigenformer::TransformerConfig seq2seq_config() {
  eigenformer::TransformerConfig c;
  c.src_vocab = 1000;
  c.tgt_vocab = 1000;
  c.d_model = 256;
  c.n_heads = 4;
  c.n_encoder_layers = 3;
  c.n_decoder_layers = 3;
  c.d_ff = 1024;
  c.dropout = 0.1;
  c.max_len = 512;
  c.pad_id = kPad;
  return c;
}

}  // namespace bench
