// Beam search decoding: keep the beam_width most likely prefixes per source instead of one.
//
// Each step extends every live hypothesis of every source by every token, scores the candidates by
// their summed log-probability, and keeps the best beam_width that do not end in EOS. A candidate
// ending in EOS that ranks among the best beam_width moves to the source's finished list and is
// never extended again. A source is done when it holds beam_width finished hypotheses that no live
// one can beat any more, or when no live hypothesis is left; the search stops when every source is
// done or after max_len tokens. At max_len the live hypotheses join the finished ones.
//
// Ranking uses GNMT's length penalty (Wu et al. 2016): score = log P(y) / ((5 + |y|) / 6)^alpha,
// |y| counting the generated tokens with EOS and without BOS; alpha = 0 ranks by log P(y) alone.
// Ties are broken deterministically: lower parent hypothesis first, then lower token id, so a beam of
// width 1 makes greedy_decode's choices (argmax, first index on ties); both decode incrementally
// with the same KV-cache steps.
//
// The search itself (beam_search_with) only needs a step scorer: prefixes -> next-token log-probs.
// beam_search / beam_search_result wrap an encoder-decoder Transformer: the source is encoded once,
// its memory rows are repeated for each of its beam_width hypotheses, and every step runs the
// decoder on the last token of each of the B * beam_width prefixes only (Transformer::decode_step),
// over self-attention KV caches whose rows are first reordered so that each row holds the cache of
// its prefix's parent (the row whose previous prefix it extends), so the cost grows linearly with
// the output length. Rows of sources that are done keep being computed, so each step's batch has a
// fixed shape. Works for every positional scheme and attention scoring. Runs with dropout off
// whatever the model's train flag, which it restores (model/eval_mode.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/precompiled.hpp"
#include "../model/decode_state.hpp"
#include "../model/eval_mode.hpp"
#include "../model/transformer.hpp"

namespace eigenformer {

struct BeamOptions {
  Index bos = 1;
  Index eos = 2;
  Index max_len = 64;           // most tokens generated per hypothesis (EOS included)
  Index beam_width = 4;         // hypotheses kept per source; 1 is greedy decoding
  double length_penalty = 0.0;  // GNMT alpha >= 0: score = log P / ((5 + len) / 6)^alpha; 0: none
};

/// One finished (or, at max_len, unfinished) hypothesis.
struct BeamHypothesis {
  std::vector<Index> tokens;  // generated ids without BOS; the last is EOS when finished
  double log_prob = 0.0;      // sum of the tokens' log-probabilities
  double score = 0.0;         // log_prob / length penalty: what the search ranks by
  bool finished = false;      // ended with EOS (false: stopped at max_len)
};

struct BeamResult {
  /// (B, L): each source's best hypothesis without BOS, filled with EOS after its EOS, L the
  /// longest of them (the layout of greedy_decode's output).
  IdMatrix ids;
  /// Per source, up to beam_width hypotheses, best first.
  std::vector<std::vector<BeamHypothesis>> hypotheses;

