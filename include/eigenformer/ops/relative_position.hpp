// T5's relative position bias (Raffel et al. 2020): a learned scalar per head and per bucket of the
// relative position key_pos - query_pos, added to the attention scores before the softmax.
//
// Buckets (relative_position_bucket, exactly T5's _relative_position_bucket): bidirectional
// attention gives half of the buckets to each sign (keys after the query use the upper half);
// causal attention uses only distances to earlier keys (later keys share bucket 0, and the causal
// mask hides them anyway). Within a direction of n buckets the first n/2 distances get a bucket
// each; larger distances are spaced logarithmically up to max_distance, and all distances beyond
// share the last bucket.
//
// The bias of a head depends on a query/key pair only through j - i, so the attention kernels take
// it per distance: pos_bias (H, Tq + Tk - 1), column j - i + Tq - 1 for query i and key j
// (ops/attention.hpp). With queries aligned at the end of the keys (query i at position
// i + Tk - Tq, as for the causal mask and the KV cache), column c is relative position
// c - (Tk - 1). relative_bias_forward gathers it from the (num_buckets, H) table (T5's
// nn.Embedding(num_buckets, n_heads)); relative_bias_backward scatters its gradient back, adding.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/grad.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {

namespace detail {

/// Throws unless T5's bucketing works with these settings: at least 2 buckets per direction
/// (num_buckets >= 4 bidirectional, >= 2 otherwise: one exact, one log-spaced) and max_distance
/// above the exactly bucketed distances. The one rule for the op, the layers and the configs:
/// buckets_arg and distance_arg name the two settings as the caller calls them.
inline void check_bucketing(std::string_view func, bool bidirectional, Index num_buckets,
                            Index max_distance, std::string_view buckets_arg = "num_buckets",
                            std::string_view distance_arg = "max_distance") {
  const Index min_buckets = bidirectional ? 4 : 2;
  if (num_buckets < min_buckets)
    throw_argument(func, buckets_arg,
                   "is " + std::to_string(num_buckets) + ", expected at least " +
                       std::to_string(min_buckets) + " (2 per direction" +
                       (bidirectional ? ", bidirectional)" : ")"));
  const Index max_exact = (bidirectional ? num_buckets / 2 : num_buckets) / 2;
  if (max_distance <= max_exact)
    throw_argument(func, distance_arg,
                   "is " + std::to_string(max_distance) +
                       ", expected a positive distance above the " + std::to_string(max_exact) +
                       " exactly bucketed ones");
}

/// Throws unless every bucket indexes one of rows table rows.
inline void check_buckets(std::string_view func, const std::vector<Index>& buckets, Index rows) {
  for (size_t c = 0; c < buckets.size(); ++c)
    if (buckets[c] < 0 || buckets[c] >= rows)
      throw_argument(func, "buckets",
                     "holds " + std::to_string(buckets[c]) + " at column " + std::to_string(c) +
                         ", expected a bucket in [0, " + std::to_string(rows) + ")");
}

}  // namespace detail

/// T5's bucket of relative_position = key_pos - query_pos, in [0, num_buckets). Needs at least 2
/// buckets per direction (num_buckets >= 4 bidirectional, >= 2 otherwise) and max_distance > the
/// exact buckets (num_buckets / 4 bidirectional, / 2 otherwise); throws ArgumentError otherwise.
inline Index relative_position_bucket(Index relative_position, bool bidirectional,
                                      Index num_buckets, Index max_distance) {
  detail::check_bucketing("relative_position_bucket", bidirectional, num_buckets, max_distance);
  Index bucket = 0, n = num_buckets, distance;
  if (bidirectional) {
    n /= 2;
    if (relative_position > 0) bucket += n;
    distance = relative_position < 0 ? -relative_position : relative_position;
  } else {
    distance = relative_position < 0 ? -relative_position : 0;
  }
  const Index max_exact = n / 2;
  if (distance < max_exact) return bucket + distance;
  // T5 truncates toward zero after the log (torch's .to(long)); the argument is >= 0 here.
  const double exact = static_cast<double>(max_exact);
  const double large = std::log(static_cast<double>(distance) / exact) /
                       std::log(static_cast<double>(max_distance) / exact) *
                       static_cast<double>(n - max_exact);
  return bucket + std::min(max_exact + static_cast<Index>(large), n - 1);
}

/// The bucket of every distance column of a (Tq, Tk) attention with queries aligned at the end of
/// the keys: out[c] = bucket(c - (Tk - 1)), c in [0, Tq + Tk - 1).
inline std::vector<Index> relative_position_buckets(Index Tq, Index Tk, bool bidirectional,
                                                    Index num_buckets, Index max_distance) {
  detail::check_positive("relative_position_buckets", "Tq", Tq);
  detail::check_positive("relative_position_buckets", "Tk", Tk);
  detail::check_bucketing("relative_position_buckets", bidirectional, num_buckets, max_distance);
  std::vector<Index> out(static_cast<size_t>(Tq + Tk - 1));
  for (Index c = 0; c < Tq + Tk - 1; ++c)
    out[static_cast<size_t>(c)] =
        relative_position_bucket(c - (Tk - 1), bidirectional, num_buckets, max_distance);
  return out;
}

/// pos_bias (H, n) from table (num_buckets, H): pos_bias(h, c) = table(buckets[c], h).
template <class Scalar>
void relative_bias_forward(Matrix<Scalar>& pos_bias, ConstRef<Scalar> table,
                           const std::vector<Index>& buckets) {
  detail::check_buckets("relative_bias_forward", buckets, table.rows());
  const Index n = static_cast<Index>(buckets.size());
  pos_bias.resize(table.cols(), n);
  for (Index c = 0; c < n; ++c)
    pos_bias.col(c) = table.row(buckets[static_cast<size_t>(c)]).transpose();
}

/// dtable (num_buckets, H) += the gradient of relative_bias_forward's output, dpos_bias (H, n),
/// summed over the columns of each bucket.
template <class Scalar>
void relative_bias_backward(GradRef<Scalar> dtable, ConstRef<Scalar> dpos_bias,
                            const std::vector<Index>& buckets) {
  const char* func = "relative_bias_backward";
  detail::check_shape(func, "dpos_bias", dpos_bias, dtable.cols(),
                      static_cast<Index>(buckets.size()));
  detail::check_buckets(func, buckets, dtable.rows());
  for (Index c = 0; c < dpos_bias.cols(); ++c)
    dtable.row(buckets[static_cast<size_t>(c)]) += dpos_bias.col(c).transpose();
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_RELATIVE_POSITION_TEMPLATES(S)                                             \
  EIGENFORMER_FOR(S, void relative_bias_forward<S>(Matrix<S>& pos_bias, ConstRef<S> table,    \
                                                   const std::vector<Index>& buckets))         \
  EIGENFORMER_FOR(S, void relative_bias_backward<S>(GradRef<S> dtable, ConstRef<S> dpos_bias, \
                                                    const std::vector<Index>& buckets))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_RELATIVE_POSITION_TEMPLATES)
// clang-format on

}  // namespace eigenformer
