// Softmax cross-entropy over logits, with the softmax and the loss fused in one backward.
//
// Semantics equal PyTorch's F.cross_entropy(logits, target, weight=class_weights,
// ignore_index=ignore_id, label_smoothing=eps, reduction=...): the target distribution of a row is
// (1 - eps) one_hot(target) + eps / V, so row i's loss is
//   l_i = (1 - eps) w[t_i] (-log p_i[t_i]) + eps / V * sum_c w[c] (-log p_i[c])
// (w = 1 without class weights), 0 for a row whose target is ignore_id. reduction mean gives
// sum_i l_i / sum_i w[t_i] over the counted rows (the row count without weights), sum gives
// sum_i l_i, none keeps every l_i (in cache.losses). When every row is ignored (or the counted
// weights sum to 0) the mean is 0 and the gradient is zero (PyTorch gives NaN).
//
//   CrossEntropyCache<float> cache;
//   float loss = cross_entropy_forward(cache, logits /* (B*T, V) */, targets /* (B, T) */,
//                                      {/*ignore_id=*/pad_id, /*label_smoothing=*/0.1});
//   Matrix<float> dlogits = cross_entropy_backward(cache);  // (B*T, V), fresh
//   cross_entropy_backward(dlogits, cache);  // the same into dlogits: no new buffer once sized
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

/// How a loss combines its rows (PyTorch's reduction).
enum class LossReduction {
  mean,  // the (weighted) mean over the counted rows
  sum,   // the sum over the rows
  none,  // every row's loss kept (CrossEntropyCache::losses); forward returns their sum
};

struct CrossEntropyOptions {
  Index ignore_id = -1;          // rows with this target count neither in the loss nor the mean
  double label_smoothing = 0.0;  // eps in [0, 1]
  LossReduction reduction = LossReduction::mean;
  Eigen::VectorXd class_weights;  // (V) a finite weight >= 0 per class (PyTorch's weight), or empty

  /// The fields in order, so that {pad_id, 0.1} and {pad_id, 0.0, LossReduction::sum} read as
  /// before (a constructor rather than aggregate initialisation: no warning for omitted fields).
  CrossEntropyOptions(Index ignore = -1, double smoothing = 0.0,
                      LossReduction reduce = LossReduction::mean,
                      Eigen::VectorXd weights = Eigen::VectorXd())
      : ignore_id(ignore),
        label_smoothing(smoothing),
        reduction(reduce),
        class_weights(std::move(weights)) {}
};

template <class Scalar = float>
struct CrossEntropyCache {
  // Named here so that the functions below deduce Scalar from the cache alone.
  using LogitsRef = ConstRef<Scalar>;
  using TargetsRef = Eigen::Ref<const IdMatrix>;
  using LossesRef = Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;

  Matrix<Scalar> probs;                             // (N, V) softmax of the logits
  Eigen::Matrix<Index, Eigen::Dynamic, 1> targets;  // (N) the targets, flattened row-major
  CrossEntropyOptions options;
  Index count = 0;    // rows whose target is not ignore_id
  Index correct = 0;  // counted rows whose arg max logit (first one on ties) is the target
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> losses;  // (N) each row's loss l_i, 0 if ignored
  RowVector<Scalar> weights;  // (1, V) options.class_weights in Scalar, or empty
  Scalar divisor = 1;         // mean: sum of w[t_i] over counted rows (count unweighted), summed in
                              // double; else 1
};

