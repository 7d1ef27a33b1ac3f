// Data-parallel training on MPI (dist/): run under mpirun on 1, 2 and 3 processes (ctest
// mpi_data_parallel_np<N>). Every rank runs every case; a case's collectives pair up because
// every rank runs the same cases in the same order. The fault cases are skipped unless asked for
// by name (ctest mpi_rank_throws, mpi_rank_killed): they end the job on purpose.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <eigenformer/dist/data_parallel.hpp>
#include <eigenformer/eigenformer.hpp>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "model_cases.hpp"

namespace ef = eigenformer;
namespace dist = eigenformer::dist;
using ef::IdMatrix;
using ef::Index;

namespace {

const dist::Communicator* world = nullptr;
const dist::Communicator& comm() { return *world; }

constexpr int kSteps = 20;
constexpr Index kBatch = 11;  // uneven on 2 and 3 ranks (6 + 5, 4 + 4 + 3)
constexpr Index kBos = 1;
constexpr std::uint64_t kSeed = 7;

/// The tiny translate-shaped model with dropout on: encoder-decoder, padded sources and targets.
ef::TransformerConfig config() {
  ef::TransformerConfig c = eftest::tiny_config();
  c.dropout = 0.1;
  return c;
}

/// Global batch of step: kBatch padded rows of ids >= 2 (0 pads, 1 is BOS), lengths 2..7 / 2..6.
std::pair<IdMatrix, IdMatrix> global_batch(int step) {
  ef::Rng rng(1000 + static_cast<std::uint64_t>(step));
  const ef::TransformerConfig c = config();
  IdMatrix src = IdMatrix::Zero(kBatch, 7), tgt = IdMatrix::Zero(kBatch, 6);
  for (Index b = 0; b < kBatch; ++b) {
    const Index s_len = 2 + rng.index(6), t_len = 2 + rng.index(5);
    for (Index j = 0; j < s_len; ++j) src(b, j) = 2 + rng.index(c.src_vocab - 2);
    for (Index j = 0; j < t_len; ++j) tgt(b, j) = 2 + rng.index(c.tgt_vocab - 2);
  }
  return {src, tgt};
}

struct Result {
  std::vector<double> losses;
  std::vector<ef::Matrix<float>> weights;
};

/// AdamW as the translate example has it, or SGD with momentum (see check_same).
enum class Optim { adamw, sgd };

/// The optimizer, the translate example's schedule, a skipping guard.
struct Training {
  std::unique_ptr<ef::Optimizer<float>> opt;
  ef::CosineSchedule<float> schedule{2e-3f, 3, kSteps, 1e-4f};
  ef::StepGuard<float> guard{ef::NonFinitePolicy::skip};
  Training(const ef::ParamList<float>& params, Optim kind) {
    if (kind == Optim::adamw)
      opt = std::make_unique<ef::AdamW<float>>(params, 2e-3, 0.9, 0.98, 1e-9, 0.01);
    else
      opt = std::make_unique<ef::SGD<float>>(params, 2e-3, 0.9);
  }
};

Result weights_of(ef::Transformer<float>& model, std::vector<double> losses) {
  Result r{std::move(losses), {}};
  for (const auto& p : model.parameters()) r.weights.push_back(p.param->value);
  return r;
}

/// One process on the whole batch, without MPI: the reference.
Result train_alone(Optim kind) {
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(config(), rng);
  const auto params = model.parameters();
  Training t(params, kind);
  std::vector<double> losses;
  for (int step = 0; step < kSteps; ++step) {
    const auto [src, tgt] = global_batch(step);
    ef::Transformer<float>::Cache cache;
    ef::CrossEntropyCache<float> ce;
    const auto logits = model.forward(src, ef::shift_right(tgt, kBos), cache);
    const float loss = ef::cross_entropy_forward(ce, logits, tgt, {0});
    t.opt->zero_grad();
    model.backward(ef::cross_entropy_backward(ce), cache);
    losses.push_back(loss);
    if (!t.guard.check(loss, params)) continue;
    ef::clip_grad_norm(params, 1.0f);
    ef::apply_schedule(*t.opt, t.schedule);
    t.opt->step();
  }
  return weights_of(model, losses);
}

/// Step step's forward and backward on this rank's rows of the global batch, the gradients zeroed
/// first (unless zero is false) and handed to dp's reducer as backward goes. Returns the global
/// loss (DataParallel::cross_entropy) or, with share, this rank's share of it
/// (cross_entropy_share, no collective).
double shard_forward_backward(ef::Transformer<float>& model, dist::DataParallel<float>& dp,
                              int step, bool zero = true, bool share = false) {
  const auto [src, tgt] = global_batch(step);
  const dist::Shard s = dp.shard(src.rows());
  dist::key_dropout(model, s);
  ef::Transformer<float>::Cache cache;
  ef::CrossEntropyCache<float> ce;
  const IdMatrix my_tgt = dist::rows(tgt, s);
  const auto logits = model.forward(dist::rows(src, s), ef::shift_right(my_tgt, kBos), cache);
  ef::Matrix<float> dlogits;
  const double loss =
      share ? dp.cross_entropy_share(ce, dlogits, logits, my_tgt, dist::loss_divisor(tgt, {0}), {0})
                  .value
            : dp.cross_entropy(ce, dlogits, logits, my_tgt, {0});
  if (zero) model.zero_grad();
  model.backward(dlogits, cache, dp.begin_backward(model));
  return loss;
}

/// The same run, data-parallel over comm's ranks. Each rank builds its model from its own seed:
/// DataParallel copies rank 0's weights and dropout generators. With fused, the step takes the
/// loss's share (cross_entropy_share) and ends with finish_gradients, which sums the shares, and
/// step_and_zero_grad (the gradients in the buckets zeroed by the optimizer, or by the guard's
/// skip); else it takes the global loss (cross_entropy) and ends with end_backward, check_step,
/// clip_grad_norm, step and zero_grad before the next backward.
Result train_data_parallel(Optim kind, std::size_t bucket_bytes, bool fused = false) {
  ef::Rng rng(kSeed + 1000 * static_cast<std::uint64_t>(comm().rank()));
  ef::Transformer<float> model(config(), rng);
  dist::DataParallel<float> dp(comm(), model, {bucket_bytes});
  Training t(model.parameters(), kind);
  std::vector<double> losses;
  for (int step = 0; step < kSteps; ++step) {
    const double loss = shard_forward_backward(model, dp, step, !fused || step == 0, fused);
    if (fused) {
      const auto done = dp.finish_gradients(t.guard, dist::LossShare{loss}, 1.0f);
      losses.push_back(done.loss);
      if (!done.ok) continue;
    } else {
      losses.push_back(loss);
      dp.end_backward();
      if (!dp.check_step(t.guard, loss)) continue;
      dp.clip_grad_norm(1.0f);
    }
    ef::apply_schedule(*t.opt, t.schedule);
    if (fused)
      t.opt->step_and_zero_grad();
    else
      t.opt->step();
  }
  return weights_of(model, losses);
}

/// |a - b| <= 1e-5 |a| for the losses, and per parameter in the Frobenius norm (plus 1e-7 for
/// parameters that stay near 0).
/// Except, under AdamW, the key projections' biases: their exact gradient is 0 (adding a constant
/// to every key of a query shifts its scores alike, which softmax ignores), so what backward
/// computes is rounding noise, which differs with the order of summation; Adam divides it by its
/// own size and moves the bias by about lr a step whatever the noise: the bias is noise in every
/// run. SGD moves it by lr times the noise, and checks it with the rest.
void check_same(const Result& got, const Result& want, Optim kind,
                const ef::ParamList<float>& names) {
  REQUIRE(got.losses.size() == want.losses.size());
  for (std::size_t i = 0; i < got.losses.size(); ++i) {
    INFO("step " << i << " on " << comm().size() << " ranks");
    CHECK(std::abs(got.losses[i] - want.losses[i]) <= 1e-5 * std::abs(want.losses[i]));
  }
  REQUIRE(got.weights.size() == want.weights.size());
  for (std::size_t i = 0; i < got.weights.size(); ++i) {
    const std::string& name = names[i].name;
    if (kind == Optim::adamw && name.find("k_proj.bias") != std::string::npos) continue;
    INFO(name << " on " << comm().size() << " ranks");
    CHECK((got.weights[i] - want.weights[i]).norm() <= 1e-5 * want.weights[i].norm() + 1e-7);
  }
}

}  // namespace

