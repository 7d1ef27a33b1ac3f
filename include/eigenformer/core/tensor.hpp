// Matrix types and the batch layout every layer shares.
//
// A batch of B sequences of T tokens with C features is one row-major (B*T, C) matrix: the same
// bytes as PyTorch's contiguous (B, T, C), one token per contiguous row. Sequence b is the row
// block (b*T, 0, T, C); head h of width dh within it is the block (b*T, h*dh, T, dh). Both are
// Eigen blocks over the same storage: no copy.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "error.hpp"

namespace eigenformer {

using Index = Eigen::Index;

template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
template <class Scalar>
using ConstRef = Eigen::Ref<const Matrix<Scalar>>;

/// true marks a masked (ignored) entry, as in PyTorch's boolean masks.
using BoolMatrix = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Token ids, row-major (B, T).
using IdMatrix = Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Token ids from an Eigen integer matrix of any type and storage order (e.g. Eigen::MatrixXi):
/// the same (B, T) values as an IdMatrix, which every model takes.
template <class Derived>
IdMatrix to_ids(const Eigen::MatrixBase<Derived>& ids) {
  return ids.template cast<Index>();
}

/// Token ids from B rows of T ids each. Throws ArgumentError naming to_ids and the first row
/// whose length differs from the first row's.
template <class Int>
IdMatrix to_ids(const std::vector<std::vector<Int>>& rows) {
  const Index B = static_cast<Index>(rows.size());
  const Index T = B > 0 ? static_cast<Index>(rows[0].size()) : 0;
  IdMatrix ids(B, T);
  for (Index b = 0; b < B; ++b) {
    detail::require(static_cast<Index>(rows[size_t(b)].size()) == T, "to_ids", "rows", [&] {
      return "has row " + std::to_string(b) + " of length " +
             std::to_string(rows[size_t(b)].size()) + ", expected " + std::to_string(T) +
             " as row 0 (pad the rows to one length)";
    });
    for (Index t = 0; t < T; ++t) ids(b, t) = static_cast<Index>(rows[size_t(b)][size_t(t)]);
  }
  return ids;
}

namespace detail {

/// True for token-id containers a model does not take directly: std::vector, or an Eigen type
/// whose scalar is not Index. The models' catch-all overloads turn them into one short error.
template <class T, class = void>
struct is_foreign_ids : std::false_type {};
template <class T>
struct is_foreign_ids<std::vector<T>> : std::true_type {};
template <class T>
struct is_foreign_ids<T, std::enable_if_t<std::is_base_of_v<Eigen::EigenBase<T>, T>>>
    : std::bool_constant<!std::is_same_v<typename T::Scalar, Index>> {};

template <class... T>
inline constexpr bool foreign_ids = (is_foreign_ids<std::decay_t<T>>::value || ...);

template <class...>
inline constexpr bool always_false = false;

}  // namespace detail

/// Declares, in a model class, a catch-all for token ids of another type as the method's first
/// argument: using it is a compile error that says what to do, instead of one from deep inside
/// Eigen.
#define EIGENFORMER_REJECT_FOREIGN_IDS(method)                                             \
  template <class Ids, class... Rest, std::enable_if_t<detail::foreign_ids<Ids>, int> = 0> \
  void method(const Ids&, const Rest&...) {                                                \
    static_assert(detail::always_false<Ids>,                                               \
                  "eigenformer: token ids are an eigenformer::IdMatrix (row-major, "       \
                  "Eigen::Index); convert yours with eigenformer::to_ids(ids)");           \
  }

/// A batch of sequences: a (B*T, C) row-major matrix together with B and T.
template <class Scalar = float>
class Batch {
 public:
  using Mat = Matrix<Scalar>;

  Batch() = default;

  /// B sequences of T tokens with C zeroed features.
  Batch(Index B, Index T, Index C) : B_(B), T_(T) {
    detail::check_positive("Batch::Batch", "B", B);
    detail::check_positive("Batch::Batch", "T", T);
    detail::check_positive("Batch::Batch", "C", C);
    data_ = Mat::Zero(B * T, C);
  }

  /// Wraps data of shape (B*T, C) as B sequences of T tokens.
  Batch(Mat data, Index B, Index T) : B_(B), T_(T) {
    detail::check_positive("Batch::Batch", "B", B);
    detail::check_positive("Batch::Batch", "T", T);
    detail::check_shape("Batch::Batch", "data", data, B * T, -1);
    data_ = std::move(data);
  }

  /// B, T, C, and the matrix's rows B*T.
  Index batch() const { return B_; }
  Index time() const { return T_; }
  Index channels() const { return data_.cols(); }
  Index rows() const { return data_.rows(); }

  /// The (B*T, C) matrix. Giving it another number of rows through data() breaks B*T == rows():
  /// nothing checks it afterwards.
  Mat& data() { return data_; }
  const Mat& data() const { return data_; }

  /// Sequence b: (T, C).
  Eigen::Block<Mat> seq(Index b) {
    check_seq("Batch::seq", b);
    return data_.block(b * T_, 0, T_, data_.cols());
  }
  Eigen::Block<const Mat> seq(Index b) const {
    check_seq("Batch::seq", b);
    return data_.block(b * T_, 0, T_, data_.cols());
  }

  /// Head h of width dh in sequence b: (T, dh).
  Eigen::Block<Mat> head(Index b, Index h, Index dh) {
    check_head(b, h, dh);
    return data_.block(b * T_, h * dh, T_, dh);
  }
  Eigen::Block<const Mat> head(Index b, Index h, Index dh) const {
    check_head(b, h, dh);
    return data_.block(b * T_, h * dh, T_, dh);
  }

