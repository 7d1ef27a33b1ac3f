// Optimizers over a ParamList, with PyTorch's update rules, and gradient clipping.
//
//   AdamW<float> opt(model.parameters(), 3e-4f);
//   for (...) {
//     opt.zero_grad();
//     ... forward, loss, backward ...
//     clip_grad_norm(model.parameters(), 1.0);
//     opt.step();
//   }
//
// The optimizer keeps pointers to the parameters, which must outlive it, and sizes its state
// (momentum, moments) from their shapes at construction: step() throws ArgumentError if a value or
// gradient has changed shape since.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless lo <= value (<= hi when hi_inclusive, < hi otherwise); NaN always throws.
template <class Scalar>
void check_range(std::string_view func, std::string_view arg, Scalar value, double lo, double hi,
                 bool hi_inclusive = true) {
  const double v = static_cast<double>(value);
  const bool ok = v >= lo && (hi_inclusive ? v <= hi : v < hi);
  if (ok) return;
  std::ostringstream s;
  s << "must be in [" << lo << ", " << hi << (hi_inclusive ? "]" : ")") << ", got " << v;
  throw_argument(func, arg, s.str());
}

template <class Scalar>
void check_nonnegative(std::string_view func, std::string_view arg, Scalar value) {
  check_range(func, arg, value, 0.0, HUGE_VAL, false);
}

/// Throws unless every entry names a parameter whose gradient has the value's shape.
template <class Scalar>
void check_param_list(std::string_view func, const ParamList<Scalar>& params) {
  for (const auto& p : params) {
    require(p.param != nullptr, func, "params",
            [&] { return "has a null pointer for '" + p.name + "'"; });
    require(p.param->grad.rows() == p.param->value.rows() &&
                p.param->grad.cols() == p.param->value.cols(),
            func, "params", [&] {
              return "has parameter '" + p.name + "' with value " + shape_of(p.param->value) +
                     " but grad " + shape_of(p.param->grad);
            });
  }
}

}  // namespace detail

/// Parameters that share optimizer settings (PyTorch's param_groups): their own weight decay
/// (none given: the optimizer's) and a factor on the learning rate, so that a schedule's set_lr
/// moves every group together.
template <class Scalar = float>
struct ParamGroup {
  ParamList<Scalar> params;
  std::optional<double> weight_decay;  // unset: the optimizer's weight_decay
  double lr_scale = 1.0;               // this group's learning rate is lr() * lr_scale
};

/// The usual split for training Transformers (GPT-2, BERT): weight_decay on the weight matrices,
/// none on biases and LayerNorm parameters (the parameters stored as vectors) nor on embedding
/// and position tables (names containing "embedding" or "position"). Empty groups are left out.
template <class Scalar>
std::vector<ParamGroup<Scalar>> weight_decay_groups(const ParamList<Scalar>& params,
                                                    double weight_decay) {
  detail::check_param_list("weight_decay_groups", params);
  ParamGroup<Scalar> decay, no_decay;
  decay.weight_decay = weight_decay;
  no_decay.weight_decay = 0.0;
  for (const auto& p : params) {
    const bool table = p.name.find("embedding") != std::string::npos ||
                       p.name.find("position") != std::string::npos;
    (p.param->is_vector || table ? no_decay : decay).params.push_back(p);
  }
  std::vector<ParamGroup<Scalar>> out;
  for (ParamGroup<Scalar>* g : {&decay, &no_decay})
    if (!g->params.empty()) out.push_back(std::move(*g));
  return out;
}

/// An optimizer's state as plain data, to save a training run and resume it exactly
/// (io/training_state.hpp writes it to a file): the kind, the updates applied, the learning rate
/// and every buffer. The hyperparameters (betas, momentum, weight decay) are not state: the
/// resuming program constructs its optimizer with the same ones.
template <class Scalar = float>
struct OptimizerState {
  std::string kind;  // the class: "SGD", "Adam", "AdamW" (Optimizer::kind())
  long steps = 0;    // updates applied (Optimizer::steps())
  double lr = 0;     // the learning rate (Optimizer::lr())
  /// One entry per parameter and buffer, in the parameters' order, named "<parameter>.<buffer>"
  /// with PyTorch's buffer names: exp_avg and exp_avg_sq (Adam, AdamW), momentum_buffer (SGD
  /// with momentum; none without).
  std::vector<std::pair<std::string, Matrix<Scalar>>> buffers;
};