TEST_CASE("20 steps on N ranks give one process's losses and weights, dropout on") {
  ef::Rng rng(0);
  ef::Transformer<float> model(config(), rng);
  const ef::ParamList<float> names = model.parameters();
  for (const Optim kind : {Optim::adamw, Optim::sgd}) {
    CAPTURE(kind == Optim::adamw ? "AdamW" : "SGD");
    const Result alone = train_alone(kind);
    // One bucket (the default 25 MB), then many of 256 bytes, started during backward.
    check_same(train_data_parallel(kind, 25 << 20), alone, kind, names);
    check_same(train_data_parallel(kind, 256), alone, kind, names);
    check_same(train_data_parallel(kind, 256, true), alone, kind, names);  // shares, finishing
  }
}

namespace {

/// store's parameters, named p0, p1, ... in order.
ef::ParamList<float> named_p(std::vector<ef::Param<float>>& store) {
  ef::ParamList<float> params;
  for (std::size_t i = 0; i < store.size(); ++i)
    params.push_back({"p" + std::to_string(i), &store[i]});
  return params;
}

/// A data-parallel model after one step's backward on the first global batch, gradients not yet
/// summed: dp.end_backward() or dp.finish_gradients() comes next.
struct Backward {
  ef::Rng rng{kSeed};
  ef::Transformer<float> model{config(), rng};
  dist::DataParallel<float> dp{comm(), model, {256}};  // many buckets
  double loss;  // the global loss or, with share, this rank's share of it
  explicit Backward(bool share = false) : loss(shard_forward_backward(model, dp, 0, true, share)) {}
};

}  // namespace

TEST_CASE("finish_gradients gives what end_backward, check_step and clip_grad_norm give") {
  for (const float max_norm : {0.01f, 1e6f}) {  // clipping, and not
    CAPTURE(max_norm);
    Backward separate, fused;
    ef::StepGuard<float> guard_separate(ef::NonFinitePolicy::skip), guard_fused = guard_separate;
    separate.dp.end_backward();
    REQUIRE(separate.dp.check_step(guard_separate, separate.loss));
    const float norm = separate.dp.clip_grad_norm(max_norm);
    const auto done = fused.dp.finish_gradients(guard_fused, fused.loss, max_norm);
    CHECK(done.ok);
    CHECK(done.waited >= 0.0);
    CHECK(guard_fused.steps() == 1);
    // The same norm and gradients, up to the order in which the squares were summed.
    CHECK(std::abs(done.norm - norm) <= 1e-6f * norm);
    const auto a = separate.model.parameters(), b = fused.model.parameters();
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name);
      const auto& want = a[i].param->grad;
      CHECK((b[i].param->grad - want).norm() <= 1e-6f * want.norm() + 1e-12f);
    }
  }
}

