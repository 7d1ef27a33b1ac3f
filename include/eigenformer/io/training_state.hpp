// Training checkpoints: everything a training loop needs to go on exactly where it stopped, in one
// safetensors file, so that a run killed at any moment and resumed from its last checkpoint ends
// with the weights of a run that was never interrupted (same thread count).
//
//   eigenformer::TrainingProgress progress;  // step, the loop's Rng, its data position
//   if (resuming) progress = eigenformer::load_training_state(path, model, opt);
//   for (long step = progress.step + 1; step <= steps; ++step) {
//     ... batch from progress.rng / progress.data_position, forward, backward, opt.step() ...
//     progress.step = step;
//     if (step % every == 0) eigenformer::save_training_state(path, model, opt, progress);
//   }
//
// The file holds:
//  - tensors "model.<parameter>" (the weights) and "optimizer.<parameter>.<buffer>" (its moments
//    or momentum, OptimizerState), in the model's precision;
//  - metadata: the optimizer's kind, steps and learning rate; the progress (step, schedule step,
//    the loop's generator, the data position, the caller's own keys); the state of every dropout
//    layer's generator, so that the masks after resuming are the ones the run would have drawn;
//    a checksum of the data section, so that a flipped bit in the weights is an error too.
// Saving is atomic (temporary file, fsync, rename): a crash while saving leaves the previous
// checkpoint. Loading reads and checks the whole file (structure, names, shapes, dtypes, the
// optimizer's kind, every metadata value) before it changes the model or the optimizer.
// The learning-rate schedule needs nothing of its own when it is applied from the optimizer's step
// count (apply_schedule), which the optimizer's state restores.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../model/eval_mode.hpp"
#include "checkpoint.hpp"
#include "safetensors.hpp"

namespace eigenformer {

/// Where a training loop is, besides its model and optimizer: what save_training_state writes
/// with them and load_training_state gives back.
struct TrainingProgress {
  long step = 0;           // training steps completed: the loop resumes at step + 1
  long schedule_step = 0;  // a schedule's position when it is not the optimizer's steps()
  Rng rng;                 // the loop's own generator (data order, sampling), to the exact draw
  std::uint64_t data_position = 0;  // where the data is: an offset, an epoch, a stream's state
  /// The caller's own values (e.g. a loss average); keys must not start with "eigenformer.".
  std::map<std::string, std::string> extra;
};

namespace detail {

constexpr const char* kStatePrefix = "eigenformer.";

template <class List>
struct ParamListScalar;
template <class S>
struct ParamListScalar<ParamList<S>> {
  using type = S;
};

/// The Scalar of a model's parameters.
template <class Model>
using model_scalar_t =
    typename ParamListScalar<std::decay_t<decltype(std::declval<Model&>().parameters())>>::type;

struct IgnoreDropout {
  template <class D>
  void operator()(D&) const {}
};

/// Whether detail::for_each_dropout knows Model (the library's models and their parts).
template <class Model, class = void>
struct has_dropouts : std::false_type {};
template <class Model>
struct has_dropouts<
    Model, std::void_t<decltype(for_each_dropout(std::declval<Model&>(), IgnoreDropout{}))>>
    : std::true_type {};

/// The generator of every dropout layer of model, in a fixed order; none for a model of the
/// caller's own that for_each_dropout does not know.
template <class Model>
std::vector<Rng*> dropout_rngs(Model& model) {
  std::vector<Rng*> out;
  if constexpr (has_dropouts<Model>::value)
    for_each_dropout(model, [&](auto& d) { out.push_back(&d.rng()); });
  return out;
}

/// The tensors of a training state: "model.<parameter>" for each parameter's value and
/// "optimizer.<buffer>" for each buffer of state.
template <class Scalar, class State>
std::vector<NamedTensor<Scalar>> training_tensors(const char* func, const ParamList<Scalar>& params,
                                                  State& state) {
  check_no_null_params(func, params);
  std::vector<NamedTensor<Scalar>> out;
  for (const auto& p : params)
    out.push_back({"model." + p.name, &p.param->value, p.param->is_vector});
  for (auto& b : state.buffers) out.push_back({"optimizer." + b.first, &b.second, false});
  return out;
}

inline std::uint64_t parse_u64(const std::string& text) {
  if (text.empty() || text[0] == '-' || text[0] == '+') throw std::invalid_argument(text);
  size_t used = 0;
  const unsigned long long v = std::stoull(text, &used);
  if (used != text.size()) throw std::invalid_argument(text);
  return v;
}

/// Reads the metadata of a training state, all checked; IoError naming the key otherwise.
class StateMetadata {
 public:
  StateMetadata(const char* func, const std::string& path,
                const std::map<std::string, std::string>& meta)
      : func_(func), path_(path), meta_(meta) {}