/// What every optimizer shares: the parameters (in groups), the learning rate and the step count.
/// Every optimizer takes either a ParamList (one group) or groups; hyperparameters are plain
/// doubles, stored as Scalar.
template <class Scalar = float>
class Optimizer {
 public:
  virtual ~Optimizer() = default;

  /// Applies one update from the current gradients; throws if a parameter changed shape.
  /// That throw is an ArgumentError naming <Optimizer>::step and the parameter, before any value,
  /// state or steps() changes; a successful step adds one to steps().
  virtual void step() = 0;

  /// step(), then zero_grad(), with the zeroing folded into the update where the optimizer can
  /// (SGD, Adam and AdamW do): each piece of a gradient is zeroed right after the update reads it,
  /// while it is in cache, rather than by a later pass over every gradient from memory. Use it in
  /// place of step() to drop the next step's zero_grad(). It zeroes this optimizer's parameters
  /// only (a frozen parameter left out of it keeps adding up), and anything reading gradients
  /// after the step sees zeros. A step skipped by hand, or abandoned by an exception, still needs
  /// a zero_grad() (a StepGuard's skip zeroes the gradients itself). Throws as step(), before any
  /// value, gradient, state or steps() changes (SGD, Adam and AdamW name
  /// <Optimizer>::step_and_zero_grad).
  virtual void step_and_zero_grad() {
    step();
    zero_grad();
  }

  /// Sets every parameter's gradient to zero: once per step, as backward adds into them. As
  /// eigenformer::zero_grad(parameters), without its search for parameters listed twice (the
  /// constructor rejects them) and with no allocation of its own. One thread at a time, as step().
  void zero_grad();

  /// The base learning rate of the next steps; group g uses lr * its lr_scale. Throws
  /// ArgumentError naming <Optimizer>::set_lr, keeping the old rate, unless lr is finite and >= 0.
  void set_lr(double lr) {
    detail::check_nonnegative(set_lr_func_, "lr", lr);
    lr_ = static_cast<Scalar>(lr);
  }
  /// The current learning rate.
  Scalar lr() const { return lr_; }
  /// Updates applied so far.
  long steps() const { return steps_; }
  /// Every parameter of every group, in order.
  const ParamList<Scalar>& params() const { return params_; }
  /// The class name: "SGD", "Adam", "AdamW".
  const std::string& kind() const { return name_; }

  /// A copy of the state: kind, steps, learning rate and buffers (see OptimizerState).
  OptimizerState<Scalar> state() const;

  /// Restores a state taken with state() from an optimizer of the same kind and settings over
  /// parameters of the same names and shapes; the next step() then does what that optimizer's
  /// next step would have done. Throws ArgumentError naming <Optimizer>::load_state, changing
  /// nothing, when the kind differs, a buffer is missing, unexpected or of another shape, steps is
  /// negative, or lr is not finite and >= 0.
  void load_state(const OptimizerState<Scalar>& state);

 protected:
  /// groups' parameters with weight decay default_decay where a group sets none.
  Optimizer(std::vector<ParamGroup<Scalar>> groups, double lr, double default_decay,
            std::string name);

  /// One zero matrix per parameter, of its shape: optimizer state.
  std::vector<Matrix<Scalar>> zeros_like_params() const;

  /// Throws ArgumentError naming <Optimizer>::step (<Optimizer>::step_and_zero_grad when
  /// and_zero_grad) and the parameter, if a value or gradient differs from its shape at
  /// construction.
  void check_shapes(bool and_zero_grad = false) const;

  /// The optimizer's buffers: (buffer name, one matrix per parameter). None by default; a derived
  /// optimizer with state lists it here so that state() and load_state() cover it.
  virtual std::vector<std::pair<std::string, std::vector<Matrix<Scalar>>*>> buffer_sets() {
    return {};
  }

