// The machine's float multiply-add peak, the ceiling for every GEMM-bound benchmark here: each
// thread runs 10 independent chains of Eigen's widest float packet (8 lanes with AVX2, 16 with
// AVX-512) through fused multiply-adds, enough chains to hide the FMA latency on both pipes of
// current x86 cores. FLOP/s counts 2 per lane per multiply-add, summed over the threads
// (OMP_NUM_THREADS, see common.hpp), per wall-clock second.
//
// Dividing a case's FLOP/s by this gives its share of the peak; a target time below the case's
// FLOP count / this peak cannot be met by any float implementation on the machine.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "common.hpp"

namespace {

constexpr int kLanes = Eigen::internal::packet_traits<float>::size;
constexpr long kSteps = 1 << 22;  // multiply-adds per chain per iteration

void BM_peak_fma(benchmark::State& state) {
  const int threads = eigenformer::max_threads();
  float sink = 0;
  const bench::WallTimer timer;
  for (auto _ : state) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : sink)
#endif
    for (int t = 0; t < threads; ++t) sink += bench::fma_chains(kSteps);
    benchmark::DoNotOptimize(sink);
  }
  const double flop = 2.0 * kLanes * 10.0 * double(kSteps) * threads;
  state.counters["FLOP/s"] = bench::wall_rate(state, flop, timer.seconds());
  state.counters["lanes"] = kLanes;
}

}  // namespace

BENCHMARK(BM_peak_fma)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
