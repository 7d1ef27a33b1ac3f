// Finite-difference gradient checking, for tests of hand-written backward passes.
//
// Use it in double: pick a random R of the output's shape, let loss() = <y(x), R>, run backward with
// dy = R to get the analytic gradient, then compare it entry by entry with central differences
// (loss(x + eps) - loss(x - eps)) / (2 eps).
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "../core/tensor.hpp"

namespace eigenformer {

struct GradCheckResult {
  bool ok = true;
  double worst_ratio = 0.0;  // max over entries of |a - n| / (atol + rtol * max(|a|, |n|)); ok iff <= 1
  Index worst_row = -1, worst_col = -1;
  double analytic = 0.0, numeric = 0.0;  // at the worst entry
};

struct GradCheckOptions {
  double eps = 1e-5;
  double rtol = 1e-6;
  double atol = 1e-8;
};

namespace detail {

/// Throws unless value is finite and > 0 (or >= 0 when zero is allowed).
inline void check_gradcheck_value(std::string_view arg, double value, bool zero_ok) {
  if (std::isfinite(value) && (value > 0 || (zero_ok && value == 0))) return;
  std::ostringstream got;
  got << value;
  throw_argument("check_gradient", arg,
                 std::string(zero_ok ? "must be finite and >= 0" : "must be positive and finite") +
                     ", got " + got.str());
}

}  // namespace detail

/// Checks `analytic` against central differences of loss() with respect to every entry of x.
/// loss() must recompute the scalar from the current value of x; x is restored afterwards.
/// ok is worst_ratio <= 1 (see GradCheckResult). Throws ArgumentError naming check_gradient
/// unless analytic has x's shape, opt.eps is positive and finite, and opt.rtol and opt.atol are
/// finite, >= 0 and not both 0. Exceptions from loss() pass through (x is then not restored).
template <class Loss>
GradCheckResult check_gradient(Matrix<double>& x, const Matrix<double>& analytic, Loss&& loss,
                               const GradCheckOptions& opt = {}) {
  detail::check_shape("check_gradient", "analytic", analytic, x.rows(), x.cols());
  detail::check_gradcheck_value("opt.eps", opt.eps, false);
  detail::check_gradcheck_value("opt.rtol", opt.rtol, true);
  detail::check_gradcheck_value("opt.atol", opt.atol, true);
  detail::require(opt.rtol > 0 || opt.atol > 0, "check_gradient", "opt",
                  "has rtol = atol = 0, expected at least one positive tolerance");
  GradCheckResult r;
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double saved = x(i, j);
      x(i, j) = saved + opt.eps;
      const double up = loss();
      x(i, j) = saved - opt.eps;
      const double down = loss();
      x(i, j) = saved;
      const double numeric = (up - down) / (2.0 * opt.eps);
      const double a = analytic(i, j);
      const double ratio = std::abs(a - numeric) /
                           (opt.atol + opt.rtol * std::max(std::abs(a), std::abs(numeric)));
      if (!(ratio <= r.worst_ratio) || r.worst_row < 0) {
        r.worst_ratio = ratio;
        r.worst_row = i;
        r.worst_col = j;
        r.analytic = a;
        r.numeric = numeric;
      }
    }
  }
  r.ok = r.worst_ratio <= 1.0;
  return r;
}

/// <a, b>: the scalar loss of a random projection.
/// Throws ArgumentError naming projection unless b has a's shape.
inline double projection(ConstRef<double> a, ConstRef<double> b) {
  detail::check_shape("projection", "b", b, a.rows(), a.cols());
  return (a.array() * b.array()).sum();
}

}  // namespace eigenformer