  ParamList<Scalar> params_;
  std::vector<Scalar> decay_;     // per parameter: its group's weight decay
  std::vector<Scalar> lr_scale_;  // per parameter: its group's lr_scale
  Scalar lr_;
  long steps_ = 0;
  std::string name_;  // the class name, for error messages
  // Built once, so that a passing check builds no string.
  std::string step_func_, step_and_zero_func_, set_lr_func_;

  /// (rows, cols) of each parameter at construction, which step() checks they still have.
  const std::vector<std::pair<Index, Index>>& shapes() const { return shapes_; }

 private:
  std::vector<std::pair<Index, Index>> shapes_;
  std::vector<std::pair<Index, Index>> grad_shapes_;  // zero_grad's, one per parameter,
                                                      // refreshed on every call
};

template <class Scalar>
Optimizer<Scalar>::Optimizer(std::vector<ParamGroup<Scalar>> groups, double lr,
                             double default_decay, std::string name)
    : lr_(static_cast<Scalar>(lr)),
      name_(std::move(name)),
      step_func_(name_ + "::step"),
      step_and_zero_func_(name_ + "::step_and_zero_grad"),
      set_lr_func_(name_ + "::set_lr") {
  const std::string func = name_ + "::" + name_;
  detail::check_nonnegative(func, "lr", lr);
  detail::check_nonnegative(func, "weight_decay", default_decay);
  for (size_t g = 0; g < groups.size(); ++g) {
    const double decay = groups[g].weight_decay.value_or(default_decay);
    detail::check_nonnegative(func, "groups[].weight_decay", decay);
    detail::check_nonnegative(func, "groups[].lr_scale", groups[g].lr_scale);
    detail::check_param_list(func, groups[g].params);
    for (const auto& p : groups[g].params) {
      params_.push_back(p);
      decay_.push_back(static_cast<Scalar>(decay));
      lr_scale_.push_back(static_cast<Scalar>(groups[g].lr_scale));
    }
  }
  detail::require(!params_.empty(), func, "params", "is empty");
  // A parameter listed twice would be updated twice, and by two threads at once: step() shares
  // the rows of all parameters among threads.
  std::unordered_map<const Param<Scalar>*, const std::string*> seen;
  for (const auto& p : params_) {
    const auto inserted = seen.emplace(p.param, &p.name);
    detail::require(inserted.second, func, "params", [&] {
      return "lists parameter '" + p.name + "' twice (also as '" + *inserted.first->second + "')";
    });
  }
  for (const auto& p : params_) shapes_.push_back({p.param->value.rows(), p.param->value.cols()});
  grad_shapes_.resize(params_.size());
}

template <class Scalar>
auto Optimizer<Scalar>::zeros_like_params() const -> std::vector<Matrix<Scalar>> {
  std::vector<Matrix<Scalar>> out;
  for (const auto& p : params_)
    out.push_back(Matrix<Scalar>::Zero(p.param->value.rows(), p.param->value.cols()));
  return out;
}

template <class Scalar>
void Optimizer<Scalar>::zero_grad() {
  // The gradients' shapes of now, not those of construction: step() throws for a resized
  // parameter, but zeroing it is harmless.
  detail::zero_distinct_grads(params_, grad_shapes_);
}

template <class Scalar>
void Optimizer<Scalar>::check_shapes(bool and_zero_grad) const {
  const std::string& func = and_zero_grad ? step_and_zero_func_ : step_func_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param<Scalar>& p = *params_[i].param;
    const Index rows = shapes_[i].first, cols = shapes_[i].second;
    const bool ok = p.value.rows() == rows && p.value.cols() == cols && p.grad.rows() == rows &&
                    p.grad.cols() == cols;
    detail::require(ok, func, "params", [&] {
      return "has parameter '" + params_[i].name + "' with value " + detail::shape_of(p.value) +
             " and grad " + detail::shape_of(p.grad) + ", expected " +
             detail::shape_str(rows, cols) + " as at construction";
    });
  }
}

