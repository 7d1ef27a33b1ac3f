// detail::gemm (core/gemm.hpp: gemm_add, gemm_assign) and the float kernel behind it
// (core/gemm_kernel.hpp): products on every operand layout, added and stored, against a reference
// summed in double, on shapes that cross each of the kernel's tile and block edges.
//
// The kernel is compiled only for a target with AVX-512 or AVX2 + FMA. tests/CMakeLists.txt
// therefore also builds this file for AVX2 and for AVX-512 in a portable build
// (EIGENFORMER_TEST_KERNEL_ISA names the instruction set); on a CPU without it, that program
// exits with 77 before any test, which ctest reports as skipped.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <eigenformer/core/gemm.hpp>
#include <limits>
#include <string>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;
using MatF = Matrix<float>;

namespace {

#ifdef EIGENFORMER_TEST_KERNEL_ISA
// Runs before doctest's registrations of this file (initialised in order of definition).
const bool cpu_has_isa = [] {
  __builtin_cpu_init();
  if (__builtin_cpu_supports(EIGENFORMER_TEST_KERNEL_ISA)) return true;
  std::printf("test_gemm: skipped, this CPU has no %s\n", EIGENFORMER_TEST_KERNEL_ISA);
  std::exit(77);
}();
#endif

/// An (rows, cols) random block at (2, 5) of a larger matrix, so that its row stride is not its
/// width, as a head's block in attention or a slice of a layer's input.
struct StridedMatrix {
  MatF storage;
  Eigen::Block<MatF> view;
  StridedMatrix(const MatF& m)
      : storage(MatF::Zero(m.rows() + 3, m.cols() + 7)),
        view(storage.block(2, 5, m.rows(), m.cols())) {
    view = m;
  }
};

/// Checks got against alpha a b (+ c0 when add), summed in double: each entry within a float
/// GEMM's rounding bound, K units in the last place of the sum of |alpha a_ik b_kj| (plus one of
/// |c0|).
void check_product(const MatF& got, const MatF& c0, const MatF& a, const MatF& b, float alpha = 1,
                   bool add = true) {
  const MatD ad = a.cast<double>(), bd = b.cast<double>();
  MatD want = double(alpha) * ad * bd, bound = std::abs(alpha) * ad.cwiseAbs() * bd.cwiseAbs();
  if (add) {
    want += c0.cast<double>();
    bound += c0.cast<double>().cwiseAbs();
  }
  const double eps = std::numeric_limits<float>::epsilon();
  const double tolerance = double(a.cols() + 2) * eps;
  double worst = 0;
  for (Index i = 0; i < got.rows(); ++i)
    for (Index j = 0; j < got.cols(); ++j) {
      const double err = std::abs(double(got(i, j)) - want(i, j));
      // A NaN (say, read from a destination that was to be stored into) fails too.
      const double ratio = std::isnan(err) ? std::numeric_limits<double>::infinity()
                                           : err / (bound(i, j) * tolerance + 1e-30);
      worst = std::max(worst, ratio);
    }
  INFO("shape (" << a.rows() << ", " << a.cols() << ") x (" << b.rows() << ", " << b.cols()
                 << "), alpha " << alpha << (add ? ", added" : ", stored")
                 << ": worst error / bound " << worst);
  CHECK(worst <= 1.0);
}

/// The product a b (as (M, K) x (K, N)) added, and stored scaled by -0.5, into a block of a larger
/// row-major matrix through gemm_add and gemm_assign, with each operand a strided block stored
/// row-major or the transpose of one; nothing outside the destination block is written.
void check_layouts(Index M, Index K, Index N, Rng& rng) {
  const MatF a = eftest::random_matrix<float>(M, K, rng);
  const MatF b = eftest::random_matrix<float>(K, N, rng);
  const StridedMatrix as(a), bs(b), ats(a.transpose()), bts(b.transpose());
  for (int layout = 0; layout < 8; ++layout) {
    const bool a_row = layout & 1, b_row = layout & 2, add = layout & 4;
    // dst: an (M, N) block at (1, 3) of an (M + 2, N + 5) matrix. Stored into, it starts as NaN:
    // nothing of it may be read.
    MatF big = eftest::random_matrix<float>(M + 2, N + 5, rng);
    if (!add) big.block(1, 3, M, N).setConstant(std::numeric_limits<float>::quiet_NaN());
    const MatF before = big;
    auto dst = big.block(1, 3, M, N);
    const float alpha = add ? 1.0f : -0.5f;
    auto product = [&](const auto& lhs, const auto& rhs) {
      if (add)
        detail::gemm_add(dst, lhs, rhs);
      else
        detail::gemm_assign(dst, lhs, rhs, alpha);
    };
    if (a_row && b_row) product(as.view, bs.view);
    if (a_row && !b_row) product(as.view, bts.view.transpose());
    if (!a_row && b_row) product(ats.view.transpose(), bs.view);
    if (!a_row && !b_row) product(ats.view.transpose(), bts.view.transpose());
    const std::string a_layout = a_row ? "row-major" : "transposed";
    const std::string b_layout = b_row ? "row-major" : "transposed";
    INFO("A " << a_layout << ", B " << b_layout);
    check_product(big.block(1, 3, M, N), before.block(1, 3, M, N), a, b, alpha, add);
    MatF outside = big, outside_before = before;
    outside.block(1, 3, M, N).setZero();
    outside_before.block(1, 3, M, N).setZero();
    CHECK(outside == outside_before);
  }
}

}  // namespace

