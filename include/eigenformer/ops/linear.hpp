// Linear: out = inp W^T + b, with W of shape (out_features, in_features) as in PyTorch.
#pragma once

#include "../core/tensor.hpp"

namespace eigenformer {

/// out (N, out) = inp (N, in) * weight^T (in, out) + bias (1, out); bias may be null.
template <class Scalar>
void linear_forward(Matrix<Scalar>& out, ConstRef<Scalar> inp, ConstRef<Scalar> weight,
                    const Matrix<Scalar>* bias) {
  out.resize(inp.rows(), weight.rows());
  out.noalias() = inp * weight.transpose();
  if (bias) out.rowwise() += bias->row(0);
}

/// dinp (N, in) = dout W (fresh); dweight (out, in) += dout^T inp; dbias (1, out) += sum of dout
/// rows. dweight and dbias may be null (not wanted).
template <class Scalar>
void linear_backward(Matrix<Scalar>& dinp, Matrix<Scalar>* dweight, Matrix<Scalar>* dbias,
                     ConstRef<Scalar> dout, ConstRef<Scalar> inp, ConstRef<Scalar> weight) {
  dinp.resize(dout.rows(), weight.cols());
  dinp.noalias() = dout * weight;
  if (dweight) dweight->noalias() += dout.transpose() * inp;
  if (dbias) *dbias += dout.colwise().sum();
}

}  // namespace eigenformer