namespace {

/// Checks dp.cross_entropy and dp.cross_entropy_share on this rank's rows of the global logits
/// (B*T, V) and targets (B, T) against one process's cross-entropy of the whole batch: the same
/// divisor, loss and dlogits rows.
void check_loss_over_ranks(dist::DataParallel<float>& dp, const ef::Matrix<float>& logits,
                           const IdMatrix& tgt, const ef::CrossEntropyOptions& options) {
  CAPTURE(static_cast<int>(options.reduction));
  CAPTURE(options.class_weights.size());
  const Index T = tgt.cols();
  const dist::Shard s = dp.shard(tgt.rows());
  const IdMatrix my_tgt = dist::rows(tgt, s);
  const ef::Matrix<float> my_logits = logits.middleRows(s.begin * T, s.count * T);
  ef::CrossEntropyCache<float> alone, ce;
  const double want = ef::cross_entropy_forward(alone, logits, tgt, options);
  const ef::Matrix<float> want_d =
      ef::cross_entropy_backward(alone).middleRows(s.begin * T, s.count * T);
  const double divisor = dist::loss_divisor(tgt, options);
  CHECK(static_cast<float>(divisor) == alone.divisor);  // summed alike (detail::counted_weight)
  const auto [loss, dlogits] = dp.cross_entropy(ce, my_logits, my_tgt, options);
  CHECK(loss == doctest::Approx(want).epsilon(1e-6));
  CHECK((dlogits - want_d).norm() <= 1e-6f * want_d.norm());
  ef::Matrix<float> share_d;
  const dist::LossShare share =
      dp.cross_entropy_share(ce, share_d, my_logits, my_tgt, divisor, options);
  CHECK(comm().sum(share.value) == doctest::Approx(want).epsilon(1e-6));
  CHECK((share_d - want_d).norm() <= 1e-6f * want_d.norm());
  if (comm().size() == 1) {  // the same divisor: bit for bit
    CHECK(share_d == want_d);
    CHECK(share.value == want);
    CHECK(loss == want);
  }
}

}  // namespace

TEST_CASE("the loss over ranks is one process's on the global batch: weights, smoothing, sum") {
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(config(), rng);
  dist::DataParallel<float> dp(comm(), model);
  const IdMatrix tgt = global_batch(0).second;  // (B, T), 0 pads
  const Index V = config().tgt_vocab;
  ef::Matrix<float> logits(tgt.size(), V);  // the global batch's, the same on every rank
  for (Index i = 0; i < logits.rows(); ++i)
    for (Index j = 0; j < V; ++j)
      logits(i, j) = std::sin(0.7f * static_cast<float>(i) + 1.3f * static_cast<float>(j));
  Eigen::VectorXd weights(V);
  for (Index j = 0; j < V; ++j) weights(j) = 0.5 + 0.1 * static_cast<double>(j % 7);
  using ef::CrossEntropyOptions;
  using ef::LossReduction;
  for (const CrossEntropyOptions& options :
       {CrossEntropyOptions(0), CrossEntropyOptions(0, 0.1, LossReduction::mean, weights),
        CrossEntropyOptions(0, 0.1, LossReduction::sum, weights),
        CrossEntropyOptions(0, 0.0, LossReduction::none)})
    check_loss_over_ranks(dp, logits, tgt, options);

  // The last rank's targets all of a class of weight 0: its divisor is 0, yet label smoothing
  // gives its rows a loss, which one process divides by the global divisor.
  IdMatrix zero_tgt = tgt;
  const dist::Shard last = dist::shard_of(kBatch, comm().size() - 1, comm().size());
  for (Index i = last.begin; i < last.begin + last.count; ++i)
    for (Index j = 0; j < zero_tgt.cols(); ++j)
      if (zero_tgt(i, j) != 0) zero_tgt(i, j) = 5;
  Eigen::VectorXd zero_weight = weights;
  zero_weight(5) = 0.0;
  check_loss_over_ranks(dp, logits, zero_tgt,
                        CrossEntropyOptions(0, 0.1, LossReduction::mean, zero_weight));

  // 1,000 targets of weight 0.1, whose float running sum drifts (to 99.99905): the divisors, and
  // on one rank the share path, still match one process bit for bit.
  const IdMatrix tenth = IdMatrix::Constant(100, 10, 3);
  Eigen::VectorXd tenth_weight = Eigen::VectorXd::Ones(V);
  tenth_weight(3) = 0.1;
  check_loss_over_ranks(dp, ef::Matrix<float>::Zero(tenth.size(), V), tenth,
                        CrossEntropyOptions(0, 0.0, LossReduction::mean, tenth_weight));
}

TEST_CASE("finish_gradients given the loss's shares: the same step, the global loss summed") {
  for (const float max_norm : {0.01f, 1e6f}) {  // clipping, and not
    CAPTURE(max_norm);
    Backward global, shared(true);
    ef::StepGuard<float> guard_global(ef::NonFinitePolicy::skip), guard_shared = guard_global;
    const auto want = global.dp.finish_gradients(guard_global, global.loss, max_norm);
    const auto got =
        shared.dp.finish_gradients(guard_shared, dist::LossShare{shared.loss}, max_norm);
    REQUIRE(got.ok);
    CHECK(want.loss == global.loss);
    CHECK(got.loss == doctest::Approx(global.loss).epsilon(1e-12));
    // The same divisor, so the same dlogits, gradients and norm, bit for bit.
    CHECK(got.norm == want.norm);
    const auto a = global.model.parameters(), b = shared.model.parameters();
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name);
      CHECK(b[i].param->grad == a[i].param->grad);
    }
  }
}

