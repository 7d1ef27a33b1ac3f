// Linear: out = inp W^T + b, with W of shape (out_features, in_features) as in PyTorch.
//
// Threads: each product is cut into one block of rows per thread (rows of inp for out and dinp,
// rows of dweight for the weight gradient), each block a single-threaded Eigen GEMM. On the
// model's shapes this scales better than Eigen's own threaded GEMM, which synchronises its
// threads between panels (measured 95-120 GFLOP/s on 2 cores where Eigen's ranged 26-120).
// A forward on fewer rows than two blocks (decoding: one token per sequence) is cut by output
// features instead, so that a large projection (the vocabulary) still uses every thread.
#pragma once

#include "../core/error.hpp"
#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// Row blocks start on multiples of this (Eigen's float GEMM kernel works on 24-row panels; 8 is
/// enough for whole SIMD packets).
constexpr Index kGemmRowAlign = 8;

}  // namespace detail

/// out (N, out) = inp (N, in) * weight^T (in, out) + bias (1, out); bias may be null.
template <class Scalar>
void linear_forward(Matrix<Scalar>& out, ConstRef<Scalar> inp, ConstRef<Scalar> weight,
                    const Matrix<Scalar>* bias) {
  detail::check_shape("linear_forward", "inp", inp, -1, weight.cols());
  if (bias) detail::check_shape("linear_forward", "bias", *bias, 1, weight.rows());
  out.resize(inp.rows(), weight.rows());
  const double work = double(inp.rows()) * double(inp.cols()) * double(weight.rows());
  // Block (rows, cols) of out: the bias (or zeros), then the product added in place. Eigen's
  // `out = a * b` zeroes out before adding the product into it, so adding the bias afterwards
  // would write every element twice more. (gemm_add: Eigen's GEMM without fresh packing buffers.)
  auto block = [&](Index row, Index rows, Index col, Index cols) {
    auto dst = out.block(row, col, rows, cols);  // (rows, cols)
    if (bias)
      dst.rowwise() = bias->row(0).segment(col, cols);
    else
      dst.setZero();
    detail::gemm_add(dst, inp.middleRows(row, rows), weight.middleRows(col, cols).transpose());
  };
  const Index N = inp.rows(), F = weight.rows();
  if (N >= 2 * detail::kGemmRowAlign)
    detail::parallel_ranges(N, detail::kGemmRowAlign, work, detail::kParallelMinGemmWork,
                            [&](Index begin, Index end) { block(begin, end - begin, 0, F); });
  else
    detail::parallel_ranges(F, detail::kGemmRowAlign, work, detail::kParallelMinGemmWork,
                            [&](Index begin, Index end) { block(0, N, begin, end - begin); });
}

namespace detail {

/// linear_backward, with dinp (N, in) += dout W when add (dinp already of that shape), else
/// dinp = dout W (resized; each row block zeroed first, as Eigen's `rows = a * b` does).
template <class Scalar>
void linear_backward_impl(Matrix<Scalar>& dinp, bool add, Matrix<Scalar>* dweight,
                          Matrix<Scalar>* dbias, ConstRef<Scalar> dout, ConstRef<Scalar> inp,
                          ConstRef<Scalar> weight) {
  const char* func = add ? "linear_backward_add" : "linear_backward";
  check_shape(func, "inp", inp, -1, weight.cols());
  check_shape(func, "dout", dout, inp.rows(), weight.rows());
  if (add) check_shape(func, "dinp", dinp, dout.rows(), weight.cols());
  if (dweight) check_shape(func, "dweight", *dweight, weight.rows(), weight.cols());
  if (dbias) check_shape(func, "dbias", *dbias, 1, weight.rows());
  const double work = double(dout.rows()) * double(dout.cols()) * double(weight.cols());
  if (!add) dinp.resize(dout.rows(), weight.cols());
  parallel_ranges(dout.rows(), kGemmRowAlign, work, kParallelMinGemmWork,
                  [&](Index begin, Index end) {
                    auto rows = dinp.middleRows(begin, end - begin);  // (n, in)
                    if (!add) rows.setZero();
                    gemm_add(rows, dout.middleRows(begin, end - begin), weight);
                  });
  // Row block [begin, end) of dweight, and the same entries of dbias, need only those columns
  // of dout.
  if (!dweight && !dbias) return;
  parallel_ranges(
      dout.cols(), kGemmRowAlign, work, kParallelMinGemmWork, [&](Index begin, Index end) {
        const Index n = end - begin;
        if (dweight)
          gemm_add(dweight->middleRows(begin, n), dout.middleCols(begin, n).transpose(), inp);
        if (dbias) add_row_sums(dbias->row(0).segment(begin, n), dout.middleCols(begin, n));
      });
}

}  // namespace detail

/// dinp (N, in) = dout W (fresh); dweight (out, in) += dout^T inp; dbias (1, out) += sum of dout
/// rows. dweight and dbias may be null (not wanted).
template <class Scalar>
void linear_backward(Matrix<Scalar>& dinp, Matrix<Scalar>* dweight, Matrix<Scalar>* dbias,
                     ConstRef<Scalar> dout, ConstRef<Scalar> inp, ConstRef<Scalar> weight) {
  detail::linear_backward_impl<Scalar>(dinp, false, dweight, dbias, dout, inp, weight);
}

/// linear_backward, with the input gradient ADDED: dinp (N, in) += dout W, straight from the
/// product (no zeroed temporary), for an input that feeds several projections (attention's
/// q, k, v). Throws ArgumentError naming linear_backward_add unless dinp is (N, in), and as
/// linear_backward.
template <class Scalar>
void linear_backward_add(Matrix<Scalar>& dinp, Matrix<Scalar>* dweight, Matrix<Scalar>* dbias,
                         ConstRef<Scalar> dout, ConstRef<Scalar> inp, ConstRef<Scalar> weight) {
  detail::linear_backward_impl<Scalar>(dinp, true, dweight, dbias, dout, inp, weight);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_LINEAR_TEMPLATES(S)                                                           \
  EIGENFORMER_FOR(S, void linear_forward<S>(Matrix<S>& out, ConstRef<S> inp, ConstRef<S> weight,  \
                                            const Matrix<S>* bias))                               \
  EIGENFORMER_FOR(                                                                                \
      S, void linear_backward<S>(Matrix<S>& dinp, Matrix<S>* dweight, Matrix<S>* dbias,           \
                                 ConstRef<S> dout, ConstRef<S> inp, ConstRef<S> weight))          \
  EIGENFORMER_FOR(                                                                                \
      S, void linear_backward_add<S>(Matrix<S>& dinp, Matrix<S>* dweight, Matrix<S>* dbias,       \
                                     ConstRef<S> dout, ConstRef<S> inp, ConstRef<S> weight))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_LINEAR_TEMPLATES)
// clang-format on

}  // namespace eigenformer
