// Embedding lookup: out row n = table row ids[n], and its backward, a scatter-add of gradient rows.
//
// ids is a (B, T) IdMatrix read in row-major order, so token (b, t) becomes row b*T+t of the
// (B*T, C) output: the library's batch layout.
#pragma once

#include <string>

#include "../core/grad.hpp"
#include "../core/parallel.hpp"
#include "../core/precompiled.hpp"
#include "../core/tensor.hpp"

namespace eigenformer {
namespace detail {

/// Throws unless every id is in [0, vocab); the message names the id, its (b, t) and the range.
inline void check_embedding_ids(std::string_view func, std::string_view arg, const IdMatrix& ids,
                                Index vocab) {
  for (Index b = 0; b < ids.rows(); ++b) {
    for (Index t = 0; t < ids.cols(); ++t) {
      const Index id = ids(b, t);
      if (id >= 0 && id < vocab) continue;
      throw_argument(func, arg,
                     "has id " + std::to_string(id) + " at (b, t) = (" + std::to_string(b) +
                         ", " + std::to_string(t) + "), outside [0, " + std::to_string(vocab) +
                         ") for vocab size " + std::to_string(vocab));
    }
  }
}

}  // namespace detail

/// out (B*T, C): row b*T+t = table (V, C) row ids (B, T) [b, t].
template <class Scalar>
void embedding_forward(Matrix<Scalar>& out, const IdMatrix& ids, ConstRef<Scalar> table) {
  detail::check_embedding_ids("embedding_forward", "ids", ids, table.rows());
  const Index C = table.cols();
  const Index* id = ids.data();  // (B*T) row-major: token b*T+t
  out.resize(ids.size(), C);
  detail::parallel_for(ids.size(), static_cast<double>(C),
                       [&](Index n) { out.row(n) = table.row(id[n]); });
}

/// dtable (V, C) += dout (B*T, C) scattered by ids (B, T): each row n adds into row ids[n], so a
/// repeated id collects all its rows. Rows whose id equals padding_id add nothing (-1: none).
template <class Scalar>
void embedding_backward(GradRef<Scalar> dtable, ConstRef<Scalar> dout, const IdMatrix& ids,
                        Index padding_id) {
  detail::check_embedding_ids("embedding_backward", "ids", ids, dtable.rows());
  detail::check_shape("embedding_backward", "dout", dout, ids.size(), dtable.cols());
  detail::require(padding_id >= -1 && padding_id < dtable.rows(), "embedding_backward",
                  "padding_id", [&] {
                    return "must be -1 (none) or in [0, " + std::to_string(dtable.rows()) +
                           "), got " + std::to_string(padding_id);
                  });
  const Index* id = ids.data();  // (B*T) row-major: token b*T+t
  for (Index n = 0; n < ids.size(); ++n) {
    if (id[n] != padding_id) dtable.row(id[n]) += dout.row(n);
  }
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_EMBEDDING_TEMPLATES(S)                                                   \
  EIGENFORMER_FOR(                                                                           \
      S, void embedding_forward<S>(Matrix<S>& out, const IdMatrix& ids, ConstRef<S> table)) \
  EIGENFORMER_FOR(S, void embedding_backward<S>(GradRef<S> dtable, ConstRef<S> dout,        \
                                                const IdMatrix& ids, Index padding_id))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_EMBEDDING_TEMPLATES)
// clang-format on

}  // namespace eigenformer
