// Shared helpers of the benchmark programs: the thread count recorded in the output, random inputs
// and the seq2seq model used by bench_model.cpp.
//
// Threads: every case runs with the same number of threads, the one OpenMP gives, i.e. the
// environment variable OMP_NUM_THREADS (OpenMP's default, all cores, when it is unset). It drives
// both eigenformer's own OpenMP loops and Eigen's GEMM (Eigen is compiled with OpenMP here). The
// benchmarks never call omp_set_num_threads or Eigen::setNbThreads.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <Eigen/Core>

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
#ifdef EIGEN_USE_BLAS
  benchmark::AddCustomContext("eigen_gemm", "BLAS (EIGEN_USE_BLAS)");
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
