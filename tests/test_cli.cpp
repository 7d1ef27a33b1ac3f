// The example programs' command-line helpers: cli::Flags and cli::format_seconds, the
// training-checkpoint flags of examples/common/training.hpp, and the training step of
// examples/common/parallel.hpp (one process: the tests build without MPI).
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "../examples/common/cli.hpp"
#include "../examples/common/training.hpp"
#include "model_cases.hpp"

namespace {

using Args = std::vector<std::string>;

const std::set<std::string> kValued = {"out", "steps", "lr", "seed"};
const std::set<std::string> kSwitches = {"verbose"};
const std::set<std::string> kRepeatable = {"corpus"};

cli::Flags parse(const Args& args) { return cli::Flags(args, kValued, kSwitches, kRepeatable); }

/// The UsageError message parsing `args` throws, or "" if it parses.
std::string parse_error(const Args& args) {
  try {
    parse(args);
  } catch (const cli::UsageError& e) {
    return e.what();
  }
  return "";
}

/// The UsageError message a getter throws, or "".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const cli::UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("Flags: valued flags, switches and fallbacks") {
  const cli::Flags f = parse({"--out", "m.st", "--verbose", "--steps=20"});
  CHECK(f.has("out"));
  CHECK(f.text("out") == "m.st");
  CHECK(f.required("out") == "m.st");
  CHECK(f.has("verbose"));
  CHECK(f.integer("steps", 5, 1, 100) == 20);  // --name=value form
  CHECK_FALSE(f.has("lr"));
  CHECK(f.text("lr", "none") == "none");
  CHECK(f.number("lr", 0.25, 0.0, 1.0) == 0.25);
  CHECK(f.integer("seed", 7, 0, 10) == 7);
  CHECK(f.all("corpus", {"default"}) == Args{"default"});
  CHECK_FALSE(f.help());

  const cli::Flags empty = parse({});
  CHECK_FALSE(empty.has("out"));
  CHECK_FALSE(empty.has("verbose"));
  CHECK(error_of([&] { empty.required("out"); }) == "flag --out is required");

  // A value may look like anything but a flag: a negative number, a single dash, an "=" inside.
  const cli::Flags g = parse({"--out", "-", "--lr", "-0.5", "--seed=a=b"});
  CHECK(g.text("out") == "-");
  CHECK(g.text("lr") == "-0.5");
  CHECK(g.text("seed") == "a=b");
  CHECK(parse({"--out="}).text("out", "x").empty());  // given, but empty
}

TEST_CASE("Flags: --help and -h anywhere") {
  CHECK(parse({"--help"}).help());
  CHECK(parse({"--out", "x", "-h"}).help());
  CHECK(parse({"--corpus", "a", "--help"}).help());
  CHECK(parse({"--corpus", "a", "-h"}).all("corpus") == Args{"a"});
}

TEST_CASE("Flags: repeatable flags keep every value in order") {
  const cli::Flags f = parse({"--corpus", "a", "--steps", "3", "--corpus", "b", "c", "--corpus=d"});
  CHECK(f.all("corpus") == Args{"a", "b", "c", "d"});
  CHECK(f.text("corpus") == "d");
  CHECK(f.integer("steps", 1, 1, 10) == 3);
  CHECK(f.all("steps") == Args{"3"});
  CHECK(parse_error({"--corpus"}) == "flag --corpus needs a value");
}

TEST_CASE("Flags: bad command lines") {
  CHECK(parse_error({"--frobnicate"}) == "unknown flag --frobnicate");
  CHECK(parse_error({"--frobnicate=1"}) == "unknown flag --frobnicate");
  CHECK(parse_error({"stray"}) == "unexpected argument 'stray'");
  CHECK(parse_error({"--out", "x", "stray"}) == "unexpected argument 'stray'");
  CHECK(parse_error({"-x"}) == "unexpected argument '-x'");
  CHECK(parse_error({"--"}) == "unexpected argument '--'");
  CHECK(parse_error({"--out"}) == "flag --out needs a value");
  // The next flag is not taken as the value: "--out --steps 5" forgot the file name.
  CHECK(parse_error({"--out", "--steps", "5"}) == "flag --out needs a value");
  CHECK(parse_error({"--out", "a", "--out", "b"}) == "flag --out given twice");
  CHECK(parse_error({"--out=a", "--out", "b"}) == "flag --out given twice");
  CHECK(parse_error({"--verbose", "--verbose"}) == "flag --verbose given twice");
  CHECK(parse_error({"--verbose=yes"}) == "flag --verbose takes no value");
  CHECK_THROWS_AS(parse({"--out"}), cli::UsageError);
  // Without a repeatable set, a flag is valued only.
  CHECK_THROWS_WITH_AS(cli::Flags({"--corpus", "a"}, {"out"}), "unknown flag --corpus",
                       cli::UsageError);
}

