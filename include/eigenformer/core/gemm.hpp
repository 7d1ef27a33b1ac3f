// dst = alpha lhs * rhs, or dst += alpha lhs * rhs, through eigenformer's float kernel
// (gemm_kernel.hpp), Eigen or the BLAS Eigen hands its products to, with the packing buffers kept
// per thread.
//
// Eigen's `dst.noalias() += lhs * rhs` packs blocks of both operands into buffers sized from the
// caches (computeProductBlockingSizes) and allocates them for every product, on the heap once they
// exceed EIGEN_STACK_ALLOCATION_LIMIT (128 KB): a few hundred KB, every linear layer, every step.
// For the matrix products the float kernel does not take, gemm runs Eigen's own GEMM
// (Eigen::internal::general_matrix_matrix_product, the function Eigen's product calls) on buffers
// each thread keeps, so a training step allocates none. It relies on Eigen 3.4's internal GEMM
// interface, which the 3.4 series keeps. Vector-shaped and tiny products go through Eigen's
// product expressions, which need no packing.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "gemm_kernel.hpp"
#include "tensor.hpp"

namespace eigenformer {
namespace detail {

/// Eigen's blocking (block sizes mc, nc, kc) for a column-major (rows, depth) x (depth, cols)
/// product on one thread, with the calling thread's packing buffers (pack_buffer).
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
    this->m_blockA = pack_buffer<Scalar>(0, this->m_mc * this->m_kc);
    this->m_blockB = pack_buffer<Scalar>(1, this->m_kc * this->m_nc);
#endif
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
              const GemmOperand<Scalar>& b, Scalar* res, Index res_stride, Scalar alpha) {
  ThreadBlocking<Scalar> blocking(rows, cols, depth);
  Eigen::internal::general_matrix_matrix_product<Index, Scalar, AOrder, false, Scalar, BOrder,
                                                 false, Eigen::ColMajor, 1>::run(rows, cols, depth,
                                                                                 a.data, a.stride,
                                                                                 b.data, b.stride,
                                                                                 res, 1, res_stride,
                                                                                 alpha, blocking);
}

/// Float products go to the float kernel when it takes them as small (kernel::is_small: both
/// operands within 64 KB, N a multiple of its tile's width, K within one K block), or else from
/// this many multiply-adds, this many rows and one register tile's width (kernel::NR columns). One
/// thread, Zen 5, share of the peak, kernel against Eigen: small products, which the kernel reads
/// where they are, (32, 64, 32) x k^T as attention's scores over 32 tokens 78-80% against 50-52%,
/// (32, 32, 64) 88-92% against 59-62%, (8, 64, 32) 51-93% against 35-42%, (4, 64, 32) 29-59%
/// against 25-35%, (4, 128, 128) x k^T 25% against 28% (the one loss measured); (32, 64, 16),
/// narrower than a tile, 21-25% against 43-52%. Larger products pack both operands: (4, 256,
/// 32000), beam search's 4 rows against a vocabulary, where packing B is most of the work, 6%
/// against 11%; (32, 256, 32000) 32% against 29%.
constexpr double kKernelMinWork = 65536;
constexpr Index kKernelMinRows = 32;

#if EIGENFORMER_GEMM_KERNEL
/// x as the float kernel reads it: direct access with unit inner stride.
template <class X>
kernel::Operand kernel_operand(const X& x) {
  eigen_assert(x.innerStride() == 1);
  if (X::IsRowMajor) return {x.data(), x.outerStride(), 1};
  return {x.data(), 1, x.outerStride()};
}
#endif

/// dst = alpha lhs * rhs, or += it when add, as an Eigen product expression.
template <class Dst, class Lhs, class Rhs, class Scalar>
void eigen_product(Dst& dst, const Lhs& lhs, const Rhs& rhs, Scalar alpha, bool add) {
  if (add)
    dst.noalias() += alpha * lhs * rhs;
  else
    dst.noalias() = alpha * lhs * rhs;
}

#ifndef EIGEN_USE_BLAS
/// dst^T (N, M) += alpha rhs^T (N, K) lhs^T (K, M) through Eigen's GEMM: a column-major product
/// into dst's row-major storage.
template <class Dst, class Lhs, class Rhs, class Scalar>
void eigen_gemm_add(Dst& dst, const Lhs& lhs, const Rhs& rhs, Scalar alpha) {
  const GemmOperand<Scalar> a = transposed_operand<Scalar>(rhs);
  const GemmOperand<Scalar> b = transposed_operand<Scalar>(lhs);
  eigen_assert(dst.innerStride() == 1);
  const Index M = dst.rows(), N = dst.cols(), K = lhs.cols();
  Scalar* res = dst.data();
  const Index stride = dst.outerStride();
  constexpr int R = Eigen::RowMajor, C = Eigen::ColMajor;
  if (a.row_major && b.row_major)
    gemm_run<Scalar, R, R>(N, M, K, a, b, res, stride, alpha);
  else if (a.row_major)
    gemm_run<Scalar, R, C>(N, M, K, a, b, res, stride, alpha);
  else if (b.row_major)
    gemm_run<Scalar, C, R>(N, M, K, a, b, res, stride, alpha);
  else
    gemm_run<Scalar, C, C>(N, M, K, a, b, res, stride, alpha);
}
#endif

/// dst (M, N) = alpha lhs (M, K) rhs (K, N), or += it when add, on the calling thread. dst is a
/// row-major block; lhs and rhs are direct-access expressions (matrices, blocks, their
/// transposes) with unit inner stride that do not alias dst. Vector-shaped and tiny products go
/// through Eigen's product as usual (they need no packing buffers); large float ones, and small
/// ones it takes as such (kernel::is_small), through the kernel of gemm_kernel.hpp when the target
/// has AVX-512 or AVX2 + FMA, which stores a product without zeroing dst first.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst& dst, const Lhs& lhs, const Rhs& rhs, typename Dst::Scalar alpha, bool add) {
  static_assert(Dst::IsRowMajor, "gemm writes row-major blocks");
  const Index M = dst.rows(), N = dst.cols(), K = lhs.cols();
  eigen_assert(lhs.rows() == M && rhs.rows() == K && rhs.cols() == N);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!add) dst.setZero();
    return;
  }
