// A seeded random number generator with portable distributions.
//
// std::normal_distribution and friends differ between standard libraries, so the same seed would
// give different weights on different platforms; these distributions are written out instead.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>

#include "error.hpp"
#include "tensor.hpp"

namespace eigenformer {

namespace detail {

/// One step of the SplitMix64 generator: advances state by the golden-ratio constant and returns
/// a well-mixed 64-bit value of it. Element k of a stream is a function of start + k * constant
/// alone, so any part of a stream can be drawn without the parts before it (threads, rows).
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// MurmurHash3's 32-bit finaliser of key + counter * golden ratio: a counter-based generator of
/// 32-bit uniforms (each value depends only on key and counter), cheap enough to vectorise with
/// 32-bit SIMD multiplies.
inline std::uint32_t hash32(std::uint32_t key, std::uint32_t counter) {
  std::uint32_t x = key + counter * 0x9E3779B9u;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

}  // namespace detail

class Rng {
 public:
  /// An mt19937_64 seeded with seed: the same seed gives the same numbers on every platform.
  explicit Rng(std::uint64_t seed = 0) : engine_(seed) {}

  /// The engine's next 64-bit value.
  std::uint64_t next_u64() { return engine_(); }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * (1.0 / 9007199254740992.0); }

  /// Uniform in [lo, hi) for lo < hi; the bounds are not checked.
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Standard normal by Box-Muller.
  double normal() {
    constexpr double two_pi = 6.283185307179586476925286766559;
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * uniform());
  }

  /// Uniform integer in [0, n), n > 0.
  Index index(Index n) {
    detail::check_positive("Rng::index", "n", n);
    return static_cast<Index>(uniform() * static_cast<double>(n));
  }

  /// A seed for a child generator (e.g. one per dropout layer).
  std::uint64_t split() { return engine_(); }

  /// The engine's whole state as text (the standard's portable mt19937_64 format: 313 numbers):
  /// set_state(state()) continues the stream exactly where it is now.
  std::string state() const {
    std::ostringstream out;
    out << engine_;
    return out.str();
  }

  /// Restores a state written by state(). Throws ArgumentError naming Rng::set_state, and leaves
  /// the generator as it was, when text is not such a state.
  void set_state(const std::string& text) {
    std::istringstream in(text);
    std::mt19937_64 engine;
    in >> engine;
    const bool ok = !in.fail() && (in >> std::ws).eof();
    detail::require(ok, "Rng::set_state", "text", [&] {
      return "is not a generator state from Rng::state() (" + std::to_string(text.size()) +
             " characters: '" + text.substr(0, 40) + (text.size() > 40 ? "...'" : "'") + ")";
    });
    engine_ = engine;
  }

 private:
  std::mt19937_64 engine_;
};

/// Fills m with U(lo, hi).
template <class Derived>
void fill_uniform(Eigen::MatrixBase<Derived>& m, double lo, double hi, Rng& rng) {
  detail::require(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "fill_uniform", "hi", [&] {
    return "must be finite and >= lo, got lo " + std::to_string(lo) + ", hi " + std::to_string(hi);
  });
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j)
      m(i, j) = static_cast<typename Derived::Scalar>(rng.uniform(lo, hi));
}

/// Fills m with N(mean, stddev^2).
template <class Derived>
void fill_normal(Eigen::MatrixBase<Derived>& m, double mean, double stddev, Rng& rng) {
  detail::require(std::isfinite(mean), "fill_normal", "mean",
                  [&] { return "must be finite, got " + std::to_string(mean); });
  detail::require(std::isfinite(stddev) && stddev >= 0, "fill_normal", "stddev",
                  [&] { return "must be >= 0 and finite, got " + std::to_string(stddev); });
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j)
      m(i, j) = static_cast<typename Derived::Scalar>(mean + stddev * rng.normal());
}

/// Glorot/Xavier uniform for a (fan_out, fan_in) weight.
template <class Derived>
void fill_xavier_uniform(Eigen::MatrixBase<Derived>& m, Rng& rng) {
  const double a = std::sqrt(6.0 / static_cast<double>(m.rows() + m.cols()));
  fill_uniform(m, -a, a, rng);
}

}  // namespace eigenformer