namespace detail {

/// Throws unless targets holds one id per row of logits, each in [0, V) or equal to ignore_id.
template <class Scalar>
void check_cross_entropy_args(std::string_view func, ConstRef<Scalar> logits,
                              const Eigen::Ref<const IdMatrix>& targets,
                              const CrossEntropyOptions& opt) {
  const Index V = logits.cols();
  check_positive(func, "logits.cols()", V);
  require(targets.size() == logits.rows(), func, "targets", [&] {
    return "has shape " + shape_of(targets) + ", expected " + std::to_string(logits.rows()) +
           " ids (one per row of 'logits' " + shape_of(logits) + ")";
  });
  require(opt.label_smoothing >= 0.0 && opt.label_smoothing <= 1.0, func, "label_smoothing",
          [&] { return "must be in [0, 1], got " + std::to_string(opt.label_smoothing); });
  require(opt.reduction == LossReduction::mean || opt.reduction == LossReduction::sum ||
              opt.reduction == LossReduction::none,
          func, "reduction", [&] {
            return "is " + std::to_string(static_cast<int>(opt.reduction)) +
                   ", not a LossReduction";
          });
  if (opt.class_weights.size() != 0) {
    require(opt.class_weights.size() == V, func, "class_weights", [&] {
      return "has " + std::to_string(opt.class_weights.size()) +
             " entries, expected V = " + std::to_string(V) +
             " (one per column of 'logits') or none";
    });
    require(opt.class_weights.allFinite() && (opt.class_weights.array() >= 0.0).all(), func,
            "class_weights", "must be finite and >= 0");
  }
  for (Index i = 0; i < targets.size(); ++i) {
    const Index t = targets(i / targets.cols(), i % targets.cols());
    require(t == opt.ignore_id || (t >= 0 && t < V), func, "targets", [&] {
      return "has id " + std::to_string(t) + " at row " + std::to_string(i) +
             ", outside [0, V) with V = " + std::to_string(V) +
             " (ignore_id = " + std::to_string(opt.ignore_id) + ")";
    });
  }
}

/// One row: fills probs with its softmax and returns its loss (target t, smoothing eps, class
/// weights w (1, V) or empty), given max, the largest logit. Differences are taken before adding
/// the log-sum so that logits of +-1e4 lose no precision.
template <class Scalar>
Scalar cross_entropy_row(Eigen::Ref<RowVector<Scalar>> probs,
                         const Eigen::Ref<const RowVector<Scalar>>& logits, Scalar max, Index t,
                         Scalar eps, const RowVector<Scalar>& w) {
  probs = (logits.array() - max).exp();
  const Scalar sum = probs.sum();
  probs /= sum;
  const Scalar log_sum = std::log(sum);
  const Scalar nll = (max - logits(t)) + log_sum;  // -log p_t
  if (w.size() == 0) {
    const Scalar uniform = (max - logits.mean()) + log_sum;  // mean_j -log p_j
    return (Scalar(1) - eps) * nll + eps * uniform;
  }
  const Scalar uniform =  // mean_j w_j (-log p_j)
      (w.array() * ((max - logits.array()) + log_sum)).mean();
  return (Scalar(1) - eps) * w(t) * nll + eps * uniform;
}

/// dlogits (N, V) = scale(i) times the gradient of row i's loss l_i, zero on ignored rows. Every
/// row is written, so dlogits's buffer is reused (not cleared first) when it is already (N, V).
template <class Scalar, class RowScale>
void cross_entropy_grad(Matrix<Scalar>& dlogits, const CrossEntropyCache<Scalar>& cache,
                        RowScale&& scale) {
  const Index N = cache.probs.rows(), V = cache.probs.cols();
  dlogits.resize(N, V);  // (N, V)
  const Scalar eps = static_cast<Scalar>(cache.options.label_smoothing);
  const Scalar uniform = eps / static_cast<Scalar>(V);
  const RowVector<Scalar>& w = cache.weights;
  const Scalar w_sum = w.size() == 0 ? static_cast<Scalar>(V) : w.sum();
  detail::parallel_for(N, 2.0 * static_cast<double>(V), [&](Index i) {
    const Index t = cache.targets(i);
    if (t == cache.options.ignore_id) {
      dlogits.row(i).setZero();
      return;
    }
    const Scalar s = scale(i);
    if (w.size() == 0) {  // (1 - eps)(p - e_t) + eps/V (V p - 1)
      dlogits.row(i) = (cache.probs.row(i).array() - uniform) * s;
      dlogits(i, t) -= (Scalar(1) - eps) * s;
      return;
    }
    // (1 - eps) w_t (p - e_t) + eps/V (sum(w) p - w)
    const Scalar wt = (Scalar(1) - eps) * w(t);
    dlogits.row(i) =
        ((wt + uniform * w_sum) * cache.probs.row(i).array() - uniform * w.array()) * s;
    dlogits(i, t) -= wt * s;
  });
}

/// Throws unless cache was filled by cross_entropy_forward (as many targets as rows of probs).
template <class Scalar>
void check_cross_entropy_cache(std::string_view func, const CrossEntropyCache<Scalar>& cache) {
  require(cache.probs.cols() > 0, func, "cache",
          "is empty: no cross_entropy_forward has filled it");
  require(cache.targets.size() == cache.probs.rows() && cache.losses.size() == cache.probs.rows(),
          func, "cache", [&] {
            return "holds " + std::to_string(cache.targets.size()) +
                   " targets for probs of shape " + shape_of(cache.probs) +
                   "; fill it with cross_entropy_forward";
          });
}

/// The mean's divisor of ids (any shape, read row-major): the count of ids other than
/// options.ignore_id, or with class weights the sum of their weights, in double whatever the
/// Scalar, so that a global batch's divisor (dist::loss_divisor) rounded to Scalar is, bit for
/// bit, the one cross_entropy_forward divides by on the same targets. The caller has checked
/// every counted id against class_weights.
template <class Ids>
double counted_weight(const Eigen::DenseBase<Ids>& ids, const CrossEntropyOptions& options) {
  const Eigen::VectorXd& w = options.class_weights;
  double sum = 0.0;
  for (Index i = 0; i < ids.rows(); ++i)
    for (Index j = 0; j < ids.cols(); ++j) {
      const Index t = ids(i, j);
      if (t != options.ignore_id) sum += w.size() == 0 ? 1.0 : w(t);
    }
  return sum;
}

}  // namespace detail

