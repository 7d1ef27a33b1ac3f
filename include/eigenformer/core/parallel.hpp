// Work-gated OpenMP loops for the work Eigen does not thread itself.
//
// The library never sets a global thread count: it uses what OpenMP gives (OMP_NUM_THREADS, or
// omp_set_num_threads() called by the application). Without OpenMP the loops run serially.
// A loop gated to run serially stays serial inside too: Eigen's GEMM and an OpenMP BLAS would
// otherwise start threads of their own for a product in it (detail::SerialRegion), and a small
// product then costs more in waking threads than it saves (greedy decoding, one token per step,
// took 97 ms on two threads against 70 ms on one).
#pragma once

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace eigenformer {

/// Threads available to the library's loops (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {

/// While alive, keeps the products run on this thread serial: Eigen's GEMM and OpenBLAS (OpenMP
/// build) start no threads of their own. Sets the calling thread's OpenMP thread count to 1 (and
/// Eigen's, when the application set it with Eigen::setNbThreads) and restores both on
/// destruction. Nothing to do inside a parallel region, where both already run serially.
class SerialRegion {
 public:
  SerialRegion() {
#ifdef _OPENMP
    if (omp_in_parallel()) return;
    omp_threads_ = omp_get_max_threads();
    if (omp_threads_ > 1) omp_set_num_threads(1);
    eigen_threads_ = Eigen::nbThreads();  // > 1 now only if set by Eigen::setNbThreads
    if (eigen_threads_ > 1) Eigen::setNbThreads(1);
#endif
  }
  ~SerialRegion() {
#ifdef _OPENMP
    if (eigen_threads_ > 1) Eigen::setNbThreads(eigen_threads_);
    if (omp_threads_ > 1) omp_set_num_threads(omp_threads_);
#endif
  }
  SerialRegion(const SerialRegion&) = delete;
  SerialRegion& operator=(const SerialRegion&) = delete;

#ifdef _OPENMP  // without OpenMP there is nothing to save (and clang warns of unused fields)
 private:
  int omp_threads_ = 0, eigen_threads_ = 0;
#endif
};

/// Below this many scalar operations in a loop, starting threads costs more than it saves.
constexpr double kParallelMinWork = 32768.0;

/// Runs body(i) for i in [0, n), in parallel when the total work n * work_per_item (scalar
/// operations) is worth it, else serially in a SerialRegion.
/// body must not throw: validate arguments before the loop.
template <class Body>
void parallel_for(Index n, double work_per_item, Body&& body) {
#ifdef _OPENMP
  if (n > 1 && static_cast<double>(n) * work_per_item >= kParallelMinWork &&
      omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < n; ++i) body(i);
    return;
  }
#else
  (void)work_per_item;
#endif
  const SerialRegion serial;
  for (Index i = 0; i < n; ++i) body(i);
}

/// Below this many multiply-adds, a whole step of many small ops (an incremental decoding step)
/// runs on the calling thread: some of its ops pass their own gates, but starting threads for
/// each of them cost more than they saved (greedy decoding of one sequence, 6.5M multiply-adds a
/// step: 49-52 ms on one thread, 63-75 ms on two; beam search of width 4 over 32,000 words, 58M a
/// step: 87-102 ms on one thread, 62-87 ms on two).
constexpr double kParallelMinStepWork = double(1 << 24);

/// A SerialRegion for a step of work multiply-adds below kParallelMinStepWork; else nothing.
class SerialIfSmall {
 public:
  explicit SerialIfSmall(double work) {
    if (work < kParallelMinStepWork) serial_.emplace();
  }

 private:
  std::optional<SerialRegion> serial_;
};

/// Below this many multiply-adds, a matrix product is not worth splitting over threads.
constexpr double kParallelMinGemmWork = 1 << 20;

