// Row-wise softmax, numerically stable (the row maximum is subtracted before exp).
#pragma once

#include <cmath>
#include <limits>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

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
  // Eigen's vectorised exp clamps its argument, so exp(-inf) would be a tiny denormal rather than 0:
  // select keeps masked entries exactly 0.
  row = (row.array() == -std::numeric_limits<Scalar>::infinity())
            .select(Scalar(0), (row.array() - max).exp());
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

}  // namespace eigenformer