  /// The best hypothesis's score per source.
  std::vector<double> scores() const {
    std::vector<double> out;
    out.reserve(hypotheses.size());
    for (const auto& h : hypotheses) out.push_back(h.empty() ? 0.0 : h.front().score);
    return out;
  }
};

/// GNMT length penalty ((5 + len) / 6)^alpha; 1 for alpha = 0.
inline double beam_length_penalty(Index len, double alpha) {
  return alpha == 0.0 ? 1.0 : std::pow((5.0 + static_cast<double>(len)) / 6.0, alpha);
}

namespace detail {

inline void check_beam_options(std::string_view func, const BeamOptions& opt, Index vocab) {
  require(opt.bos >= 0 && opt.bos < vocab, func, "options.bos", [&] {
    return "is " + std::to_string(opt.bos) + ", expected an id in [0, " + std::to_string(vocab) +
           ")";
  });
  require(opt.eos >= 0 && opt.eos < vocab, func, "options.eos", [&] {
    return "is " + std::to_string(opt.eos) + ", expected an id in [0, " + std::to_string(vocab) +
           ")";
  });
  require(opt.beam_width >= 1, func, "options.beam_width",
          [&] { return "is " + std::to_string(opt.beam_width) + ", expected at least 1"; });
  require(opt.max_len >= 1, func, "options.max_len",
          [&] { return "is " + std::to_string(opt.max_len) + ", expected at least 1"; });
  require(std::isfinite(opt.length_penalty) && opt.length_penalty >= 0.0, func,
          "options.length_penalty", [&] {
            return "is " + std::to_string(opt.length_penalty) + ", expected a finite alpha >= 0";
          });
}

struct BeamCandidate {
  double log_prob;
  Index parent;  // index of the live hypothesis it extends
  Index token;
};

/// Strict total order: higher log-probability first, then lower parent, then lower token.
inline bool beam_before(const BeamCandidate& a, const BeamCandidate& b) {
  if (a.log_prob != b.log_prob) return a.log_prob > b.log_prob;
  if (a.parent != b.parent) return a.parent < b.parent;
  return a.token < b.token;
}

/// Best score a live hypothesis (log-probability lp after len tokens) could still reach, given
/// that further tokens only add log-probabilities <= 0 and the length can grow to max_len.
inline double beam_best_reachable(double lp, Index len, const BeamOptions& opt) {
  if (opt.length_penalty == 0.0) return lp;
  return lp <= 0.0 ? lp / beam_length_penalty(opt.max_len, opt.length_penalty)
                   : lp / beam_length_penalty(len, opt.length_penalty);
}

}  // namespace detail

/// The search over any step scorer. next_log_probs(prefixes) receives prefixes (B*K, t + 1), K =
/// beam_width, each starting with BOS, row b*K + k holding hypothesis k of source b, and returns
/// the next token's log-probabilities as a Matrix<double> (B*K, vocab). Rows that hold no live
/// hypothesis (a source that is done, or fewer than K live ones) carry a filler prefix (BOS, then
/// EOS) and their output is ignored. Entries of -inf are never chosen; NaN is an error.
/// A scorer that also takes parents, next_log_probs(prefixes, parents), gets for each row the
/// row of the previous step's prefixes that it extends (its own row at the first step and for
/// filler rows): what an incremental scorer needs to reorder its caches.
/// Throws ArgumentError naming beam_search unless B and vocab are positive, opt.bos and opt.eos
/// are in [0, vocab), opt.beam_width and opt.max_len are >= 1 and opt.length_penalty is finite
/// and >= 0; or when next_log_probs returns another shape or a NaN (its own exceptions pass
/// through).
template <class Scorer>
BeamResult beam_search_with(Scorer&& next_log_probs, Index B, Index vocab, const BeamOptions& opt) {
  const char* func = "beam_search";
  detail::check_positive(func, "B", B);
  detail::check_positive(func, "vocab", vocab);
  detail::check_beam_options(func, opt, vocab);
  const Index K = opt.beam_width;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  struct Live {
    std::vector<Index> tokens;
    double log_prob;
    Index parent_row;  // the row of the previous step's prefixes that this one extends
  };
  std::vector<std::vector<Live>> live(B, std::vector<Live>{Live{{}, 0.0, 0}});
  for (Index b = 0; b < B; ++b) live[size_t(b)][0].parent_row = b * K;
  std::vector<std::vector<BeamHypothesis>> finished(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);
  Index n_done = 0;
  // Keeps the best K finished hypotheses, best first; equal scores keep their arrival order.
  auto add_finished = [&](std::vector<BeamHypothesis>& list, BeamHypothesis h) {
    auto pos = std::upper_bound(
        list.begin(), list.end(), h.score,
        [](double s, const BeamHypothesis& x) { return s > x.score; });
    list.insert(pos, std::move(h));
    if (static_cast<Index>(list.size()) > K) list.pop_back();
  };

  std::vector<detail::BeamCandidate> cands;
  IdMatrix prefixes;
  std::vector<Index> parents(static_cast<size_t>(B * K));
  for (Index t = 0; t < opt.max_len && n_done < B; ++t) {
    prefixes.resize(B * K, t + 1);
    prefixes.col(0).setConstant(opt.bos);
    for (Index b = 0; b < B; ++b)
      for (Index k = 0; k < K; ++k) {
        const auto& lv = live[size_t(b)];
        const bool real = !done[size_t(b)] && k < static_cast<Index>(lv.size());
        parents[size_t(b * K + k)] = real ? lv[size_t(k)].parent_row : b * K + k;
        for (Index j = 0; j < t; ++j)
          prefixes(b * K + k, j + 1) = real ? lv[size_t(k)].tokens[size_t(j)] : opt.eos;
      }
    const IdMatrix& step_prefixes = prefixes;
    Matrix<double> lp;
    if constexpr (std::is_invocable_v<Scorer, const IdMatrix&, const std::vector<Index>&>)
      lp = next_log_probs(step_prefixes, static_cast<const std::vector<Index>&>(parents));
    else
      lp = next_log_probs(step_prefixes);
    detail::require(lp.rows() == B * K && lp.cols() == vocab, func, "next_log_probs", [&] {
      return "returned shape " + detail::shape_of(lp) + ", expected " +
             detail::shape_str(B * K, vocab);
    });
    const Index len = t + 1;  // tokens in every candidate
    for (Index b = 0; b < B; ++b) {
      if (done[size_t(b)]) continue;
      const auto& lv = live[size_t(b)];
      cands.clear();
      for (Index k = 0; k < static_cast<Index>(lv.size()); ++k) {
        const Index r = b * K + k;
        for (Index v = 0; v < vocab; ++v) {
          const double x = lp(r, v);
          detail::require(!std::isnan(x), func, "next_log_probs", [&] {
            return "returned NaN at row " + std::to_string(r) + ", token " + std::to_string(v);
          });
          if (x == neg_inf) continue;
          cands.push_back({lv[size_t(k)].log_prob + x, k, v});
        }
      }
      // At most K candidates end in EOS (one per parent), so the best 2K hold K that do not.
      const size_t n_top = std::min(cands.size(), static_cast<size_t>(2 * K));
      std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(n_top),
                        cands.end(), detail::beam_before);
      std::vector<Live> next;
      for (size_t rank = 0; rank < n_top && static_cast<Index>(next.size()) < K; ++rank) {
        const detail::BeamCandidate& c = cands[rank];
        std::vector<Index> tokens = lv[size_t(c.parent)].tokens;
        tokens.push_back(c.token);
        const Index parent_row = b * K + c.parent;
        if (c.token == opt.eos) {
          if (static_cast<Index>(rank) < K) {
            BeamHypothesis h;
            h.tokens = std::move(tokens);
            h.log_prob = c.log_prob;
            h.score = c.log_prob / beam_length_penalty(len, opt.length_penalty);
            h.finished = true;
            add_finished(finished[size_t(b)], std::move(h));
          }
        } else {
          next.push_back({std::move(tokens), c.log_prob, parent_row});
        }
      }
      live[size_t(b)] = std::move(next);
      const auto& fin = finished[size_t(b)];
      bool is_done = live[size_t(b)].empty();
      if (!is_done && static_cast<Index>(fin.size()) >= K) {
        double best_live = neg_inf;
        for (const Live& l : live[size_t(b)])
          best_live = std::max(best_live, detail::beam_best_reachable(l.log_prob, len, opt));
        is_done = fin[size_t(K - 1)].score >= best_live;
      }
      if (is_done) {
        done[size_t(b)] = true;
        ++n_done;
      }
    }
  }

