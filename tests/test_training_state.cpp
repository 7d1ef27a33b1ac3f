// Training checkpoints (io/training_state.hpp): a run saved after some steps and resumed in fresh
// objects ends bit-identical to one that never stopped, for every optimizer in float and double,
// dropout on; bad files (damaged, truncated, mismatched) throw naming what differs and change
// nothing. Also the pieces it rests on: Rng::state, Optimizer::state / load_state.
#include <eigenformer/io/training_state.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>
#include <filesystem>
#include <memory>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
namespace fs = std::filesystem;
using eftest::read_bytes;
using eftest::write_bytes;

namespace {

std::string state_path(const std::string& name) {
  return eftest::temp_file("eigenformer_test_training_state", name);
}

TransformerConfig lm_config() {
  TransformerConfig c = eftest::tiny_config();
  c.dropout = 0.25;  // the masks after resuming must be the ones the run would have drawn
  c.norm = NormPlacement::pre;
  return c;
}

enum class Kind { sgd, sgd_momentum, adam, adamw };

template <class Scalar>
std::unique_ptr<Optimizer<Scalar>> make_optimizer(Kind kind, const ParamList<Scalar>& params) {
  switch (kind) {
    case Kind::sgd:
      return std::make_unique<SGD<Scalar>>(params, 0.05);
    case Kind::sgd_momentum:
      return std::make_unique<SGD<Scalar>>(params, 0.05, 0.9, 0.01);
    case Kind::adam:
      return std::make_unique<Adam<Scalar>>(params, 0.01, 0.9, 0.99, 1e-8, 0.01);
    case Kind::adamw:
      break;
  }
  return std::make_unique<AdamW<Scalar>>(params, 0.01);
}

/// One training step of the single-stack LM on a batch drawn from progress.rng; the schedule
/// follows the optimizer's step count.
template <class Scalar>
void train_step(DecoderOnlyLM<Scalar>& model, Optimizer<Scalar>& opt, TrainingProgress& progress) {
  IdMatrix ids(3, 5), targets(3, 5);
  for (Index i = 0; i < ids.rows(); ++i)
    for (Index j = 0; j < ids.cols(); ++j) {
      ids(i, j) = progress.rng.index(6);
      targets(i, j) = progress.rng.index(6);
    }
  typename DecoderOnlyLM<Scalar>::Cache cache;
  CrossEntropyCache<Scalar> ce;
  opt.zero_grad();
  const Matrix<Scalar> logits = model.forward(ids, cache);
  cross_entropy_forward(ce, logits, targets);
  model.backward(cross_entropy_backward(ce), cache);
  opt.set_lr(0.01 / static_cast<double>(opt.steps() + 1));
  opt.step();
  progress.step += 1;
  progress.data_position += 3;
}

template <class Scalar>
void check_same_weights(DecoderOnlyLM<Scalar>& a, DecoderOnlyLM<Scalar>& b) {
  const ParamList<Scalar> pa = a.parameters(), pb = b.parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].name);
    CHECK(pa[i].param->value == pb[i].param->value);  // bit for bit
  }
}

template <class Scalar>
std::vector<Matrix<Scalar>> values_of(DecoderOnlyLM<Scalar>& m) {
  std::vector<Matrix<Scalar>> out;
  for (const auto& p : m.parameters()) out.push_back(p.param->value);
  return out;
}

/// A model, its optimizer and a run's progress.
template <class Scalar>
struct Run {
  Rng init;
  DecoderOnlyLM<Scalar> model;
  std::unique_ptr<Optimizer<Scalar>> opt;
  TrainingProgress progress;
  Run(Kind kind, std::uint64_t seed, const TransformerConfig& c = lm_config())
      : init(seed), model(c, init), opt(make_optimizer(kind, model.parameters())) {
    progress.rng = Rng(seed + 100);
    model.train();
  }
  void steps(int n) {
    for (int i = 0; i < n; ++i) train_step(model, *opt, progress);
  }
};

