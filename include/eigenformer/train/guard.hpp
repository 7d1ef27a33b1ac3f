// Guarding a training step against a loss or gradient that is NaN or infinite.
//
// After backward and before clipping and the optimizer step, either stop the run (throw
// NonFiniteError, naming the loss or the first bad parameter) or skip the step (zero the
// gradients, leave the weights and the optimizer's state untouched):
//
//   StepGuard<float> guard(NonFinitePolicy::skip);
//   for (...) {
//     opt.zero_grad();
//     float loss = ... forward, loss, backward ...;
//     if (!guard.check(loss, model.parameters())) continue;  // skipped: guard.last().what says why
//     clip_grad_norm(model.parameters(), 1.0f);
//     opt.step();
//   }
//
// The free functions check_step() and apply_policy() are the same steps without the counters.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "../core/error.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"

namespace eigenformer {

/// A loss or gradient was NaN or infinite and the policy said stop.
class NonFiniteError : public std::runtime_error {
 public:
  /// what() is message; param is the first parameter with a non-finite gradient (empty when the
  /// loss was the problem).
  NonFiniteError(const std::string& message, std::string param)
      : std::runtime_error(message), param_(std::move(param)) {}
  /// The name of the first parameter with a non-finite gradient; empty when the loss was.
  const std::string& param() const { return param_; }

 private:
  std::string param_;
};

/// What to do with a step whose loss or gradients are not finite.
enum class NonFinitePolicy {
  stop,  // throw NonFiniteError
  skip,  // zero the gradients and skip the optimizer step
};

namespace detail {

/// Throws unless policy is one of the enumerators.
inline void check_policy(std::string_view func, NonFinitePolicy policy) {
  require(policy == NonFinitePolicy::stop || policy == NonFinitePolicy::skip, func, "policy", [&] {
    return "is not a NonFinitePolicy (value " + std::to_string(static_cast<int>(policy)) +
           "), expected stop or skip";
  });
}

/// Throws unless every parameter pointer is set.
template <class Scalar>
void check_params_not_null(std::string_view func, const ParamList<Scalar>& params) {
  for (const auto& p : params)
    require(p.param != nullptr, func, "params",
            [&] { return "has a null pointer for '" + p.name + "'"; });
}

}  // namespace detail

/// The verdict on one step.
struct StepCheck {
  bool ok = true;            // the loss and every gradient entry are finite
  std::string what;          // when not ok: what went bad, e.g. "loss is nan" or
                             // "gradient of 'w' (2, 3) has 2 non-finite entries of 6 (...)"
  std::string param;         // the first parameter with a non-finite gradient; empty if none
  Index bad_entries = 0;     // its non-finite gradient entries
  Index bad_params = 0;      // parameters with a non-finite gradient
  /// ok: whether the step may go ahead.
  explicit operator bool() const { return ok; }
};

/// Checks the loss, then every gradient in order. The message names the loss, or the first bad
/// parameter with its shape, its count of NaN and infinite entries, and how many other parameters
/// are bad. Throws ArgumentError for a null parameter.
template <class Scalar>
StepCheck check_step(double loss, const ParamList<Scalar>& params) {
  detail::check_params_not_null("check_step", params);
  StepCheck c;
  for (const auto& p : params) {
    const auto& g = p.param->grad;
    if (detail::all_finite(g)) continue;
    ++c.bad_params;
    if (c.bad_params > 1) continue;
    const Index nan = g.array().isNaN().count();
    const Index inf = g.array().isInf().count();
    c.param = p.name;
    c.bad_entries = nan + inf;
    c.what = "gradient of '" + p.name + "' " + detail::shape_of(g) + " has " +
             std::to_string(c.bad_entries) + " non-finite entr" +
             (c.bad_entries == 1 ? "y" : "ies") + " of " + std::to_string(g.size()) + " (" +
             std::to_string(nan) + " NaN, " + std::to_string(inf) + " inf)";
  }
  if (c.bad_params > 1)
    c.what += "; " + std::to_string(c.bad_params - 1) + " more parameter" +
              (c.bad_params > 2 ? "s have" : " has") + " non-finite gradients";
  if (!std::isfinite(loss)) {
    const std::string l = std::isnan(loss) ? "nan" : (loss > 0 ? "inf" : "-inf");
    c.what = "loss is " + l + (c.what.empty() ? "" : "; " + c.what);
  }
  c.ok = c.what.empty();
  return c;
}

/// Applies policy to a check: true if the step may go ahead. On a bad step, stop throws
/// NonFiniteError (message "eigenformer::<where>: <check.what>"); skip zeroes every gradient in
/// params and returns false. Throws ArgumentError for a policy that is not an enumerator or a null
/// parameter.
template <class Scalar>
bool apply_policy(const StepCheck& check, NonFinitePolicy policy, const ParamList<Scalar>& params,
                  const std::string& where = "check_step") {
  detail::check_policy("apply_policy", policy);
  detail::check_params_not_null("apply_policy", params);
  if (check.ok) return true;
  if (policy == NonFinitePolicy::stop)
    throw NonFiniteError("eigenformer::" + where + ": " + check.what, check.param);
  zero_grad(params);
  return false;
}

/// check_step then apply_policy (or, through apply(), the policy on a verdict made elsewhere),
/// counting steps and skips. With skip, a run that keeps failing is stopped anyway after
/// max_consecutive_skips bad steps in a row (0: never).
template <class Scalar = float>
class StepGuard {
 public:
  /// Throws ArgumentError naming StepGuard::StepGuard unless policy is stop or skip and
  /// max_consecutive_skips >= 0.
  explicit StepGuard(NonFinitePolicy policy = NonFinitePolicy::stop,
                     long max_consecutive_skips = 100);