TEST_CASE("finish_gradients: a non-finite loss share on one rank skips or stops every rank") {
  const bool last = comm().rank() == comm().size() - 1;
  {
    Backward w(true);
    ef::StepGuard<float> guard(ef::NonFinitePolicy::skip);
    const auto done =
        w.dp.finish_gradients(guard, dist::LossShare{last ? std::nan("") : w.loss}, 1.0f);
    CHECK_FALSE(done.ok);
    CHECK(std::isnan(done.loss));
    CHECK(guard.skipped() == 1);
  }
  Backward w(true);
  ef::StepGuard<float> guard(ef::NonFinitePolicy::stop);
  CHECK_THROWS_WITH_AS(
      w.dp.finish_gradients(guard, dist::LossShare{last ? std::nan("") : w.loss}, 1.0f),
      doctest::Contains("DataParallel::finish_gradients: step 1: loss is nan"), ef::NonFiniteError);
}

TEST_CASE("finish_gradients: a non-finite loss on one rank skips the step on every rank") {
  Backward w;
  ef::StepGuard<float> guard(ef::NonFinitePolicy::skip);
  const double loss = comm().rank() == comm().size() - 1 ? std::nan("") : w.loss;
  const auto done = w.dp.finish_gradients(guard, loss, 1.0f);
  CHECK_FALSE(done.ok);
  CHECK(guard.skipped() == 1);
  for (const auto& p : w.model.parameters()) CHECK(p.param->grad.isZero(0));  // skip zeroes
}

TEST_CASE("finish_gradients: a non-finite loss on one rank stops every rank under stop") {
  Backward w;
  ef::StepGuard<float> guard(ef::NonFinitePolicy::stop);
  const double loss = comm().rank() == 0 ? std::nan("") : w.loss;
  CHECK_THROWS_WITH_AS(w.dp.finish_gradients(guard, loss, 1.0f),
                       doctest::Contains("DataParallel::finish_gradients: step 1: loss is nan"),
                       ef::NonFiniteError);
}

TEST_CASE("finish_gradients: a non-finite gradient on one rank skips or stops every rank") {
  // In the first parameter, which rank 0 measures, and in the last, which the last rank measures
  // (detail::measure_share).
  for (const bool in_first : {true, false}) {
    for (const float bad : {NAN, INFINITY}) {
      for (const auto policy : {ef::NonFinitePolicy::skip, ef::NonFinitePolicy::stop}) {
        CAPTURE(in_first);
        CAPTURE(bad);
        ef::Rng rng(kSeed);
        ef::Transformer<float> model(config(), rng);
        dist::DataParallel<float> dp(comm(), model);
        ef::StepGuard<float> guard(policy);
        model.zero_grad();
        (void)dp.begin_backward(model);  // no backward: no bucket has started, none reads yet
        const auto params = model.parameters();
        const std::string name = in_first ? params.front().name : params.back().name;
        const auto first = dist::detail::measure_share(params, 0, comm().size());
        const auto last = dist::detail::measure_share(params, comm().size() - 1, comm().size());
        REQUIRE(first.first == 0);
        REQUIRE(first.second > 0);
        REQUIRE(last.second == params.size());
        REQUIRE(last.first < last.second);
        if (comm().rank() == comm().size() - 1)  // in every rank's sum
          ef::param_named(params, name).grad(0, 0) = bad;
        if (policy == ef::NonFinitePolicy::stop) {
          try {
            (void)dp.finish_gradients(guard, 1.0, 1.0f);
            FAIL("no NonFiniteError");
          } catch (const ef::NonFiniteError& e) {
            CHECK(e.param() == name);
          }
          continue;
        }
        CHECK_FALSE(dp.finish_gradients(guard, 1.0, 1.0f).ok);
        CHECK(guard.last().param == name);
        for (const auto& p : model.parameters()) CHECK(p.param->grad.isZero(0));
      }
    }
  }
}

TEST_CASE("detail::measure_share: contiguous shares in rank order, balanced by entries") {
  std::vector<ef::Param<float>> store;
  for (const ef::Index n : {10, 1, 1, 1, 10, 3, 0}) store.emplace_back(n, 1);  // one empty
  const ef::ParamList<float> params = named_p(store);
  using Share = std::pair<std::size_t, std::size_t>;
  CHECK(dist::detail::measure_share(params, 0, 1) == Share{0, 7});
  CHECK(dist::detail::measure_share(params, 0, 2) == Share{0, 4});  // 13 entries each
  CHECK(dist::detail::measure_share(params, 1, 2) == Share{4, 7});
  CHECK(dist::detail::measure_share(params, 1, 3) == Share{1, 4});
  for (int size = 1; size <= 9; ++size) {  // more ranks than parameters: some measure none
    CAPTURE(size);
    std::size_t next = 0;
    for (int rank = 0; rank < size; ++rank) {
      const Share s = dist::detail::measure_share(params, rank, size);
      CHECK(s.first <= s.second);
      if (s.first < s.second) CHECK(s.first == next);
      next = std::max(next, s.second);
    }
    CHECK(next == params.size());
  }
}

