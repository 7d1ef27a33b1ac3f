#include <eigenformer/layers/linear.hpp>
#include <eigenformer/train/guard.hpp>
#include <eigenformer/train/optim.hpp>
#include <limits>

#include "test_util.hpp"

using namespace eigenformer;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

/// Two parameters with finite gradients: "a" (2, 3) and "b" (1, 4).
struct TwoParams {
  Param<float> a{2, 3}, b{1, 4};
  TwoParams() {
    a.grad.setConstant(0.5f);
    b.grad.setConstant(-0.25f);
  }
  ParamList<float> list() { return {{"a", &a}, {"b", &b}}; }
};

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("check_step passes a finite loss and finite gradients") {
  TwoParams p;
  const StepCheck c = check_step(1.5, p.list());
  CHECK(c.ok);
  CHECK(static_cast<bool>(c));
  CHECK(c.what.empty());
  CHECK(c.param.empty());
  CHECK(c.bad_params == 0);
  // Huge but finite values are fine.
  p.a.grad(0, 0) = std::numeric_limits<float>::max();
  CHECK(check_step(1e300, p.list()).ok);
}

TEST_CASE("check_step names a non-finite loss") {
  TwoParams p;
  StepCheck c = check_step(std::nan(""), p.list());
  CHECK_FALSE(c.ok);
  CHECK(c.what == "loss is nan");
  CHECK(c.param.empty());
  CHECK(check_step(HUGE_VAL, p.list()).what == "loss is inf");
  CHECK(check_step(-HUGE_VAL, p.list()).what == "loss is -inf");
  // A float loss converts without losing its kind.
  CHECK(check_step(kInf, p.list()).what == "loss is inf");
  CHECK(check_step(kNaN, p.list()).what == "loss is nan");
}

TEST_CASE("check_step names the first parameter with a non-finite gradient and counts entries") {
  TwoParams p;
  p.b.grad(0, 1) = kNaN;
  p.b.grad(0, 2) = kInf;
  p.b.grad(0, 3) = -kInf;
  StepCheck c = check_step(0.5, p.list());
  CHECK_FALSE(c.ok);
  CHECK(c.param == "b");
  CHECK(c.bad_entries == 3);
  CHECK(c.bad_params == 1);
  CHECK(c.what == "gradient of 'b' (1, 4) has 3 non-finite entries of 4 (1 NaN, 2 inf)");

  p.a.grad(1, 2) = kNaN;  // now "a", earlier in the list, is the first
  c = check_step(0.5, p.list());
  CHECK(c.param == "a");
  CHECK(c.bad_entries == 1);
  CHECK(c.bad_params == 2);
  CHECK(c.what ==
        "gradient of 'a' (2, 3) has 1 non-finite entry of 6 (1 NaN, 0 inf); 1 more parameter has "
        "non-finite gradients");

  // A bad loss comes first in the message; the parameter is still named.
  c = check_step(std::nan(""), p.list());
  CHECK(c.param == "a");
  CHECK(contains(c.what, "loss is nan; gradient of 'a'"));
}

TEST_CASE("check_step in double and with a null parameter") {
  Param<double> w(3, 1);
  w.grad(2, 0) = std::numeric_limits<double>::infinity();
  const StepCheck c = check_step(0.0, ParamList<double>{{"w", &w}});
  CHECK(c.param == "w");
  CHECK(c.bad_entries == 1);
  eftest::check_throws_with([] { check_step(0.0, ParamList<double>{{"null", nullptr}}); },
                            {"eigenformer::check_step", "'params'", "null", "'null'"});
}

TEST_CASE("apply_policy: stop throws NonFiniteError naming the parameter, skip zeroes gradients") {
  TwoParams p;
  CHECK(apply_policy(check_step(1.0, p.list()), NonFinitePolicy::stop, p.list()));
  CHECK(apply_policy(check_step(1.0, p.list()), NonFinitePolicy::skip, p.list()));
  CHECK(p.a.grad(0, 0) == 0.5f);  // a good step leaves the gradients alone

  p.b.grad(0, 0) = kNaN;
  const StepCheck bad = check_step(1.0, p.list());
  bool threw = false;
  try {
    apply_policy(bad, NonFinitePolicy::stop, p.list());
  } catch (const NonFiniteError& e) {
    threw = true;
    CHECK(e.param() == "b");
    CHECK(std::string(e.what()) ==
          "eigenformer::check_step: gradient of 'b' (1, 4) has 1 non-finite entry of 4 (1 NaN, 0 "
          "inf)");
  }
  CHECK(threw);
  CHECK(std::isnan(p.b.grad(0, 0)));  // stop leaves everything as it was, for inspection
  CHECK_THROWS_AS(apply_policy(bad, NonFinitePolicy::stop, p.list()), std::runtime_error);

  CHECK_FALSE(apply_policy(bad, NonFinitePolicy::skip, p.list()));
  CHECK(p.a.grad.isZero(0));
  CHECK(p.b.grad.isZero(0));
}

