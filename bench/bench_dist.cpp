// Data-parallel training throughput on MPI (dist/): the seq2seq train step of bench_model
// (common.hpp's encoder-decoder, a global batch of 32 pairs of 32-token sequences, dropout on,
// Adam), its batch split over the ranks of mpirun. Run it in the three layouts of
// bench/run_dist.sh (1 process x 1 thread, 2 processes x 1 thread, 1 process x 2 threads).
//  - BM_dist_seq2seq_train_step/<bucket MB>: one data-parallel step: shard, forward, global
//    cross-entropy, backward with the gradient buckets summed (MPI_Iallreduce) while backward
//    goes on, global clipping, Adam step. Counters: tokens/s, the GLOBAL batch's target tokens per
//    wall-clock second; comm_exposed, the share of step time spent waiting for gradient sums
//    that backward did not hide (GradientReducer::finish); ranks and buckets.
// Every rank runs the same fixed number of iterations (collectives must pair up); only rank 0
// reports.
#include <benchmark/benchmark.h>

#include <eigenformer/dist/data_parallel.hpp>

#include "common.hpp"
#include "eigenformer/model/transformer.hpp"
#include "eigenformer/train/loss.hpp"
#include "eigenformer/train/optim.hpp"

namespace {

namespace ef = eigenformer;
namespace dist = eigenformer::dist;
using ef::IdMatrix;
using ef::Index;

constexpr Index kBatch = 32, kSrcLen = 32, kTgtLen = 32;
const dist::Communicator* world = nullptr;

void BM_dist_seq2seq_train_step(benchmark::State& state) {
  const dist::Communicator& comm = *world;
  const ef::TransformerConfig config = bench::seq2seq_config();
  ef::Rng rng(1);
  ef::Transformer<float> model(config, rng);
  model.train();
  dist::DataParallel<float> dp(comm, model, {std::size_t(state.range(0)) << 20});
  ef::Adam<float> opt(model.parameters(), 1e-4);
  ef::StepGuard<float> guard(ef::NonFinitePolicy::skip);
  const IdMatrix src = bench::random_ids(kBatch, kSrcLen, config.src_vocab, 2);  // (B, S)
  const IdMatrix tgt = bench::random_ids(kBatch, kTgtLen, config.tgt_vocab, 3);  // (B, T)
  const dist::Shard shard = dp.shard(kBatch);
  const IdMatrix my_src = dist::rows(src, shard), my_tgt = dist::rows(tgt, shard);
  const IdMatrix my_tgt_in = ef::shift_right(my_tgt, bench::kBos);
  dist::key_dropout(model, shard);
  ef::Transformer<float>::Cache cache;
  ef::CrossEntropyCache<float> ce;
  ef::Matrix<float> dlogits;  // (b*T, V), reused every step
  double loss = 0, waited = 0;
  auto step = [&] {
    opt.zero_grad();
    const ef::Matrix<float>& logits = model.forward(my_src, my_tgt_in, cache);  // (b*T, V)
    const double l = dp.cross_entropy(ce, dlogits, logits, my_tgt, {bench::kPad, 0.0});
    model.backward(dlogits, cache, dp.begin_backward(model));
    const double w = dp.end_backward();
    if (dp.check_step(guard, l)) {
      dp.clip_grad_norm(1.0f);
      opt.step();
    }
    loss = l;
    return w;
  };
  step();  // warm-up, untimed
  comm.barrier();
  const bench::WallTimer timer;
  for (auto _ : state) {
    waited += step();
    benchmark::DoNotOptimize(loss);
  }
  comm.barrier();
  const double seconds = timer.seconds();
  state.counters["tokens/s"] = bench::wall_rate(state, double(kBatch * kTgtLen), seconds);
  state.counters["comm_exposed"] = seconds > 0 ? waited / seconds : 0.0;
  state.counters["ranks"] = comm.size();
  state.counters["loss"] = loss;
}

/// Rank 0 prints; the others' reports go nowhere.
class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

// A fixed iteration count: Google Benchmark would otherwise pick one per rank from its timings.
BENCHMARK(BM_dist_seq2seq_train_step)
    ->Arg(25)
    ->Arg(4)
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  dist::Environment env(argc, argv);
  const dist::Communicator comm;
  world = &comm;
  return dist::run_or_abort(comm, [&] {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    bench::add_thread_context();
    benchmark::AddCustomContext("mpi_ranks", std::to_string(comm.size()));
    NullReporter quiet;
    if (comm.is_root())
      benchmark::RunSpecifiedBenchmarks();
    else
      benchmark::RunSpecifiedBenchmarks(&quiet);
    benchmark::Shutdown();
    return 0;
  });
}
