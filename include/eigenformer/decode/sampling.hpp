// Choosing the next token from a row of logits: the pieces of sampled generation as plain
// functions, each on one row (1, V), plus the pipeline that chains them (decode/generate.hpp
// calls it once per sequence and step).
//
//   apply_repetition_penalty  CTRL / Hugging Face: a logit x of a token already in the sequence
//                             becomes x / r if x > 0 and x * r otherwise
//   softmax_with_temperature  p_i = exp(x_i / T) / sum_j exp(x_j / T)
//   top_k_filter              keeps the k largest logits, sets the others to -inf
//   top_p_filter              keeps the smallest set of most probable tokens whose probability
//                             reaches p (nucleus sampling), sets the others to -inf
//   sample_categorical        draws an id with probability proportional to its weight
//
// The pipeline (next_token_distribution, choose_token), in Hugging Face's order: repetition
// penalty on the logits; then greedy takes the argmax (the lowest id on ties), or sampling divides
// by the temperature, filters by top-k, then by top-p on the tempered probabilities, and draws
// from the softmax of what is left. Every computation runs in double whatever Scalar is.
//
// Ties are broken by id, so that every result is a function of its inputs alone: when tokens are
// ranked (top-k, top-p, argmax), equal logits rank the lower id first. So top-k keeps exactly
// min(k, V) tokens even when the k-th logit is shared (Hugging Face keeps every token that ties
// with the k-th).
//
// Logits are finite or -inf (a token that is ruled out); at least one must be finite. NaN and +inf
// are rejected. A function that throws (ArgumentError naming it, the argument and the value)
// changes nothing: its in-place argument and the generator are untouched.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

/// How the next token is chosen from the model's logits.
struct SamplingOptions {
  bool sample = false;  // false: greedy (argmax); true: draw from the filtered distribution
  double temperature = 1.0;         // > 0, finite; sampling divides the logits by it
  Index top_k = 0;                  // >= 0; sampling keeps the k most likely tokens; 0: all
  double top_p = 1.0;               // in (0, 1]; sampling keeps the nucleus of mass p; 1: all
  double repetition_penalty = 1.0;  // > 0, finite; 1: none; applies to greedy choice too
};