template <class Scalar>
auto Optimizer<Scalar>::state() const -> OptimizerState<Scalar> {
  OptimizerState<Scalar> s{name_, steps_, static_cast<double>(lr_), {}};
  // buffer_sets() hands out pointers for load_state too; nothing is written through them here.
  const auto sets = const_cast<Optimizer*>(this)->buffer_sets();
  for (size_t i = 0; i < params_.size(); ++i)
    for (const auto& set : sets)
      s.buffers.emplace_back(params_[i].name + "." + set.first, (*set.second)[i]);
  return s;
}

template <class Scalar>
void Optimizer<Scalar>::load_state(const OptimizerState<Scalar>& state) {
  const std::string func = name_ + "::load_state";
  detail::require(state.kind == name_, func, "state",
                  [&] { return "is of a " + state.kind + " optimizer, this is " + name_; });
  detail::require(state.steps >= 0, func, "state.steps",
                  [&] { return "must be >= 0, got " + std::to_string(state.steps); });
  detail::check_nonnegative(func, "state.lr", state.lr);
  std::map<std::string, const Matrix<Scalar>*> given;
  for (const auto& b : state.buffers) {
    detail::require(given.emplace(b.first, &b.second).second, func, "state.buffers",
                    [&] { return "has '" + b.first + "' twice"; });
  }
  // Where each buffer goes, checked before any is written.
  std::vector<std::pair<Matrix<Scalar>*, const Matrix<Scalar>*>> moves;
  const auto sets = buffer_sets();
  for (size_t i = 0; i < params_.size(); ++i)
    for (const auto& set : sets) {
      const std::string name = params_[i].name + "." + set.first;
      Matrix<Scalar>& own = (*set.second)[i];
      const auto it = given.find(name);
      detail::require(it != given.end(), func, "state.buffers",
                      [&] { return "has no '" + name + "'"; });
      detail::require(it->second->rows() == own.rows() && it->second->cols() == own.cols(), func,
                      "state.buffers", [&] {
                        return "has '" + name + "' of shape " + detail::shape_of(*it->second) +
                               ", expected " + detail::shape_of(own);
                      });
      moves.emplace_back(&own, it->second);
      given.erase(it);
    }
  detail::require(given.empty(), func, "state.buffers", [&] {
    return "has '" + given.begin()->first + "', which this optimizer does not have" +
           (given.size() > 1 ? " (and " + std::to_string(given.size() - 1) + " more)" : "");
  });
  for (auto& m : moves) *m.first = *m.second;
  steps_ = state.steps;
  lr_ = static_cast<Scalar>(state.lr);
}

/// torch.optim.SGD without dampening or Nesterov: d = g + wd w; buf = momentum buf + d (buf = d
/// on the first step); w -= lr buf (w -= lr d without momentum).
template <class Scalar = float>
class SGD : public Optimizer<Scalar> {
 public:
  /// params must outlive the optimizer. Throws ArgumentError naming SGD::SGD unless params is
  /// non-empty with no null pointer, no parameter twice (over all groups) and each gradient shaped
  /// as its value, and lr, momentum and weight_decay are finite and >= 0.
  SGD(ParamList<Scalar> params, double lr, double momentum = 0, double weight_decay = 0)
      : SGD(std::vector<ParamGroup<Scalar>>{{std::move(params), {}, 1.0}}, lr, momentum,
            weight_decay) {}
  /// Groups with their own weight decay and learning-rate scale; weight_decay is the default.
  SGD(std::vector<ParamGroup<Scalar>> groups, double lr, double momentum = 0,
      double weight_decay = 0);

  void step() override { update(false); }
  void step_and_zero_grad() override { update(true); }

  /// The settings given at construction.
  Scalar momentum() const { return momentum_; }
  Scalar weight_decay() const { return weight_decay_; }

 private:
  Scalar momentum_;
  Scalar weight_decay_;
  std::vector<Matrix<Scalar>> velocity_;  // momentum buffers, one per parameter; empty without

  /// One step; with zero_grad, each unit of rows' gradient is zeroed once read.
  void update(bool zero_grad);

