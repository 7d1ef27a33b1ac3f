// Layer normalisation over the last (feature) dimension, as PyTorch's nn.LayerNorm:
//   out = (inp - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps),
// with the biased variance of each row. The variance is taken of the centred row (two passes).
//
// Rows far from zero (|mean| above the row's standard deviation, e.g. values 1e6 +- 1): the
// rounded mean of such a row is off by a few ulps of the mean, which can be much more than the
// spread, so every centred value (and the output and gradients) would be wrong by as much. Those
// rows are centred twice: x - m0 is exact for values near m0 (Sterbenz), and the mean of those
// differences is the small correction the first mean missed. Rows whose spread is at least their
// mean, the common case, skip the extra passes and compute exactly what they did before.
#pragma once

#include <cmath>
#include <sstream>
#include <string>

#include "../core/grad.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless eps is a positive finite number.
template <class Scalar>
void check_eps(std::string_view func, Scalar eps) {
  if (eps > Scalar(0) && std::isfinite(eps)) return;
  std::ostringstream got;
  got << eps;
  throw_argument(func, "eps", "must be positive and finite, got " + got.str());
}

/// A row whose |mean| exceeds its standard deviation times this is centred twice (see the top of
/// the file). Below it the float mean's rounding is at most that of the centred values' own sum.
constexpr double kLayerNormRecentre = 1.0;

/// Mean of inp's row i minus `centre`: the part of the row's mean that `centre` missed.
template <class Scalar>
Scalar layernorm_mean_offset(ConstRef<Scalar> inp, Index i, Scalar centre) {
  return (inp.row(i).array() - centre).mean();
}

}  // namespace detail

/// out (N, C) = normalised rows of inp (N, C) scaled by gamma (1, C) and shifted by beta (1, C);
/// mean (N, 1) and rstd (N, 1) are kept for the backward pass.
template <class Scalar>
void layernorm_forward(Matrix<Scalar>& out, Matrix<Scalar>& mean, Matrix<Scalar>& rstd,
                       ConstRef<Scalar> inp, ConstRef<Scalar> gamma, ConstRef<Scalar> beta,
                       Scalar eps) {
  const Index N = inp.rows(), C = inp.cols();
  detail::require(C > 0, "layernorm_forward", "inp", [&] {
    return "has shape " + detail::shape_of(inp) + ", expected at least one column";
  });
  detail::check_shape("layernorm_forward", "gamma", gamma, 1, C);
  detail::check_shape("layernorm_forward", "beta", beta, 1, C);
  detail::check_eps("layernorm_forward", eps);
  out.resize(N, C);
  mean.resize(N, 1);
  rstd.resize(N, 1);
  detail::parallel_for(N, 8.0 * static_cast<double>(C), [&](Index i) {
    const Scalar m0 = inp.row(i).mean();
    Scalar var = (inp.row(i).array() - m0).square().mean();
    Scalar dm = 0;  // what m0 missed of the mean
    if (std::abs(m0) > Scalar(detail::kLayerNormRecentre) * std::sqrt(var)) {
      dm = detail::layernorm_mean_offset(inp, i, m0);
      var = ((inp.row(i).array() - m0) - dm).square().mean();
    }
    const Scalar r = Scalar(1) / std::sqrt(var + eps);
    auto write = [&](const auto& centred) {  // (1, C) expression of the centred row
      out.row(i).array() = centred * r * gamma.row(0).array() + beta.row(0).array();
    };
    // Without a correction, the expression without it: the common case stays as fast as before.
    if (dm == Scalar(0))
      write(inp.row(i).array() - m0);
    else
      write((inp.row(i).array() - m0) - dm);
    mean(i, 0) = m0 + dm;
    rstd(i, 0) = r;
  });
}

/// With norm = (inp - mean) * rstd and dnorm = dout * gamma:
///   dinp (N, C) = rstd * (dnorm - rowmean(dnorm) - norm * rowmean(dnorm * norm)), fresh;
///   dgamma (1, C) += column sums of dout * norm;  dbeta (1, C) += column sums of dout.
/// dgamma and dbeta may be null (not wanted).
template <class Scalar>
void layernorm_backward(Matrix<Scalar>& dinp, GradOut<Scalar> dgamma, GradOut<Scalar> dbeta,
                        ConstRef<Scalar> dout, ConstRef<Scalar> inp, ConstRef<Scalar> gamma,
                        ConstRef<Scalar> mean, ConstRef<Scalar> rstd) {
  const Index N = inp.rows(), C = inp.cols();
  detail::check_shape("layernorm_backward", "dout", dout, N, C);
  detail::check_shape("layernorm_backward", "gamma", gamma, 1, C);
  detail::check_shape("layernorm_backward", "mean", mean, N, 1);
  detail::check_shape("layernorm_backward", "rstd", rstd, N, 1);
  if (dgamma) detail::check_shape("layernorm_backward", "dgamma", *dgamma, 1, C);
  if (dbeta) detail::check_shape("layernorm_backward", "dbeta", *dbeta, 1, C);
  dinp.resize(N, C);
  // The part of each row's mean that the rounded `mean` misses: zero for rows near zero; for rows
  // far from zero, the mean of x - mean (exact differences), as in the forward pass.
  Matrix<Scalar> mean_lo(N, 1);  // (N, 1)
  detail::parallel_for(N, 12.0 * static_cast<double>(C), [&](Index i) {
    const Scalar m = mean(i, 0), r = rstd(i, 0);
    const Scalar lo = std::abs(m) * r > Scalar(detail::kLayerNormRecentre)
                          ? detail::layernorm_mean_offset(inp, i, m)
                          : Scalar(0);
    mean_lo(i, 0) = lo;
    auto write = [&](const auto& centred) {  // (1, C) expression of the centred row
      const Scalar dnorm_mean = (dout.row(i).array() * gamma.row(0).array()).mean();
      const Scalar dnorm_norm_mean =
          (dout.row(i).array() * gamma.row(0).array() * centred).mean() * r;
      dinp.row(i).array() = r * (dout.row(i).array() * gamma.row(0).array() - dnorm_mean -
                                 centred * (r * dnorm_norm_mean));
    };
    if (lo == Scalar(0))
      write(inp.row(i).array() - m);
    else
      write((inp.row(i).array() - m) - lo);
  });
  // Row by row: a column sum of a row-major matrix would stride through memory.
  for (Index i = 0; i < N; ++i) {
    if (dbeta) dbeta->row(0) += dout.row(i);
    if (dgamma)
      dgamma->row(0).array() +=
          dout.row(i).array() * ((inp.row(i).array() - mean(i, 0)) - mean_lo(i, 0)) * rstd(i, 0);
  }
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_LAYERNORM_TEMPLATES(S)                                                       \
  EIGENFORMER_FOR(                                                                               \
      S, void layernorm_forward<S>(Matrix<S>& out, Matrix<S>& mean, Matrix<S>& rstd,          \
                                   ConstRef<S> inp, ConstRef<S> gamma, ConstRef<S> beta, S eps)) \
  EIGENFORMER_FOR(                                                                               \
      S, void layernorm_backward<S>(Matrix<S>& dinp, GradOut<S> dgamma, GradOut<S> dbeta,     \
                                    ConstRef<S> dout, ConstRef<S> inp, ConstRef<S> gamma,        \
                                    ConstRef<S> mean, ConstRef<S> rstd))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_LAYERNORM_TEMPLATES)
// clang-format on

}  // namespace eigenformer
