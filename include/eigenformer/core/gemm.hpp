// dst += lhs * rhs through Eigen's GEMM (or the BLAS Eigen hands its products to) with the
// packing buffers kept per thread.
//
// Eigen's `dst.noalias() += lhs * rhs` packs blocks of both operands into buffers sized from the
// caches (computeProductBlockingSizes) and allocates them for every product, on the heap once they
// exceed EIGEN_STACK_ALLOCATION_LIMIT (128 KB): a few hundred KB, every linear layer, every step.
// gemm_add runs the same kernel (Eigen::internal::general_matrix_matrix_product, the function
// Eigen's own product calls) on buffers each thread keeps, so a training step allocates none.
// It relies on Eigen 3.4's internal GEMM interface, which the 3.4 series keeps.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "tensor.hpp"

namespace eigenformer {
namespace detail {

/// Eigen's blocking (block sizes mc, nc, kc) for a column-major (rows, depth) x (depth, cols)
/// product on one thread, with packing buffers owned by the calling thread and grown as needed.
template <class Scalar>
class ThreadBlocking : public Eigen::internal::level3_blocking<Scalar, Scalar> {
 public:
  ThreadBlocking(Index rows, Index cols, Index depth) {
    this->m_mc = rows;
    this->m_nc = cols;
    this->m_kc = depth;
    Eigen::internal::computeProductBlockingSizes<Scalar, Scalar, 1>(this->m_kc, this->m_mc,
                                                                    this->m_nc, Index(1));
#ifndef EIGEN_USE_BLAS  // a BLAS packs into buffers of its own
    this->m_blockA = buffer(0, this->m_mc * this->m_kc);
    this->m_blockB = buffer(1, this->m_kc * this->m_nc);
#endif
  }

 private:
  static Scalar* buffer(int which, Index size) {
    thread_local Eigen::Matrix<Scalar, Eigen::Dynamic, 1> buffers[2];  // aligned as Eigen's
    auto& b = buffers[which];
    if (b.size() < size) b.resize(size);
    return b.data();
  }
};

/// A matrix operand as the GEMM reads it: data, outer stride and storage order.
template <class Scalar>
struct GemmOperand {
  const Scalar* data;
  Index stride;
  bool row_major;
};

/// The operand of x^T for a direct-access x with unit inner stride.
template <class Scalar, class X>
GemmOperand<Scalar> transposed_operand(const X& x) {
  eigen_assert(x.innerStride() == 1);
  return {x.data(), x.outerStride(), !bool(X::IsRowMajor)};
}

template <class Scalar, int AOrder, int BOrder>
void gemm_run(Index rows, Index cols, Index depth, const GemmOperand<Scalar>& a,
              const GemmOperand<Scalar>& b, Scalar* res, Index res_stride) {
  ThreadBlocking<Scalar> blocking(rows, cols, depth);
  Eigen::internal::general_matrix_matrix_product<Index, Scalar, AOrder, false, Scalar, BOrder, false,
                                                 Eigen::ColMajor, 1>::run(rows, cols, depth, a.data,
                                                                          a.stride, b.data, b.stride,
                                                                          res, 1, res_stride,
                                                                          Scalar(1), blocking);
}

/// dst (M, N) += lhs (M, K) * rhs (K, N) on the calling thread. dst is a row-major block; lhs and
/// rhs are direct-access expressions (matrices, blocks, their transposes) with unit inner stride
/// that do not alias dst. Vector-shaped and tiny products go through Eigen's product as usual
/// (they need no packing buffers).
template <class Dst, class Lhs, class Rhs>
void gemm_add(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  static_assert(std::decay_t<Dst>::IsRowMajor, "gemm_add writes row-major blocks");
  const Index M = dst.rows(), N = dst.cols(), K = lhs.cols();
  eigen_assert(lhs.rows() == M && rhs.rows() == K && rhs.cols() == N);
  if (M == 0 || N == 0 || K == 0) return;
#ifdef EIGEN_USE_BLAS  // Eigen hands the product to the BLAS, which packs into buffers of its own
  dst.noalias() += lhs * rhs;
#else
  if (M == 1 || N == 1 || M + N + K < 20) {  // GEMV or coefficient-based, as Eigen would
    dst.noalias() += lhs * rhs;
    return;
  }
  // dst^T (N, M) = rhs^T (N, K) * lhs^T (K, M): a column-major product into dst's storage.
  using Scalar = typename std::decay_t<Dst>::Scalar;
  const GemmOperand<Scalar> a = transposed_operand<Scalar>(rhs), b = transposed_operand<Scalar>(lhs);
  eigen_assert(dst.innerStride() == 1);
  Scalar* res = dst.data();
  const Index stride = dst.outerStride();
  constexpr int R = Eigen::RowMajor, C = Eigen::ColMajor;
  if (a.row_major && b.row_major)
    gemm_run<Scalar, R, R>(N, M, K, a, b, res, stride);
  else if (a.row_major)
    gemm_run<Scalar, R, C>(N, M, K, a, b, res, stride);
  else if (b.row_major)
    gemm_run<Scalar, C, R>(N, M, K, a, b, res, stride);
  else
    gemm_run<Scalar, C, C>(N, M, K, a, b, res, stride);
#endif
}

}  // namespace detail
}  // namespace eigenformer