/// A trained Adam run saved to path; returns it.
std::unique_ptr<Run<float>> saved_adam_run(const std::string& path) {
  auto run = std::make_unique<Run<float>>(Kind::adam, 1);
  run->steps(2);
  save_training_state(path, run->model, *run->opt, run->progress);
  return run;
}

/// Loading path into a fresh Adam run throws IoError with fragments and changes nothing.
void check_state_load_fails(const std::string& path, const std::vector<std::string>& fragments,
                            Kind kind = Kind::adam, const TransformerConfig& c = lm_config()) {
  Run<float> fresh(kind, 7, c);
  fresh.steps(1);
  const std::vector<Matrix<float>> before = values_of(fresh.model);
  const OptimizerState<float> opt_before = fresh.opt->state();
  const std::string dropout_before = fresh.model.input.dropout.rng().state();
  eftest::check_throws_with<IoError>([&] { load_training_state(path, fresh.model, *fresh.opt); },
                                     fragments);
  CHECK(values_of(fresh.model) == before);
  const OptimizerState<float> opt_after = fresh.opt->state();
  CHECK(opt_after.steps == opt_before.steps);
  CHECK(opt_after.lr == opt_before.lr);
  REQUIRE(opt_after.buffers.size() == opt_before.buffers.size());
  for (size_t i = 0; i < opt_after.buffers.size(); ++i)
    CHECK(opt_after.buffers[i].second == opt_before.buffers[i].second);
  CHECK(fresh.model.input.dropout.rng().state() == dropout_before);
}

}  // namespace

TEST_CASE("Rng::state and set_state continue the stream exactly") {
  Rng a(42);
  for (int i = 0; i < 5; ++i) a.next_u64();
  const std::string s = a.state();
  Rng b(7);
  b.set_state(s);
  for (int i = 0; i < 10; ++i) CHECK(a.next_u64() == b.next_u64());
  const std::string b_state = b.state();
  eftest::check_throws_with([&] { b.set_state("12 34 not a state"); },
                            {"Rng::set_state", "text", "not a generator state"});
  eftest::check_throws_with([&] { b.set_state(s + " 5"); }, {"Rng::set_state"});
  CHECK(b.state() == b_state);  // unchanged by the failed calls
}

TEST_CASE_TEMPLATE("a run saved and resumed in fresh objects ends bit-identical", Scalar, float,
                   double) {
  for (Kind kind : {Kind::sgd, Kind::sgd_momentum, Kind::adam, Kind::adamw}) {
    CAPTURE(static_cast<int>(kind));
    const std::string path = state_path("roundtrip.state");
    Run<Scalar> straight(kind, 3);
    straight.steps(3);
    save_training_state(path, straight.model, *straight.opt, straight.progress);
    straight.steps(3);

    Run<Scalar> resumed(kind, 99);  // other weights, other generators: all overwritten
    resumed.progress = load_training_state(path, resumed.model, *resumed.opt);
    CHECK(resumed.progress.step == 3);
    CHECK(resumed.progress.data_position == 9);
    CHECK(resumed.opt->steps() == 3);
    resumed.steps(3);
    check_same_weights(straight.model, resumed.model);
    CHECK(resumed.opt->steps() == straight.opt->steps());
    CHECK(resumed.progress.rng.next_u64() == straight.progress.rng.next_u64());
  }
}