TEST_CASE("gemm_add and gemm_assign on every layout, small to past the kernel's blocks") {
  Rng rng(11);
  // Eigen's products below the kernel's thresholds (kKernelMinWork, kKernelMinRows, a tile's
  // width); the kernel's small products, read in place ({5, 3, 64}, {8, 64, 32}, {32, 64, 32},
  // {64, 64, 64}); then the kernel's blocked path: at its thresholds ({32, 64, 40}); with edge
  // tiles in M and N; K past one K block
  // (384 with AVX-512, 256 with AVX2), a multiple of it, and past two; N past one N block (480,
  // 256) by more than a tile; M past one M block (3072, 2046).
  const Index shapes[][3] = {{2, 3, 2},     {5, 7, 9},     {13, 70, 33},   {5, 3, 64},
                             {8, 64, 32},   {32, 64, 32},  {32, 64, 40},   {37, 389, 47},
                             {64, 64, 64},  {40, 768, 64}, {50, 800, 560}, {3100, 9, 40},
                             {97, 257, 481}};
  for (const auto& s : shapes) check_layouts(s[0], s[1], s[2], rng);
}

TEST_CASE("gemm_add and gemm_assign write only their destination block") {
  Rng rng(12);
  const Index M = 37, K = 100, N = 45;  // edge tiles on both sides, above the kernel threshold
  MatF a = eftest::random_matrix<float>(M, K, rng);
  const MatF b = eftest::random_matrix<float>(K, N, rng);
  // An inf makes the kernel's padding products NaN, so that a write past an edge tile shows.
  a(M - 1, 3) = std::numeric_limits<float>::infinity();
  for (bool add : {true, false}) {
    MatF big = MatF::Constant(M + 4, N + 40, 7.0f);
    if (add)
      detail::gemm_add(big.block(2, 20, M, N), a, b);
    else
      detail::gemm_assign(big.block(2, 20, M, N), a, b);
    MatF outside = big;
    outside.block(2, 20, M, N).setConstant(7.0f);
    CHECK((outside.array() == 7.0f).all());
  }
}

TEST_CASE("gemm_add keeps a non-finite entry to the rows and columns it reaches") {
  // An inf in row r of A may reach only row r of the product, a NaN in column c of B only column
  // c: the kernel's zero padding of edge tiles (0 x inf = NaN) must never land in C.
  Rng rng(13);
  const Index M = 41, K = 64, N = 71;
  MatF a = eftest::random_matrix<float>(M, K, rng), b = eftest::random_matrix<float>(K, N, rng);
  const Index r = M - 1, c = N - 1;  // in the edge tiles
  a(r, 5) = std::numeric_limits<float>::infinity();
  b(7, c) = std::numeric_limits<float>::quiet_NaN();
  MatF out = MatF::Zero(M, N);
  detail::gemm_add(out, a, b);
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < N; ++j)
      if (i != r && j != c) REQUIRE(std::isfinite(out(i, j)));
  CHECK(std::isnan(out(0, c)));
  CHECK(!std::isfinite(out(r, 0)));
}

TEST_CASE("gemm_assign with no depth stores zeros") {
  MatF a(4, 0), b(0, 5), out = MatF::Constant(4, 5, 3.0f);
  detail::gemm_assign(out, a, b);
  CHECK((out.array() == 0.0f).all());
  detail::gemm_add(out, a, b);
  CHECK((out.array() == 0.0f).all());
}