TEST_CASE("Flags::integer: whole numbers in range, with the flag and the text in the message") {
  auto steps = [](const std::string& text) {
    return parse({"--steps", text}).integer("steps", 1, 1, 10000000);
  };
  auto steps_error = [&](const std::string& text) { return error_of([&] { steps(text); }); };
  CHECK(steps("1") == 1);
  CHECK(steps("10000000") == 10000000);
  CHECK(steps_error("abc") == "flag --steps takes a whole number from 1 to 10000000, got 'abc'");
  for (const char* bad : {"0", "10000001", "-5", "", "1.5", "2e3", "12x", " 5", "5 ", "+5", "0x10",
                          "99999999999999999999999"})
    CHECK_MESSAGE(steps_error(bad) == "flag --steps takes a whole number from 1 to 10000000, got '" +
                                          std::string(bad) + "'",
                  bad);
  CHECK(parse({"--steps", "-3"}).integer("steps", 0, -5, 5) == -3);
}

TEST_CASE("Flags::unsigned_integer: seeds use all 64 bits, never negative") {
  auto seed = [](const std::string& text) { return parse({"--seed", text}).unsigned_integer("seed", 1); };
  const std::string range = "flag --seed takes a whole number from 0 to 18446744073709551615, got '";
  CHECK(parse({}).unsigned_integer("seed", 42) == 42);
  CHECK(seed("0") == 0);
  CHECK(seed("18446744073709551615") == UINT64_MAX);
  CHECK(seed("12345678901234567890") == 12345678901234567890ULL);
  for (const char* bad : {"-1", "18446744073709551616", "x", "", "1e3", "+1", " 1"})
    CHECK_MESSAGE(error_of([&] { seed(bad); }) == range + bad + "'", bad);
  CHECK(parse({"--seed", "5"}).unsigned_integer("seed", 1, 0, 9) == 5);
  CHECK(error_of([] { parse({"--seed", "10"}).unsigned_integer("seed", 1, 0, 9); }) ==
        "flag --seed takes a whole number from 0 to 9, got '10'");
}

TEST_CASE("Flags::number: finite numbers in range") {
  auto lr = [](const std::string& text) { return parse({"--lr", text}).number("lr", 0.1, 1e-6, 1.0); };
  CHECK(lr("0.5") == 0.5);
  CHECK(lr("1e-3") == doctest::Approx(1e-3));
  CHECK(lr("1") == 1.0);
  CHECK(lr("1e-6") == doctest::Approx(1e-6));
  CHECK(error_of([&] { lr("abc"); }) == "flag --lr takes a number from 1e-06 to 1, got 'abc'");
  for (const char* bad : {"0", "2", "-0.5", "", "nan", "NaN", "inf", "-inf", "1e999", "0.5x", " 0.5",
                          "0.5 ", "1,5"})
    CHECK_MESSAGE(error_of([&] { lr(bad); }) ==
                      "flag --lr takes a number from 1e-06 to 1, got '" + std::string(bad) + "'",
                  bad);
  // An infinite range still refuses non-finite values.
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(error_of([&] { parse({"--lr", "inf"}).number("lr", 0, -inf, inf); }) != "");
  CHECK(parse({"--lr", "-1e300"}).number("lr", 0, -inf, inf) == -1e300);
}

TEST_CASE("format_seconds: minutes and seconds under an hour, hours and minutes above") {
  CHECK(cli::format_seconds(0) == "0m00s");
  CHECK(cli::format_seconds(0.4) == "0m00s");
  CHECK(cli::format_seconds(0.5) == "0m01s");
  CHECK(cli::format_seconds(7.2) == "0m07s");
  CHECK(cli::format_seconds(59.6) == "1m00s");
  CHECK(cli::format_seconds(83) == "1m23s");
  CHECK(cli::format_seconds(3599.4) == "59m59s");
  CHECK(cli::format_seconds(3600) == "1h00m");
  CHECK(cli::format_seconds(2 * 3600 + 5 * 60 + 59) == "2h05m");
  CHECK(cli::format_seconds(100 * 3600) == "100h00m");
  // Not a duration (an ETA from a zero or broken clock): no undefined conversion.
  CHECK(cli::format_seconds(-1) == "?");
  CHECK(cli::format_seconds(std::numeric_limits<double>::quiet_NaN()) == "?");
  CHECK(cli::format_seconds(std::numeric_limits<double>::infinity()) == "?");
  CHECK(cli::format_seconds(1e300) == "?");
}

