// Softmax cross-entropy over logits, with the softmax and the loss fused in one backward.
//
// Semantics equal PyTorch's F.cross_entropy(logits, target, ignore_index=ignore_id,
// label_smoothing=eps, reduction='mean'): the target distribution of a row is
// (1 - eps) one_hot(target) + eps / V, and the loss is the mean over the rows whose target is not
// ignore_id. When every row is ignored the loss is 0 and the gradient is zero (PyTorch gives NaN).
//
//   CrossEntropyCache<float> cache;
//   float loss = cross_entropy_forward(cache, logits /* (B*T, V) */, targets /* (B, T) */,
//                                      {/*ignore_id=*/pad_id, /*label_smoothing=*/0.1});
//   Matrix<float> dlogits = cross_entropy_backward(cache);  // (B*T, V), fresh
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

struct CrossEntropyOptions {
  Index ignore_id = -1;          // rows with this target count neither in the loss nor the mean
  double label_smoothing = 0.0;  // eps in [0, 1]
};

template <class Scalar = float>
struct CrossEntropyCache {
  // Named here so that the functions below deduce Scalar from the cache alone.
  using LogitsRef = ConstRef<Scalar>;
  using TargetsRef = Eigen::Ref<const IdMatrix>;

  Matrix<Scalar> probs;                             // (N, V) softmax of the logits
  Eigen::Matrix<Index, Eigen::Dynamic, 1> targets;  // (N) the targets, flattened row-major
  CrossEntropyOptions options;
  Index count = 0;    // rows whose target is not ignore_id: the divisor of the mean
  Index correct = 0;  // counted rows whose arg max logit (first one on ties) is the target
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
  for (Index i = 0; i < targets.size(); ++i) {
    const Index t = targets(i / targets.cols(), i % targets.cols());
    require(t == opt.ignore_id || (t >= 0 && t < V), func, "targets", [&] {
      return "has id " + std::to_string(t) + " at row " + std::to_string(i) +
             ", outside [0, V) with V = " + std::to_string(V) +
             " (ignore_id = " + std::to_string(opt.ignore_id) + ")";
    });
  }
}

/// One row: fills probs with its softmax and returns its loss (target t, smoothing eps).
/// Differences are taken before adding the log-sum so that logits of +-1e4 lose no precision.
template <class Scalar>
Scalar cross_entropy_row(Eigen::Ref<RowVector<Scalar>> probs,
                         const Eigen::Ref<const RowVector<Scalar>>& logits, Index t, Scalar eps) {
  const Scalar max = logits.maxCoeff();
  probs = (logits.array() - max).exp();
  const Scalar sum = probs.sum();
  probs /= sum;
  const Scalar log_sum = std::log(sum);
  const Scalar nll = (max - logits(t)) + log_sum;          // -log p_t
  const Scalar uniform = (max - logits.mean()) + log_sum;  // mean_j -log p_j
  return (Scalar(1) - eps) * nll + eps * uniform;
}

}  // namespace detail

/// Returns the mean loss over the counted rows of logits (N, V) against targets (N ids in any
/// shape, read row-major: a (B, T) id matrix matches (B*T, V) logits). Fills cache for backward,
/// including cache.count and cache.correct. Throws ArgumentError, before touching cache, on a
/// target outside [0, V) other than ignore_id or a label_smoothing outside [0, 1].
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
  Eigen::Array<Scalar, Eigen::Dynamic, 1> row_loss =
      Eigen::Array<Scalar, Eigen::Dynamic, 1>::Zero(N);      // (N)
  std::vector<char> row_correct(static_cast<size_t>(N), 0);  // (N)
  const Scalar eps = static_cast<Scalar>(options.label_smoothing);
  detail::parallel_for(N, 6.0 * static_cast<double>(V), [&](Index i) {
    const Index t = cache.targets(i);
    const bool counted = t != options.ignore_id;
    // An ignored row still gets probabilities; its loss term uses column 0 and is discarded.
    const Scalar loss =
        detail::cross_entropy_row<Scalar>(cache.probs.row(i), logits.row(i), counted ? t : 0, eps);
    if (!counted) return;
    row_loss(i) = loss;
    Index argmax = 0;
    logits.row(i).maxCoeff(&argmax);
    row_correct[static_cast<size_t>(i)] = argmax == t;
  });
  cache.count = (cache.targets.array() != options.ignore_id).count();
  cache.correct = 0;
  for (char c : row_correct) cache.correct += c;
  if (cache.count == 0) return Scalar(0);
  return row_loss.sum() / static_cast<Scalar>(cache.count);
}

/// dlogits (N, V), fresh: dloss * (probs - smoothed one-hot) / count on counted rows, zero on
/// ignored rows (and everywhere when no row counted). dloss must be finite.
/// Throws ArgumentError naming cross_entropy_backward unless dloss is finite and cache was
/// filled by cross_entropy_forward (as many targets as rows of probs).
template <class Scalar>
Matrix<Scalar> cross_entropy_backward(const CrossEntropyCache<Scalar>& cache, Scalar dloss = 1) {
  const Index N = cache.probs.rows(), V = cache.probs.cols();
  detail::require(cache.targets.size() == N, "cross_entropy_backward", "cache", [&] {
    return "holds " + std::to_string(cache.targets.size()) + " targets for probs of shape " +
           detail::shape_of(cache.probs) + "; fill it with cross_entropy_forward";
  });
  detail::require(
      std::isfinite(static_cast<double>(dloss)), "cross_entropy_backward", "dloss",
      [&] { return "must be finite, got " + std::to_string(static_cast<double>(dloss)); });
  Matrix<Scalar> dlogits = Matrix<Scalar>::Zero(N, V);  // (N, V)
  if (cache.count == 0) return dlogits;
  const Scalar scale = dloss / static_cast<Scalar>(cache.count);
  const Scalar eps = static_cast<Scalar>(cache.options.label_smoothing);
  const Scalar uniform = eps / static_cast<Scalar>(V);
  detail::parallel_for(N, 2.0 * static_cast<double>(V), [&](Index i) {
    const Index t = cache.targets(i);
    if (t == cache.options.ignore_id) return;
    dlogits.row(i) = (cache.probs.row(i).array() - uniform) * scale;
    dlogits(i, t) -= (Scalar(1) - eps) * scale;
  });
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
                  Matrix<S> cross_entropy_backward<S>(const CrossEntropyCache<S>& cache, S dloss))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_LOSS_TEMPLATES)
EIGENFORMER_CLASS_TEMPLATES(CrossEntropyCache)
// clang-format on

}  // namespace eigenformer