  /// True if the optimizer may step; false (gradients zeroed) for a skipped step. Throws
  /// NonFiniteError under stop, or after too many skips in a row; the message gives the step
  /// number (counting from 1).
  /// Throws ArgumentError for a null parameter, before counting the step.
  bool check(double loss, const ParamList<Scalar>& params);

  /// check() on a verdict already made, e.g. one combined over the ranks of a data-parallel
  /// run: counts the step and applies the policy to it, without checking the gradients again.
  /// Returns and throws as check(), its messages naming func (e.g. "eigenformer::<func>: step 3:
  /// loss is nan").
  bool apply(StepCheck verdict, const ParamList<Scalar>& params,
             const char* func = "StepGuard::apply");

  /// The policy; the steps checked so far, and those of them skipped; the last verdict.
  NonFinitePolicy policy() const { return policy_; }
  long steps() const { return steps_; }      // calls to check() and apply()
  long skipped() const { return skipped_; }  // steps skipped
  const StepCheck& last() const { return last_; }

 private:
  NonFinitePolicy policy_;
  long max_consecutive_;
  long steps_ = 0, skipped_ = 0, consecutive_ = 0;
  StepCheck last_;

  bool count(StepCheck verdict, const ParamList<Scalar>& params, const char* func);
};

template <class Scalar>
StepGuard<Scalar>::StepGuard(NonFinitePolicy policy, long max_consecutive_skips)
    : policy_(policy), max_consecutive_(max_consecutive_skips) {
  detail::check_policy("StepGuard::StepGuard", policy);
  detail::require(max_consecutive_skips >= 0, "StepGuard::StepGuard", "max_consecutive_skips", [&] {
    return "must not be negative, got " + std::to_string(max_consecutive_skips);
  });
}

template <class Scalar>
auto StepGuard<Scalar>::check(double loss, const ParamList<Scalar>& params) -> bool {
  detail::check_params_not_null("StepGuard::check", params);  // before counting anything
  return count(check_step(loss, params), params, "StepGuard::check");
}

template <class Scalar>
auto StepGuard<Scalar>::apply(StepCheck verdict, const ParamList<Scalar>& params,
                              const char* func) -> bool {
  detail::check_params_not_null(func, params);
  return count(std::move(verdict), params, func);
}

template <class Scalar>
auto StepGuard<Scalar>::count(StepCheck verdict, const ParamList<Scalar>& params,
                              const char* func) -> bool {
  ++steps_;
  last_ = std::move(verdict);
  if (last_.ok) {
    consecutive_ = 0;
    return true;
  }
  ++consecutive_;
  const std::string where = std::string(func) + ": step " + std::to_string(steps_);
  if (policy_ == NonFinitePolicy::skip && max_consecutive_ > 0 && consecutive_ >= max_consecutive_)
    throw NonFiniteError("eigenformer::" + where + ": " + std::to_string(consecutive_) +
                             " bad steps in a row; last: " + last_.what,
                         last_.param);
  apply_policy(last_, policy_, params, where);
  ++skipped_;
  return false;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_GUARD_TEMPLATES(S)                                                    \
  EIGENFORMER_FOR(S, StepCheck check_step<S>(double loss, const ParamList<S>& params))    \
  EIGENFORMER_FOR(S, bool apply_policy<S>(const StepCheck& check, NonFinitePolicy policy, \
                                          const ParamList<S>& params, const std::string& where))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_GUARD_TEMPLATES)
EIGENFORMER_CLASS_TEMPLATES(StepGuard)
// clang-format on

}  // namespace eigenformer