#if EIGENFORMER_GEMM_KERNEL
TEST_CASE("The float kernel alone, on tiles smaller than gemm_add would give it") {
  Rng rng(14);
  for (Index M : {1, 5, 12, 13})
    for (Index N : {1, 8, 33})
      for (Index K : {1, 3, 17})
        for (bool add : {true, false}) {
          const MatF a = eftest::random_matrix<float>(M, K, rng);
          const MatF bt = eftest::random_matrix<float>(N, K, rng);  // B stored transposed
          const MatF c0 = eftest::random_matrix<float>(M, N, rng);
          MatF c = c0;
          detail::kernel::gemm(M, N, K, 2.0f, {a.data(), K, 1}, {bt.data(), 1, K}, add, c.data(),
                               N);
          check_product(c, c0, a, bt.transpose(), 2.0f, add);
        }
}

TEST_CASE(
    "The float kernel's small products read A, and B when its rows are contiguous, in place") {
  using detail::kernel::NR;
  CHECK(detail::kernel::is_small(128, 2 * NR, 128));
  CHECK_FALSE(detail::kernel::is_small(129, 2 * NR, 128));  // A above 64 KB
  CHECK_FALSE(detail::kernel::is_small(32, NR + 1, 64));    // an edge tile: packed as before
  CHECK_FALSE(detail::kernel::is_small(8, NR, detail::kernel::kBlockK + 1));  // two K blocks
  Rng rng(15);
  for (Index M : {1, 5, 13, 37})
    for (Index K : {1, 3, 64})
      for (Index N : {NR, 2 * NR})
        for (int layout = 0; layout < 8; ++layout) {
          const bool a_row = layout & 1, b_row = layout & 2, add = layout & 4;
          REQUIRE(detail::kernel::is_small(M, N, K));
          // Strided operands, stored row-major or as the transpose of one.
          const MatF a = eftest::random_matrix<float>(M, K, rng);
          const MatF b = eftest::random_matrix<float>(K, N, rng);
          const StridedMatrix as(a), bs(b), ats(a.transpose()), bts(b.transpose());
          const detail::kernel::Operand A = a_row ? detail::kernel_operand(as.view)
                                                  : detail::kernel_operand(ats.view.transpose());
          const detail::kernel::Operand B = b_row ? detail::kernel_operand(bs.view)
                                                  : detail::kernel_operand(bts.view.transpose());
          const MatF c0 = eftest::random_matrix<float>(M, N, rng);
          MatF c = c0;
          if (!add) c.setConstant(std::numeric_limits<float>::quiet_NaN());  // never read
          detail::kernel::gemm(M, N, K, -1.5f, A, B, add, c.data(), N);
          INFO("A " << (a_row ? "row-major" : "transposed") << ", B "
                    << (b_row ? "row-major" : "transposed"));
          check_product(c, c0, a, b, -1.5f, add);
        }
}

TEST_CASE("A small product's rows equal the same rows of a blocked product, bit for bit") {
  // A thread's share of a product may take the small path where the whole takes the blocked one
  // (or the other way): each entry must be summed in the same order on both, so that results do
  // not depend on the thread count. K = kBlockK, the most the small path takes.
  using detail::kernel::kBlockK;
  using detail::kernel::NR;
  Rng rng(16);
  const Index M = detail::kernel::kSmallOperand / kBlockK + 8, K = kBlockK, N = NR, rows = 8;
  REQUIRE_FALSE(detail::kernel::is_small(M, N, K));
  REQUIRE(detail::kernel::is_small(rows, N, K));
  const MatF a = eftest::random_matrix<float>(M, K, rng);
  const MatF bt = eftest::random_matrix<float>(N, K, rng);  // B stored transposed: packed
  const MatF c0 = eftest::random_matrix<float>(M, N, rng);
  for (bool add : {true, false}) {
    MatF whole = c0, part = c0;
    detail::kernel::gemm(M, N, K, 0.75f, {a.data(), K, 1}, {bt.data(), 1, K}, add, whole.data(), N);
    detail::kernel::gemm(rows, N, K, 0.75f, {a.data(), K, 1}, {bt.data(), 1, K}, add, part.data(),
                         N);
    CHECK(part.topRows(rows) == whole.topRows(rows));
  }
}
#endif

#ifdef EIGENFORMER_TEST_KERNEL_ISA
TEST_CASE("This build of the test runs the float kernel") {
  // Built for AVX2 or AVX-512 (tests/CMakeLists.txt): the kernel must be compiled in.
  CHECK(EIGENFORMER_GEMM_KERNEL == 1);
}
#endif
