// Rotary position embedding (RoPE, Su et al. 2021) in the "rotate half" convention of GPT-NeoX and
// Hugging Face LLaMA: within each head of width dh, feature i (i < dh/2) is paired with feature
// i + dh/2 and the pair is rotated by the angle pos * theta_i, theta_i = base^(-2i/dh):
//   y_i        = x_i cos(pos theta_i) - x_{i+dh/2} sin(pos theta_i)
//   y_{i+dh/2} = x_{i+dh/2} cos(pos theta_i) + x_i sin(pos theta_i)
// (HF: q * cos + rotate_half(q) * sin with rotate_half(x) = cat(-x2, x1)). Applied to queries and
// keys, q_m . k_n then depends on the positions only through n - m.
//
// Layout: x is (B*T, H*dh), the batch layout of core/tensor.hpp; token t of every sequence gets
// position start + t, where start is the table's first position. A rotation is orthogonal, so the
// backward is the transposed rotation (the same angles, sin negated) and keeps norms as well.
#pragma once

#include <cmath>
#include <string>

#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

/// cos and sin of the angles of positions start .. start + T - 1: (T, dh/2) each, row t holding
/// pos = start + t and column i the frequency theta_i. The angles are computed in double (so float
/// tables are exact to rounding at any position) once per call, not per element.
template <class Scalar>
struct RotaryTable {
  Matrix<Scalar> cos, sin;  // (T, dh/2)
  Index start = 0;          // position of row 0

  /// The number of positions T, and dh / 2.
  Index length() const { return cos.rows(); }
  Index half() const { return cos.cols(); }
};

/// The table for positions start .. start + T - 1 of heads of (even) width dh with RoPE base
/// (theta) base.
template <class Scalar>
RotaryTable<Scalar> rotary_table(Index start, Index T, Index dh, double base) {
  detail::require(T >= 0, "rotary_table", "T",
                  [&] { return "must be >= 0, got " + std::to_string(T); });
  detail::require(dh > 0 && dh % 2 == 0, "rotary_table", "dh", [&] {
    return "is " + std::to_string(dh) + ", expected a positive even head width";
  });
  detail::require(base > 0.0 && std::isfinite(base), "rotary_table", "base",
                  [&] { return "must be positive and finite, got " + std::to_string(base); });
  RotaryTable<Scalar> tab;
  const Index half = dh / 2;
  tab.start = start;
  tab.cos.resize(T, half);
  tab.sin.resize(T, half);
  for (Index i = 0; i < half; ++i) {
    const double theta = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
    for (Index t = 0; t < T; ++t) {
      const double angle = static_cast<double>(start + t) * theta;
      tab.cos(t, i) = static_cast<Scalar>(std::cos(angle));
      tab.sin(t, i) = static_cast<Scalar>(std::sin(angle));
    }
  }
  return tab;
}

namespace detail {

/// Rotates every head of every token of x (B*T, H*dh) in place, by +angle (sign = 1) or by
/// -angle (sign = -1, the transpose). T = tab.length().
template <class Scalar>
void rotate_heads(std::string_view func, Matrix<Scalar>& x, Index H, const RotaryTable<Scalar>& tab,
                  Scalar sign) {
  const Index T = tab.length(), half = tab.half(), dh = 2 * half;
  check_positive(func, "H", H);
  check_shape(func, "x", x, -1, H * dh);
  require(T > 0 && x.rows() % T == 0, func, "x", [&] {
    return "has " + std::to_string(x.rows()) + " rows, not a multiple of the table's " +
           std::to_string(T) + " positions";
  });
  detail::parallel_for(x.rows(), 6.0 * static_cast<double>(H * dh), [&](Index r) {
    const Scalar* c = tab.cos.data() + (r % T) * half;  // plain loops over contiguous rows:
    const Scalar* s = tab.sin.data() + (r % T) * half;  // no temporaries, and they vectorise
    for (Index h = 0; h < H; ++h) {
      Scalar* x1 = x.data() + r * x.cols() + h * dh;
      Scalar* x2 = x1 + half;
      for (Index i = 0; i < half; ++i) {
        const Scalar a = x1[i], b = x2[i], si = sign * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  });
}

}  // namespace detail

/// In place: x (B*T, H*dh) -> RoPE(x), token t of each sequence at position tab.start + t.
/// Throws unless x.rows() is a multiple of tab.length() and x.cols() == H * 2 * tab.half().
template <class Scalar>
void rotary_forward(Matrix<Scalar>& x, Index H, const RotaryTable<Scalar>& tab) {
  detail::rotate_heads<Scalar>("rotary_forward", x, H, tab, Scalar(1));
}

/// In place: dy (B*T, H*dh), the gradient with respect to rotary_forward's output -> the gradient
/// with respect to its input (the transposed rotation).
template <class Scalar>
void rotary_backward(Matrix<Scalar>& dy, Index H, const RotaryTable<Scalar>& tab) {
  detail::rotate_heads<Scalar>("rotary_backward", dy, H, tab, Scalar(-1));
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ROTARY_TEMPLATES(S)                                                           \
  EIGENFORMER_FOR(S, RotaryTable<S> rotary_table<S>(Index start, Index T, Index dh, double base)) \
  EIGENFORMER_FOR(S, void rotary_forward<S>(Matrix<S>& x, Index H, const RotaryTable<S>& tab))   \
  EIGENFORMER_FOR(S, void rotary_backward<S>(Matrix<S>& dy, Index H, const RotaryTable<S>& tab))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ROTARY_TEMPLATES)
// clang-format on

}  // namespace eigenformer