/// Runs body(begin, end) over [0, n) cut into one contiguous range per thread, each starting on a
/// multiple of align (so SIMD panels stay whole), in parallel when the total work (in scalar
/// operations) is at least min_work and there are at least two ranges; else body(0, n) once, in a
/// SerialRegion. body must not throw.
template <class Body>
void parallel_ranges(Index n, Index align, double work, double min_work, Body&& body) {
#ifdef _OPENMP
  const Index threads = omp_get_max_threads();
  if (threads > 1 && work >= min_work && n >= 2 * align && !omp_in_parallel()) {
    const Index parts = std::min<Index>(threads, n / align);
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(parts))
    for (Index p = 0; p < parts; ++p) {
      const Index begin = (n / align) * p / parts * align;
      const Index end = p + 1 == parts ? n : (n / align) * (p + 1) / parts * align;
      body(begin, end);
    }
    return;
  }
#else
  (void)align, (void)work, (void)min_work;
#endif
  const SerialRegion serial;
  body(Index(0), n);
}

/// dst = expr for an (N, C) expression, e.g. a residual sum or a copy of activations: bound by
/// memory, and serial, it would keep the other threads waiting between two parallel products.
/// The rows are shared among threads from kParallelMinWork entries. expr must be coefficient-wise
/// over matrices (a product in it would be evaluated whole by every thread); it may read dst at
/// the entry it writes (dx + dy into dx), when dst already has expr's shape.
template <class Dst, class Expr>
void parallel_assign(Dst& dst, const Expr& expr) {
  dst.resize(expr.rows(), expr.cols());
  parallel_ranges(expr.rows(), 1, double(expr.size()), kParallelMinWork,
                  [&](Index begin, Index end) {
                    dst.middleRows(begin, end - begin) = expr.middleRows(begin, end - begin);
                  });
}

/// Entries in a unit of parallel_over_rows: enough to share out among threads at little cost
/// per unit (Adam works through a unit in smaller chunks, see Adam::kChunk).
constexpr Index kRowUnitEntries = 16384;

/// Calls f(first_row, rows) for each unit (see parallel_over_rows) of a (rows, cols) matrix whose
/// entries are numbered from first, when the unit's first entry lies in [begin, end).
template <class F>
void for_row_units_in(Index begin, Index end, Index first, Index rows, Index cols, F&& f) {
  if (rows == 0 || cols == 0) return;
  const Index unit = std::max<Index>(1, kRowUnitEntries / cols);  // rows per unit
  const Index size = unit * cols;                                 // entries per unit
  const Index units = (rows + unit - 1) / unit;
  // The first unit starting at or after entry.
  auto unit_at = [&](Index entry) {
    return std::clamp<Index>((entry - first + size - 1) / size, 0, units);
  };
  for (Index u = unit_at(begin); u < unit_at(end); ++u)
    f(u * unit, std::min(unit, rows - u * unit));
}

/// Runs body(i, begin, n) over the rows of matrices i = 0, 1, .. of the given (rows, cols)
/// shapes (e.g. every parameter of a model), in one parallel region for the whole list, however
/// many small matrices it holds. Each matrix is cut into fixed units of whole rows, about
/// kRowUnitEntries entries each (or one row), and body is called once per unit. The units
/// depend only on the shapes, so an elementwise body (zeroing, an optimizer's update) gives the
/// same results, bit for bit, for every thread count: where a unit starts decides which entries
/// SIMD code handles and which its scalar head and tail do, and the two may round differently
/// (contracted multiply-adds). The entries are cut into one contiguous share per thread; a unit
/// goes to the share holding its first entry. Serial below kParallelMinWork scalar operations at
/// work_per_entry each. body must not throw.
template <class Body>
void parallel_over_rows(const std::vector<std::pair<Index, Index>>& shapes, double work_per_entry,
                        Body&& body) {
  Index total = 0;
  for (const auto& [rows, cols] : shapes) total += rows * cols;
  parallel_ranges(total, 1, work_per_entry * double(total), kParallelMinWork,
                  [&](Index begin, Index end) {
                    Index first = 0;  // first entry of matrix i; none after end is this share's
                    for (size_t i = 0; i < shapes.size() && first < end; ++i) {
                      const auto [rows, cols] = shapes[i];
                      for_row_units_in(begin, end, first, rows, cols,
                                       [&](Index row, Index n) { body(i, row, n); });
                      first += rows * cols;
                    }
                  });
}

}  // namespace detail
}  // namespace eigenformer
