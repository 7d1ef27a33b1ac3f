// Determinism: with the same seed and one thread, training gives the same bits; another seed
// gives other numbers (so the seed really reaches the initialisation and the dropout masks).
#include <eigenformer/core/parallel.hpp>
#include <eigenformer/model/transformer.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;

namespace {

struct RunResult {
  std::vector<float> losses;
  std::vector<Matrix<float>> params;
};

/// 20 AdamW steps of a small encoder-decoder with dropout 0.1 on a fixed batch with padding.
RunResult train_run(std::uint64_t seed) {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = 13;
  c.tgt_vocab = 11;
  c.d_model = 16;
  c.d_ff = 32;
  c.dropout = 0.1;
  Rng rng(seed);
  Transformer<float> model(c, rng);
  model.train();
  AdamW<float> opt(model.parameters(), 3e-3f);
  IdMatrix src(3, 6), tgt(3, 5);
  src << 4, 5, 6, 7, 8, 2, 9, 10, 11, 2, 0, 0, 12, 3, 2, 0, 0, 0;
  tgt << 3, 4, 5, 6, 2, 7, 8, 2, 0, 0, 9, 10, 9, 2, 0;
  const IdMatrix tgt_in = shift_right(tgt, 1);
  RunResult r;
  for (int step = 0; step < 20; ++step) {
    Transformer<float>::Cache cache;
    CrossEntropyCache<float> ce;
    const Matrix<float> logits = model.forward(src, tgt_in, cache);
    r.losses.push_back(cross_entropy_forward(ce, logits, tgt, {/*ignore_id=*/0, 0.1}));
    opt.zero_grad();
    model.backward(cross_entropy_backward(ce), cache);
    clip_grad_norm(model.parameters(), 1.0f);
    opt.step();
  }
  for (const auto& p : model.parameters()) r.params.push_back(p.param->value);
  return r;
}

/// Runs f with one OpenMP thread, restoring the previous count after.
template <class F>
auto single_threaded(F&& f) {
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  auto out = f();
  omp_set_num_threads(saved);
  return out;
#else
  return f();
#endif
}

}  // namespace

TEST_CASE("same seed, one thread: bit-identical losses and parameters after 20 AdamW steps") {
  const RunResult a = single_threaded([] { return train_run(7); });
  const RunResult b = single_threaded([] { return train_run(7); });
  REQUIRE(a.losses.size() == 20);
  REQUIRE(a.params.size() == b.params.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    INFO("step " << i);
    CHECK(std::isfinite(a.losses[i]));
    CHECK(a.losses[i] == b.losses[i]);  // exact: bit-identical, not approximately equal
  }
  for (size_t i = 0; i < a.params.size(); ++i) {
    INFO("parameter " << i);
    CHECK(a.params[i].allFinite());
    CHECK(a.params[i] == b.params[i]);
  }
  CHECK(a.losses.back() < a.losses.front());  // it did train
}

TEST_CASE("a different seed gives different losses and parameters") {
  const RunResult a = single_threaded([] { return train_run(7); });
  const RunResult b = single_threaded([] { return train_run(8); });
  CHECK(a.losses.front() != b.losses.front());
  CHECK(a.losses.back() != b.losses.back());
  size_t differing = 0;
  for (size_t i = 0; i < a.params.size(); ++i) differing += a.params[i] != b.params[i];
  CHECK(differing == a.params.size());
}

TEST_CASE("dropout masks come from the model's seed: train-mode forwards repeat, and differ from eval") {
  // Each model is built from Rng(5), so its dropout layers draw the same masks: no global or
  // time-seeded generator. Eval mode differs, so dropout really was on.
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = c.tgt_vocab = 9;
  c.d_ff = 16;
  c.n_encoder_layers = c.n_decoder_layers = 1;
  c.dropout = 0.1;
  c.max_len = 512;
  IdMatrix src(1, 4), tgt(1, 3);
  src << 4, 5, 6, 2;
  tgt << 7, 8, 2;
  auto logits = [&](bool train) {
    Rng rng(5);
    Transformer<float> model(c, rng);
    model.train(train);
    Transformer<float>::Cache cache;
    return Matrix<float>(model.forward(src, shift_right(tgt, 1), cache));
  };
  const Matrix<float> train1 = single_threaded([&] { return logits(true); });
  const Matrix<float> train2 = single_threaded([&] { return logits(true); });
  const Matrix<float> eval = single_threaded([&] { return logits(false); });
  CHECK(train1 == train2);
  CHECK(train1 != eval);
}

#ifdef _OPENMP
TEST_CASE("a decode step too small for threads runs on the calling thread, then restores them") {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  {
    const detail::SerialIfSmall small(1e3);
    CHECK(omp_get_max_threads() == 1);
  }
  CHECK(omp_get_max_threads() == 2);
  {
    const detail::SerialIfSmall large(1e9);
    CHECK(omp_get_max_threads() == 2);
  }
  // A tiny model's decode steps (a few thousand multiply-adds): logits bit-identical to a run on
  // one thread, and the thread count back at 2 after each step.
  Rng rng(3);
  Transformer<float> model(eftest::tiny_config(), rng);
  model.eval();
  IdMatrix src(2, 4), step(2, 1);
  src << 4, 5, 6, 2, 3, 5, 2, 0;
  step << 1, 1;
  auto decode = [&](int threads) {
    omp_set_num_threads(threads);
    DecodeState<float> state = model.begin_decode(src, 3);
    const Matrix<float> first = model.decode_step(step, state);  // (2, V)
    CHECK(omp_get_max_threads() == threads);
    const Matrix<float> second = model.decode_step(step, state);
    CHECK(omp_get_max_threads() == threads);
    return std::pair(first, second);
  };
  const auto two = decode(2), one = decode(1);
  omp_set_num_threads(saved);
  CHECK(two.first == one.first);
  CHECK(two.second == one.second);
}
#endif
