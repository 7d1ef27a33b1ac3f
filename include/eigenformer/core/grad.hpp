// Parameter gradients: the matrix type of Param::grad, and how the ops take a gradient to add to.
//
// A gradient is an Eigen::Map over memory that is either its own or lent to it. Data-parallel
// training (dist/data_parallel.hpp) lends every gradient a slice of a flat bucket, as PyTorch
// DDP's gradient_as_bucket_view does, so that backward writes where the sum over ranks is sent
// from and the sums are read where they arrive: nothing is copied into or out of the buckets.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <utility>

#include "error.hpp"
#include "tensor.hpp"

namespace eigenformer {

/// A row-major (rows, cols) gradient with Eigen's matrix interface (it is an Eigen::Map, so
/// expressions, blocks and assignment of the same shape work in place). As a Matrix, it can be
/// resized or assigned an expression of another shape: it then takes memory of its own of that
/// shape. A copy owns its memory; a move takes the other's (own or lent).
template <class Scalar>
class GradMatrix : public Eigen::Map<Matrix<Scalar>> {
 public:
  using Base = Eigen::Map<Matrix<Scalar>>;

  /// 0 x 0.
  GradMatrix() : Base(nullptr, 0, 0) {}
  /// (rows, cols) zeros in memory of its own; rows and cols >= 0.
  GradMatrix(Index rows, Index cols) : Base(nullptr, 0, 0) {
    own(Matrix<Scalar>::Zero(rows, cols));
  }
  /// A copy in memory of its own.
  GradMatrix(const GradMatrix& other) : Base(nullptr, 0, 0) { own(other); }
  /// Takes other's memory, own or lent; other is left 0 x 0.
  GradMatrix(GradMatrix&& other) noexcept : Base(nullptr, 0, 0) { take(other); }
  /// other's values: in place for the same shape, else in memory of its own.
  GradMatrix& operator=(const GradMatrix& other) { return assign(other); }
  /// Takes other's memory, own or lent; other is left 0 x 0.
  GradMatrix& operator=(GradMatrix&& other) noexcept {
    if (this != &other) take(other);
    return *this;
  }
  /// x's values: in place for the same shape (Eigen's aliasing rules, as for a Matrix), else
  /// in memory of its own (x evaluated first, so it may read this gradient).
  template <class Derived>
  GradMatrix& operator=(const Eigen::DenseBase<Derived>& x) {
    return assign(x.derived());
  }

  /// As Matrix::resize: nothing for the same shape, else memory of its own of the new shape
  /// (entries unset).
  void resize(Index rows, Index cols) {
    if (rows != this->rows() || cols != this->cols()) own(Matrix<Scalar>(rows, cols));
  }

  /// Makes this gradient a view of the (rows, cols) entries at data, which keeper keeps alive,
  /// copying its entries there first when keep_values (then it must be (rows, cols) already).
  /// Frees its own memory. Throws ArgumentError naming GradMatrix::lend, changing nothing, when
  /// keep_values and (rows, cols) is not its shape. Whoever lends may move the gradient between
  /// buffers (data-parallel training does at every step): a Block, Ref or pointer into it is
  /// valid until then only.
  void lend(Scalar* data, Index rows, Index cols, std::shared_ptr<void> keeper, bool keep_values) {
    detail::require(!keep_values || (rows == this->rows() && cols == this->cols()),
                    "GradMatrix::lend", "rows, cols", [&] {
                      return "are " + detail::shape_str(rows, cols) + ": keeping the values of a " +
                             detail::shape_of(*this) + " gradient needs its shape";
                    });
    if (keep_values && data != this->data())
      std::copy(this->data(), this->data() + this->size(), data);
    view(data, rows, cols);
    keeper_ = std::move(keeper);
    own_ = Matrix<Scalar>();
  }
  /// Whether the memory is lent (lend) rather than its own.
  bool lent() const { return keeper_ != nullptr; }
  /// Exchanges the memory (own or lent) of the two, as Matrix::swap (Map's swaps entries).
  void swap(GradMatrix& other) noexcept {
    GradMatrix tmp(std::move(other));
    other = std::move(*this);
    *this = std::move(tmp);
  }

 private:
  Matrix<Scalar> own_;            // the memory when not lent
  std::shared_ptr<void> keeper_;  // the lender's memory, while lent

  // Eigen's documented way to point a Map elsewhere: construct it again in place (as
  // Eigen::Ref does for itself).
  void view(Scalar* data, Index rows, Index cols) {
    new (static_cast<Base*>(this)) Base(data, rows, cols);
  }
  void own(Matrix<Scalar> m) {  // m is a value: it may be computed from this gradient
    own_.swap(m);
    keeper_.reset();
    view(own_.data(), own_.rows(), own_.cols());
  }
  template <class Expr>
  GradMatrix& assign(const Expr& x) {
    if (x.rows() == this->rows() && x.cols() == this->cols())
      static_cast<Base&>(*this) = x;
    else
      own(Matrix<Scalar>(x));
    return *this;
  }
  void take(GradMatrix& other) noexcept {
    own_.swap(other.own_);
    keeper_.swap(other.keeper_);
    view(other.data(), other.rows(), other.cols());
    other.own_ = Matrix<Scalar>();  // the old memory of this: freed, other left empty
    other.keeper_.reset();
    other.view(nullptr, 0, 0);
  }
};

/// A gradient an op adds into, or none: made from a GradMatrix* (&param.grad), a Matrix* or
/// nullptr, so that callers pass a parameter's gradient or a matrix of their own alike.
template <class Scalar>
class GradOut {
 public:
  using View = Eigen::Map<Matrix<Scalar>>;

  /// None: the gradient is not wanted.
  GradOut(std::nullptr_t) {}
  /// A parameter's gradient (&param.grad), or none when g is null.
  GradOut(GradMatrix<Scalar>* g) {
    if (g) point(g->data(), g->rows(), g->cols());
  }
  /// A matrix of the caller's, or none when m is null.
  GradOut(Matrix<Scalar>* m) {
    if (m) point(m->data(), m->rows(), m->cols());
  }
  /// Copies point where other points (a Map's own assignment would copy the entries).
  GradOut(const GradOut& other) { *this = other; }
  /// Points where other points.
  GradOut& operator=(const GradOut& other) {
    point(other.view_.data(), other.view_.rows(), other.view_.cols());
    present_ = other.present_;
    return *this;
  }

  /// Whether there is a gradient; then * and -> give a view of it.
  explicit operator bool() const { return present_; }
  /// The gradient (only when there is one).
  View& operator*() const { return view_; }
  /// The gradient (only when there is one).
  View* operator->() const { return &view_; }

 private:
  mutable View view_{nullptr, 0, 0};
  bool present_ = false;

  void point(Scalar* data, Index rows, Index cols) {
    new (&view_) View(data, rows, cols);
    present_ = true;
  }
};

/// A gradient an op must add into (a parameter's, or a matrix of the caller's).
template <class Scalar>
using GradRef = Eigen::Ref<Matrix<Scalar>>;

}  // namespace eigenformer