TEST_CASE("finish_gradients: the same norm and verdict on every rank, one measuring nothing") {
  // A source vocabulary of 4000 puts most entries in the first parameter: on 3 ranks its middle
  // falls in rank 1's share, rank 2 measures the rest, and rank 0 nothing.
  ef::TransformerConfig c = config();
  c.src_vocab = 4000;
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(c, rng);
  dist::DataParallel<float> dp(comm(), model);
  const auto params = model.parameters();
  const auto share = dist::detail::measure_share(params, comm().rank(), comm().size());
  if (comm().size() == 3 && comm().rank() == 0) REQUIRE(share.first == share.second);
  for (const bool nan_loss : {false, true}) {
    CAPTURE(nan_loss);
    model.zero_grad();
    (void)dp.begin_backward(model);  // no backward: no bucket has started, none reads yet
    for (const auto& p : params) p.param->grad(0, 0) = 1.0f;  // each sum: 1 per rank
    ef::StepGuard<float> guard(ef::NonFinitePolicy::skip);
    const double loss = nan_loss && comm().rank() == 0 ? std::nan("") : 1.0;  // rank 0's only
    const auto done = dp.finish_gradients(guard, loss, 1e6f);
    CHECK(done.ok == !nan_loss);
    if (nan_loss) {
      CHECK(guard.last().what.find("loss is nan") != std::string::npos);
      continue;
    }
    const double want = comm().size() * std::sqrt(static_cast<double>(params.size()));
    CHECK(std::abs(done.norm - want) <= 1e-6 * want);
  }
}

TEST_CASE("finish_gradients rejects a bad max_norm before doing anything") {
  Backward w;
  ef::StepGuard<float> guard;
  for (const float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity()})
    CHECK_THROWS_WITH_AS(w.dp.finish_gradients(guard, w.loss, bad),
                         doctest::Contains("DataParallel::finish_gradients: argument 'max_norm'"),
                         ef::ArgumentError);
  CHECK(guard.steps() == 0);
  w.dp.end_backward();  // the step is still open: nothing was finished
}

TEST_CASE("a gradient's squared norm and finiteness are measured in one pass") {
  ef::GradMatrix<float> g(3, 4);
  g = ef::Matrix<float>::Random(3, 4);
  dist::GradientMeasure m = dist::detail::measure(g);
  CHECK(m.finite);
  CHECK(m.squared_norm == ef::detail::squared_norm_double(g));
  CHECK(std::abs(m.squared_norm - g.cast<double>().squaredNorm()) <= 1e-12 * m.squared_norm);
  g(1, 2) = NAN;
  CHECK_FALSE(dist::detail::measure(g).finite);
  g(1, 2) = -INFINITY;
  CHECK_FALSE(dist::detail::measure(g).finite);
  // A double whose square overflows is still finite.
  ef::GradMatrix<double> big(2, 2);
  big.setConstant(1e200);
  m = dist::detail::measure(big);
  CHECK(std::isinf(m.squared_norm));
  CHECK(m.finite);
  big(0, 1) = NAN;
  CHECK_FALSE(dist::detail::measure(big).finite);
}

TEST_CASE("buckets follow backward's order, at most bucket_bytes and a quarter of the model") {
  // Parameters of 1 MB each (262144 floats), listed first to last; backward finishes the last.
  constexpr Index kMB = 262144;
  std::vector<ef::Param<float>> store(12, ef::Param<float>(kMB, 1));
  store.reserve(13);  // the pointers below stay valid
  ef::ParamList<float> params = named_p(store);
  // 12 MB against 25 MB buckets: a quarter (3 MB) each, so that the first starts early.
  const dist::GradientReducer<float> quarters(comm(), params);
  REQUIRE(quarters.buckets() == 4);
  CHECK(quarters.bucket_params(0) == std::vector<std::size_t>{0, 1, 2});  // p11, p10, p9
  // 2 MB buckets: below the quarter, so bucket_bytes rules.
  CHECK(dist::GradientReducer<float>(comm(), params, std::size_t(2) << 20).buckets() == 6);
  // A parameter larger than a bucket has one of its own; one listed twice counts once.
  store.emplace_back(5 * kMB, 1);
  params.insert(params.begin(), {"big", &store.back()});
  params.insert(params.begin(), params.front());
  const dist::GradientReducer<float> with_big(comm(), params, std::size_t(3) << 20);
  REQUIRE(with_big.buckets() == 5);
  CHECK(with_big.bucket_params(4).size() == 1);
  // Buckets are never made smaller than 1 MB for the quarter's sake: 3 MB gives 3, and a small
  // model one.
  params.assign({{"a", &store[0]}, {"b", &store[1]}, {"c", &store[2]}});
  CHECK(dist::GradientReducer<float>(comm(), params).buckets() == 3);
  ef::Param<float> small1(100, 10), small2(10, 1);
  params.assign({{"a", &small1}, {"b", &small2}});
  CHECK(dist::GradientReducer<float>(comm(), params).buckets() == 1);
}

