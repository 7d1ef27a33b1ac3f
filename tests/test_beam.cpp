// Beam search: hand-made step scorers where the best sequence is known (greedy misses it, the
// length penalty flips it, early stopping, max_len), agreement with greedy decoding at width 1 on
// trained and untrained Transformers, batching, scores against teacher forcing, bad options.
#include <eigenformer/decode/beam.hpp>
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>

#include <cmath>
#include <map>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

// Vocabulary of the hand-made cases: 0 pad, 1 BOS, 2 EOS, 3 a, 4 b, 5 c.
constexpr Index kVocab = 6, kEos = 2, kA = 3, kB = 4;

using Table = std::map<std::vector<Index>, std::vector<double>>;  // prefix -> next-token probs

std::vector<double> probs(std::initializer_list<std::pair<Index, double>> entries) {
  std::vector<double> p(size_t(kVocab), 0.0);
  for (const auto& e : entries) p[size_t(e.first)] = e.second;
  return p;
}

// Next-token distributions looked up by prefix (without BOS), one table per source; a prefix not
// in the table gets `fallback`. Counts its calls.
struct TableScorer {
  std::vector<Table> tables;
  Index beam_width;
  std::vector<double> fallback = probs({{kEos, 1.0}});
  int calls = 0;

  MatD operator()(const IdMatrix& prefixes) {
    ++calls;
    MatD lp(prefixes.rows(), kVocab);
    for (Index r = 0; r < prefixes.rows(); ++r) {
      CHECK(prefixes(r, 0) == 1);  // BOS
      const Table& table = tables[size_t(r / beam_width)];
      std::vector<Index> key(prefixes.row(r).data() + 1, prefixes.row(r).data() + prefixes.cols());
      const auto it = table.find(key);
      const std::vector<double>& p = it == table.end() ? fallback : it->second;
      for (Index v = 0; v < kVocab; ++v) lp(r, v) = std::log(p[size_t(v)]);  // log 0 = -inf
    }
    return lp;
  }
};

// Greedy takes a (0.6) and then ends with P = 0.6 * 0.35 = 0.21; b then EOS has 0.4 * 0.9 = 0.36.
Table greedy_trap() {
  return {{{}, probs({{kA, 0.6}, {kB, 0.4}})},
          {{kA}, probs({{kEos, 0.35}, {kA, 0.33}, {kB, 0.32}})},
          {{kB}, probs({{kEos, 0.9}, {kA, 0.1}})}};
}

// [EOS] has log P = log 0.5 = -0.693; [a, a, EOS] has log(0.5 * 0.9 * 0.95) = -0.850, which the
// GNMT penalty with alpha = 1 divides by 8/6: -0.638, better than -0.693.
Table short_or_long() {
  return {{{}, probs({{kEos, 0.5}, {kA, 0.5}})},
          {{kA}, probs({{kA, 0.9}, {kEos, 0.1}})},
          {{kA, kA}, probs({{kEos, 0.95}, {kA, 0.05}})}};
}

Table never_ends() { return {}; }  // used with a fallback that always says a

BeamOptions options(Index width, Index max_len = 10, double alpha = 0.0) {
  BeamOptions o;
  o.bos = 1;
  o.eos = kEos;
  o.max_len = max_len;
  o.beam_width = width;
  o.length_penalty = alpha;
  return o;
}

std::vector<Index> tokens_of(const BeamResult& r, Index b) {
  return r.hypotheses[size_t(b)].front().tokens;
}

TransformerConfig reversal_config() {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = c.tgt_vocab = 8;  // 0 pad, 1 bos, 2 eos, 3..7 symbols
  c.d_model = 32;
  c.n_heads = 4;
  c.d_ff = 64;
  c.n_encoder_layers = c.n_decoder_layers = 1;
  return c;
}

void make_reversal_batch(Rng& rng, Index B, Index L, IdMatrix& src, IdMatrix& tgt) {
  src.resize(B, L);
  tgt.resize(B, L + 1);
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t < L; ++t) src(b, t) = 3 + rng.index(5);
    for (Index t = 0; t < L; ++t) tgt(b, t) = src(b, L - 1 - t);
    tgt(b, L) = 2;
  }
}

// The reversal task of test_transformer.cpp, trained for `steps` steps.
Transformer<float> trained_reversal_model(int steps) {
  Rng rng(9);
  Transformer<float> model(reversal_config(), rng);
  Adam<float> opt(model.parameters(), 3e-3f);
  for (int step = 0; step < steps; ++step) {
    IdMatrix src, tgt;
    make_reversal_batch(rng, 32, 4, src, tgt);
    Transformer<float>::Cache cache;
    CrossEntropyCache<float> ce;
    cross_entropy_forward(ce, model.forward(src, shift_right(tgt, 1), cache), tgt);
    opt.zero_grad();
    model.backward(cross_entropy_backward(ce), cache);
    opt.step();
  }
  model.eval();
  return model;
}