TEST_CASE("the file holds the weights, optimizer buffers and progress under their names") {
  const std::string path = state_path("layout.state");
  Run<float> run(Kind::adamw, 5);
  run.steps(2);
  run.progress.schedule_step = 11;
  run.progress.extra["my.loss"] = "0.5";
  save_training_state(path, run.model, *run.opt, run.progress);
  const SafetensorsHeader h = read_safetensors_header(path);
  CHECK(h.tensors.count("model.embedding.weight") == 1);
  CHECK(h.tensors.count("optimizer.embedding.weight.exp_avg") == 1);
  CHECK(h.tensors.count("optimizer.embedding.weight.exp_avg_sq") == 1);
  CHECK(h.tensors.at("model.embedding.weight").dtype == "F32");
  CHECK(h.metadata.at("eigenformer.optimizer") == "AdamW");
  CHECK(h.metadata.at("eigenformer.optimizer.steps") == "2");
  CHECK(h.metadata.at("my.loss") == "0.5");
  Run<float> other(Kind::adamw, 6);
  const TrainingProgress p = load_training_state(path, other.model, *other.opt);
  CHECK(p.schedule_step == 11);
  CHECK(p.extra.at("my.loss") == "0.5");
  CHECK(p.extra.size() == 1);
  CHECK(other.opt->lr() == run.opt->lr());
  for (const auto& f : fs::directory_iterator(fs::path(path).parent_path()))
    CHECK(f.path().string().find(".tmp-") == std::string::npos);  // no temporary left behind
}