TEST_CASE("buckets of megabytes, on 2 MB pages, sum every entry across ranks") {
  // Eight parameters of 1 MB and one of 4 KB: 8 MB of gradients, so buckets of a quarter,
  // 2 MB + 4 KB. Backward's order gives {p8, p7} (1 MB + 4 KB), {p6, p5}, {p4, p3}, {p2, p1}
  // (2 MB each) and {p0}, all on huge pages. On one rank nothing is sent and no buffer is made.
  std::vector<ef::Param<float>> store(8, ef::Param<float>(262144, 1));
  store.emplace_back(1, 1024);
  ef::ParamList<float> params = named_p(store);
  for (auto& p : store)  // entry k of rank r: k % 1000 + r, so that each sum is known
    for (Index k = 0; k < p.size(); ++k) p.grad.data()[k] = float(k % 1000 + comm().rank());
  dist::GradientReducer<float> reducer(comm(), params);
  REQUIRE(reducer.buckets() == 5);
  CHECK(reducer.bucket_params(0).size() == 2);
  CHECK(reducer.bucket_params(4).size() == 1);
  const ef::GradReady<float> ready = reducer.begin(params);
  for (std::size_t i = params.size(); i-- > 0;) ready({params[i]});  // as backward reports them
  reducer.finish();
  const int n = comm().size();
  Index wrong = 0;
  for (auto& p : store)
    for (Index k = 0; k < p.size(); ++k)
      wrong += p.grad.data()[k] != float(n * (k % 1000) + n * (n - 1) / 2);
  CHECK(wrong == 0);
}

TEST_CASE("gradients live in the buckets: summed in place, re-lent when replaced, kept after") {
  // Three (4, 5) gradients in one bucket, and one of 1 MB in a bucket of its own, whose buffers
  // are unmapped when freed. On one rank nothing is lent and nothing moves.
  std::vector<ef::Param<float>> store(3, ef::Param<float>(4, 5));
  store.emplace_back(262144, 1);
  ef::ParamList<float> params = named_p(store);
  const int n = comm().size(), rank = comm().rank();
  const auto fill = [&] {  // entry k of parameter i on rank r: 100 i + k + r
    for (std::size_t i = 0; i < store.size(); ++i)
      for (Index k = 0; k < store[i].size(); ++k)
        store[i].grad.data()[k] = float(100 * Index(i) + k + rank);
  };
  const auto wrong_sums = [&] {
    Index wrong = 0;
    for (std::size_t i = 0; i < store.size(); ++i)
      for (Index k = 0; k < store[i].size(); ++k)
        wrong += store[i].grad.data()[k] != float(n * (100 * Index(i) + k) + n * (n - 1) / 2);
    return wrong;
  };
  const auto step = [&](dist::GradientReducer<float>& reducer) {
    const ef::GradReady<float> ready = reducer.begin(params);
    ready(params);
    reducer.finish();
  };
  fill();
  auto reducer = std::make_unique<dist::GradientReducer<float>>(comm(), params, 1024);
  REQUIRE(reducer->buckets() == 2);
  for (const auto& p : store) CHECK(p.grad.lent() == (n > 1));
  for (int s = 0; s < 2; ++s) {  // the grads and sums buffers swap roles every step
    CAPTURE(s);
    if (s > 0) fill();  // written where the gradients now are: the last step's sums
    const float* before = store[0].grad.data();
    step(*reducer);
    CHECK(wrong_sums() == 0);
    CHECK((store[0].grad.data() != before) == (n > 1));  // the sums arrived elsewhere
  }
  // Memory of its own (a shape changed and back), then written: begin() lends it its slice
  // again, with the values written.
  store[1].grad.resize(1, 1);
  store[1].grad.resize(4, 5);
  CHECK_FALSE(store[1].grad.lent());
  fill();
  step(*reducer);
  CHECK(store[1].grad.lent() == (n > 1));
  CHECK(wrong_sums() == 0);
  // Two lent gradients swapped, then written: each sits in the other's slice, and begin()
  // moves both back with their values.
  std::swap(store[0].grad, store[2].grad);
  fill();
  step(*reducer);
  CHECK(wrong_sums() == 0);
  {  // The same during backward, before their bucket starts: it sends their values.
    const ef::GradReady<float> ready = reducer->begin(params);
    std::swap(store[0].grad, store[2].grad);
    fill();
    ready(params);
    reducer->finish();
    CHECK(wrong_sums() == 0);
  }
  reducer.reset();  // the buffers stay while the gradients are lent them
  CHECK(wrong_sums() == 0);
  for (auto& p : store) p.grad.setZero();
  CHECK(store[2].grad.isZero(0));
}

TEST_CASE("gradients moved during backward across buckets, or resized, are summed right") {
  // Two (4, 5) gradients in buckets of their own (80 bytes each).
  std::vector<ef::Param<float>> store(2, ef::Param<float>(4, 5));
  const ef::ParamList<float> params{{"a", &store[0]}, {"b", &store[1]}};
  const int n = comm().size(), rank = comm().rank();
  const auto fill = [&] {
    for (std::size_t i = 0; i < store.size(); ++i) store[i].grad.setConstant(float(10 * i + rank));
  };
  const auto summed = [&](std::size_t i, Index base) {  // base + rank on each rank, summed
    return store[i].grad.isConstant(float(n * base + n * (n - 1) / 2), 0);
  };
  dist::GradientReducer<float> reducer(comm(), params, 80);
  REQUIRE(reducer.buckets() == 2);
  // Swapped across buckets, reported one at a time as backward does (b's bucket first): b's
  // start puts b back and gives a, which sits in b's slice, memory of its own.
  ef::GradReady<float> ready = reducer.begin(params);
  std::swap(store[0].grad, store[1].grad);
  fill();
  ready({params[1]});
  ready({params[0]});
  reducer.finish();
  CHECK(summed(0, 0));
  CHECK(summed(1, 10));
  // A gradient of another shape when its bucket starts (on more than one rank, where it is
  // lent): an error naming the caller, the bucket not started; with the shape back, finish()
  // starts it.
  ready = reducer.begin(params);
  fill();
  store[1].grad.resize(5, 4);
  if (n > 1)
    CHECK_THROWS_WITH_AS(ready({params[1]}),
                         doctest::Contains("GradientReducer::ready: argument 'params' 'b' has "
                                           "gradient (5, 4), (4, 5) at construction"),
                         ef::ArgumentError);
  store[1].grad.resize(4, 5);
  store[1].grad.setConstant(float(30 + rank));  // not the last step's: a stale sum shows
  ready({params[0]});
  reducer.finish();
  CHECK(summed(0, 0));
  CHECK(summed(1, 30));
}