  BeamResult result;
  result.hypotheses.resize(static_cast<size_t>(B));
  Index L = 1;
  for (Index b = 0; b < B; ++b) {
    std::vector<BeamHypothesis>& fin = finished[size_t(b)];
    if (!done[size_t(b)]) {  // stopped at max_len: the live hypotheses compete too
      for (Live& l : live[size_t(b)]) {
        BeamHypothesis h;
        h.log_prob = l.log_prob;
        h.score = l.log_prob /
                  beam_length_penalty(static_cast<Index>(l.tokens.size()), opt.length_penalty);
        h.tokens = std::move(l.tokens);
        add_finished(fin, std::move(h));
      }
    }
    if (!fin.empty()) L = std::max(L, static_cast<Index>(fin.front().tokens.size()));
    result.hypotheses[size_t(b)] = std::move(fin);
  }
  result.ids = IdMatrix::Constant(B, L, opt.eos);
  for (Index b = 0; b < B; ++b) {
    const auto& hyps = result.hypotheses[size_t(b)];
    if (hyps.empty()) continue;  // every token had log-probability -inf: only EOS
    const auto& best = hyps.front().tokens;
    for (size_t j = 0; j < best.size(); ++j) result.ids(b, Index(j)) = best[j];
  }
  return result;
}