// Sum of log-probabilities of `tokens` given source row b under teacher forcing, in double.
template <class Scalar>
double sequence_log_prob(Transformer<Scalar>& model, const IdMatrix& src, Index b,
                         const std::vector<Index>& tokens) {
  IdMatrix y(1, Index(tokens.size()));
  for (size_t j = 0; j < tokens.size(); ++j) y(0, Index(j)) = tokens[j];
  typename Transformer<Scalar>::Cache cache;
  const IdMatrix s = src.row(b);
  const MatD logits = model.forward(s, shift_right(y, 1), cache).template cast<double>();
  double total = 0;
  for (Index t = 0; t < y.cols(); ++t) {
    const double max = logits.row(t).maxCoeff();
    const double lse = max + std::log((logits.row(t).array() - max).exp().sum());
    total += logits(t, y(0, t)) - lse;
  }
  return total;
}

void check_width_one_is_greedy(Transformer<float>& model, const IdMatrix& src, Index max_len) {
  GreedyOptions g;
  g.max_len = max_len;
  const IdMatrix greedy = greedy_decode(model, src, g);
  const IdMatrix beam = beam_search(model, src, options(1, max_len));
  CHECK(beam == greedy);
}

}  // namespace

TEST_CASE("beam search finds the sequence greedy decoding misses") {
  TableScorer s1{{greedy_trap()}, 1};
  const BeamResult r1 = beam_search_with(s1, 1, kVocab, options(1));
  CHECK(tokens_of(r1, 0) == std::vector<Index>{kA, kEos});  // greedy's choice
  CHECK(r1.hypotheses[0].front().log_prob == doctest::Approx(std::log(0.6 * 0.35)));

  TableScorer s2{{greedy_trap()}, 2};
  const BeamResult r2 = beam_search_with(s2, 1, kVocab, options(2));
  REQUIRE(r2.hypotheses[0].size() == 2);
  CHECK(tokens_of(r2, 0) == std::vector<Index>{kB, kEos});
  CHECK(r2.hypotheses[0][0].log_prob == doctest::Approx(std::log(0.4 * 0.9)));
  CHECK(r2.hypotheses[0][0].finished);
  CHECK(r2.hypotheses[0][1].tokens == std::vector<Index>{kA, kEos});  // the runner-up
  CHECK(r2.ids == (IdMatrix(1, 2) << kB, kEos).finished());
  CHECK(r2.scores() == std::vector<double>{r2.hypotheses[0][0].score});
  // Both finished hypotheses beat every live one after two steps: the search stops there.
  CHECK(s2.calls == 2);
}

TEST_CASE("the length penalty changes the choice as expected") {
  TableScorer s0{{short_or_long()}, 2};
  const BeamResult none = beam_search_with(s0, 1, kVocab, options(2, 10, 0.0));
  CHECK(tokens_of(none, 0) == std::vector<Index>{kEos});
  CHECK(none.hypotheses[0][0].score == doctest::Approx(std::log(0.5)));

  TableScorer s1{{short_or_long()}, 2};
  const BeamResult gnmt = beam_search_with(s1, 1, kVocab, options(2, 10, 1.0));
  CHECK(tokens_of(gnmt, 0) == std::vector<Index>{kA, kA, kEos});
  const double lp = std::log(0.5 * 0.9 * 0.95);
  CHECK(gnmt.hypotheses[0][0].log_prob == doctest::Approx(lp));
  CHECK(gnmt.hypotheses[0][0].score == doctest::Approx(lp / (8.0 / 6.0)));
  CHECK(beam_length_penalty(3, 1.0) == doctest::Approx(8.0 / 6.0));
  CHECK(beam_length_penalty(3, 0.0) == 1.0);
  // EOS-filled output layout: the short hypothesis of another source is padded with EOS.
  TableScorer both{{short_or_long(), short_or_long()}, 2};
  BeamOptions o = options(2, 10, 1.0);
  const BeamResult r = beam_search_with(both, 2, kVocab, o);
  CHECK(r.ids == (IdMatrix(2, 3) << kA, kA, kEos, kA, kA, kEos).finished());
}