TEST_CASE("a step abandoned during backward keeps its buffers until MPI has finished with them") {
  // An exception in backward, caught, destroys the reducer while its bucket is in flight: MPI
  // may still write the sums (a non-blocking collective can be neither cancelled nor freed).
  // Rank 0 leaves first, while the others have not even started: its sums buffer (1 MB, on
  // its own mapping, unmapped when freed) must outlive the reducer.
  std::vector<ef::Param<float>> store(1, ef::Param<float>(262144, 1));
  ef::ParamList<float> params = named_p(store);
  for (Index k = 0; k < store[0].size(); ++k) store[0].grad.data()[k] = float(k % 1000);
  {
    dist::GradientReducer<float> reducer(comm(), params);
    comm().barrier();  // the others' 200 ms head start for rank 0 begins together
    const ef::GradReady<float> ready = reducer.begin(params);
    if (comm().rank() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ready(params);  // started; destroyed without finish()
  }
  // Rank 0's sum cannot complete before the others start (theirs may complete at once).
  if (comm().rank() == 0)
    CHECK(dist::detail::abandoned_requests() == std::size_t(comm().size() > 1));
  CHECK(dist::detail::settle_abandoned_within(20.0) == 0);
  // The gradient still views the buffer it was sent from, unchanged.
  Index wrong = 0;
  for (Index k = 0; k < store[0].size(); ++k) wrong += store[0].grad.data()[k] != float(k % 1000);
  CHECK(wrong == 0);
  comm().barrier();
}

TEST_CASE("a gradient not shaped as its value is rejected before anything is lent") {
  std::vector<ef::Param<float>> store(2, ef::Param<float>(4, 5));
  store[1].grad.resize(5, 5);
  const ef::ParamList<float> params{{"a", &store[0]}, {"b", &store[1]}};
  CHECK_THROWS_WITH_AS(dist::GradientReducer<float>(comm(), params),
                       doctest::Contains("GradientReducer::GradientReducer: argument 'params'"),
                       ef::ArgumentError);
  CHECK_FALSE(store[0].grad.lent());
  // A list naming one parameter twice and another not at all is not the list of construction.
  store[1].grad.resize(4, 5);
  dist::GradientReducer<float> reducer(comm(), params);
  CHECK_THROWS_WITH_AS(reducer.begin({params[0], params[0]}),
                       doctest::Contains("names 1 of the 2 parameters at construction, not 'b'"),
                       ef::ArgumentError);
  CHECK_NOTHROW(reducer.begin({params[1], params[0], params[1]}));
  reducer.finish();
}

TEST_CASE("HugePageAllocator maps blocks of 1 MB and more on 2 MB pages") {
  using Alloc = dist::detail::HugePageAllocator<float>;
  CHECK(Alloc::on_huge_pages(262144));
  CHECK_FALSE(Alloc::on_huge_pages(262143));
  dist::detail::BucketBuffer<float> big(std::size_t(300000), 1.0f);  // 1.2 MB
  CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % Alloc::kPageBytes == 0);
  CHECK(big.back() == 1.0f);
  dist::detail::BucketBuffer<float> small(100);  // 400 bytes: an ordinary block, zeroed
  CHECK(small.back() == 0.0f);
  big.resize(10);
  big.shrink_to_fit();  // the mapping is unmapped, an ordinary block takes its place
  CHECK(big.size() == 10);
  CHECK(big.front() == 1.0f);
  CHECK_THROWS_AS(Alloc().allocate(std::numeric_limits<std::size_t>::max() / 2),
                  std::bad_array_new_length);
}

TEST_CASE("the dropout masks do not depend on the number of ranks") {
  // The run above would pass with dropout off too; here a forward's output rows are compared
  // directly: the rows of a shard, keyed by global example, equal the whole batch's.
  ef::Rng rng(kSeed);
  ef::Transformer<float> whole(config(), rng);
  ef::Transformer<float> keyed = whole, unkeyed = whole;  // the same dropout generators
  const auto [src, tgt] = global_batch(0);
  const dist::Shard s = dist::shard_of(kBatch, comm().rank(), comm().size());
  const IdMatrix my_src = dist::rows(src, s), my_tgt_in = ef::shift_right(dist::rows(tgt, s), kBos);
  ef::Transformer<float>::Cache cache;
  const ef::Matrix<float> all = whole.forward(src, ef::shift_right(tgt, kBos), cache);
  const Index T = tgt.cols();
  const ef::Matrix<float> want = all.middleRows(s.begin * T, s.count * T);
  dist::key_dropout(keyed, s);
  CHECK(keyed.forward(my_src, my_tgt_in, cache).isApprox(want, 1e-6f));
  // Without the keying a shard past row 0 would draw row 0's masks.
  if (s.begin > 0) CHECK_FALSE(unkeyed.forward(my_src, my_tgt_in, cache).isApprox(want, 1e-6f));
}

