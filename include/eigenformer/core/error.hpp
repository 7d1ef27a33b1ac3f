// Library exceptions and the argument checks that raise them.
//
// Every check runs in Release builds too. A message names the function, the argument, what was
// expected and what came, e.g.
//   "eigenformer::Linear::forward: argument 'x' has shape (6, 5), expected (*, 4)".
// A message is built only when its check fails: function and argument names are string views of
// literals, and the rest comes from a callable (detail::require) or from the failing branch.
#pragma once

#include <Eigen/Core>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace eigenformer {

/// Bad input to a library function: wrong shape, id out of range, bad mask or option.
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A file could not be read or written, or its contents are not what they claim.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

inline std::string shape_str(Eigen::Index rows, Eigen::Index cols) {
  std::ostringstream s;
  s << '(' << rows << ", " << cols << ')';
  return s.str();
}

template <class M>
std::string shape_of(const M& m) {
  return shape_str(m.rows(), m.cols());
}

[[noreturn]] inline void throw_argument(std::string_view func, std::string_view arg,
                                        const std::string& what) {
  std::string message = "eigenformer::";
  message.append(func).append(": argument '").append(arg).append("' ").append(what);
  throw ArgumentError(message);
}

/// Throws ArgumentError naming func and arg unless ok. `what` is the rest of the message: a string
/// literal, or a callable returning a std::string that runs only when the check fails, so that a
/// passing check costs a comparison and nothing else (no string is built or allocated):
///   require(n > 0, "Linear::Linear", "n", [&] { return "must be positive, got " + str(n); });
template <class What>
void require(bool ok, std::string_view func, std::string_view arg, What&& what) {
  if (ok) return;
  if constexpr (std::is_invocable_v<What>)
    throw_argument(func, arg, std::string(what()));
  else
    throw_argument(func, arg, std::string(what));
}

/// Throws ArgumentError "func: argument 'cache' is empty: no forward pass has filled it" unless
/// filled: what every backward checks first, so that a cache no forward filled is named as such
/// rather than reported as a shape mismatch of the upstream gradient.
inline void require_filled_cache(std::string_view func, bool filled) {
  require(filled, func, "cache", "is empty: no forward pass has filled it");
}

/// Throws unless m is (rows, cols); a negative expectation means "any".
template <class M>
void check_shape(std::string_view func, std::string_view arg, const M& m, Eigen::Index rows,
                 Eigen::Index cols) {
  const bool ok = (rows < 0 || m.rows() == rows) && (cols < 0 || m.cols() == cols);
  if (ok) return;
  std::ostringstream want;
  want << '(' << (rows < 0 ? std::string("*") : std::to_string(rows)) << ", "
       << (cols < 0 ? std::string("*") : std::to_string(cols)) << ')';
  throw_argument(func, arg, "has shape " + shape_of(m) + ", expected " + want.str());
}

/// Throws unless value > 0.
inline void check_positive(std::string_view func, std::string_view arg, Eigen::Index value) {
  if (value <= 0) throw_argument(func, arg, "must be positive, got " + std::to_string(value));
}

}  // namespace detail
}  // namespace eigenformer
