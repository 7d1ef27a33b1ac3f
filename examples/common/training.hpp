// What the example programs' training loops share beyond flag parsing: training checkpoints that
// survive a crash (--save-every K keeps the latest at OUT.state, --resume FILE continues from
// one). (The training step itself, with its guard against a non-finite loss or gradient, is
// parallel.hpp's TrainStep.)
#pragma once

#include <cstdio>
#include <eigenformer/io/training_state.hpp>
#include <map>
#include <string>

#include "cli.hpp"
#include "parallel.hpp"

namespace cli {

/// The training-checkpoint flags of a train command, resolved.
struct StateFlags {
  std::string path;    // where --save-every writes: OUT.state
  long every = 0;      // save every this many steps (and after the last); 0: never
  std::string resume;  // the state to continue from; empty: start afresh
};

/// --save-every K (0 to 10^9) and --resume FILE, for a run whose model goes to out.
inline StateFlags state_flags(const Flags& f, const std::string& out) {
  StateFlags s;
  s.path = out + ".state";
  s.every = f.integer("save-every", 0, 0, 1000000000);
  s.resume = f.text("resume");
  return s;
}

/// The settings that must match for a resumed run to end as an uninterrupted one would: stored in
/// the state as "run.<name>" and compared on --resume.
using RunSettings = std::map<std::string, std::string>;

/// x with all 17 significant digits, so that a setting read back compares equal.
inline std::string number_text(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

/// The entries of eigenformer::config_to_metadata under their field names ("d_model", ...).
inline RunSettings config_settings(const std::map<std::string, std::string>& config) {
  RunSettings out;
  for (const auto& kv : config) out[kv.first.substr(kv.first.rfind('.') + 1)] = kv.second;
  return out;
}

/// Throws UsageError naming the first setting in which the state at path (meta: its metadata)
/// differs from this run's.
inline void check_same_run(const std::string& path, const std::map<std::string, std::string>& meta,
                           const RunSettings& now) {
  for (const auto& kv : now) {
    const auto it = meta.find("run." + kv.first);
    const std::string saved = it == meta.end() ? "(none)" : it->second;
    if (saved != kv.second)
      throw UsageError("--resume " + path + " was saved by a run with " + kv.first + " " + saved +
                       ", this run has " + kv.second + ": resume with the flags of that run");
  }
}

/// The progress to start from: fresh, or with --resume the saved one, the model and optimizer
/// restored from the state file (after checking it was saved by a run with these settings).
template <class Model, class Optimizer>
eigenformer::TrainingProgress start_or_resume(const StateFlags& flags, Model& model, Optimizer& opt,
                                              eigenformer::TrainingProgress fresh,
                                              const RunSettings& settings) {
  if (flags.resume.empty()) {
    for (const auto& kv : settings) fresh.extra["run." + kv.first] = kv.second;
    return fresh;
  }
  // The settings first: "steps 600, this run has 800" says more than a tensor's shape would.
  check_same_run(flags.resume, eigenformer::read_safetensors_metadata(flags.resume), settings);
  eigenformer::TrainingProgress p = eigenformer::load_training_state(flags.resume, model, opt);
  std::fprintf(stderr, "resuming from %s after step %ld\n", flags.resume.c_str(), p.step);
  return p;
}

/// Saves the state after step when --save-every asks for it (every K steps and after the last):
/// rank 0 writes, the other processes wait until the file is whole.
template <class Model, class Optimizer>
void save_state_if_due(const Processes& procs, const StateFlags& flags, long step, long steps,
                       Model& model, const Optimizer& opt,
                       const eigenformer::TrainingProgress& progress) {
  if (flags.every <= 0 || (step % flags.every != 0 && step != steps)) return;
  procs.on_root([&] { eigenformer::save_training_state(flags.path, model, opt, progress); });
}

}  // namespace cli