TEST_CASE("at max_len the live hypotheses are returned unfinished") {
  TableScorer s{{never_ends()}, 2};
  s.fallback = probs({{kA, 0.7}, {kB, 0.3}});
  const BeamResult r = beam_search_with(s, 1, kVocab, options(2, 3));
  CHECK(s.calls == 3);
  REQUIRE(r.hypotheses[0].size() == 2);
  CHECK(tokens_of(r, 0) == std::vector<Index>{kA, kA, kA});
  CHECK_FALSE(r.hypotheses[0][0].finished);
  CHECK(r.hypotheses[0][0].log_prob == doctest::Approx(3 * std::log(0.7)));
  CHECK(r.hypotheses[0][1].tokens == std::vector<Index>{kA, kA, kB});  // tie-break: parent first
  CHECK(r.ids == (IdMatrix(1, 3) << kA, kA, kA).finished());
}

TEST_CASE("ties are broken by parent, then by token id, deterministically") {
  TableScorer s{{Table{{{}, probs({{kA, 0.25}, {kB, 0.25}, {5, 0.25}, {kEos, 0.25}})}}}, 2};
  const BeamResult r = beam_search_with(s, 1, kVocab, options(2, 1));
  // EOS (id 2) ranks first, a (3) second: EOS is finished, a is live, and at max_len both compete
  // with equal scores; the finished one arrived first.
  REQUIRE(r.hypotheses[0].size() == 2);
  CHECK(r.hypotheses[0][0].tokens == std::vector<Index>{kEos});
  CHECK(r.hypotheses[0][1].tokens == std::vector<Index>{kA});
}

TEST_CASE("a batch of sources gives what decoding each alone gives (step scorer)") {
  const std::vector<Table> tables = {greedy_trap(), short_or_long(), never_ends()};
  for (double alpha : {0.0, 0.8}) {
    for (Index width : {1, 2, 3}) {
      CAPTURE(alpha);
      CAPTURE(width);
      TableScorer batched{tables, width};
      batched.fallback = probs({{kEos, 0.6}, {kA, 0.4}});
      const BeamResult all = beam_search_with(batched, 3, kVocab, options(width, 6, alpha));
      for (Index b = 0; b < 3; ++b) {
        TableScorer one{{tables[size_t(b)]}, width};
        one.fallback = batched.fallback;
        const BeamResult alone = beam_search_with(one, 1, kVocab, options(width, 6, alpha));
        REQUIRE(alone.hypotheses[0].size() == all.hypotheses[size_t(b)].size());
        for (size_t i = 0; i < alone.hypotheses[0].size(); ++i) {
          CHECK(alone.hypotheses[0][i].tokens == all.hypotheses[size_t(b)][i].tokens);
          CHECK(alone.hypotheses[0][i].score == all.hypotheses[size_t(b)][i].score);
        }
        CHECK(all.ids.row(b).head(alone.ids.cols()) == alone.ids.row(0));
      }
    }
  }
}

TEST_CASE("beam width 1 equals greedy decoding exactly on an untrained model") {
  Rng rng(21);
  Transformer<float> model(reversal_config(), rng);
  model.eval();
  IdMatrix src(4, 5);
  src << 3, 4, 5, 6, 7, 7, 6, 5, 0, 0, 3, 3, 3, 3, 3, 5, 4, 0, 0, 0;  // with source padding
  check_width_one_is_greedy(model, src, 8);
  check_width_one_is_greedy(model, src, 1);
}

TEST_CASE("beam width 1 equals greedy decoding with other positions and additive attention") {
  struct Case {
    PositionalKind positional;
    AttentionScoring attention;
  };
  for (const Case& k : {Case{PositionalKind::relative, AttentionScoring::dot_product},
                        Case{PositionalKind::rotary, AttentionScoring::additive},
                        Case{PositionalKind::learned, AttentionScoring::additive}}) {
    CAPTURE(positional_kind_name(k.positional));
    CAPTURE(attention_scoring_name(k.attention));
    TransformerConfig c = reversal_config();
    c.positional = k.positional;
    c.attention = k.attention;
    Rng rng(22);
    Transformer<float> model(c, rng);
    model.eval();
    IdMatrix src(3, 4);
    src << 3, 4, 5, 6, 7, 7, 0, 0, 5, 4, 3, 0;
    check_width_one_is_greedy(model, src, 8);
    const BeamResult r = beam_search_result(model, src, options(3, 8, 0.6));
    for (Index b = 0; b < src.rows(); ++b) {
      CAPTURE(b);
      const auto& best = r.hypotheses[size_t(b)].front();
      CHECK(best.log_prob == doctest::Approx(sequence_log_prob(model, src, b, best.tokens))
                                 .epsilon(1e-4));
    }
  }
}