  std::vector<std::pair<std::string, std::vector<Matrix<Scalar>>*>> buffer_sets() override {
    if (momentum_ == 0) return {};
    return {{"momentum_buffer", &velocity_}};
  }
};

template <class Scalar>
SGD<Scalar>::SGD(std::vector<ParamGroup<Scalar>> groups, double lr, double momentum,
                 double weight_decay)
    : Optimizer<Scalar>(std::move(groups), lr, weight_decay, "SGD"),
      momentum_(static_cast<Scalar>(momentum)),
      weight_decay_(static_cast<Scalar>(weight_decay)) {
  detail::check_nonnegative("SGD::SGD", "momentum", momentum);
  if (momentum_ != 0) velocity_ = this->zeros_like_params();
}

template <class Scalar>
void SGD<Scalar>::update(bool zero_grad) {
  this->check_shapes(zero_grad);
  ++this->steps_;
  // Elementwise: the rows of all parameters are shared among threads, as in Adam::step.
  detail::parallel_over_rows(this->shapes(), 4.0, [&](size_t i, Index begin, Index n) {
    Param<Scalar>& p = *this->params_[i].param;
    auto w = p.value.middleRows(begin, n);
    auto g = p.grad.middleRows(begin, n);
    const Scalar lr = this->lr_ * this->lr_scale_[i], decay = this->decay_[i];
    if (momentum_ == 0) {
      w -= lr * (g + decay * w);
    } else {
      auto velocity = velocity_[i].middleRows(begin, n);
      velocity = momentum_ * velocity + g + decay * w;
      w -= lr * velocity;
    }
    if (zero_grad) g.setZero();
  });
}

/// torch.optim.Adam (1.13): g += wd w (L2 through the gradient); m = b1 m + (1 - b1) g;
/// v = b2 v + (1 - b2) g^2; w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
/// AdamW derives from it and decays the weights directly instead (see below).
template <class Scalar = float>
class Adam : public Optimizer<Scalar> {
 public:
  /// PyTorch's defaults; params must outlive the optimizer. Throws ArgumentError naming Adam::Adam
  /// unless params is non-empty with no null pointer, no parameter twice (over all groups) and
  /// each gradient shaped as its value, lr, eps and weight_decay are finite and >= 0, and beta1
  /// and beta2 are in [0, 1).
  Adam(ParamList<Scalar> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
       double eps = 1e-8, double weight_decay = 0)
      : Adam(one_group(std::move(params)), lr, beta1, beta2, eps, weight_decay, false, "Adam") {}
  /// Groups with their own weight decay and learning-rate scale; weight_decay is the default.
  Adam(std::vector<ParamGroup<Scalar>> groups, double lr = 1e-3, double beta1 = 0.9,
       double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0)
      : Adam(std::move(groups), lr, beta1, beta2, eps, weight_decay, false, "Adam") {}

  void step() override { update(false); }
  void step_and_zero_grad() override { update(true); }

  /// The settings given at construction.
  Scalar beta1() const { return beta1_; }
  Scalar beta2() const { return beta2_; }
  Scalar eps() const { return eps_; }
  /// The default weight decay (a group may set its own).
  Scalar weight_decay() const { return weight_decay_; }
  /// true for AdamW: weights decay directly, outside the moments.
  bool decoupled_weight_decay() const { return decoupled_; }

 protected:
  Adam(std::vector<ParamGroup<Scalar>> groups, double lr, double beta1, double beta2, double eps,
       double weight_decay, bool decoupled, const std::string& name);
  static std::vector<ParamGroup<Scalar>> one_group(ParamList<Scalar> params) {
    return {{std::move(params), {}, 1.0}};
  }

 private:
  /// One step; with zero_grad, each chunk of gradient is zeroed once read.
  void update(bool zero_grad);
  /// Rows [begin, begin + n) of parameter i: the weight decay, m = b1 m + (1 - b1) g,
  /// v = b2 v + (1 - b2) g^2 with the effective gradient g, and the update; then g = 0 when
  /// zero_grad.
  void update_rows(size_t i, Index begin, Index n, Scalar step_size, Scalar bias_correction2_sqrt,
                   bool zero_grad);