TEST_CASE("save_training_state rejects bad progress and reserved keys, writing nothing") {
  const std::string path = state_path("bad_save.state");
  fs::remove(path);
  Run<float> run(Kind::adam, 1);
  run.progress.step = -1;
  eftest::check_throws_with([&] { save_training_state(path, run.model, *run.opt, run.progress); },
                            {"save_training_state", "progress.step", "-1"});
  run.progress.step = 0;
  run.progress.extra["eigenformer.optimizer"] = "SGD";
  eftest::check_throws_with([&] { save_training_state(path, run.model, *run.opt, run.progress); },
                            {"save_training_state", "reserved key 'eigenformer.optimizer'"});
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("a truncated or damaged state file is an IoError that changes nothing") {
  const std::string path = state_path("good.state"), bad = state_path("bad.state");
  saved_adam_run(path);
  const std::string bytes = read_bytes(path);

  write_bytes(bad, bytes.substr(0, bytes.size() - 100));
  check_state_load_fails(bad, {"load_training_state", "bad.state", "truncated data"});
  write_bytes(bad, bytes.substr(0, 5));
  check_state_load_fails(bad, {"load_training_state", "truncated"});
  std::string damaged = bytes;
  damaged[20] = '\x01';  // inside the JSON header
  write_bytes(bad, damaged);
  check_state_load_fails(bad, {"load_training_state", "bad.state"});
  check_state_load_fails(state_path("missing.state"), {"load_training_state", "cannot open"});
  std::string flipped = bytes;  // one bit of the last weight or moment: the structure is intact
  flipped.back() = static_cast<char>(flipped.back() ^ 0x10);
  write_bytes(bad, flipped);
  check_state_load_fails(bad, {"load_training_state", "damaged data: its checksum is",
                               "metadata 'eigenformer.data_fnv1a64'"});

  // A damaged metadata value: the generator state of one dropout layer.
  std::string meta = bytes;
  const size_t at = meta.find("\"eigenformer.dropout.0.rng\":\"");
  REQUIRE(at != std::string::npos);
  meta[at + 30] = 'x';
  write_bytes(bad, meta);
  check_state_load_fails(bad, {"metadata 'eigenformer.dropout.0.rng' has an invalid value"});
}

TEST_CASE("a mismatched state file names the tensor or setting that differs") {
  const std::string path = state_path("mismatch.state");
  saved_adam_run(path);
  // Another optimizer kind.
  check_state_load_fails(path, {"holds the state of a Adam optimizer, this one is SGD"},
                         Kind::sgd_momentum);
  // Another shape: a wider feed-forward layer.
  TransformerConfig wide = lm_config();
  wide.d_ff = 16;
  check_state_load_fails(
      path, {"tensor 'model.layers.0.linear1.weight': shape [12, 8] in file, [16, 8] in model"},
      Kind::adam, wide);
  // Another parameter set: one layer fewer.
  TransformerConfig shallow = lm_config();
  shallow.n_layers = 1;
  check_state_load_fails(path, {"unexpected tensors", "'model.layers.1."}, Kind::adam, shallow);
  // Another precision.
  Run<double> d(Kind::adam, 2);
  eftest::check_throws_with<IoError>([&] { load_training_state(path, d.model, *d.opt); },
                                     {"dtype F32 in the file, F64 in the model"});
  // A model checkpoint is not a training state.
  const std::string model_file = state_path("model.safetensors");
  save_model(model_file, d.model);
  check_state_load_fails(model_file, {"no 'eigenformer.training_state'"});
}

TEST_CASE("Optimizer::load_state checks kind, names and shapes before changing anything") {
  Param<float> w(2, 3), b(1, 3, true);
  w.value.setConstant(1);
  w.grad.setConstant(0.5f);
  b.grad.setConstant(0.25f);
  const ParamList<float> params{{"w", &w}, {"b", &b}};
  Adam<float> adam(params, 0.1);
  adam.step();
  OptimizerState<float> s = adam.state();
  CHECK(s.kind == "Adam");
  CHECK(s.steps == 1);
  REQUIRE(s.buffers.size() == 4);
  CHECK(s.buffers[0].first == "w.exp_avg");
  CHECK(s.buffers[1].first == "w.exp_avg_sq");

  Adam<float> other(params, 0.3);
  const auto check_unchanged = [&] {
    CHECK(other.steps() == 0);
    CHECK(other.lr() == doctest::Approx(0.3));
    CHECK(other.state().buffers[0].second.isZero());
  };
  OptimizerState<float> bad = s;
  bad.kind = "SGD";
  eftest::check_throws_with([&] { other.load_state(bad); },
                            {"Adam::load_state", "of a SGD optimizer, this is Adam"});
  bad = s;
  bad.buffers[2].second.resize(2, 2);
  eftest::check_throws_with([&] { other.load_state(bad); },
                            {"Adam::load_state", "'b.exp_avg' of shape (2, 2), expected (1, 3)"});
  bad = s;
  bad.buffers.pop_back();
  eftest::check_throws_with([&] { other.load_state(bad); }, {"has no 'b.exp_avg_sq'"});
  bad = s;
  bad.buffers.push_back({"c.exp_avg", Matrix<float>::Zero(1, 1)});
  eftest::check_throws_with([&] { other.load_state(bad); },
                            {"'c.exp_avg', which this optimizer does not have"});
  bad = s;
  bad.steps = -2;
  eftest::check_throws_with([&] { other.load_state(bad); }, {"state.steps", "-2"});
  check_unchanged();

  other.load_state(s);
  CHECK(other.steps() == 1);
  CHECK(other.lr() == adam.lr());
  for (size_t i = 0; i < s.buffers.size(); ++i)
    CHECK(other.state().buffers[i].second == s.buffers[i].second);

  SGD<float> plain(params, 0.1);
  CHECK(plain.state().buffers.empty());  // no momentum: no buffers
  SGD<float> momentum(params, 0.1, 0.9);
  momentum.step();
  CHECK(momentum.state().buffers.size() == 2);
  CHECK(momentum.state().buffers[0].first == "w.momentum_buffer");
}

TEST_CASE("any model with parameters() works, e.g. a single layer (no dropout to save)") {
  const std::string path = state_path("layer.state");
  Rng rng(4);
  Linear<double> layer(3, 2, rng), other(3, 2, rng);
  SGD<double> opt(layer.parameters(), 0.1, 0.9), other_opt(other.parameters(), 0.1, 0.9);
  for (const auto& p : layer.parameters()) p.param->grad.setConstant(0.5);
  opt.step();
  TrainingProgress progress;
  progress.step = 1;
  save_training_state(path, layer, opt, progress);
  CHECK(read_safetensors_metadata(path).at("eigenformer.dropouts") == "0");
  CHECK(load_training_state(path, other, other_opt).step == 1);
  CHECK(other.parameters()[0].param->value == layer.parameters()[0].param->value);
  CHECK(other_opt.state().buffers[0].second == opt.state().buffers[0].second);
}
