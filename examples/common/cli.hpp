// Small helpers shared by the example programs: flag parsing with clear errors, and a progress
// line for training loops.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace cli {

/// A bad command line: main prints the message and the usage, and exits with status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Flags of the form --name value (or --name for a switch), after the subcommand.
class Flags {
 public:
  /// args: argv after the subcommand; valued / switches: the flags this subcommand accepts.
  Flags(const std::vector<std::string>& args, const std::set<std::string>& valued,
        const std::set<std::string>& switches) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "'");
      const std::string name = a.substr(2);
      if (switches.count(name)) {
        values_[name] = "1";
      } else if (valued.count(name)) {
        if (i + 1 >= args.size()) throw UsageError("flag --" + name + " needs a value");
        values_[name] = args[++i];
      } else {
        throw UsageError("unknown flag --" + name);
      }
    }
  }

  bool has(const std::string& name) const { return values_.count(name) != 0; }

  std::string text(const std::string& name, const std::string& fallback = "") const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

  std::string required(const std::string& name) const {
    if (!has(name)) throw UsageError("flag --" + name + " is required");
    return text(name);
  }

  long integer(const std::string& name, long fallback, long lo, long hi) const {
    if (!has(name)) return fallback;
    const std::string& t = values_.at(name);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != t.size() || v < lo || v > hi)
      throw UsageError("flag --" + name + " takes a whole number from " + std::to_string(lo) +
                       " to " + std::to_string(hi) + ", got '" + t + "'");
    return v;
  }

  double number(const std::string& name, double fallback, double lo, double hi) const {
    if (!has(name)) return fallback;
    const std::string& t = values_.at(name);
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != t.size() || !(v >= lo && v <= hi))
      throw UsageError("flag --" + name + " takes a number from " + std::to_string(lo) + " to " +
                       std::to_string(hi) + ", got '" + t + "'");
    return v;
  }

 private:
  std::map<std::string, std::string> values_;
};

inline std::string format_seconds(double s) {
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

/// "step 1200/4000  loss 0.1234  12345 tok/s  ETA 1m23s" on stderr: redrawn in place on a
/// terminal, a line every `every` steps otherwise (logs stay short).
class Progress {
 public:
  Progress(long total_steps, long every)
      : total_(total_steps), every_(every < 1 ? 1 : every), tty_(isatty(2) != 0),
        start_(std::chrono::steady_clock::now()) {}

  void update(long step, double loss, long tokens_so_far) {
    const bool last = step == total_;
    if (!tty_ && !last && step % every_ != 0) return;
    const double elapsed = seconds();
    const double eta = elapsed / static_cast<double>(step) * static_cast<double>(total_ - step);
    std::fprintf(stderr, "%sstep %ld/%ld  loss %.4f  %.0f tok/s  ETA %s%s", tty_ ? "\r" : "",
                 step, total_, loss, static_cast<double>(tokens_so_far) / elapsed,
                 format_seconds(eta).c_str(), tty_ && !last ? "  " : "\n");
    std::fflush(stderr);
  }

  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  long total_, every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace cli
