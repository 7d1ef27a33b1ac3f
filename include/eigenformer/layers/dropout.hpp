// Dropout (inverted, as PyTorch's nn.Dropout): in training, each element is kept with probability
// 1 - p and kept elements are scaled by 1 / (1 - p), so the expected output equals the input; in
// evaluation, and when p = 0, it is the identity. The layer owns an Rng seeded by the caller, so
// the same seed gives the same masks; the mask is kept in the cache for backward.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "../core/parallel.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless 0 <= p < 1.
template <class Scalar>
void check_dropout_p(std::string_view func, Scalar p) {
  if (p >= Scalar(0) && p < Scalar(1)) return;
  std::ostringstream got;
  got << p;
  throw_argument(func, "p", "must be in [0, 1), got " + got.str());
}

}  // namespace detail

template <class Scalar = float>
class Dropout {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    Mat mask;          // (N, C) 0 or 1 / (1 - p); empty when the forward was the identity
    Index rows = 0;    // the input's shape
    Index cols = 0;
  };

  bool training = true;  // false: the identity
  // Keying by global example (data-parallel training, dist/): when examples > 0, the input's rows
  // are taken as `examples` equal runs, one per example, of the examples first_example.. of a
  // larger batch, and row i draws the mask of row first_example * (rows / examples) + i of that
  // batch. So a process holding rows 8..15 of a padded batch drops what one process holding all
  // of it drops there. 0 (the default): row i is row i.
  Index first_example = 0;
  Index examples = 0;

  Dropout() = default;

  /// Drops elements with probability p, its masks drawn from an Rng seeded with seed; starts in
  /// training mode (a default-constructed layer has p = 0: the identity). Throws ArgumentError
  /// unless 0 <= p < 1.
  Dropout(Scalar p, std::uint64_t seed) : p_(p), rng_(seed) {
    detail::check_dropout_p("Dropout::Dropout", p);
  }

  /// The drop probability; train(on) turns training mode on or off, eval() turns it off.
  Scalar p() const { return p_; }
  void train(bool on = true) { training = on; }
  void eval() { training = false; }

  /// The generator the masks are drawn from, one draw per mask: saving and restoring its state
  /// (Rng::state, Rng::set_state) lets a resumed training run draw the masks it would have drawn,
  /// and data-parallel training copies it between processes so that they all draw alike.
  Rng& rng() { return rng_; }
  const Rng& rng() const { return rng_; }

  /// x (N, C) -> x: inference is the identity.
  Mat forward(ConstRef<Scalar> x) const { return x; }

  /// x (N, C) -> x * mask (N, C); draws a new mask in training (advancing the rng).
  /// In eval mode, or with p = 0, returns x and records an empty mask (no rng draw).
  /// Throws ArgumentError naming Dropout::forward, before drawing, when examples > 0 does not
  /// divide N.
  Mat forward(ConstRef<Scalar> x, Cache& cache);

  /// forward(x, cache) for a temporary x (e.g. a sublayer's output): drops out in place and
  /// hands x's buffer on instead of allocating a new one.
  /// (A template taking only a Mat rvalue, so that expressions and lvalues go to the forms above.)
  template <class M, class = std::enable_if_t<std::is_same_v<M, Mat>>>
  Mat forward(M&& x, Cache& cache) {
    forward_in_place(x, cache);
    return std::move(x);
  }

  /// forward(x, cache) with the result written over x: the same mask, no new (N, C) buffer.
  /// A mask buffer of the same shape in cache is reused.
  void forward_in_place(Mat& x, Cache& cache);

  /// dy (N, C) -> dx = dy * mask, with the forward's mask.
  /// dx is fresh; cache comes from a forward. Throws ArgumentError naming Dropout::backward unless
  /// dy has the forward's shape and cache's mask fits it.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache) const;

  /// backward(dy, cache) for a temporary dy, in place as forward(Mat&&, Cache&).
  template <class M, class = std::enable_if_t<std::is_same_v<M, Mat>>>
  Mat backward(M&& dy, const Cache& cache) const {
    mask_in_place("Dropout::backward", dy, cache);
    return std::move(dy);
  }

  /// backward(dy, cache) with the result written over dy.
  /// Throws as backward (naming Dropout::backward_in_place), leaving dy as it was.
  void backward_in_place(Mat& dy, const Cache& cache) const {
    mask_in_place("Dropout::backward_in_place", dy, cache);
  }

  /// Throws unless cache's mask is empty or has the shape its forward recorded.
  static void check_mask(std::string_view func, const Cache& cache);

  /// None: the layer has no parameters.
  ParamList<Scalar> parameters() { return {}; }

  /// Nothing to clear.
  void zero_grad() {}

 private:
  Scalar p_ = Scalar(0);
  Rng rng_;

  bool active() const { return training && p_ != Scalar(0); }

  /// The inactive forward: records x's shape and an empty mask, returns x.
  ConstRef<Scalar> identity(ConstRef<Scalar> x, Cache& cache) const;

  /// Throws unless dy has the forward's shape and cache's mask fits it.
  static void check_backward(std::string_view func, ConstRef<Scalar> dy, const Cache& cache) {
    detail::require_filled_cache(func, cache.cols != 0);
    detail::check_shape(func, "dy", dy, cache.rows, cache.cols);
    check_mask(func, cache);
  }

  /// dy *= the forward's mask; func names the caller in the error for a dy of the wrong shape.
  void mask_in_place(const char* func, Mat& dy, const Cache& cache) const;

  /// The row of the larger batch that row 0 of a rows-row input is (see first_example).
  Index global_first_row(Index rows) const {
    if (examples <= 0) return 0;
    detail::require(rows % examples == 0, "Dropout::forward", "x", [&] {
      return "has " + std::to_string(rows) + " rows, not a multiple of examples " +
             std::to_string(examples);
    });
    return first_example * (rows / examples);
  }

  /// out = in * mask, row by row; out may be in.
  static void apply_mask(Mat& out, ConstRef<Scalar> in, const Mat& mask);

  /// One draw of the layer's rng per mask; row i gets the key of element i of a SplitMix64
  /// stream started there, and element (i, j) is kept when hash32(key_i, j), a uniform 32-bit
  /// value, is >= p * 2^32. Each value depends only on (draw, i, j), so rows can go to different
  /// threads and the mask is the same for every thread count; the inner loop vectorises. (A
  /// double from mt19937_64 per element made dropout 7% of a training step.)
  /// Draws cache.mask (N, C) and sets y = x * mask, row by row; y may be x.
  void draw_mask(Cache& cache, Mat& y, ConstRef<Scalar> x);
};

