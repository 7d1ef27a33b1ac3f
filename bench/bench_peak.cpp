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

using Packet = Eigen::internal::packet_traits<float>::type;
constexpr int kLanes = Eigen::internal::packet_traits<float>::size;
constexpr long kSteps = 1 << 22;  // multiply-adds per chain per iteration

/// 10 chains of kSteps multiply-adds; returns a lane sum so the work cannot be dropped.
float fma_chains() {
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
  for (long s = 0; s < kSteps; ++s) {
    a0 = pmadd(a0, m, c), a1 = pmadd(a1, m, c), a2 = pmadd(a2, m, c), a3 = pmadd(a3, m, c);
    a4 = pmadd(a4, m, c), a5 = pmadd(a5, m, c), a6 = pmadd(a6, m, c), a7 = pmadd(a7, m, c);
    a8 = pmadd(a8, m, c), a9 = pmadd(a9, m, c);
  }
  const Packet sum = padd(padd(padd(a0, a1), padd(a2, a3)),
                          padd(padd(padd(a4, a5), padd(a6, a7)), padd(a8, a9)));
  return Eigen::internal::predux(sum);
}

void BM_peak_fma(benchmark::State& state) {
  const int threads = eigenformer::max_threads();
  float sink = 0;
  const bench::WallTimer timer;
  for (auto _ : state) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : sink)
#endif
    for (int t = 0; t < threads; ++t) sink += fma_chains();
    benchmark::DoNotOptimize(sink);
  }
  const double flop = 2.0 * kLanes * 10.0 * double(kSteps) * threads;
  state.counters["FLOP/s"] = bench::wall_rate(state, flop, timer.seconds());
  state.counters["lanes"] = kLanes;
}

}  // namespace

BENCHMARK(BM_peak_fma)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