TEST_CASE("shard_of hands out every row once, the first ranks one more when uneven") {
  const std::vector<Index> sizes = {dist::shard_of(64, 0, 3).count, dist::shard_of(64, 1, 3).count,
                                    dist::shard_of(64, 2, 3).count};
  CHECK(sizes == std::vector<Index>{22, 21, 21});
  CHECK(dist::shard_of(64, 1, 3).begin == 22);
  CHECK(dist::shard_of(64, 2, 3).begin == 43);
  CHECK(dist::shard_of(10, 1, 2).begin == 5);
  CHECK_THROWS_WITH_AS(dist::shard_of(2, 0, 3), doctest::Contains("fewer than the 3 ranks"),
                       ef::ArgumentError);
  CHECK_THROWS_AS(dist::shard_of(8, 3, 3), ef::ArgumentError);
  CHECK_THROWS_AS(dist::rows(IdMatrix::Zero(4, 2), {3, 2}), ef::ArgumentError);
}

TEST_CASE("ranks whose models differ are stopped before the first step, naming the difference") {
  if (comm().size() < 2) return;
  ef::TransformerConfig c = config();
  if (comm().rank() == 1) c.d_ff = 16;  // every linear1/linear2 of rank 1 differs
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(c, rng);
  CHECK_THROWS_WITH_AS(dist::DataParallel<float>(comm(), model),
                       doctest::Contains("differs between ranks: rank 1: parameter"),
                       ef::ArgumentError);
}

TEST_CASE("bad input to the dist API is an ArgumentError") {
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(config(), rng);
  CHECK_THROWS_WITH_AS(dist::DataParallel<float>(comm(), model, {0}),
                       doctest::Contains("bucket_bytes"), ef::ArgumentError);
  CHECK_THROWS_AS(dist::GradientReducer<float>(comm(), {}), ef::ArgumentError);

  dist::DataParallel<float> dp(comm(), model);
  // A parameter replaced by one of another shape after construction.
  ef::Param<float>& w = ef::param_named(model.parameters(), "output.weight");
  const ef::Param<float> saved = w;
  w = ef::Param<float>(w.value.rows() + 1, w.value.cols());
  CHECK_THROWS_WITH_AS(dp.begin_backward(model), doctest::Contains("output.weight' has shape"),
                       ef::ArgumentError);
  w = saved;
  CHECK_THROWS_AS(dp.end_backward(), ef::ArgumentError);  // no step begun
  CHECK_THROWS_AS(dp.clip_grad_norm(0.0f), ef::ArgumentError);

  // A loss divisor that cannot be the global batch's; a target with no class weight.
  const IdMatrix tgt = global_batch(0).second;
  const ef::Matrix<float> logits = ef::Matrix<float>::Zero(tgt.size(), config().tgt_vocab);
  ef::CrossEntropyCache<float> ce;
  ef::Matrix<float> dlogits(2, 3);
  for (const double bad : {dist::loss_divisor(tgt, {0}) - 1, std::nan("")})
    CHECK_THROWS_WITH_AS(
        dp.cross_entropy_share(ce, dlogits, logits, tgt, bad, {0}),
        doctest::Contains(
            "DataParallel::cross_entropy_share: argument 'global_divisor' must be finite"),
        ef::ArgumentError);
  CHECK_THROWS_WITH_AS(  // sum and none divide by nothing: they take 1 only
      dp.cross_entropy_share(ce, dlogits, logits, tgt, 512.0, {0, 0.0, ef::LossReduction::sum}),
      doctest::Contains("argument 'global_divisor' must be 1"), ef::ArgumentError);
  CHECK_THROWS_WITH_AS(dp.cross_entropy_share(ce, dlogits, logits.leftCols(2), tgt, 1.0, {0}),
                       doctest::Contains("DataParallel::cross_entropy_share: argument"),
                       ef::ArgumentError);  // targets outside the logits' 2 classes
  CHECK(dlogits.rows() == 2);  // untouched, and the cache too
  CHECK(dlogits.cols() == 3);
  CHECK(ce.count == 0);
  const Eigen::VectorXd three = Eigen::VectorXd::Ones(3);
  CHECK_THROWS_WITH_AS(dist::loss_divisor(tgt, {0, 0.0, ef::LossReduction::mean, three}),
                       doctest::Contains("loss_divisor: argument 'global_targets' holds"),
                       ef::ArgumentError);
}

TEST_CASE("a non-finite gradient on one rank skips the step on every rank") {
  ef::Rng rng(kSeed);
  ef::Transformer<float> model(config(), rng);
  dist::DataParallel<float> dp(comm(), model);
  ef::StepGuard<float> guard(ef::NonFinitePolicy::skip);
  model.zero_grad();
  (void)dp.begin_backward(model);
  dp.end_backward();
  if (comm().rank() == comm().size() - 1)  // after the sum: only this rank sees it
    ef::param_named(model.parameters(), "output.bias").grad(0, 0) = std::nanf("");
  CHECK_FALSE(dp.check_step(guard, 1.0));
  CHECK(guard.skipped() == 1);
}

TEST_CASE("a rank that throws ends the whole job" * doctest::skip()) {
  dist::run_or_abort(comm(), [] {
    if (comm().rank() == 1) throw std::runtime_error("deliberate failure");
    comm().barrier();  // the others would wait here for ever without the abort
    return 0;
  });
}

TEST_CASE("a killed rank ends the whole job" * doctest::skip()) {
  if (comm().rank() == 1) std::raise(SIGKILL);
  comm().barrier();
}

int main(int argc, char** argv) {
  dist::Environment env(argc, argv);
  const dist::Communicator c;
  world = &c;
  return dist::run_or_abort(c, [&] {
    doctest::Context context(argc, argv);
    const int failed = context.run();
    return c.all(failed == 0) ? 0 : 1;  // every rank's verdict
  });
}
