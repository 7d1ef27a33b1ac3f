// An owning pointer that copies its object: what a layer holds a runtime-chosen component by (the
// attention's scoring and position scheme), so that the layer keeps value semantics.
#pragma once

#include <memory>
#include <utility>

namespace eigenformer {
namespace detail {

/// unique_ptr<T> whose copy is the object's clone() (a std::unique_ptr<T>); may be null.
template <class T>
class ClonePtr {
 public:
  ClonePtr() = default;
  explicit ClonePtr(std::unique_ptr<T> p) : p_(std::move(p)) {}
  ClonePtr(const ClonePtr& other) : p_(other.p_ ? other.p_->clone() : nullptr) {}
  ClonePtr& operator=(const ClonePtr& other) {
    if (this != &other) p_ = other.p_ ? other.p_->clone() : nullptr;
    return *this;
  }
  ClonePtr(ClonePtr&&) noexcept = default;
  ClonePtr& operator=(ClonePtr&&) noexcept = default;
  ~ClonePtr() = default;

  T* get() const { return p_.get(); }
  T& operator*() const { return *p_; }
  T* operator->() const { return p_.get(); }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  std::unique_ptr<T> p_;
};

}  // namespace detail
}  // namespace eigenformer
