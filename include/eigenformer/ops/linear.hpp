// Linear: out = inp W^T + b, with W of shape (out_features, in_features) as in PyTorch.
//
// Threads: each product is cut into one block per thread, each block a single-threaded GEMM. On
// the model's shapes this scales better than Eigen's own threaded GEMM, which synchronises its
// threads between panels (measured 95-120 GFLOP/s on 2 cores where Eigen's ranged 26-120).
// See parallel_product for which way a product is cut.
#pragma once

#include "../core/error.hpp"
#include "../core/gemm.hpp"
#include "../core/grad.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// Blocks of rows start on multiples of this, blocks of columns on multiples of kGemmColAlign.
/// The float kernel (core/gemm_kernel.hpp) runs a block's last rows in a tile of their own height
/// at full speed, but its last columns narrower than a tile (32 columns with AVX-512, 16 with
/// AVX2) through a scratch tile. Both are whole SIMD packets for Eigen's GEMM.
constexpr Index kGemmRowAlign = 8;
constexpr Index kGemmColAlign = 32;

/// Whether parallel_product cuts a product's destination (M, N) = A (M, K) B (K, N) by rows.
/// Each thread packs its share of A and of B: a cut of the rows makes every thread pack all of B,
/// a cut of the columns all of A. So the cut runs along the larger operand: the rows when M >= N
/// (B is no larger than A), else the columns (decoding: one token per sequence against the
/// vocabulary). GPT-2's vocabulary projection, 256 tokens at 2 threads, cut by rows: both threads
/// packed all of its 154 MB weight. (Under two blocks of the alignment either way: one block.)
inline bool cut_rows(Index M, Index N) { return M >= N; }

/// Runs block(row, rows, col, cols) over the blocks of a product's destination (M, N), one per
/// thread (cut as cut_rows says), for a product of work multiply-adds (see parallel_ranges).
template <class Block>
void parallel_product(Index M, Index N, double work, Block&& block) {
  if (cut_rows(M, N))
    parallel_ranges(M, kGemmRowAlign, work, kParallelMinGemmWork,
                    [&](Index begin, Index end) { block(begin, end - begin, Index(0), N); });
  else
    parallel_ranges(N, kGemmColAlign, work, kParallelMinGemmWork,
                    [&](Index begin, Index end) { block(Index(0), M, begin, end - begin); });
}

}  // namespace detail

/// out (N, out) = inp (N, in) * weight^T (in, out) + bias (1, out); bias may be null.
template <class Scalar>
void linear_forward(Matrix<Scalar>& out, ConstRef<Scalar> inp, ConstRef<Scalar> weight,
                    const Matrix<Scalar>* bias) {
  detail::check_shape("linear_forward", "inp", inp, -1, weight.cols());
  if (bias) detail::check_shape("linear_forward", "bias", *bias, 1, weight.rows());
  out.resize(inp.rows(), weight.rows());
  const double work = double(inp.rows()) * double(inp.cols()) * double(weight.rows());
  // Block (rows, cols) of out: the bias, then the product added in place (a GEMM that stores
  // the product and a second pass that adds the bias would write every element twice), or
  // without a bias the product stored (detail::gemm: no fresh packing buffers).
  auto block = [&](Index row, Index rows, Index col, Index cols) {
    auto dst = out.block(row, col, rows, cols);  // (rows, cols)
    const auto a = inp.middleRows(row, rows);
    const auto b = weight.middleRows(col, cols).transpose();
    if (bias) {
      dst.rowwise() = bias->row(0).segment(col, cols);
      detail::gemm_add(dst, a, b);
    } else {
      detail::gemm_assign(dst, a, b);
    }
  };
  detail::parallel_product(inp.rows(), weight.rows(), work, block);
}

