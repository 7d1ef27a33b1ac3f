// The training curves behind the examples' --plot flag: when to evaluate, the mean training loss
// between evaluations, and the named series the points go to (plot.hpp draws them).
//   plot::Curves curves(steps);
//   each step:  curves.add_step_loss(loss);
//               if (curves.due(step)) {
//                 curves.record_train(step);
//                 curves.record("validation", step, validation_loss());
//               }
//   at the end: plot::write_png(path, "title", "step", "loss",
//                               curves.series({{"training", "training loss"},
//                                              {"validation", "validation loss"}}));
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "plot.hpp"

namespace plot {

/// Points of training curves, taken at about `points` evenly spaced steps (the last one always).
class Curves {
 public:
  /// total_steps >= 1: the number of the last step; points >= 1: about how many points to take.
  explicit Curves(long total_steps, long points = 20)
      : total_(total_steps), every_(std::max(1L, total_steps / std::max(1L, points))) {}

  /// True at the steps (1..total) where the caller evaluates and records a point.
  bool due(long step) const { return step % every_ == 0 || step == total_; }

  /// Adds one step's training loss to the mean that record_train takes.
  void add_step_loss(double loss) {
    sum_ += loss;
    ++count_;
  }

  /// Records, as series "training", the mean of the step losses added since the last call, at
  /// x = step, and returns it.
  double record_train(long step, double scale = 1.0) {
    const double mean = count_ > 0 ? scale * sum_ / double(count_) : 0.0;
    sum_ = 0.0;
    count_ = 0;
    record("training", step, mean);
    return mean;
  }

  /// Appends the point (step, value) to the series called name, made on first use.
  void record(const std::string& name, long step, double value) {
    auto it = std::find_if(series_.begin(), series_.end(),
                           [&](const Series& s) { return s.name == name; });
    if (it == series_.end()) it = series_.insert(series_.end(), Series{name, {}, {}});
    it->x.push_back(double(step));
    it->y.push_back(value);
  }

  /// The series with these names, in this order, each renamed to its legend text: {{"training",
  /// "training loss"}, ...}. Throws std::logic_error for a name never recorded.
  std::vector<Series> series(const std::vector<std::pair<std::string, std::string>>& legend) const {
    std::vector<Series> out;
    for (const auto& entry : legend) {  // not [name, text]: C++17 lambdas cannot capture those
      const std::string& name = entry.first;
      const std::string& text = entry.second;
      const auto it = std::find_if(series_.begin(), series_.end(),
                                   [&](const Series& s) { return s.name == name; });
      if (it == series_.end()) throw std::logic_error("plot::Curves: no series '" + name + "'");
      out.push_back(*it);
      out.back().name = text;
    }
    return out;
  }

 private:
  long total_, every_;
  double sum_ = 0.0;
  long count_ = 0;
  std::vector<Series> series_;
};

}  // namespace plot
