// Helpers shared by the example programs: flag parsing with clear errors, durations, and a
// progress line for training loops.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cli {

/// A bad command line: main prints the message and the usage, and exits with status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The flags after the subcommand: "--name value" or "--name=value" for a valued flag, "--name"
/// for a switch; "--help" / "-h" anywhere sets help(). A valued flag may be given once, a
/// repeatable one any number of times, and "--name A B C" gives a repeatable flag every word up to
/// the next flag. Flag names are written without the dashes.
class Flags {
 public:
  /// args: argv after the subcommand; valued / switches / repeatable: the flags accepted.
  Flags(const std::vector<std::string>& args, const std::set<std::string>& valued,
        const std::set<std::string>& switches = {},
        const std::set<std::string>& repeatable = {}) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--help" || a == "-h") {
        help_ = true;
        continue;
      }
      if (a.rfind("--", 0) != 0 || a.size() == 2)
        throw UsageError("unexpected argument '" + a + "'");
      const size_t eq = a.find('=');
      const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      const bool inline_value = eq != std::string::npos;
      const bool multi = repeatable.count(name) != 0;
      if (switches.count(name)) {
        if (inline_value) throw UsageError("flag --" + name + " takes no value");
        if (has(name)) throw UsageError("flag --" + name + " given twice");
        values_[name] = {"1"};
        continue;
      }
      if (!multi && !valued.count(name)) throw UsageError("unknown flag --" + name);
      if (!multi && has(name)) throw UsageError("flag --" + name + " given twice");
      std::vector<std::string>& v = values_[name];
      if (inline_value) {
        v.push_back(a.substr(eq + 1));
      } else {
        // A following flag is not a value: "--out --steps 5" forgot the file name.
        if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)
          throw UsageError("flag --" + name + " needs a value");
        v.push_back(args[++i]);
      }
      if (multi)
        while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0 && args[i + 1] != "-h")
          v.push_back(args[++i]);
    }
  }

  /// "--help" or "-h" was given.
  bool help() const { return help_; }

  bool has(const std::string& name) const { return values_.count(name) != 0; }

  std::string text(const std::string& name, const std::string& fallback = "") const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }

  std::string required(const std::string& name) const {
    if (!has(name)) throw UsageError("flag --" + name + " is required");
    return text(name);
  }

  /// Every value of a repeatable flag, in order; `fallback` if it was not given.
  std::vector<std::string> all(const std::string& name,
                               const std::vector<std::string>& fallback = {}) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

  long integer(const std::string& name, long fallback, long lo, long hi) const {
    if (!has(name)) return fallback;
    const std::string t = text(name);
    long v = 0;
    if (!parse_whole(t, v) || v < lo || v > hi)
      throw UsageError("flag --" + name + " takes a whole number from " + std::to_string(lo) +
                       " to " + std::to_string(hi) + ", got '" + t + "'");
    return v;
  }

  /// A whole number >= 0 that may use all 64 bits, such as a seed.
  std::uint64_t unsigned_integer(
      const std::string& name, std::uint64_t fallback, std::uint64_t lo = 0,
      std::uint64_t hi = std::numeric_limits<std::uint64_t>::max()) const {
    if (!has(name)) return fallback;
    const std::string t = text(name);
    std::uint64_t v = 0;
    if (!parse_whole(t, v) || v < lo || v > hi)
      throw UsageError("flag --" + name + " takes a whole number from " + std::to_string(lo) +
                       " to " + std::to_string(hi) + ", got '" + t + "'");
    return v;
  }

  /// A finite number in [lo, hi] ("nan", "inf" and overflowing values are refused).
  double number(const std::string& name, double fallback, double lo, double hi) const {
    if (!has(name)) return fallback;
    const std::string t = text(name);
    double v = 0;
    const bool ok = parse_number(t, v);
    if (!ok || !(v >= lo && v <= hi)) {
      std::ostringstream s;
      s << "flag --" << name << " takes a number from " << lo << " to " << hi << ", got '" << t
        << "'";
      throw UsageError(s.str());
    }
    return v;
  }

 private:
  template <class T>
  static bool parse_whole(const std::string& t, T& v) {
    const char* end = t.data() + t.size();
    const auto r = std::from_chars(t.data(), end, v);  // no spaces, no '+', no overflow
    return !t.empty() && r.ec == std::errc() && r.ptr == end;
  }

  static bool parse_number(const std::string& t, double& v) {
    if (t.empty() || std::isspace(static_cast<unsigned char>(t[0]))) return false;
    char* end = nullptr;
    v = std::strtod(t.c_str(), &end);
    return end == t.c_str() + t.size() && std::isfinite(v);
  }

  std::map<std::string, std::vector<std::string>> values_;
  bool help_ = false;
};

/// A duration for people: "0m07s", "12m30s", "2h05m" (seconds rounded; "?" if not a duration).
inline std::string format_seconds(double s) {
  if (!std::isfinite(s) || s < 0 || s > 1e15) return "?";
  const long long t = static_cast<long long>(s + 0.5);
  char buf[48];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  return buf;
}

/// Seconds since construction (or the last restart()).
class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void restart() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// "step 1200/4000  loss 0.1234  12345 tok/s  elapsed 0m41s  ETA 1m23s" on stderr: redrawn in
/// place on a terminal (at most 4 times a second), a line every `every` steps otherwise (logs stay
/// short). The last step always prints a whole line.
class Progress {
 public:
  Progress(long total_steps, long every)
      : total_(total_steps), every_(every < 1 ? 1 : every), tty_(isatty(2) != 0) {}

  /// step: 1..total; tokens: processed so far; detail: what to show after the step, e.g. the loss.
  void update(long step, double tokens, const std::string& detail) {
    const bool last = step == total_;
    const double elapsed = clock_.seconds();
    if (tty_) {
      if (!last && elapsed - last_print_ < 0.25) return;
    } else if (!last && step % every_ != 0) {
      return;
    }
    last_print_ = elapsed;
    const double eta = elapsed / static_cast<double>(std::max(1L, step - resumed_after_)) *
                       static_cast<double>(total_ - step);
    std::fprintf(stderr, "%sstep %ld/%ld  %s  %.0f tok/s  elapsed %s  ETA %s%s",
                 tty_ ? "\r" : "", step, total_, detail.c_str(), tokens / std::max(elapsed, 1e-9),
                 format_seconds(elapsed).c_str(), format_seconds(eta).c_str(),
                 tty_ ? (last ? "\033[K\n" : "\033[K") : "\n");
    std::fflush(stderr);
  }

  /// Seconds since the progress started.
  double seconds() const { return clock_.seconds(); }

  /// The steps a resumed run had done before this process started: the ETA is then estimated
  /// from the steps since.
  void resumed_after(long done) { resumed_after_ = done; }

 private:
  long total_, every_;
  bool tty_;
  Stopwatch clock_;
  double last_print_ = -1.0;
  long resumed_after_ = 0;
};

}  // namespace cli
