// Elementwise activations, as in PyTorch:
//   relu:      max(x, 0)                                   (derivative 0 at x = 0)
//   gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GELU(approximate="tanh"))
//   gelu_erf:  0.5 x (1 + erf(x / sqrt(2))) = x Phi(x)           (GELU(), the default)
// Phi is computed as 0.5 erfc(-x / sqrt(2)) and 0.5 (1 + tanh(u)) as the logistic sigmoid(2u):
// the same functions, but negative x keep their relative precision and large |x| cannot overflow.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

/// gelu is the exact GELU x Phi(x), PyTorch's nn.GELU() default (BERT); gelu_erf is the same
/// value under its older name; gelu_tanh is the tanh approximation (GPT-2's "gelu_new").
enum class Activation { relu, gelu_tanh, gelu, gelu_erf = gelu };

/// "relu", "gelu_tanh" or "gelu_erf".
inline std::string to_string(Activation kind) {
  switch (kind) {
    case Activation::relu: return "relu";
    case Activation::gelu_tanh: return "gelu_tanh";
    case Activation::gelu_erf: return "gelu_erf";
  }
  detail::throw_argument("to_string", "kind",
                         "is not an Activation (value " + std::to_string(static_cast<int>(kind)) +
                             ")");
}

/// "relu", "gelu" (the erf form, PyTorch's default), "gelu_tanh" or "gelu_erf".
inline Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::relu;
  if (name == "gelu" || name == "gelu_erf") return Activation::gelu_erf;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  detail::throw_argument("parse_activation", "name",
                         "is '" + name + "', expected one of relu, gelu, gelu_tanh, gelu_erf");
}

namespace detail {

/// Throws unless kind is one of the enumerators.
inline void check_activation(std::string_view func, Activation kind) {
  require(kind == Activation::relu || kind == Activation::gelu_tanh || kind == Activation::gelu_erf,
          func, "kind", [&] {
            return "is not an Activation (value " + std::to_string(static_cast<int>(kind)) + ")";
          });
}

template <class Scalar>
struct GeluConstants {
  static constexpr Scalar k = Scalar(0.79788456080286535588);       // sqrt(2 / pi)
  static constexpr Scalar a = Scalar(0.044715);
  static constexpr Scalar inv_sqrt2 = Scalar(0.70710678118654752440);
  static constexpr Scalar inv_sqrt_2pi = Scalar(0.39894228040143267794);
};

/// Phi(x), the standard normal CDF, as 0.5 erfc(-x / sqrt 2): no cancellation for negative x.
template <class Scalar>
Scalar normal_cdf(Scalar x) {
  return Scalar(0.5) * std::erfc(-x * GeluConstants<Scalar>::inv_sqrt2);
}

/// 1 where d > 0, 0 where d <= 0, for d whose positive values are above 1e-30 (the product below
/// then exceeds 1) or tiny against the caller's terms; vectorized as select() is not.
template <class Array>
auto unit_step(const Array& d) {
  using Scalar = typename Array::Scalar;
  return (d * Scalar(1e30)).max(Scalar(0)).min(Scalar(1));
}

/// 1 for x >= 0, e for x < 0: the numerator of sigmoid(2u) = 1 / (1 + e) or e / (1 + e) with
/// e = exp(-2|u|) in (0, 1]. At x = 0, e is 1; for 0 < x < 1e-30, e is 1 to float precision.
template <class E, class X>
auto sigmoid_numerator(const E& e, const X& x) {
  return e.max(unit_step(x));
}

/// One row: e = exp(-2|u|), u = k (x + a x^3), set to exactly 0 below the smallest normal number
/// (Eigen's vectorised exp stops there instead of reaching 0, and x^3 may overflow to inf).
template <class Out, class In>
void gelu_tanh_exp(Out&& e, const In& x) {
  using Scalar = typename In::Scalar;
  using G = GeluConstants<Scalar>;
  const Scalar z_max = -std::log(std::numeric_limits<Scalar>::min());
  e.array() = Scalar(2) * G::k * (x.array() + G::a * x.array().cube()).abs();
  // exp(-z) for z < z_max, else exactly 0 (no denormals). Written with min, max and products,
  // which Eigen 3.4 vectorizes, not select(), which it evaluates (and exp with it) one scalar at
  // a time: GELU was 7% of a GPT training step.
  e.array() = (-e.array().min(z_max)).exp() * unit_step(z_max - e.array());
}

/// One row: out = f(inp).
template <class Out, class In>
void activation_row(Out&& out, const In& inp, Activation kind) {
  using Scalar = typename In::Scalar;
  switch (kind) {
    case Activation::relu:
      out.array() = inp.array().max(Scalar(0));
      break;
    case Activation::gelu_tanh:
      // 0.5 (1 + tanh(u)) = sigmoid(2u), written with e = exp(-2|u|) so that nothing overflows
      // and negative x keep their relative precision.
      gelu_tanh_exp(out, inp);
      out.array() = inp.array() * sigmoid_numerator(out.array(), inp.array()) /
                    (Scalar(1) + out.array());
      break;
    case Activation::gelu_erf:
      out.array() = inp.array() * inp.array().unaryExpr(&normal_cdf<Scalar>);
      break;
  }
}

/// One row: dinp = dout * f'(inp).
template <class Out, class Dout, class In>
void activation_backward_row(Out&& dinp, const Dout& dout, const In& inp, Activation kind) {
  using Scalar = typename In::Scalar;
  using G = GeluConstants<Scalar>;
  switch (kind) {
    case Activation::relu:
      dinp.array() = (inp.array() > Scalar(0)).select(dout.array(), Scalar(0));
      break;
    case Activation::gelu_tanh:
      // f = x s with s = sigmoid(2u), u = k (x + a x^3), e = exp(-2|u|):
      // f' = s + 2 x s (1 - s) k (1 + 3 a x^2), where s (1 - s) = e / (1 + e)^2; the second term
      // is 0 once e is, so huge |x| (whose x^3 overflows) give f' = 0 or 1.
      // x is clamped to +-1e4 in the second term, where e is 0 already, so that x^3 stays finite.
      gelu_tanh_exp(dinp, inp);
      {
        const auto xc = inp.array().min(Scalar(1e4)).max(Scalar(-1e4));
        dinp.array() = dout.array() *
                       (sigmoid_numerator(dinp.array(), inp.array()) / (Scalar(1) + dinp.array()) +
                        Scalar(2) * G::k * xc * (Scalar(1) + Scalar(3) * G::a * xc.square()) *
                            dinp.array() / (Scalar(1) + dinp.array()).square());
      }
      break;
    case Activation::gelu_erf:
      // f' = Phi(x) + x phi(x).
      dinp.array() = dout.array() * (inp.array().unaryExpr(&normal_cdf<Scalar>) +
                                     inp.array() * G::inv_sqrt_2pi *
                                         (Scalar(-0.5) * inp.array().square()).exp());
      break;
  }
}

}  // namespace detail