namespace detail {

/// linear_backward, with dinp (N, in) += dout W when add (dinp already of that shape), else
/// dinp = dout W (resized).
template <class Scalar>
void linear_backward_impl(Matrix<Scalar>& dinp, bool add, GradOut<Scalar> dweight,
                          GradOut<Scalar> dbias, ConstRef<Scalar> dout, ConstRef<Scalar> inp,
                          ConstRef<Scalar> weight) {
  const char* func = add ? "linear_backward_add" : "linear_backward";
  check_shape(func, "inp", inp, -1, weight.cols());
  check_shape(func, "dout", dout, inp.rows(), weight.rows());
  if (add) check_shape(func, "dinp", dinp, dout.rows(), weight.cols());
  if (dweight) check_shape(func, "dweight", *dweight, weight.rows(), weight.cols());
  if (dbias) check_shape(func, "dbias", *dbias, 1, weight.rows());
  const double work = double(dout.rows()) * double(dout.cols()) * double(weight.cols());
  if (!add) dinp.resize(dout.rows(), weight.cols());
  // dinp (N, in) = dout (N, out) W (out, in), block by block.
  parallel_product(dout.rows(), weight.cols(), work, [&](Index r, Index rows, Index c, Index cols) {
    auto dst = dinp.block(r, c, rows, cols);
    gemm(dst, dout.middleRows(r, rows), weight.middleCols(c, cols), Scalar(1), add);
  });
  if (!dweight && !dbias) return;
  // dweight (out, in) += dout^T (out, N) inp (N, in). A block of rows of dweight needs only those
  // columns of dout, and the same entries of dbias are summed with them; otherwise (a cut by
  // columns, or no dweight) dbias is summed apart.
  const Index out = dout.cols(), in = inp.cols();
  const bool bias_with_product = dweight && cut_rows(out, in);
  auto add_bias_rows = [&](Index r, Index rows) {  // dbias[r, r + rows) += those columns of dout
    add_row_sums(dbias->row(0).segment(r, rows), dout.middleCols(r, rows));
  };
  if (dweight)
    parallel_product(out, in, work, [&](Index r, Index rows, Index c, Index cols) {
      gemm_add(dweight->block(r, c, rows, cols), dout.middleCols(r, rows).transpose(),
               inp.middleCols(c, cols));
      if (dbias && bias_with_product) add_bias_rows(r, rows);
    });
  if (dbias && !bias_with_product)
    parallel_ranges(out, kGemmRowAlign, double(dout.size()), kParallelMinWork,
                    [&](Index begin, Index end) { add_bias_rows(begin, end - begin); });
}

}  // namespace detail

/// dinp (N, in) = dout W (fresh); dweight (out, in) += dout^T inp; dbias (1, out) += sum of dout
/// rows. dweight and dbias may be null (not wanted).
template <class Scalar>
void linear_backward(Matrix<Scalar>& dinp, GradOut<Scalar> dweight, GradOut<Scalar> dbias,
                     ConstRef<Scalar> dout, ConstRef<Scalar> inp, ConstRef<Scalar> weight) {
  detail::linear_backward_impl<Scalar>(dinp, false, dweight, dbias, dout, inp, weight);
}

/// linear_backward, with the input gradient ADDED: dinp (N, in) += dout W, straight from the
/// product (no zeroed temporary), for an input that feeds several projections (attention's
/// q, k, v). Throws ArgumentError naming linear_backward_add unless dinp is (N, in), and as
/// linear_backward.
template <class Scalar>
void linear_backward_add(Matrix<Scalar>& dinp, GradOut<Scalar> dweight, GradOut<Scalar> dbias,
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
      S, void linear_backward<S>(Matrix<S>& dinp, GradOut<S> dweight, GradOut<S> dbias,           \
                                 ConstRef<S> dout, ConstRef<S> inp, ConstRef<S> weight))          \
  EIGENFORMER_FOR(                                                                                \
      S, void linear_backward_add<S>(Matrix<S>& dinp, GradOut<S> dweight, GradOut<S> dbias,       \
                                     ConstRef<S> dout, ConstRef<S> inp, ConstRef<S> weight))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_LINEAR_TEMPLATES)
// clang-format on

}  // namespace eigenformer