template <class Scalar>
auto Dropout<Scalar>::forward(ConstRef<Scalar> x, Cache& cache) -> Mat {
  if (!active()) return identity(x, cache);
  Mat y(x.rows(), x.cols());
  draw_mask(cache, y, x);
  return y;
}

template <class Scalar>
void Dropout<Scalar>::forward_in_place(Mat& x, Cache& cache) {
  if (!active()) {
    identity(x, cache);
    return;
  }
  draw_mask(cache, x, x);
}

template <class Scalar>
auto Dropout<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) const -> Mat {
  check_backward("Dropout::backward", dy, cache);
  if (cache.mask.size() == 0) return dy;
  Mat dx(dy.rows(), dy.cols());
  apply_mask(dx, dy, cache.mask);
  return dx;
}

template <class Scalar>
void Dropout<Scalar>::check_mask(std::string_view func, const Cache& cache) {
  if (cache.mask.size() != 0)
    detail::check_shape(func, "cache.mask", cache.mask, cache.rows, cache.cols);
}

template <class Scalar>
auto Dropout<Scalar>::identity(ConstRef<Scalar> x, Cache& cache) const -> ConstRef<Scalar> {
  cache.rows = x.rows();
  cache.cols = x.cols();
  cache.mask.resize(0, 0);
  return x;
}

template <class Scalar>
void Dropout<Scalar>::mask_in_place(const char* func, Mat& dy, const Cache& cache) const {
  check_backward(func, dy, cache);
  if (cache.mask.size() != 0) apply_mask(dy, dy, cache.mask);
}

template <class Scalar>
void Dropout<Scalar>::apply_mask(Mat& out, ConstRef<Scalar> in, const Mat& mask) {
  detail::parallel_for(in.rows(), static_cast<double>(in.cols()),
                       [&](Index i) { out.row(i) = in.row(i).cwiseProduct(mask.row(i)); });
}

template <class Scalar>
void Dropout<Scalar>::draw_mask(Cache& cache, Mat& y, ConstRef<Scalar> x) {
  const Index rows = x.rows(), cols = x.cols();
  const Index first_row = global_first_row(rows);  // first: it may throw
  Mat& mask = cache.mask;
  if (mask.rows() != rows || mask.cols() != cols) {
    // Allocated aside, then swapped in: if the allocation throws, the cache and the rng are as
    // they were (Eigen's resize frees the old buffer before allocating the new one).
    Mat fresh(rows, cols);
    mask.swap(fresh);
  }
  cache.rows = rows;
  cache.cols = cols;
  const std::uint64_t start =
      rng_.next_u64() + static_cast<std::uint64_t>(first_row) * 0x9E3779B97F4A7C15ull;
  // p < 1, so p * 2^32 < 2^32 fits (rounding up to 2^32 only for p within 2^-33 of 1).
  const auto threshold =
      static_cast<std::uint32_t>(std::min(static_cast<double>(p_) * 4294967296.0, 4294967295.0));
  const Scalar scale = Scalar(1) / (Scalar(1) - p_);
  detail::parallel_for(rows, 5.0 * static_cast<double>(cols), [&](Index i) {
    std::uint64_t state = start + static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    const auto key = static_cast<std::uint32_t>(detail::splitmix64(state));
    Scalar* row = mask.data() + i * cols;
    // Written so that GCC vectorises it: a local copy of scale (stores to row could alias the
    // captured one), a 32-bit counter, and the unsigned comparison as a signed one (AVX2 has
    // no unsigned compare) after flipping the sign bits.
    const Scalar kept = scale;
    const auto flipped_threshold = static_cast<std::int32_t>(threshold ^ 0x80000000u);
    for (std::uint32_t j = 0; j < static_cast<std::uint32_t>(cols); ++j) {
      const auto h = static_cast<std::int32_t>(detail::hash32(key, j) ^ 0x80000000u);
      row[j] = h >= flipped_threshold ? kept : Scalar(0);
    }
    y.row(i) = x.row(i).cwiseProduct(mask.row(i));
  });
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(Dropout)

}  // namespace eigenformer