  /// update_rows makes its four passes chunk by chunk, so that the four arrays' chunks (2 KB of
  /// floats) stay in L1 between passes: on Zen 5, one thread, an Adam step over 6.3 M parameters
  /// took 2.4 ms (AVX-512 build) and 2.75 ms (AVX2), against 3.6 and 4.5 ms with passes over
  /// whole units of parallel_over_rows.
  /// Chunks lie between multiples of kChunk entries of the parameter, so they depend only on its
  /// shape (as the units do) and most start where its rows' SIMD packets do.
  static constexpr Index kChunk = 128;
  using Chunk = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

  template <class Grad>
  void update_moments(Chunk& m, Chunk& v, const Eigen::ArrayBase<Grad>& g) const {
    m = beta1_ * m + (Scalar(1) - beta1_) * g;
    v = beta2_ * v + (Scalar(1) - beta2_) * g.square();
  }

  Scalar beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  std::vector<Matrix<Scalar>> m_;  // first moments, one per parameter
  std::vector<Matrix<Scalar>> v_;  // second moments, one per parameter

  std::vector<std::pair<std::string, std::vector<Matrix<Scalar>>*>> buffer_sets() override {
    return {{"exp_avg", &m_}, {"exp_avg_sq", &v_}};
  }
};

template <class Scalar>
void Adam<Scalar>::update(bool zero_grad) {
  this->check_shapes(zero_grad);
  ++this->steps_;
  const double t = static_cast<double>(this->steps_);
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(beta1_), t);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(beta2_), t);
  const Scalar bias_correction2_sqrt = static_cast<Scalar>(std::sqrt(bias_correction2));
  // Elementwise, so the rows of all parameters can be shared among threads (in one parallel
  // region) with the same results. The update makes four passes (decay, m, v, w), in cache
  // rather than from memory (see kChunk; a GPT-2-sized model's arrays are 500 MB each).
  detail::parallel_over_rows(this->shapes(), 12.0, [&](size_t i, Index begin, Index n) {
    const Scalar step_size =
        static_cast<Scalar>(static_cast<double>(this->lr_ * this->lr_scale_[i]) / bias_correction1);
    update_rows(i, begin, n, step_size, bias_correction2_sqrt, zero_grad);
  });
}

template <class Scalar>
Adam<Scalar>::Adam(std::vector<ParamGroup<Scalar>> groups, double lr, double beta1, double beta2,
                   double eps, double weight_decay, bool decoupled, const std::string& name)
    : Optimizer<Scalar>(std::move(groups), lr, weight_decay, name),
      beta1_(static_cast<Scalar>(beta1)),
      beta2_(static_cast<Scalar>(beta2)),
      eps_(static_cast<Scalar>(eps)),
      weight_decay_(static_cast<Scalar>(weight_decay)),
      decoupled_(decoupled) {
  const std::string func = name + "::" + name;
  detail::check_range(func, "beta1", beta1, 0.0, 1.0, false);
  detail::check_range(func, "beta2", beta2, 0.0, 1.0, false);
  detail::check_nonnegative(func, "eps", eps);
  m_ = this->zeros_like_params();
  v_ = this->zeros_like_params();
}

template <class Scalar>
void Adam<Scalar>::update_rows(size_t i, Index begin, Index n, Scalar step_size,
                               Scalar bias_correction2_sqrt, bool zero_grad) {
  Param<Scalar>& p = *this->params_[i].param;
  const Index cols = p.value.cols();
  const Scalar decay = this->decay_[i];
  const Scalar shrink = Scalar(1) - this->lr_ * this->lr_scale_[i] * decay;  // decoupled decay
  const Index end = (begin + n) * cols;  // the rows' entries are [begin * cols, end)
  for (Index at = begin * cols, next; at < end; at = next) {
    next = std::min(end, (at / kChunk + 1) * kChunk);
    const Index k = next - at;
    Chunk w(p.value.data() + at, k), m(m_[i].data() + at, k), v(v_[i].data() + at, k);
    Chunk g(p.grad.data() + at, k);
    if (decoupled_) {
      w *= shrink;
      update_moments(m, v, g);
    } else {
      update_moments(m, v, g + decay * w);
    }
    w -= step_size * (m / (v.sqrt() / bias_correction2_sqrt + eps_));
    if (zero_grad) g.setZero();
  }
}