TEST_CASE("StepGuard skips a bad step: the weights and the optimizer state stay as they were") {
  Rng rng(3);
  Linear<float> layer(4, 2, rng);
  AdamW<float> opt(layer.parameters(), 1e-2f);
  StepGuard<float> guard(NonFinitePolicy::skip);
  const Matrix<float> x = eftest::random_matrix<float>(5, 4, rng);
  // One step: loss = sum(y); dy = 1. `poison` puts a NaN in the input.
  auto step = [&](bool poison) {
    Matrix<float> in = x;
    if (poison) in(2, 1) = kNaN;
    Linear<float>::Cache cache;
    opt.zero_grad();
    const Matrix<float> y = layer.forward(in, cache);
    const float loss = y.sum();
    layer.backward(Matrix<float>::Ones(y.rows(), y.cols()), cache);
    if (!guard.check(loss, layer.parameters())) return false;
    opt.step();
    return true;
  };
  CHECK(step(false));
  const Matrix<float> w = layer.weight.value, b = layer.bias.value;
  CHECK_FALSE(step(true));
  CHECK(guard.last().what == "loss is nan; gradient of 'weight' (2, 4) has 2 non-finite entries "
                             "of 8 (2 NaN, 0 inf)");
  CHECK(layer.weight.value == w);
  CHECK(layer.bias.value == b);
  CHECK(layer.weight.grad.isZero(0));
  CHECK(opt.steps() == 1);
  CHECK(guard.steps() == 2);
  CHECK(guard.skipped() == 1);
  CHECK(step(false));  // training goes on
  CHECK(opt.steps() == 2);
  CHECK(layer.weight.value.allFinite());
  CHECK(guard.last().ok);
}

TEST_CASE("StepGuard: stop throws with the step number; skip gives up after too many in a row") {
  TwoParams p;
  StepGuard<float> stop(NonFinitePolicy::stop);
  CHECK(stop.check(1.0, p.list()));
  try {
    stop.check(kInf, p.list());
    FAIL("no exception");
  } catch (const NonFiniteError& e) {
    CHECK(std::string(e.what()) == "eigenformer::StepGuard::check: step 2: loss is inf");
    CHECK(e.param().empty());
  }

  StepGuard<float> skip(NonFinitePolicy::skip, 3);
  CHECK_FALSE(skip.check(kNaN, p.list()));
  CHECK_FALSE(skip.check(kNaN, p.list()));
  CHECK(skip.check(1.0, p.list()));  // a good step resets the run of bad ones
  CHECK_FALSE(skip.check(kNaN, p.list()));
  CHECK_FALSE(skip.check(kNaN, p.list()));
  try {
    skip.check(kNaN, p.list());
    FAIL("no exception");
  } catch (const NonFiniteError& e) {
    CHECK(std::string(e.what()) ==
          "eigenformer::StepGuard::check: step 6: 3 bad steps in a row; last: loss is nan");
  }
  CHECK(skip.skipped() == 4);

  StepGuard<float> forever(NonFinitePolicy::skip, 0);
  for (int i = 0; i < 500; ++i) CHECK_FALSE(forever.check(kNaN, p.list()));
  eftest::check_throws_with(
      [] { StepGuard<float>(NonFinitePolicy::skip, -1); },
      {"eigenformer::StepGuard::StepGuard", "'max_consecutive_skips'", "must not be negative",
       "got -1"});
}

TEST_CASE("StepGuard::apply counts and acts on a verdict made elsewhere, as check() would") {
  TwoParams p;
  StepGuard<float> skip(NonFinitePolicy::skip);
  CHECK(skip.apply(check_step(1.0, p.list()), p.list()));
  StepCheck bad = check_step(kNaN, p.list());  // e.g. another rank's verdict, gradients fine
  CHECK_FALSE(skip.apply(bad, p.list()));
  CHECK(p.a.grad.isZero());  // skipped: gradients zeroed as check() zeroes them
  CHECK(skip.steps() == 2);
  CHECK(skip.skipped() == 1);
  CHECK(skip.last().what == "loss is nan");

  StepGuard<float> stop(NonFinitePolicy::stop);
  eftest::check_throws_with<NonFiniteError>(
      [&] { stop.apply(bad, p.list()); }, {"eigenformer::StepGuard::apply: step 1: loss is nan"});
  eftest::check_throws_with<NonFiniteError>([&] { stop.apply(bad, p.list(), "Caller::step"); },
                                            {"eigenformer::Caller::step: step 2: loss is nan"});
  ParamList<float> with_null = p.list();
  with_null.push_back({"gone", nullptr});
  eftest::check_throws_with([&] { stop.apply(bad, with_null); },
                            {"eigenformer::StepGuard::apply", "'params'", "'gone'"});
  CHECK(stop.steps() == 2);  // the bad call counted nothing
}

TEST_CASE("guard entry points reject a policy that is not an enumerator and null parameters") {
  TwoParams p;
  const auto bogus = static_cast<NonFinitePolicy>(7);
  eftest::check_throws_with([&] { StepGuard<float>{bogus}; },
                            {"eigenformer::StepGuard::StepGuard", "'policy'",
                             "is not a NonFinitePolicy (value 7)", "expected stop or skip"});
  p.a.grad(0, 0) = kNaN;
  const StepCheck bad = check_step(1.0, p.list());
  eftest::check_throws_with([&] { apply_policy(bad, bogus, p.list()); },
                            {"eigenformer::apply_policy", "'policy'", "value 7"});
  ParamList<float> with_null = p.list();
  with_null.push_back({"gone", nullptr});
  eftest::check_throws_with([&] { apply_policy(bad, NonFinitePolicy::skip, with_null); },
                            {"eigenformer::apply_policy", "'params'", "null pointer for 'gone'"});
  CHECK(std::isnan(p.a.grad(0, 0)));  // nothing was zeroed

  // StepGuard::check counts nothing when its arguments are bad.
  StepGuard<float> guard(NonFinitePolicy::skip);
  CHECK_FALSE(guard.check(1.0, p.list()));
  eftest::check_throws_with([&] { guard.check(1.0, with_null); },
                            {"eigenformer::StepGuard::check", "'params'", "'gone'"});
  CHECK(guard.steps() == 1);
  CHECK(guard.skipped() == 1);
  CHECK(guard.last().param == "a");
}