TEST_CASE("state flags: --save-every and --resume, and a resumed run must match its settings") {
  const cli::Flags none({}, {"save-every", "resume"});
  const cli::StateFlags off = cli::state_flags(none, "m.safetensors");
  CHECK(off.path == "m.safetensors.state");
  CHECK(off.every == 0);
  CHECK(off.resume.empty());
  const cli::Flags on({"--save-every", "50", "--resume", "m.safetensors.state"},
                      {"save-every", "resume"});
  const cli::StateFlags s = cli::state_flags(on, "m.safetensors");
  CHECK(s.every == 50);
  CHECK(s.resume == "m.safetensors.state");
  CHECK(error_of([] {
          cli::state_flags(cli::Flags({"--save-every", "-1"}, {"save-every"}), "m");
        }).find("flag --save-every takes a whole number") == 0);

  const std::map<std::string, std::string> saved = {{"run.steps", "600"}, {"run.seed", "1"}};
  cli::check_same_run("m.state", saved, {{"steps", "600"}, {"seed", "1"}});  // the same: passes
  CHECK(error_of([&] {
          cli::check_same_run("m.state", saved, {{"steps", "800"}});
        }) ==
        "--resume m.state was saved by a run with steps 600, this run has 800: resume with the "
        "flags of that run");
  CHECK(error_of([&] {
          cli::check_same_run("m.state", saved, {{"lr", "0.002"}});
        }).find("with lr (none)") != std::string::npos);
  CHECK(cli::config_settings({{"eigenformer.config.d_model", "64"}}).at("d_model") == "64");
  CHECK(cli::number_text(0.002) == "0.002");
}

namespace {

namespace ef = eigenformer;
using LM = ef::DecoderOnlyLM<float>;

/// The step TrainStep takes, by the library's pieces: forward, cross-entropy, backward, the
/// guard's check, clipping at 1 and the optimizer step. Returns the loss.
float reference_step(LM& model, ef::Optimizer<float>& opt, ef::StepGuard<float>& guard,
                     const ef::IdMatrix& ids, const ef::IdMatrix& targets) {
  opt.zero_grad();
  LM::Cache cache;
  ef::CrossEntropyCache<float> ce;
  const ef::Matrix<float>& logits = model.forward(ids, cache);  // (B*T, V)
  const float loss = ef::cross_entropy_forward(ce, logits, targets);
  model.backward(ef::cross_entropy_backward(ce), cache);
  REQUIRE(guard.check(loss, model.parameters()));
  ef::clip_grad_norm(model.parameters(), 1.0f);
  opt.step();
  return loss;
}

}  // namespace

TEST_CASE("TrainStep: the library's step, bit for bit; a step that threw leaves no gradients") {
  // tiny_config has no dropout: the poisoned step would otherwise move the masks on.
  const ef::TransformerConfig c = eftest::tiny_config();
  ef::Rng rng(3), reference_rng(3), data(4);
  LM model(c, rng), reference(c, reference_rng);
  ef::IdMatrix ids(3, 5), targets(3, 5);  // (B, T)
  for (ef::Index i = 0; i < ids.rows(); ++i)
    for (ef::Index j = 0; j < ids.cols(); ++j) {
      ids(i, j) = data.index(c.vocab);
      targets(i, j) = data.index(c.vocab);
    }
  int argc = 0;
  char** argv = nullptr;
  const cli::Processes procs(argc, argv);
  cli::TrainStep<LM> step(procs, model);
  ef::AdamW<float> opt(model.parameters(), 0.01f), reference_opt(reference.parameters(), 0.01f);
  ef::StepGuard<float> guard, reference_guard;  // stop on a non-finite step

  // A NaN in the logits: the loss and, through backward, the gradients are NaN, and the step
  // stops naming its number. Nothing steps.
  bool poison = true;
  ef::Matrix<float> poisoned;
  const auto forward = [&](ef::Index begin, ef::Index count,
                           LM::Cache& cache) -> const ef::Matrix<float>& {
    const ef::Matrix<float>& logits = model.forward(ids.middleRows(begin, count), cache);
    if (!poison) return logits;
    poisoned = logits;
    poisoned(0, 0) = std::numeric_limits<float>::quiet_NaN();
    return poisoned;
  };
  CHECK_THROWS_WITH_AS(step(opt, guard, 7, targets, {}, forward),
                       doctest::Contains("training diverged at step 7: "), std::runtime_error);
  CHECK(opt.steps() == 0);

  // The next steps start from zero gradients, not the NaN ones, and each leaves them zero.
  poison = false;
  for (long k = 8; k < 11; ++k) {
    const double loss = step(opt, guard, k, targets, {}, forward);
    const float expected = reference_step(reference, reference_opt, reference_guard, ids, targets);
    CHECK(loss == double(expected));
    const ef::ParamList<float> params = model.parameters(),
                               expected_params = reference.parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].name << " after step " << k);
      CHECK(params[i].param->value == expected_params[i].param->value);  // bit for bit
      CHECK(params[i].param->grad.isZero(0));
    }
  }
}
