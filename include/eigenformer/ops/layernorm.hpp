// Layer normalisation over the last (feature) dimension, as PyTorch's nn.LayerNorm:
//   out = (inp - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps),
// with the biased variance of each row. The variance is taken of the centred row (two passes), so
// rows with a large offset (|x| ~ 1e6) keep their precision.
#pragma once

#include <cmath>
#include <sstream>
#include <string>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless eps is a positive finite number.
template <class Scalar>
void check_eps(const std::string& func, Scalar eps) {
  if (eps > Scalar(0) && std::isfinite(eps)) return;
  std::ostringstream got;
  got << eps;
  throw_argument(func, "eps", "must be positive and finite, got " + got.str());
}

}  // namespace detail

/// out (N, C) = normalised rows of inp (N, C) scaled by gamma (1, C) and shifted by beta (1, C);
/// mean (N, 1) and rstd (N, 1) are kept for the backward pass.
template <class Scalar>
void layernorm_forward(Matrix<Scalar>& out, Matrix<Scalar>& mean, Matrix<Scalar>& rstd,
                       ConstRef<Scalar> inp, ConstRef<Scalar> gamma, ConstRef<Scalar> beta,
                       Scalar eps) {
  const Index N = inp.rows(), C = inp.cols();
  detail::require(C > 0, "layernorm_forward", "inp",
                  "has shape " + detail::shape_of(inp) + ", expected at least one column");
  detail::check_shape("layernorm_forward", "gamma", gamma, 1, C);
  detail::check_shape("layernorm_forward", "beta", beta, 1, C);
  detail::check_eps("layernorm_forward", eps);
  out.resize(N, C);
  mean.resize(N, 1);
  rstd.resize(N, 1);
  detail::parallel_for(N, 8.0 * static_cast<double>(C), [&](Index i) {
    const Scalar m = inp.row(i).mean();
    const Scalar var = (inp.row(i).array() - m).square().mean();
    const Scalar r = Scalar(1) / std::sqrt(var + eps);
    out.row(i).array() = (inp.row(i).array() - m) * r * gamma.row(0).array() + beta.row(0).array();
    mean(i, 0) = m;
    rstd(i, 0) = r;
  });
}

/// With norm = (inp - mean) * rstd and dnorm = dout * gamma:
///   dinp (N, C) = rstd * (dnorm - rowmean(dnorm) - norm * rowmean(dnorm * norm)), fresh;
///   dgamma (1, C) += column sums of dout * norm;  dbeta (1, C) += column sums of dout.
/// dgamma and dbeta may be null (not wanted).
template <class Scalar>
void layernorm_backward(Matrix<Scalar>& dinp, Matrix<Scalar>* dgamma, Matrix<Scalar>* dbeta,
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
  detail::parallel_for(N, 12.0 * static_cast<double>(C), [&](Index i) {
    const Scalar m = mean(i, 0), r = rstd(i, 0);
    const Scalar dnorm_mean = (dout.row(i).array() * gamma.row(0).array()).mean();
    const Scalar dnorm_norm_mean =
        (dout.row(i).array() * gamma.row(0).array() * (inp.row(i).array() - m)).mean() * r;
    dinp.row(i).array() = r * (dout.row(i).array() * gamma.row(0).array() - dnorm_mean -
                               (inp.row(i).array() - m) * (r * dnorm_norm_mean));
  });
  if (dbeta) *dbeta += dout.colwise().sum();
  if (dgamma) {
    for (Index i = 0; i < N; ++i)
      dgamma->row(0).array() += dout.row(i).array() * (inp.row(i).array() - mean(i, 0)) * rstd(i, 0);
  }
}

}  // namespace eigenformer