namespace detail {

/// Makes row r of every self-attention cache of state hold what row parent[r] held (the
/// hypothesis that row r's prefix extends). The memory caches are unchanged: parents are
/// hypotheses of the same source.
template <class Scalar>
void reorder_decode_state(DecodeState<Scalar>& state, const std::vector<Index>& parent) {
  bool identity = true;
  for (size_t r = 0; r < parent.size(); ++r) identity = identity && parent[r] == Index(r);
  if (identity) return;
  for (KVCache<Scalar>& c : state.self) {
    // Gather the filled positions (not the whole capacity) of each row's parent, then put back.
    Matrix<Scalar> k(c.B * c.len, c.k.cols()), v(c.B * c.len, c.v.cols());  // (B*len, *)
    BoolMatrix pad(c.B, c.len);
    for (Index r = 0; r < c.B; ++r) {
      const Index p = parent[size_t(r)];
      k.middleRows(r * c.len, c.len) = c.keys(p);
      v.middleRows(r * c.len, c.len) = c.values(p);
      pad.row(r) = c.key_padding.row(p).head(c.len);
    }
    for (Index r = 0; r < c.B; ++r) {
      c.k.block(r * c.max_len, 0, c.len, c.k.cols()) = k.middleRows(r * c.len, c.len);
      c.v.block(r * c.max_len, 0, c.len, c.v.cols()) = v.middleRows(r * c.len, c.len);
    }
    c.key_padding.leftCols(c.len) = pad;
  }
}

}  // namespace detail

/// Beam search over an encoder-decoder Transformer: src (B, S) -> every source's best hypotheses.
/// Runs with dropout off whatever the model's mode (ScopedEval). Throws
/// ArgumentError naming beam_search for options beam_search_with rejects or opt.max_len not below
/// the model's max_len; and as Transformer::encode for a bad src.
template <class Scalar>
BeamResult beam_search_result(Transformer<Scalar>& model, const IdMatrix& src,
                              const BeamOptions& opt) {
  const char* func = "beam_search";
  const Index V = model.vocab_size();
  detail::check_beam_options(func, opt, V);
  detail::require(opt.max_len < model.config().max_len, func, "options.max_len", [&] {
    return "is " + std::to_string(opt.max_len) + ", expected 1.." +
           std::to_string(model.config().max_len - 1) + " (the model's max_len less one for BOS)";
  });
  ScopedEval eval(model);
  typename Encoder<Scalar>::Cache cache;
  const Matrix<Scalar> memory = model.encode(src, cache);  // (B*S, d); checks src
  const Index B = src.rows(), S = src.cols(), K = opt.beam_width, d = memory.cols();
  IdMatrix src_rep(B * K, S);             // row b*K + k: source b
  Matrix<Scalar> memory_rep(B * K * S, d);  // rows (b*K + k)*S ..: memory of source b
  for (Index b = 0; b < B; ++b)
    for (Index k = 0; k < K; ++k) {
      src_rep.row(b * K + k) = src.row(b);
      memory_rep.block((b * K + k) * S, 0, S, d) = memory.block(b * S, 0, S, d);
    }
  DecodeState<Scalar> state = model.begin_decode(src_rep, memory_rep, opt.max_len);
  auto scorer = [&](const IdMatrix& prefixes, const std::vector<Index>& parents) {
    const Index N = prefixes.rows(), T = prefixes.cols();
    if (T > 1) detail::reorder_decode_state(state, parents);
    const Matrix<Scalar> logits = model.decode_step(prefixes.col(T - 1), state);  // (N, V)
    Matrix<double> lp(N, V);
    for (Index r = 0; r < N; ++r) {
      lp.row(r) = logits.row(r).template cast<double>();
      const double max = lp.row(r).maxCoeff();
      const double lse = max + std::log((lp.row(r).array() - max).exp().sum());
      lp.row(r).array() -= lse;
    }
    return lp;
  };
  return beam_search_with(scorer, B, V, opt);
}

/// src (B, S) -> each source's best hypothesis (B, L) without BOS, EOS-filled after its EOS, as
/// greedy_decode returns. If scores is given it receives the best hypotheses' scores.
/// Throws as beam_search_result.
template <class Scalar>
IdMatrix beam_search(Transformer<Scalar>& model, const IdMatrix& src, const BeamOptions& opt,
                     std::vector<double>* scores = nullptr) {
  BeamResult r = beam_search_result(model, src, opt);
  if (scores) *scores = r.scores();
  return std::move(r.ids);
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_BEAM_TEMPLATES(S)                                                              \
  EIGENFORMER_FOR(S, BeamResult beam_search_result<S>(Transformer<S>& model, const IdMatrix& src, \
                                                      const BeamOptions& opt))                     \
  EIGENFORMER_FOR(S, IdMatrix beam_search<S>(Transformer<S>& model, const IdMatrix& src,          \
                                             const BeamOptions& opt, std::vector<double>* scores))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_BEAM_TEMPLATES)
// clang-format on

}  // namespace eigenformer
