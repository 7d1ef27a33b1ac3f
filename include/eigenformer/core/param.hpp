// Trainable parameters and the gradient contract.
//
// The gradient contract of every backward(): parameter gradients ACCUMULATE (into Param::grad, as
// a layer may run several times in a step; call zero_grad() once per step); the input gradient
// returned holds only this call's, in a buffer of the layer valid until its next backward, as
// training outputs are buffers of the cache: a loop keeping its caches allocates once (issue 18).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "error.hpp"
#include "grad.hpp"
#include "parallel.hpp"
#include "tensor.hpp"

namespace eigenformer {

template <class Scalar = float>
struct Param {
  Matrix<Scalar> value;  // (rows, cols); a vector parameter is one row
  GradMatrix<Scalar> grad;  // same shape as value; its own memory or lent (core/grad.hpp), so
                            // a pointer into it is valid until the next data-parallel step
  bool is_vector = false;  // saved as a 1-D tensor of length cols (like PyTorch's biases)

  Param() = default;
  /// value and grad zero, of shape (rows, cols); vector: saved as a 1-D tensor of length cols.
  /// Throws ArgumentError naming Param::Param unless rows and cols are >= 0.
  Param(Index rows, Index cols, bool vector = false)
      : value(Matrix<Scalar>::Zero(checked_size("rows", rows), checked_size("cols", cols))),
        grad(rows, cols),
        is_vector(vector) {}

  /// Sets grad to zero; size() is the number of entries of value.
  void zero_grad() { grad.setZero(); }
  Index size() const { return value.size(); }

  /// n, or ArgumentError naming Param::Param and arg when n < 0: the constructor's check.
  static Index checked_size(const char* arg, Index n) {
    detail::require(n >= 0, "Param::Param", arg,
                    [&] { return "must be >= 0, got " + std::to_string(n); });
    return n;
  }

  /// Shape as a tensor file states it: {cols} for a vector, {rows, cols} otherwise.
  std::vector<Index> shape() const {
    if (is_vector) return {value.cols()};
    return {value.rows(), value.cols()};
  }
};

/// A parameter with its dotted name, e.g. "layers.0.self_attn.q_proj.weight".
template <class Scalar = float>
struct NamedParam {
  std::string name;
  Param<Scalar>* param;
};

template <class Scalar>
using ParamList = std::vector<NamedParam<Scalar>>;

/// The optional callback of a model's backward (data-parallel training, dist/): called once per
/// layer, in the order backward finishes them (the reverse of the forward), with the parameters
/// whose gradients that backward will not touch again. An empty function costs one test per layer.
template <class Scalar>
using GradReady = std::function<void(const ParamList<Scalar>&)>;

/// Appends a child's parameters to out, with "prefix." before each name.
template <class Scalar>
void append_params(ParamList<Scalar>& out, const std::string& prefix,
                   const ParamList<Scalar>& child) {
  for (const auto& p : child) out.push_back({prefix + "." + p.name, p.param});
}

/// The parameter called name in params (e.g. "layers.0.self_attn.relative_bias"). Throws
/// ArgumentError naming param_named and the name when params has none such.
template <class Scalar>
Param<Scalar>& param_named(const ParamList<Scalar>& params, std::string_view name) {
  for (const auto& p : params)
    if (p.name == name && p.param) return *p.param;
  detail::throw_argument("param_named", "name",
                         "is '" + std::string(name) + "', which no parameter of the " +
                             std::to_string(params.size()) + " in params is called");
}

namespace detail {

/// Throws unless every entry of params points to a parameter.
template <class Scalar>
void check_no_null_params(const char* func, const ParamList<Scalar>& params) {
  for (const auto& p : params)
    require(p.param != nullptr, func, "params",
            [&] { return "has a null pointer for '" + p.name + "'"; });
}

/// Sets the gradients of params, which names no parameter twice, to zero: the rows of all of them
/// shared among threads in one parallel region (a model's gradients are megabytes in a few
/// hundred matrices, most too small to be worth a region of their own). shapes is scratch,
/// refilled with the gradients' shapes: a caller that keeps it allocates nothing.
template <class Scalar>
void zero_distinct_grads(const ParamList<Scalar>& params,
                         std::vector<std::pair<Index, Index>>& shapes) {
  shapes.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    shapes[i] = {params[i].param->grad.rows(), params[i].param->grad.cols()};
  parallel_over_rows(shapes, 1.0, [&](size_t i, Index begin, Index n) {
    params[i].param->grad.middleRows(begin, n).setZero();
  });
}

}  // namespace detail

/// Sets the gradient of every parameter in params to zero. Throws ArgumentError naming
/// zero_grad, before clearing any, when an entry has a null pointer.
template <class Scalar>
void zero_grad(const ParamList<Scalar>& params) {
  detail::check_no_null_params("zero_grad", params);
  // Each gradient once: a list may name a shared parameter twice. (Names are not needed here,
  // so none is copied.)
  ParamList<Scalar> distinct;
  std::unordered_set<const Param<Scalar>*> seen;
  for (const auto& p : params)
    if (seen.insert(p.param).second) distinct.push_back({std::string(), p.param});
  std::vector<std::pair<Index, Index>> shapes;
  detail::zero_distinct_grads(distinct, shapes);
}

/// The number of scalar entries over params (a parameter listed twice counts twice). Throws
/// ArgumentError naming count_params when an entry has a null pointer.
template <class Scalar>
Index count_params(const ParamList<Scalar>& params) {
  detail::check_no_null_params("count_params", params);
  Index n = 0;
  for (const auto& p : params) n += p.param->size();
  return n;
}

}  // namespace eigenformer
