// Data-parallel training throughput on MPI (dist/): the seq2seq train step of bench_model
// (common.hpp's encoder-decoder, a global batch of 32 pairs of 32-token sequences, dropout on,
// Adam), its batch split over the ranks of mpirun. Run it in the three layouts of
// bench/run_dist.sh (1 process x 1 thread, 2 processes x 1 thread, 1 process x 2 threads).
//  - BM_dist_seq2seq_train_step/<bucket MB>: one data-parallel step: shard, forward, this rank's
//    share of the global cross-entropy (cross_entropy_share: no collective), backward with the
//    gradient buckets summed (MPI_Iallreduce) while backward goes on, the sums checked and
//    measured for clipping, each rank a part of them, with the loss's shares summed
//    (finish_gradients: the step's one wait for the other ranks); then the Adam step, which zeroes
//    the gradients for the next step as it reads them (step_and_zero_grad). Counters: tokens/s, the
//    GLOBAL batch's target tokens per wall-clock second; comm_exposed, the share of step time spent
//    waiting in GradientReducer::finish: for the slowest rank to end backward, and for the
//    gradient sums that backward did not hide; ranks and buckets.
//  - BM_dist_seq2seq_compute_only: each rank's share of that step with nothing summed: the
//    forward and backward of its rows, its own cross-entropy, the non-finite check, clipping and
//    the Adam step (the same step through a DataParallel of the rank alone, on MPI_COMM_SELF),
//    with no communication between the barriers that start and end the timing. Its
//    tokens/s (the global batch's, as above) is the ceiling of the data-parallel step on this
//    machine: what it would reach if summing the gradients cost nothing (nearly: alone, a rank
//    measures every gradient, where in the data-parallel step it measures its share).
//  - BM_dist_seq2seq_compute_synced: the same with a barrier after backward, where the
//    data-parallel step waits for the other ranks: what waiting for the slowest rank costs, apart
//    from moving the gradients.
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

/// One rank's part of the seq2seq step: the model (same seed everywhere), Adam, and this rank's
/// rows of the global batch, with the caches a training loop keeps.
struct RankWork {
  ef::TransformerConfig config = bench::seq2seq_config();
  ef::Rng rng{1};
  ef::Transformer<float> model{config, rng};
  ef::Adam<float> opt{model.parameters(), 1e-4};
  ef::StepGuard<float> guard{ef::NonFinitePolicy::skip};
  dist::Shard shard;
  IdMatrix src, tgt, tgt_in;  // this rank's rows: (b, S), (b, T), (b, T)
  ef::CrossEntropyOptions loss_options{bench::kPad, 0.0};
  double divisor = 0;      // the global batch's counted targets (dist::loss_divisor)
  double own_divisor = 0;  // this rank's rows' (the step alone normalises by its own)
  ef::Transformer<float>::Cache cache;
  ef::CrossEntropyCache<float> ce;
  ef::Matrix<float> dlogits;  // (b*T, V), reused every step

  explicit RankWork(const dist::Communicator& comm)
      : shard(dist::shard_of(kBatch, comm.rank(), comm.size())) {
    model.train();
    const IdMatrix all_src = bench::random_ids(kBatch, kSrcLen, config.src_vocab, 2);  // (B, S)
    const IdMatrix all_tgt = bench::random_ids(kBatch, kTgtLen, config.tgt_vocab, 3);  // (B, T)
    src = dist::rows(all_src, shard);
    tgt = dist::rows(all_tgt, shard);
    tgt_in = ef::shift_right(tgt, bench::kBos);
    divisor = dist::loss_divisor(all_tgt, loss_options);
    own_divisor = dist::loss_divisor(tgt, loss_options);
    dist::key_dropout(model, shard);
  }

  /// The Adam step, which zeroes the gradients for the next backward as it reads them. (A new
  /// model's gradients are zero, and a step the guard skips zeroes them.)
  void step_or_skip(bool ok) {
    if (ok) opt.step_and_zero_grad();
  }
};

/// Times state's iterations of step() on every rank between two barriers, after one untimed
/// step. step() returns the seconds it waited for communication. Sets the tokens/s, comm_exposed
/// (the timed steps' waits over their wall-clock time) and ranks counters.
template <class Step>
void time_steps(benchmark::State& state, const dist::Communicator& comm, Step&& step) {
  step();  // warm-up
  comm.barrier();
  const bench::WallTimer timer;
  double waited = 0;
  for (auto _ : state) waited += step();
  comm.barrier();
  const double seconds = timer.seconds();
  state.counters["tokens/s"] = bench::wall_rate(state, double(kBatch * kTgtLen), seconds);
  state.counters["comm_exposed"] = seconds > 0 ? waited / seconds : 0.0;
  state.counters["ranks"] = comm.size();
}

void BM_dist_seq2seq_train_step(benchmark::State& state) {
  const dist::Communicator& comm = *world;
  RankWork w(comm);
  dist::DataParallel<float> dp(comm, w.model, {std::size_t(state.range(0)) << 20});
  double loss = 0;
  time_steps(state, comm, [&] {
    const ef::Matrix<float>& logits = w.model.forward(w.src, w.tgt_in, w.cache);  // (b*T, V)
    const dist::LossShare share =
        dp.cross_entropy_share(w.ce, w.dlogits, logits, w.tgt, w.divisor, w.loss_options);
    w.model.backward(w.dlogits, w.cache, dp.begin_backward(w.model));
    const auto finished = dp.finish_gradients(w.guard, share, 1.0f);  // sum, check, clip
    loss = finished.loss;
    w.step_or_skip(finished.ok);
    benchmark::DoNotOptimize(loss);
    return finished.waited;
  });
  state.counters["loss"] = loss;
}

/// Each rank's share of the data-parallel step with nothing summed: the same step through a
/// DataParallel of this process alone (MPI_COMM_SELF), so that its loss, check and clipping do
/// what they do in the data-parallel step, without the other ranks. With synced, the ranks also
/// wait for each other where the data-parallel step does (a barrier after backward, where it
/// waits for the last gradient sums), so that the cost of that wait alone shows.
void compute_steps(benchmark::State& state, bool synced) {
  const dist::Communicator& comm = *world;
  RankWork w(comm);
  const dist::Communicator self(MPI_COMM_SELF);
  dist::DataParallel<float> alone(self, w.model);
  double loss = 0;
  time_steps(state, comm, [&] {
    const ef::Matrix<float>& logits = w.model.forward(w.src, w.tgt_in, w.cache);  // (b*T, V)
    const dist::LossShare share =
        alone.cross_entropy_share(w.ce, w.dlogits, logits, w.tgt, w.own_divisor, w.loss_options);
    w.model.backward(w.dlogits, w.cache, alone.begin_backward(w.model));
    if (synced) comm.barrier();
    const auto finished = alone.finish_gradients(w.guard, share, 1.0f);
    loss = finished.loss;
    w.step_or_skip(finished.ok);
    benchmark::DoNotOptimize(loss);
    return 0.0;  // nothing to wait for
  });
}

void BM_dist_seq2seq_compute_only(benchmark::State& state) { compute_steps(state, false); }
void BM_dist_seq2seq_compute_synced(benchmark::State& state) { compute_steps(state, true); }

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
BENCHMARK(BM_dist_seq2seq_compute_only)->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_dist_seq2seq_compute_synced)->Iterations(10)->Unit(benchmark::kMillisecond);

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