/// torch.optim.AdamW (1.13): Adam with decoupled weight decay, w *= 1 - lr wd before the update,
/// and the gradient left as it is.
template <class Scalar = float>
class AdamW : public Adam<Scalar> {
 public:
  /// PyTorch's defaults, weight_decay 0.01 among them. Throws as Adam's constructor, naming
  /// AdamW::AdamW.
  AdamW(ParamList<Scalar> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
        double eps = 1e-8, double weight_decay = 0.01)
      : Adam<Scalar>(Adam<Scalar>::one_group(std::move(params)), lr, beta1, beta2, eps,
                     weight_decay, true, "AdamW") {}
  /// Groups with their own weight decay and learning-rate scale (e.g. weight_decay_groups);
  /// weight_decay is the default.
  AdamW(std::vector<ParamGroup<Scalar>> groups, double lr = 1e-3, double beta1 = 0.9,
        double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0.01)
      : Adam<Scalar>(std::move(groups), lr, beta1, beta2, eps, weight_decay, true, "AdamW") {}
};

/// Scales all gradients together so that their joint L2 norm is at most max_norm, as
/// torch.nn.utils.clip_grad_norm_: by max_norm / (norm + 1e-6) when that is below 1. Returns the
/// norm before clipping. A non-finite norm is returned with the gradients left unchanged (PyTorch
/// would fill them with NaN); check grads_finite() and skip the step.
/// Throws ArgumentError naming clip_grad_norm, changing nothing, for a null parameter, a gradient
/// not shaped as its value, or a max_norm that is not positive and finite. max_norm is a plain
/// double, as the optimizers' settings are, so 1.0 works for float and double models alike.
template <class Scalar>
Scalar clip_grad_norm(const ParamList<Scalar>& params, double max_norm) {
  detail::check_param_list("clip_grad_norm", params);
  detail::require(max_norm > 0 && std::isfinite(max_norm), "clip_grad_norm", "max_norm",
                  [&] { return "must be positive and finite, got " + std::to_string(max_norm); });
  double sum = 0.0;
  for (const auto& p : params) sum += detail::squared_norm_double(p.param->grad);
  const double norm = std::sqrt(sum);
  const double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1.0)
    for (const auto& p : params) p.param->grad *= static_cast<Scalar>(coef);
  return static_cast<Scalar>(norm);
}

/// true when every gradient is finite; otherwise false, and *bad_name (if given) is the name of
/// the first parameter with a NaN or infinite gradient.
/// Throws ArgumentError naming grads_finite for a null parameter or a gradient not shaped as its
/// value.
template <class Scalar>
bool grads_finite(const ParamList<Scalar>& params, std::string* bad_name = nullptr) {
  detail::check_param_list("grads_finite", params);
  for (const auto& p : params) {
    if (detail::all_finite(p.param->grad)) continue;
    if (bad_name) *bad_name = p.name;
    return false;
  }
  return true;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_OPTIM_TEMPLATES(S)                                            \
  EIGENFORMER_FOR(S, S clip_grad_norm<S>(const ParamList<S>& params, double max_norm)) \
  EIGENFORMER_FOR(S, bool grads_finite<S>(const ParamList<S>& params, std::string* bad_name)) \
  EIGENFORMER_FOR(S, std::vector<ParamGroup<S>> weight_decay_groups<S>(const ParamList<S>& params, double weight_decay))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_OPTIM_TEMPLATES)
EIGENFORMER_CLASS_TEMPLATES(Optimizer)
EIGENFORMER_CLASS_TEMPLATES(SGD)
EIGENFORMER_CLASS_TEMPLATES(Adam)
EIGENFORMER_CLASS_TEMPLATES(AdamW)
// clang-format on

}  // namespace eigenformer