TEST_CASE("on a trained model: width 1 is greedy, wider beams reverse sequences, scores agree "
          "with teacher forcing, batching changes nothing") {
  Transformer<float> model = trained_reversal_model(300);
  Rng rng(31);
  IdMatrix src, tgt;
  make_reversal_batch(rng, 8, 4, src, tgt);
  check_width_one_is_greedy(model, src, 8);

  std::vector<double> scores;
  const BeamResult r = beam_search_result(model, src, options(3, 8, 0.6));
  const IdMatrix ids = beam_search(model, src, options(3, 8, 0.6), &scores);
  CHECK(ids == r.ids);
  CHECK(scores == r.scores());
  Index exact = 0;
  for (Index b = 0; b < src.rows(); ++b) exact += ids.row(b).head(5) == tgt.row(b);
  CHECK(exact >= src.rows() - 1);
  for (Index b = 0; b < src.rows(); ++b) {
    const auto& hyps = r.hypotheses[size_t(b)];
    REQUIRE(hyps.size() == 3);
    for (size_t i = 0; i < hyps.size(); ++i) {
      CAPTURE(b);
      CAPTURE(i);
      const double lp = sequence_log_prob(model, src, b, hyps[i].tokens);
      CHECK(hyps[i].log_prob == doctest::Approx(lp).epsilon(1e-4));
      CHECK(hyps[i].score ==
            doctest::Approx(hyps[i].log_prob /
                            beam_length_penalty(Index(hyps[i].tokens.size()), 0.6)));
      if (i > 0) CHECK(hyps[i].score <= hyps[i - 1].score);
      CHECK(hyps[i].finished == (hyps[i].tokens.back() == 2));
    }
  }
  // Each source alone: the same hypotheses, the same scores up to float rounding.
  for (Index b = 0; b < src.rows(); ++b) {
    const IdMatrix one = src.row(b);
    const BeamResult alone = beam_search_result(model, one, options(3, 8, 0.6));
    const auto& a = alone.hypotheses[0];
    const auto& all = r.hypotheses[size_t(b)];
    REQUIRE(a.size() == all.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].tokens == all[i].tokens);
      CHECK(a[i].score == doctest::Approx(all[i].score).epsilon(1e-5));
    }
  }
}

TEST_CASE("beam search rejects bad options and bad scorer output") {
  Rng rng(41);
  Transformer<float> model(reversal_config(), rng);
  model.eval();
  const IdMatrix src = IdMatrix::Constant(2, 3, 4);
  eftest::check_throws_with([&] { beam_search(model, src, options(0)); },
                            {"beam_search", "options.beam_width", "is 0", "at least 1"});
  BeamOptions o = options(2);
  o.bos = 8;
  eftest::check_throws_with([&] { beam_search(model, src, o); },
                            {"beam_search", "options.bos", "is 8", "[0, 8)"});
  o = options(2);
  o.eos = -1;
  eftest::check_throws_with([&] { beam_search(model, src, o); }, {"options.eos", "is -1"});
  eftest::check_throws_with([&] { beam_search(model, src, options(2, 0)); },
                            {"options.max_len", "is 0"});
  eftest::check_throws_with([&] { beam_search(model, src, options(2, 16)); },
                            {"options.max_len", "is 16", "1..15"});
  eftest::check_throws_with([&] { beam_search(model, src, options(2, 8, -0.5)); },
                            {"options.length_penalty", "alpha >= 0"});
  eftest::check_throws_with([&] { beam_search(model, src, options(2, 8, std::nan(""))); },
                            {"options.length_penalty"});
  eftest::check_throws_with([&] { beam_search(model, IdMatrix::Constant(1, 3, 9), options(2)); },
                            {"Transformer::encode", "'src'", "9"});
  eftest::check_throws_with(
      [&] { beam_search_with([](const IdMatrix& p) { return MatD::Zero(p.rows(), 5); }, 2, 6,
                             options(2)); },
      {"beam_search", "next_log_probs", "(4, 5)", "(4, 6)"});
  eftest::check_throws_with(
      [&] {
        beam_search_with([](const IdMatrix& p) { return MatD::Constant(p.rows(), 6, std::nan("")); },
                         1, 6, options(2));
      },
      {"beam_search", "next_log_probs", "NaN"});
  eftest::check_throws_with([&] { beam_search_with([](const IdMatrix&) { return MatD(); }, 0, 6,
                                                   options(2)); },
                            {"beam_search", "'B'"});
}
