// Learning-rate schedules: small classes whose lr(step) gives the rate for update number step,
// counting from 1 (the first optimizer.step() is step 1).
//
//   NoamSchedule<float> schedule(512, 4000);
//   for (...) {
//     apply_schedule(opt, schedule);  // opt.set_lr(schedule.lr(opt.steps() + 1))
//     opt.step();
//   }
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "../core/precompiled.hpp"
#include "optim.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless step >= 1.
inline void check_step(std::string_view func, long step) {
  require(step >= 1, func, "step",
          [&] { return "must be >= 1 (steps count from 1), got " + std::to_string(step); });
}

/// Throws unless value >= 0.
inline void check_nonnegative_steps(std::string_view func, std::string_view arg, long value) {
  require(value >= 0, func, arg, [&] { return "must be >= 0, got " + std::to_string(value); });
}

/// step / warmup while step < warmup, 1 after (and with no warm-up).
inline double warmup_fraction(long step, long warmup) {
  if (step >= warmup) return 1.0;
  return static_cast<double>(step) / static_cast<double>(warmup);
}

}  // namespace detail

/// "Attention Is All You Need", section 5.3:
/// factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), rising linearly to its peak
/// factor / sqrt(d_model * warmup) at step == warmup, then decaying as 1 / sqrt(step).
template <class Scalar = float>
class NoamSchedule {
 public:
  /// Throws ArgumentError naming NoamSchedule::NoamSchedule unless d_model and warmup are positive
  /// and factor is finite and >= 0.
  NoamSchedule(Index d_model, long warmup, Scalar factor = 1);

  /// The rate of update number step (counting from 1). Throws ArgumentError unless step >= 1.
  Scalar lr(long step) const;

 private:
  Index d_model_;
  long warmup_;
  Scalar factor_;
};

template <class Scalar>
NoamSchedule<Scalar>::NoamSchedule(Index d_model, long warmup, Scalar factor)
    : d_model_(d_model), warmup_(warmup), factor_(factor) {
  detail::check_positive("NoamSchedule::NoamSchedule", "d_model", d_model);
  detail::check_positive("NoamSchedule::NoamSchedule", "warmup", warmup);
  detail::check_range("NoamSchedule::NoamSchedule", "factor", factor, 0.0, HUGE_VAL, false);
}

template <class Scalar>
auto NoamSchedule<Scalar>::lr(long step) const -> Scalar {
  detail::check_step("NoamSchedule::lr", step);
  const double s = static_cast<double>(step);
  const double rate =
      std::min(1.0 / std::sqrt(s), s * std::pow(static_cast<double>(warmup_), -1.5));
  return static_cast<Scalar>(static_cast<double>(factor_) * rate /
                             std::sqrt(static_cast<double>(d_model_)));
}

/// lr * step / warmup during the first warmup steps, then lr; warmup 0 means constant throughout.
template <class Scalar = float>
class ConstantSchedule {
 public:
  /// Throws ArgumentError naming ConstantSchedule::ConstantSchedule unless lr is finite and >= 0
  /// and warmup >= 0.
  explicit ConstantSchedule(Scalar lr, long warmup = 0);

  /// The rate of update number step (counting from 1). Throws ArgumentError unless step >= 1.
  Scalar lr(long step) const;

 private:
  Scalar lr_;
  long warmup_;
};

template <class Scalar>
ConstantSchedule<Scalar>::ConstantSchedule(Scalar lr, long warmup) : lr_(lr), warmup_(warmup) {
  detail::check_range("ConstantSchedule::ConstantSchedule", "lr", lr, 0.0, HUGE_VAL, false);
  detail::check_nonnegative_steps("ConstantSchedule::ConstantSchedule", "warmup", warmup);
}

template <class Scalar>
auto ConstantSchedule<Scalar>::lr(long step) const -> Scalar {
  detail::check_step("ConstantSchedule::lr", step);
  return static_cast<Scalar>(static_cast<double>(lr_) * detail::warmup_fraction(step, warmup_));
}

/// Linear warm-up to peak_lr over warmup steps, then a half cosine from peak_lr down to min_lr at
/// total_steps, then min_lr:
///   lr = min_lr + (peak_lr - min_lr) (1 + cos(pi (step - warmup) / (total_steps - warmup))) / 2.
template <class Scalar = float>
class CosineSchedule {
 public:
  /// Throws ArgumentError naming CosineSchedule::CosineSchedule unless peak_lr is finite and >= 0,
  /// 0 <= min_lr <= peak_lr, warmup >= 0 and total_steps >= max(1, warmup).
  CosineSchedule(Scalar peak_lr, long warmup, long total_steps, Scalar min_lr = 0);

  /// The rate of update number step (counting from 1). Throws ArgumentError unless step >= 1.
  Scalar lr(long step) const;

 private:
  Scalar peak_, min_;
  long warmup_, total_;
};

template <class Scalar>
CosineSchedule<Scalar>::CosineSchedule(Scalar peak_lr, long warmup, long total_steps, Scalar min_lr)
    : peak_(peak_lr), min_(min_lr), warmup_(warmup), total_(total_steps) {
  const char* func = "CosineSchedule::CosineSchedule";
  detail::check_range(func, "peak_lr", peak_lr, 0.0, HUGE_VAL, false);
  detail::check_range(func, "min_lr", min_lr, 0.0, static_cast<double>(peak_lr));
  detail::check_nonnegative_steps(func, "warmup", warmup);
  detail::require(total_steps >= 1 && total_steps >= warmup, func, "total_steps", [&] {
    return "must be >= 1 and >= warmup (" + std::to_string(warmup) + "), got " +
           std::to_string(total_steps);
  });
}

template <class Scalar>
auto CosineSchedule<Scalar>::lr(long step) const -> Scalar {
  detail::check_step("CosineSchedule::lr", step);
  const double peak = static_cast<double>(peak_), floor = static_cast<double>(min_);
  if (step <= warmup_) return static_cast<Scalar>(peak * detail::warmup_fraction(step, warmup_));
  if (step >= total_) return min_;
  constexpr double pi = 3.141592653589793238462643383279502884;
  const double progress =
      static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
  return static_cast<Scalar>(floor + (peak - floor) * 0.5 * (1.0 + std::cos(pi * progress)));
}

/// Sets opt's learning rate to the schedule's for the coming update (step opt.steps() + 1) and
/// returns it.
template <class Scalar, class Schedule>
Scalar apply_schedule(Optimizer<Scalar>& opt, const Schedule& schedule) {
  const Scalar lr = schedule.lr(opt.steps() + 1);
  opt.set_lr(lr);
  return lr;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(NoamSchedule)
EIGENFORMER_CLASS_TEMPLATES(ConstantSchedule)
EIGENFORMER_CLASS_TEMPLATES(CosineSchedule)

}  // namespace eigenformer
