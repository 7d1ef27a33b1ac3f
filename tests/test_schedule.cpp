#include <eigenformer/train/schedule.hpp>

#include <cmath>
#include <limits>

#include "test_util.hpp"

using namespace eigenformer;

TEST_CASE_TEMPLATE("NoamSchedule follows the paper's formula and peaks at step == warmup", Scalar,
                   float, double) {
  const NoamSchedule<Scalar> noam(512, 4000, Scalar(2));
  auto formula = [](double step) {
    return 2.0 / std::sqrt(512.0) * std::min(1.0 / std::sqrt(step), step / std::pow(4000.0, 1.5));
  };
  for (long step : {1L, 10L, 3999L, 4000L, 4001L, 100000L}) {
    CAPTURE(step);
    CHECK(static_cast<double>(noam.lr(step)) ==
          doctest::Approx(formula(static_cast<double>(step))).epsilon(1e-6));
  }
  // Linear warm-up: step 2 gives twice step 1.
  CHECK(static_cast<double>(noam.lr(2)) ==
        doctest::Approx(2.0 * static_cast<double>(noam.lr(1))).epsilon(1e-6));
  const double peak = 2.0 / std::sqrt(512.0 * 4000.0);
  CHECK(static_cast<double>(noam.lr(4000)) == doctest::Approx(peak).epsilon(1e-6));
  CHECK(noam.lr(3999) < noam.lr(4000));
  CHECK(noam.lr(4001) < noam.lr(4000));
  // After the peak it decays as 1 / sqrt(step).
  CHECK(static_cast<double>(noam.lr(16000)) == doctest::Approx(peak / 2).epsilon(1e-6));
}

TEST_CASE_TEMPLATE("ConstantSchedule warms up linearly, then holds", Scalar, float, double) {
  const ConstantSchedule<Scalar> flat(Scalar(0.5));
  CHECK(flat.lr(1) == Scalar(0.5));
  CHECK(flat.lr(1000000) == Scalar(0.5));
  const ConstantSchedule<Scalar> warm(Scalar(0.5), 4);
  CHECK(warm.lr(1) == Scalar(0.125));
  CHECK(warm.lr(2) == Scalar(0.25));
  CHECK(warm.lr(4) == Scalar(0.5));
  CHECK(warm.lr(5) == Scalar(0.5));
}

TEST_CASE_TEMPLATE("CosineSchedule warms up, decays along a half cosine, then holds min_lr", Scalar,
                   float, double) {
  const CosineSchedule<Scalar> cos(Scalar(1.0), 10, 110, Scalar(0.1));
  CHECK(static_cast<double>(cos.lr(1)) == doctest::Approx(0.1));
  CHECK(static_cast<double>(cos.lr(5)) == doctest::Approx(0.5));
  CHECK(cos.lr(10) == Scalar(1.0));
  // A quarter of the way: 0.1 + 0.9 (1 + cos(pi / 4)) / 2.
  const double quarter = 0.1 + 0.9 * 0.5 * (1.0 + std::cos(3.141592653589793 / 4));
  CHECK(static_cast<double>(cos.lr(35)) == doctest::Approx(quarter).epsilon(1e-6));
  CHECK(static_cast<double>(cos.lr(60)) == doctest::Approx(0.55).epsilon(1e-6));
  CHECK(static_cast<double>(cos.lr(109)) > 0.1);
  CHECK(cos.lr(110) == Scalar(0.1));
  CHECK(cos.lr(1000) == Scalar(0.1));
  for (long s = 11; s < 110; ++s) CHECK(cos.lr(s + 1) <= cos.lr(s));

  // No warm-up: starts just below the peak; total == warmup: straight from the peak to min_lr.
  const CosineSchedule<Scalar> no_warmup(Scalar(2.0), 0, 4);
  CHECK(static_cast<double>(no_warmup.lr(1)) ==
        doctest::Approx(1.0 + std::cos(3.141592653589793 / 4)));
  CHECK(no_warmup.lr(4) == Scalar(0));
  const CosineSchedule<Scalar> step_down(Scalar(2.0), 3, 3, Scalar(1));
  CHECK(step_down.lr(3) == Scalar(2));
  CHECK(step_down.lr(4) == Scalar(1));
}

TEST_CASE("apply_schedule sets the rate for the optimizer's next step") {
  Param<double> p(1, 2);
  SGD<double> opt({{"p", &p}}, 0.0);
  const ConstantSchedule<double> warm(1.0, 4);
  CHECK(apply_schedule(opt, warm) == 0.25);
  CHECK(opt.lr() == 0.25);
  opt.step();
  opt.step();
  CHECK(apply_schedule(opt, warm) == 0.75);
  CHECK(opt.lr() == 0.75);
}

TEST_CASE("Schedules reject bad arguments and steps before 1") {
  eftest::check_throws_with([] { NoamSchedule<float>(0, 10); },
                            {"NoamSchedule::NoamSchedule", "'d_model'", "must be positive, got 0"});
  eftest::check_throws_with([] { NoamSchedule<float>(512, 0); },
                            {"NoamSchedule::NoamSchedule", "'warmup'", "must be positive, got 0"});
  eftest::check_throws_with([] { NoamSchedule<float>(512, 10, -1.f); },
                            {"NoamSchedule::NoamSchedule", "'factor'", "must be in [0, inf)",
                             "got -1"});
  eftest::check_throws_with([] { NoamSchedule<float>(512, 10).lr(0); },
                            {"NoamSchedule::lr", "'step'", "must be >= 1", "got 0"});
  eftest::check_throws_with([] { ConstantSchedule<float>(-1.f); },
                            {"ConstantSchedule::ConstantSchedule", "'lr'", "must be in [0, inf)",
                             "got -1"});
  eftest::check_throws_with(
      [] { ConstantSchedule<float>{std::numeric_limits<float>::quiet_NaN()}; },
      {"ConstantSchedule::ConstantSchedule", "'lr'", "got nan"});
  eftest::check_throws_with([] { ConstantSchedule<float>(1.f, -2); },
                            {"ConstantSchedule::ConstantSchedule", "'warmup'", "must be >= 0",
                             "got -2"});
  eftest::check_throws_with([] { ConstantSchedule<float>(1.f).lr(-3); },
                            {"ConstantSchedule::lr", "'step'", "must be >= 1", "got -3"});
  eftest::check_throws_with([] { CosineSchedule<float>(1.f, 10, 5); },
                            {"CosineSchedule::CosineSchedule", "'total_steps'",
                             "must be >= 1 and >= warmup (10)", "got 5"});
  eftest::check_throws_with([] { CosineSchedule<float>(1.f, 0, 0); },
                            {"CosineSchedule::CosineSchedule", "'total_steps'", "got 0"});
  eftest::check_throws_with([] { CosineSchedule<float>(1.f, 1, 5, 2.f); },
                            {"CosineSchedule::CosineSchedule", "'min_lr'", "must be in [0, 1]",
                             "got 2"});
  eftest::check_throws_with([] { CosineSchedule<float>(-1.f, 1, 5); },
                            {"CosineSchedule::CosineSchedule", "'peak_lr'", "got -1"});
  eftest::check_throws_with([] { CosineSchedule<float>(1.f, -1, 5); },
                            {"CosineSchedule::CosineSchedule", "'warmup'", "must be >= 0",
                             "got -1"});
  eftest::check_throws_with([] { CosineSchedule<float>(1.f, 1, 5).lr(0); },
                            {"CosineSchedule::lr", "'step'", "must be >= 1", "got 0"});
}