/// Returns the loss of logits (N, V) against targets (N ids in any shape, read row-major: a (B, T)
/// id matrix matches (B*T, V) logits) reduced as options.reduction says (none: the sum of the
/// rows' losses, which cache.losses holds one by one). Fills cache for backward, including
/// cache.count and cache.correct. Throws ArgumentError, before touching cache, on a target
/// outside [0, V) other than ignore_id, a label_smoothing outside [0, 1], a reduction that is no
/// LossReduction, or class_weights that are not V finite values >= 0.
template <class Scalar>
Scalar cross_entropy_forward(CrossEntropyCache<Scalar>& cache,
                             typename CrossEntropyCache<Scalar>::LogitsRef logits,
                             const typename CrossEntropyCache<Scalar>::TargetsRef& targets,
                             const CrossEntropyOptions& options = {}) {
  detail::check_cross_entropy_args<Scalar>("cross_entropy_forward", logits, targets, options);
  const Index N = logits.rows(), V = logits.cols();
  cache.options = options;
  cache.targets.resize(N);
  for (Index i = 0; i < N; ++i) cache.targets(i) = targets(i / targets.cols(), i % targets.cols());
  cache.probs.resize(N, V);
  cache.weights = options.class_weights.transpose().template cast<Scalar>();
  cache.losses.setZero(N);                                   // (N)
  std::vector<char> row_correct(static_cast<size_t>(N), 0);  // (N)
  const Scalar eps = static_cast<Scalar>(options.label_smoothing);
  detail::parallel_for(N, 6.0 * static_cast<double>(V), [&](Index i) {
    const Index t = cache.targets(i);
    const bool counted = t != options.ignore_id;
    // An ignored row still gets probabilities; its loss term uses column 0 and is discarded.
    const Scalar max = logits.row(i).maxCoeff();
    const Scalar loss = detail::cross_entropy_row<Scalar>(cache.probs.row(i), logits.row(i), max,
                                                          counted ? t : 0, eps, cache.weights);
    if (!counted) return;
    cache.losses(i) = loss;
    // A finite loss means no NaN among the logits (it would reach the sum of exponentials), so
    // max is exact and the search needs no second maximum.
    const Index argmax = std::isfinite(static_cast<double>(loss))
                             ? detail::first_index_of_max(logits.row(i), max)
                             : detail::first_max_index(logits.row(i));
    row_correct[static_cast<size_t>(i)] = argmax == t;
  });
  cache.count = (cache.targets.array() != options.ignore_id).count();
  cache.correct = 0;
  for (char c : row_correct) cache.correct += c;
  cache.divisor = options.reduction == LossReduction::mean
                      ? static_cast<Scalar>(detail::counted_weight(cache.targets, options))
                      : Scalar(1);
  if (cache.divisor == Scalar(0)) return Scalar(0);
  return cache.losses.sum() / cache.divisor;
}

/// Targets of another type (Eigen::MatrixXi, std::vector): a compile error naming to_ids.
template <class Scalar, class Logits, class Ids,
          std::enable_if_t<detail::foreign_ids<Ids>, int> = 0>