/// out (N, C) = f(inp (N, C)) elementwise.
template <class Scalar>
void activation_forward(Matrix<Scalar>& out, ConstRef<Scalar> inp, Activation kind) {
  detail::check_activation("activation_forward", kind);
  out.resize(inp.rows(), inp.cols());
  detail::parallel_for(inp.rows(), 20.0 * static_cast<double>(inp.cols()),
                       [&](Index i) { detail::activation_row(out.row(i), inp.row(i), kind); });
}

/// dinp (N, C) = dout (N, C) * f'(inp (N, C)), fresh. dinp must not alias dout or inp.
template <class Scalar>
void activation_backward(Matrix<Scalar>& dinp, ConstRef<Scalar> dout, ConstRef<Scalar> inp,
                         Activation kind) {
  detail::check_activation("activation_backward", kind);
  detail::check_shape("activation_backward", "dout", dout, inp.rows(), inp.cols());
  dinp.resize(inp.rows(), inp.cols());
  detail::parallel_for(inp.rows(), 30.0 * static_cast<double>(inp.cols()), [&](Index i) {
    detail::activation_backward_row(dinp.row(i), dout.row(i), inp.row(i), kind);
  });
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_ACTIVATION_TEMPLATES(S)                                                      \
  EIGENFORMER_FOR(S,                                                                             \
                  void activation_forward<S>(Matrix<S>& out, ConstRef<S> inp, Activation kind)) \
  EIGENFORMER_FOR(S, void activation_backward<S>(Matrix<S>& dinp, ConstRef<S> dout,             \
                                                 ConstRef<S> inp, Activation kind))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_ACTIVATION_TEMPLATES)
// clang-format on

}  // namespace eigenformer