namespace detail {

inline std::string number_str(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

inline void check_temperature(std::string_view func, std::string_view arg, double t) {
  require(std::isfinite(t) && t > 0.0, func, arg,
          [&] { return "is " + number_str(t) + ", expected a finite temperature > 0"; });
}

inline void check_top_k(std::string_view func, std::string_view arg, Index k) {
  require(k >= 0, func, arg,
          [&] { return "is " + std::to_string(k) + ", expected k >= 0 (0: no top-k filter)"; });
}

inline void check_top_p(std::string_view func, std::string_view arg, double p) {
  require(p > 0.0 && p <= 1.0, func, arg,
          [&] { return "is " + number_str(p) + ", expected p in (0, 1] (1: no top-p filter)"; });
}

inline void check_repetition_penalty(std::string_view func, std::string_view arg, double r) {
  require(std::isfinite(r) && r > 0.0, func, arg, [&] {
    return "is " + number_str(r) + ", expected a finite penalty > 0 (1: none)";
  });
}

/// Throws unless every option is in range; the messages name "options.<field>".
inline void check_sampling_options(std::string_view func, const SamplingOptions& opt) {
  check_temperature(func, "options.temperature", opt.temperature);
  check_top_k(func, "options.top_k", opt.top_k);
  check_top_p(func, "options.top_p", opt.top_p);
  check_repetition_penalty(func, "options.repetition_penalty", opt.repetition_penalty);
}

/// Throws unless every id of ids is in [0, vocab).
inline void check_token_ids(std::string_view func, std::string_view arg,
                            const std::vector<Index>& ids, Index vocab) {
  for (size_t i = 0; i < ids.size(); ++i)
    require(ids[i] >= 0 && ids[i] < vocab, func, arg, [&] {
      return "has id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
             ", expected ids in [0, " + std::to_string(vocab) + ")";
    });
}

/// Throws unless logits (1, V), V > 0, holds only finite values and -inf, at least one finite.
template <class Scalar>
void check_logits(std::string_view func, std::string_view arg, const RowVector<Scalar>& logits) {
  require(logits.size() > 0, func, arg, "is empty, expected a row of V > 0 logits");
  bool any_finite = false;
  for (Index i = 0; i < logits.size(); ++i) {
    const double x = double(logits(i));
    require(std::isfinite(x) || x == -std::numeric_limits<double>::infinity(), func, arg, [&] {
      return "has " + number_str(x) + " at id " + std::to_string(i) +
             ", expected finite values or -inf";
    });
    any_finite = any_finite || std::isfinite(x);
  }
  require(any_finite, func, arg, "is -inf everywhere: no token can be chosen");
}

/// The ranking order of tokens: a before b if its value is larger, or equal and its id lower.
struct RankByValue {
  const RowVector<double>& x;
  bool operator()(Index a, Index b) const { return x(a) > x(b) || (x(a) == x(b) && a < b); }
};

/// Ids 0..V-1 in ranking order.
inline std::vector<Index> rank_by_value(const RowVector<double>& x) {
  std::vector<Index> order(static_cast<size_t>(x.size()));
  std::iota(order.begin(), order.end(), Index(0));
  std::sort(order.begin(), order.end(), RankByValue{x});
  return order;
}

/// (x - max(x)) / temperature: the tempered logits shifted so that the largest is 0, which
/// changes neither their softmax nor their ranking and cannot overflow (a tiny temperature sends
/// the others to -inf). x already checked: some entry is finite.
inline RowVector<double> tempered(const RowVector<double>& x, double temperature) {
  return ((x.array() - x.maxCoeff()) / temperature).matrix();
}

/// softmax(x / temperature) in double, x already checked.
inline RowVector<double> softmax_double(const RowVector<double>& x, double temperature) {
  const RowVector<double> t = tempered(x, temperature);
  // Eigen's vectorised exp clamps its argument (exp(-inf) would be 2e-309), so -inf is set to 0
  // explicitly: a filtered token must have probability 0.
  RowVector<double> p = (t.array() == -std::numeric_limits<double>::infinity())
                            .select(0.0, t.array().exp())
                            .matrix();
  p /= p.sum();  // >= 1: the largest entry contributes exp(0)
  return p;
}

/// The smallest sum of top-p probabilities that counts as reaching p: p less a rounding allowance,
/// so that e.g. probabilities 0.5 and 0.3 reach p = 0.8 although their computed sum may fall short
/// of it by an ulp.
constexpr double kTopPAllowance = 1e-12;

}  // namespace detail

/// logits (1, V) -> probabilities (1, V): softmax(logits / temperature), computed in double with
/// the maximum subtracted (no overflow); -inf gives 0. Requires temperature > 0 and finite, logits
/// as in the header. Throws ArgumentError otherwise.
template <class Scalar>
RowVector<Scalar> softmax_with_temperature(const RowVector<Scalar>& logits, double temperature) {
  const char* func = "softmax_with_temperature";
  detail::check_temperature(func, "temperature", temperature);
  detail::check_logits(func, "logits", logits);
  return detail::softmax_double(logits.template cast<double>(), temperature)
      .template cast<Scalar>();
}

/// CTRL's repetition penalty with Hugging Face's semantics, in place: for every distinct id in
/// previous (the tokens already in the sequence), logits[id] becomes logits[id] / penalty if it is
/// > 0 and logits[id] * penalty otherwise (-inf stays -inf; a result beyond the largest finite
/// Scalar is that largest value on the positive side and -inf on the negative). An id that occurs several times is
/// penalised once. penalty > 1 discourages repeats, < 1 favours them, 1 changes nothing.
/// Requires penalty > 0 and finite, previous's ids in [0, V); throws ArgumentError otherwise,
/// before changing anything.
template <class Scalar>
void apply_repetition_penalty(RowVector<Scalar>& logits, const std::vector<Index>& previous,
                              double penalty) {
  const char* func = "apply_repetition_penalty";
  detail::check_repetition_penalty(func, "penalty", penalty);
  detail::check_token_ids(func, "previous", previous, logits.size());
  if (penalty == 1.0) return;
  std::vector<bool> seen(static_cast<size_t>(logits.size()), false);
  for (const Index id : previous) {
    if (seen[size_t(id)]) continue;
    seen[size_t(id)] = true;
    const double x = double(logits(id));
    // A positive logit stays finite (a tiny penalty could overflow it); a negative one may go to
    // -inf, which only rules the token out.
    logits(id) = Scalar(x > 0.0 ? std::min(x / penalty, double(std::numeric_limits<Scalar>::max()))
                                : x * penalty);
  }
}

/// Top-k filter, in place: keeps the min(k, V) largest logits and sets every other to -inf. Ties
/// rank the lower id first, so exactly min(k, V) entries are kept (some may be -inf already).
/// k = 0 keeps everything. Requires k >= 0 and logits as in the header; throws ArgumentError
/// otherwise, before changing anything.
template <class Scalar>
void top_k_filter(RowVector<Scalar>& logits, Index k) {
  const char* func = "top_k_filter";
  detail::check_top_k(func, "k", k);
  detail::check_logits(func, "logits", logits);
  if (k == 0 || k >= logits.size()) return;
  const RowVector<double> x = logits.template cast<double>();
  std::vector<Index> order(static_cast<size_t>(x.size()));
  std::iota(order.begin(), order.end(), Index(0));
  std::nth_element(order.begin(), order.begin() + k, order.end(), detail::RankByValue{x});
  for (size_t r = static_cast<size_t>(k); r < order.size(); ++r)  // ranks k.. in some order
    logits(order[r]) = -std::numeric_limits<Scalar>::infinity();
}

/// Top-p (nucleus) filter, in place: with probabilities softmax(logits), ranked from the most
/// probable down (equal probabilities: lower id first), keeps the shortest prefix of that ranking
/// whose probabilities sum to at least p (less a rounding allowance of 1e-12), which is the
/// smallest set of tokens whose probability reaches p, and sets every other logit to -inf. At
/// least the most probable token is kept; p = 1 keeps everything. Requires p in (0, 1] and logits
/// as in the header; throws ArgumentError otherwise, before changing anything.
template <class Scalar>
void top_p_filter(RowVector<Scalar>& logits, double p) {
  const char* func = "top_p_filter";
  detail::check_top_p(func, "p", p);
  detail::check_logits(func, "logits", logits);
  if (p == 1.0) return;
  const RowVector<double> x = logits.template cast<double>();
  const RowVector<double> probs = detail::softmax_double(x, 1.0);
  const std::vector<Index> order = detail::rank_by_value(x);  // the probabilities' order too
  double mass = 0.0;
  size_t keep = 0;
  while (keep < order.size() && mass < p - detail::kTopPAllowance) mass += probs(order[keep++]);
  for (size_t r = std::max<size_t>(keep, 1); r < order.size(); ++r)
    logits(order[r]) = -std::numeric_limits<Scalar>::infinity();
}

/// Draws an id i with probability weights[i] / sum(weights) by inversion: one rng.uniform() u,
/// then the first i whose cumulative weight exceeds u * sum. An id of weight 0 is never drawn.
/// The same generator state gives the same id. Requires weights (1, V), V > 0, finite and >= 0
/// with a positive sum (they need not sum to 1); throws ArgumentError otherwise, without drawing.
template <class Scalar>
Index sample_categorical(const RowVector<Scalar>& weights, Rng& rng) {
  const char* func = "sample_categorical";
  detail::require(weights.size() > 0, func, "weights", "is empty, expected (1, V) with V > 0");
  double total = 0.0;
  for (Index i = 0; i < weights.size(); ++i) {
    const double w = double(weights(i));
    detail::require(std::isfinite(w) && w >= 0.0, func, "weights", [&] {
      return "has " + detail::number_str(w) + " at id " + std::to_string(i) +
             ", expected finite weights >= 0";
    });
    total += w;
  }
  detail::require(total > 0.0 && std::isfinite(total), func, "weights", [&] {
    return "sum to " + detail::number_str(total) + ", expected a finite positive sum";
  });
  const double target = rng.uniform() * total;  // in [0, total)
  double cumulative = 0.0;
  Index last_positive = 0;
  for (Index i = 0; i < weights.size(); ++i) {
    const double w = double(weights(i));
    if (w == 0.0) continue;
    cumulative += w;
    last_positive = i;
    if (target < cumulative) return i;
  }
  return last_positive;  // target within rounding of the total (cumulative adds as total did)
}

namespace detail {

/// Checks opt, logits and previous for func, then returns the logits in double after the
/// repetition penalty.
template <class Scalar>
RowVector<double> penalised_logits(std::string_view func, const RowVector<Scalar>& logits,
                                   const SamplingOptions& opt, const std::vector<Index>& previous) {
  check_sampling_options(func, opt);
  check_logits(func, "logits", logits);
  check_token_ids(func, "previous", previous, logits.size());
  RowVector<double> x = logits.template cast<double>();
  apply_repetition_penalty(x, previous, opt.repetition_penalty);
  return x;
}

}  // namespace detail

/// The distribution the next token is drawn from, (1, V) in double: logits after the repetition
/// penalty over previous, then, when sampling, divided by the temperature and filtered by top-k
/// and top-p, and normalised; when greedy (opt.sample false), all mass on the argmax (the lowest
/// id on ties). Requires opt in range (SamplingOptions), previous's ids in [0, V) and logits as in
/// the header; throws ArgumentError naming "options.<field>" otherwise.
template <class Scalar>
RowVector<double> next_token_distribution(const RowVector<Scalar>& logits,
                                          const SamplingOptions& opt,
                                          const std::vector<Index>& previous) {
  RowVector<double> x = detail::penalised_logits("next_token_distribution", logits, opt, previous);
  if (!opt.sample) {
    RowVector<double> one_hot = RowVector<double>::Zero(x.size());
    one_hot(detail::first_max_index(x)) = 1.0;  // the lowest id on ties
    return one_hot;
  }
  x = detail::tempered(x, opt.temperature);  // largest 0: finite whatever the temperature
  top_k_filter(x, opt.top_k);
  top_p_filter(x, opt.top_p);
  return detail::softmax_double(x, 1.0);
}

/// The next token: greedy (opt.sample false) takes the argmax of the penalised logits, the lowest
/// id on ties, and draws nothing from rng; sampling draws one rng.uniform() from
/// next_token_distribution(logits, opt, previous). Same arguments and generator state, same
/// token. Throws as next_token_distribution, without drawing.
template <class Scalar>
Index choose_token(const RowVector<Scalar>& logits, const SamplingOptions& opt,
                   const std::vector<Index>& previous, Rng& rng) {
  if (opt.sample) return sample_categorical(next_token_distribution(logits, opt, previous), rng);
  return detail::first_max_index(  // the lowest id on ties
      detail::penalised_logits("choose_token", logits, opt, previous));
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_SAMPLING_TEMPLATES(S)                                                          \
  EIGENFORMER_FOR(S, RowVector<S> softmax_with_temperature<S>(const RowVector<S>& logits,          \
                                                             double temperature))                  \
  EIGENFORMER_FOR(S, void apply_repetition_penalty<S>(RowVector<S>& logits,                        \
                                                      const std::vector<Index>& previous,          \
                                                      double penalty))                             \
  EIGENFORMER_FOR(S, void top_k_filter<S>(RowVector<S>& logits, Index k))                          \
  EIGENFORMER_FOR(S, void top_p_filter<S>(RowVector<S>& logits, double p))                         \
  EIGENFORMER_FOR(S, Index sample_categorical<S>(const RowVector<S>& weights, Rng& rng))           \
  EIGENFORMER_FOR(S, RowVector<double> next_token_distribution<S>(const RowVector<S>& logits,      \
                                                                  const SamplingOptions& opt,      \
                                                                  const std::vector<Index>& previous)) \
  EIGENFORMER_FOR(S, Index choose_token<S>(const RowVector<S>& logits, const SamplingOptions& opt, \
                                           const std::vector<Index>& previous, Rng& rng))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_SAMPLING_TEMPLATES)
// clang-format on

}  // namespace eigenformer