Scalar cross_entropy_forward(CrossEntropyCache<Scalar>&, const Logits&, const Ids&,
                             const CrossEntropyOptions& = {}) {
  static_assert(detail::always_false<Ids>,
                "eigenformer: targets are an eigenformer::IdMatrix (row-major, Eigen::Index); "
                "convert yours with eigenformer::to_ids(ids)");
  return Scalar(0);
}

/// dlogits (N, V), fresh: the gradient of the forward's return value times dloss (mean: each
/// counted row's loss gradient / divisor; sum and none: each counted row's); zero on ignored rows
/// (and everywhere when the mean has nothing to divide by).
/// Throws ArgumentError naming cross_entropy_backward unless dloss is finite and cache was
/// filled by cross_entropy_forward.
template <class Scalar>
Matrix<Scalar> cross_entropy_backward(const CrossEntropyCache<Scalar>& cache, Scalar dloss = 1) {
  Matrix<Scalar> dlogits;  // (N, V)
  cross_entropy_backward(dlogits, cache, dloss);
  return dlogits;
}

/// cross_entropy_backward(cache, dloss) written into dlogits, whose buffer is reused when it is
/// already (N, V). Throws as cross_entropy_backward(cache, dloss), leaving dlogits as it was.
template <class Scalar>
void cross_entropy_backward(Matrix<Scalar>& dlogits, const CrossEntropyCache<Scalar>& cache,
                            Scalar dloss = 1) {
  const char* func = "cross_entropy_backward";
  detail::check_cross_entropy_cache(func, cache);
  detail::require(std::isfinite(static_cast<double>(dloss)), func, "dloss", [&] {
    return "must be finite, got " + std::to_string(static_cast<double>(dloss));
  });
  if (cache.divisor == Scalar(0)) {
    dlogits.setZero(cache.probs.rows(), cache.probs.cols());
    return;
  }
  const Scalar scale = dloss / cache.divisor;
  detail::cross_entropy_grad(dlogits, cache, [&](Index) { return scale; });
}

/// reduction none: dlogits (N, V), fresh, from each row's upstream gradient dlosses (N) (PyTorch's
/// loss.backward(dlosses)); zero on ignored rows. Throws ArgumentError naming
/// cross_entropy_backward unless cache was filled by cross_entropy_forward with reduction none and
/// dlosses holds N finite values.
template <class Scalar>
Matrix<Scalar> cross_entropy_backward(
    const CrossEntropyCache<Scalar>& cache,
    const typename CrossEntropyCache<Scalar>::LossesRef& dlosses) {
  const char* func = "cross_entropy_backward";
  detail::check_cross_entropy_cache(func, cache);
  detail::require(cache.options.reduction == LossReduction::none, func, "dlosses",
                  "is one gradient per row: it needs a forward with reduction none (pass a "
                  "scalar dloss for mean and sum)");
  detail::require(dlosses.size() == cache.probs.rows(), func, "dlosses", [&] {
    return "has " + std::to_string(dlosses.size()) + " entries, expected one per row, " +
           std::to_string(cache.probs.rows());
  });
  detail::require(dlosses.allFinite(), func, "dlosses", "must be finite");
  Matrix<Scalar> dlogits;  // (N, V)
  detail::cross_entropy_grad(dlogits, cache, [&](Index i) { return dlosses(i); });
  return dlogits;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_LOSS_TEMPLATES(S)                                                         \
  EIGENFORMER_FOR(                                                                            \
      S, S cross_entropy_forward<S>(CrossEntropyCache<S>& cache,                             \
                                    typename CrossEntropyCache<S>::LogitsRef logits,          \
                                    const typename CrossEntropyCache<S>::TargetsRef& targets, \
                                    const CrossEntropyOptions& options))                      \
  EIGENFORMER_FOR(S,                                                                          \
                  Matrix<S> cross_entropy_backward<S>(const CrossEntropyCache<S>& cache, S dloss)) \
  EIGENFORMER_FOR(S, Matrix<S> cross_entropy_backward<S>(                                     \
                         const CrossEntropyCache<S>& cache,                                   \
                         const typename CrossEntropyCache<S>::LossesRef& dlosses))            \
  EIGENFORMER_FOR(S, void cross_entropy_backward<S>(Matrix<S> & dlogits,                       \
                                                    const CrossEntropyCache<S>& cache, S dloss))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_LOSS_TEMPLATES)
EIGENFORMER_STRUCT_TEMPLATES(CrossEntropyCache)
// clang-format on

}  // namespace eigenformer
