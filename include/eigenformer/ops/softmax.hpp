// Row-wise softmax, numerically stable (the row maximum is subtracted before exp).
#pragma once

#include <cmath>
#include <limits>

#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// In place: row <- exp(row - shift), with entries of -inf (masked) exactly 0; shift is finite.
/// Written as exp, then max(y - FLT_MIN, 0) rather than a select on the masked entries: Eigen
/// 3.4 evaluates a select one scalar at a time, through libm's exp (255 ns for a row of 128
/// floats against 25 ns vectorised, AVX-512), and its vectorised exp is not documented to give
/// exactly 0 for -inf. Subtracting the smallest normal number leaves every exp above 2^-100
/// (float; 2^-960 double) unchanged and sends the denormal range, -inf's image included, to 0.
/// Eigen's vectorised exp differs from libm's by a few ulp, and a row's unaligned ends still go
/// through libm, so the same score may round differently in another column.
template <class Row, class Scalar>
void exp_shifted_row(Row&& row, Scalar shift) {
  row = ((row.array() - shift).exp() - std::numeric_limits<Scalar>::min()).max(Scalar(0));
}

/// In place: row <- softmax(row). Entries equal to -inf get probability 0; a row that is all -inf
/// becomes all zeros (a query with no visible key attends to nothing), never NaN.
template <class Row>
void softmax_row_inplace(Row&& row) {
  using Scalar = typename std::decay_t<Row>::Scalar;
  const Scalar max = row.maxCoeff();
  if (max == -std::numeric_limits<Scalar>::infinity()) {
    row.setZero();
    return;
  }
  exp_shifted_row(row, max);
  row /= row.sum();
}

}  // namespace detail

/// out (N, C) = softmax of each row of inp (N, C).
template <class Scalar>
void softmax_forward(Matrix<Scalar>& out, ConstRef<Scalar> inp) {
  out = inp;
  detail::parallel_for(out.rows(), 8.0 * static_cast<double>(out.cols()),
                       [&](Index i) { detail::softmax_row_inplace(out.row(i)); });
}

/// dinp (N, C) = out * (dout - rowsum(dout * out)), fresh; out is the forward's output.
template <class Scalar>
void softmax_backward(Matrix<Scalar>& dinp, ConstRef<Scalar> dout, ConstRef<Scalar> out) {
  detail::check_shape("softmax_backward", "dout", dout, out.rows(), out.cols());
  dinp.resize(out.rows(), out.cols());
  detail::parallel_for(out.rows(), 4.0 * static_cast<double>(out.cols()), [&](Index i) {
    const Scalar dot = out.row(i).dot(dout.row(i));
    dinp.row(i) = out.row(i).array() * (dout.row(i).array() - dot);
  });
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_SOFTMAX_TEMPLATES(S)                                        \
  EIGENFORMER_FOR(S, void softmax_forward<S>(Matrix<S>& out, ConstRef<S> inp)) \
  EIGENFORMER_FOR(S, void softmax_backward<S>(Matrix<S>& dinp, ConstRef<S> dout, ConstRef<S> out))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_SOFTMAX_TEMPLATES)
// clang-format on

}  // namespace eigenformer