#ifdef EIGEN_USE_BLAS  // Eigen hands the product to the BLAS, which packs into buffers of its own
  eigen_product(dst, lhs, rhs, alpha, add);
#else
  if (M == 1 || N == 1 || M + N + K < 20) {  // GEMV or coefficient-based, as Eigen would
    eigen_product(dst, lhs, rhs, alpha, add);
    return;
  }
#if EIGENFORMER_GEMM_KERNEL
  if constexpr (std::is_same_v<typename Dst::Scalar, float>) {
    if (kernel::is_small(M, N, K) || (double(M) * double(N) * double(K) >= kKernelMinWork &&
                                      M >= kKernelMinRows && N >= kernel::NR)) {
      eigen_assert(dst.innerStride() == 1);
      kernel::gemm(M, N, K, alpha, kernel_operand(lhs), kernel_operand(rhs), add, dst.data(),
                   dst.outerStride());
      return;
    }
  }
#endif
  if (!add) dst.setZero();  // Eigen's GEMM only adds
  eigen_gemm_add(dst, lhs, rhs, alpha);
#endif
}

/// dst (M, N) += lhs (M, K) * rhs (K, N) on the calling thread (see gemm).
template <class Dst, class Lhs, class Rhs>
void gemm_add(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  using Scalar = typename std::decay_t<Dst>::Scalar;
  gemm(dst, lhs, rhs, Scalar(1), true);
}

/// dst (M, N) = alpha lhs (M, K) * rhs (K, N) on the calling thread (see gemm).
template <class Dst, class Lhs, class Rhs>
void gemm_assign(Dst&& dst, const Lhs& lhs, const Rhs& rhs,
                 typename std::decay_t<Dst>::Scalar alpha = 1) {
  gemm(dst, lhs, rhs, alpha, false);
}

}  // namespace detail
}  // namespace eigenformer