 private:
  Mat data_;
  Index B_ = 0;
  Index T_ = 0;

  void check_seq(const char* func, Index b) const {
    detail::require(b >= 0 && b < B_, func, "b", [&] {
      return "is " + std::to_string(b) + ", expected 0 <= b < " + std::to_string(B_);
    });
  }

  void check_head(Index b, Index h, Index dh) const {
    check_seq("Batch::head", b);
    detail::check_positive("Batch::head", "dh", dh);
    detail::require(h >= 0 && (h + 1) * dh <= channels(), "Batch::head", "h", [&] {
      return "is " + std::to_string(h) + ", expected 0 <= h < " + std::to_string(channels() / dh) +
             " heads of width " + std::to_string(dh) + " in " + std::to_string(channels()) +
             " channels";
    });
  }
};

namespace detail {

/// True when every entry of m is finite. Eigen's allFinite() compares entry by entry without
/// SIMD; a sum of the entries times zero is NaN exactly when one is NaN or infinite, and is a
/// vectorised reduction: ~5x faster on a model's gradients, which a training step checks each step.
template <class Derived>
bool all_finite(const Eigen::DenseBase<Derived>& m) {
  using S = typename Derived::Scalar;
  return (m.derived().array() * S(0)).sum() == S(0);
}

/// The first index of v holding max, v's largest entry (not NaN; computed by the caller, e.g.
/// v.maxCoeff() of a v without NaN): whole 64-entry blocks below max are skipped by a vectorised
/// maximum each, then one block is scanned. -1 when no entry equals max.
template <class Vector>
Index first_index_of_max(const Eigen::DenseBase<Vector>& v, typename Vector::Scalar max) {
  constexpr Index kBlock = 64;  // 4 AVX-512 or 8 AVX2 float vectors per compare
  Index b = 0;
  while (b + kBlock <= v.size() && v.derived().template segment<kBlock>(b).maxCoeff() < max)
    b += kBlock;
  for (Index j = b; j < v.size(); ++j)
    if (v.derived()(j) == max) return j;
  return -1;
}

/// The index of the largest entry of the non-empty vector v, the first on ties, as
/// v.maxCoeff(&index) gives: Eigen's indexed maxCoeff compares one entry at a time (5 of the 8 ms
/// of a GPT-mini cross-entropy forward, V = 8192); here a vectorised maximum, then
/// first_index_of_max. A v holding NaN takes Eigen's scan, whose answer it keeps (a vectorised
/// maximum may skip the largest entry there). Each entry of v is read about twice: pass plain
/// vectors, rows or cheap element-wise expressions.
template <class Vector>
Index first_max_index(const Eigen::DenseBase<Vector>& v) {
  const auto max = v.template maxCoeff<Eigen::PropagateNaN>();
  const Index found = max == max ? first_index_of_max(v, max) : Index(-1);
  if (found >= 0) return found;
  Index index = 0;
  v.maxCoeff(&index);
  return index;
}

/// The sum of the squares of m's entries, accumulated in double (no overflow or loss for float
/// gradients). Written as a loop that OpenMP's simd directive vectorises: Eigen's
/// m.cast<double>().squaredNorm() converts entry by entry, ~6x slower on a model's gradients.
/// m: a Matrix, or a Map of one (a Param's grad): its entries contiguous.
template <class M>
double squared_norm_double(const M& m) {
  static_assert(M::InnerStrideAtCompileTime == 1, "squared_norm_double reads m.size() entries");
  eigen_assert(m.outerStride() == (M::IsRowMajor ? m.cols() : m.rows()) || m.size() == 0);
  const auto* p = m.data();
  const Index n = m.size();
  double sum = 0.0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : sum)
#endif
  for (Index i = 0; i < n; ++i) sum += static_cast<double>(p[i]) * static_cast<double>(p[i]);
  return sum;
}

/// dst += the sum of the rows of x (N, C), x row-major; dst is a row-vector expression of C
/// entries (e.g. m.row(0).segment(c, C)). Row by row over chunks of columns that stay in L1, so x
/// is read in memory order: Eigen's x.colwise().sum() takes one SIMD packet of columns down all
/// N rows at a time, touching a new cache line every row (167 us against 42 us for a
/// (1024, 1024) float bias gradient).
template <class Dst, class X>
void add_row_sums(Dst&& dst, const X& x) {
  static_assert(X::IsRowMajor, "add_row_sums reads x row by row");
  using Scalar = typename X::Scalar;
  constexpr Index kChunk = 512;
  Eigen::Matrix<Scalar, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kChunk> sum;  // on the stack
  for (Index c = 0; c < x.cols(); c += kChunk) {
    const Index n = std::min(kChunk, x.cols() - c);
    sum.setZero(n);
    for (Index r = 0; r < x.rows(); ++r) sum += x.row(r).segment(c, n);
    dst.segment(c, n) += sum;
  }
}

/// Temporaries a layer keeps from one call to the next, so that a training loop does not allocate
/// (and, for blocks glibc hands back to the kernel, fault in and zero) them afresh every step.
/// They are not part of the layer's state: a copy of the layer starts with empty buffers.
template <class Buffers>
struct Scratch {
  Buffers buffers;
  Scratch() = default;
  Scratch(const Scratch&) {}
  Scratch& operator=(const Scratch&) { return *this; }
  Scratch(Scratch&&) noexcept = default;
  Scratch& operator=(Scratch&&) noexcept = default;
  ~Scratch() = default;
};

}  // namespace detail

}  // namespace eigenformer