  const std::string& text(const std::string& key) const {
    const auto it = meta_.find(kStatePrefix + key);
    if (it == meta_.end())
      throw_io(func_, path_,
               std::string("metadata has no '") + kStatePrefix + key +
                   "' (not a training state from save_training_state?)");
    return it->second;
  }

  /// parse(text(key)); a value it rejects is an IoError naming the key and the value.
  template <class Parse>
  auto value(const std::string& key, Parse&& parse) const {
    const std::string& t = text(key);
    try {
      return parse(t);
    } catch (const std::exception&) {
      throw_io(func_, path_,
               std::string("metadata '") + kStatePrefix + key + "' has an invalid value '" +
                   t.substr(0, 60) + (t.size() > 60 ? "...'" : "'"));
    }
  }

  Rng rng(const std::string& key) const {
    return value(key, [](const std::string& t) {
      Rng r;
      r.set_state(t);
      return r;
    });
  }

 private:
  const char* func_;
  const std::string& path_;
  const std::map<std::string, std::string>& meta_;
};

}  // namespace detail

/// Writes model's parameters, optimizer's state (OptimizerState) and progress to path, atomically
/// (a temporary file, fsync, rename: a crash leaves the previous file whole). Model: a model with
/// parameters() (the library's models also get every dropout generator saved); Optimizer: SGD,
/// Adam, AdamW or another Optimizer over the model's parameters (or some of them).
/// Throws ArgumentError naming save_training_state, writing nothing, for a negative step or
/// schedule_step, an extra key starting with "eigenformer.", or a null parameter; IoError when the
/// file cannot be written (an existing file then stays as it was).
template <class Model, class Optimizer>
void save_training_state(const std::string& path, Model& model, const Optimizer& optimizer,
                         const TrainingProgress& progress) {
  using Scalar = detail::model_scalar_t<Model>;
  const char* func = "save_training_state";
  detail::require(progress.step >= 0, func, "progress.step",
                  [&] { return "must be >= 0, got " + std::to_string(progress.step); });
  detail::require(progress.schedule_step >= 0, func, "progress.schedule_step",
                  [&] { return "must be >= 0, got " + std::to_string(progress.schedule_step); });
  auto state = optimizer.state();
  const ParamList<Scalar> params = model.parameters();
  const std::vector<NamedTensor<Scalar>> tensors = detail::training_tensors(func, params, state);
  const std::string p = detail::kStatePrefix;
  std::map<std::string, std::string> meta;
  for (const auto& kv : progress.extra) {
    detail::require(kv.first.rfind(p, 0) != 0, func, "progress.extra",
                    [&] { return "uses the reserved key '" + kv.first + "'"; });
    meta.insert(kv);
  }
  meta[p + "training_state"] = "1";
  meta[p + "optimizer"] = state.kind;
  meta[p + "optimizer.steps"] = std::to_string(state.steps);
  meta[p + "optimizer.lr"] = detail::number_text(state.lr);
  meta[p + "progress.step"] = std::to_string(progress.step);
  meta[p + "progress.schedule_step"] = std::to_string(progress.schedule_step);
  meta[p + "progress.rng"] = progress.rng.state();
  meta[p + "progress.data_position"] = std::to_string(progress.data_position);
  const std::vector<Rng*> rngs = detail::dropout_rngs(model);
  meta[p + "dropouts"] = std::to_string(rngs.size());
  for (size_t k = 0; k < rngs.size(); ++k)
    meta[p + "dropout." + std::to_string(k) + ".rng"] = rngs[k]->state();
  detail::save_tensors(func, path, tensors, meta, native_dtype<Scalar>(), true);
}

/// Restores a state written by save_training_state into model and optimizer (constructed as the
/// saving run's were: same architecture, optimizer kind and settings) and returns the progress;
/// the model's train/eval flags are left as they are.
/// Everything is checked before anything changes: on error the model and the optimizer are as
/// they were. Throws IoError naming load_training_state, the file and what differs: unreadable,
/// truncated or damaged (sizes, JSON, offsets), not a training state, a tensor missing,
/// unexpected, of another shape or of another precision than the model's, data that does not
/// match its checksum, an optimizer of another kind, a dropout count that differs, or a metadata
/// value that does not parse.
/// ArgumentError for an empty path or a null parameter.
template <class Model, class Optimizer>
TrainingProgress load_training_state(const std::string& path, Model& model, Optimizer& optimizer) {
  using Scalar = detail::model_scalar_t<Model>;
  const char* func = "load_training_state";
  detail::check_path(func, path);
  auto staged = optimizer.state();  // its buffers receive the file's; its kind is the one expected
  const std::string kind = staged.kind;
  const ParamList<Scalar> params = model.parameters();
  const std::vector<NamedTensor<Scalar>> tensors = detail::training_tensors(func, params, staged);
  const std::vector<Rng*> rngs = detail::dropout_rngs(model);
  std::vector<Rng> dropout_states;
  TrainingProgress progress;
  auto check = [&](const SafetensorsHeader& h) {
    const detail::StateMetadata m(func, path, h.metadata);
    m.text("training_state");
    const std::string& saved_kind = m.text("optimizer");
    if (saved_kind != kind)
      detail::throw_io(func, path,
                       "holds the state of a " + saved_kind + " optimizer, this one is " + kind);
    for (const auto& t : h.tensors)
      if (t.second.dtype != dtype_name(native_dtype<Scalar>()))
        detail::throw_io(func, path,
                         "tensor '" + t.first + "': dtype " + t.second.dtype + " in the file, " +
                             dtype_name(native_dtype<Scalar>()) +
                             " in the model (a training state resumes in its own precision)");
    // Names and shapes before the rest of the metadata: they say best what differs.
    detail::check_names_match(func, path, tensors, h);
    for (const auto& t : tensors) detail::check_tensor_fits(func, path, t, h.tensors.at(t.name));
    staged.steps = m.value("optimizer.steps", detail::parse_int);
    staged.lr = m.value("optimizer.lr", detail::parse_double);
    if (staged.steps < 0 || !(staged.lr >= 0) || !std::isfinite(staged.lr))
      detail::throw_io(func, path, "optimizer steps or learning rate out of range");
    progress.step = m.value("progress.step", detail::parse_int);
    progress.schedule_step = m.value("progress.schedule_step", detail::parse_int);
    if (progress.step < 0 || progress.schedule_step < 0)
      detail::throw_io(func, path, "negative progress.step or progress.schedule_step");
    progress.rng = m.rng("progress.rng");
    progress.data_position = m.value("progress.data_position", detail::parse_u64);
    const long long n = m.value("dropouts", detail::parse_int);
    if (n != static_cast<long long>(rngs.size()))
      detail::throw_io(func, path,
                       "holds " + std::to_string(n) + " dropout generators, the model has " +
                           std::to_string(rngs.size()));
    for (size_t k = 0; k < rngs.size(); ++k)
      dropout_states.push_back(m.rng("dropout." + std::to_string(k) + ".rng"));
    for (const auto& kv : h.metadata)
      if (kv.first.rfind(detail::kStatePrefix, 0) != 0) progress.extra.insert(kv);
  };
  detail::load_tensors(func, path, tensors, check);  // writes the weights only if all is well
  optimizer.load_state(staged);  // checked above: kind, buffer names and shapes, steps, lr
  for (size_t k = 0; k < rngs.size(); ++k) *rngs[k] = dropout_states[k];
  return progress;
}

}  // namespace eigenformer
