// Generation (decode/generate.hpp), its sampling pieces (decode/sampling.hpp) and inference mode
// (model/eval_mode.hpp): each sampling function against its definition, sampled frequencies
// against the filtered distribution, seeds, generation against greedy_generate / greedy_decode and
// against a loop of full forward passes, batches against one sequence at a time, stop conditions,
// the callback, train mode, and bad arguments.
#include <eigenformer/decode/beam.hpp>
#include <eigenformer/decode/generate.hpp>
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/decode/sampling.hpp>
#include <eigenformer/model/eval_mode.hpp>
#include <eigenformer/model/language_models.hpp>
#include <eigenformer/model/transformer.hpp>

#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

RowVector<double> row(std::initializer_list<double> values) {
  RowVector<double> r(static_cast<Index>(values.size()));
  Index i = 0;
  for (double v : values) r(i++) = v;
  return r;
}

/// Random logits with many ties: integers in [-3, 3], some -inf.
RowVector<double> tied_logits(Index V, Rng& rng, bool with_inf) {
  RowVector<double> x(V);
  for (Index i = 0; i < V; ++i) x(i) = double(rng.index(7)) - 3.0;
  if (with_inf) x(rng.index(V)) = -kInf;
  x(rng.index(V)) = 0.5;  // at least one finite
  return x;
}

std::vector<Index> kept_ids(const RowVector<double>& filtered) {
  std::vector<Index> kept;
  for (Index i = 0; i < filtered.size(); ++i)
    if (filtered(i) != -kInf) kept.push_back(i);
  return kept;
}

/// Pearson-style check: every frequency within 5 standard deviations (plus a hair) of p.
void check_frequencies(const std::vector<Index>& counts, const RowVector<double>& p, Index n) {
  for (Index i = 0; i < p.size(); ++i) {
    const double f = double(counts[size_t(i)]) / double(n);
    const double sd = std::sqrt(p(i) * (1.0 - p(i)) / double(n));
    INFO("id " << i << ": frequency " << f << ", probability " << p(i));
    if (p(i) == 0.0)
      CHECK(counts[size_t(i)] == 0);
    else
      CHECK(std::abs(f - p(i)) <= 5.0 * sd + 1e-9);
  }
}

TransformerConfig lm_config(PositionalKind positional = PositionalKind::learned) {
  TransformerConfig c;
  c.vocab = 13;
  c.d_model = 16;
  c.n_heads = 4;
  c.d_ff = 24;
  c.n_layers = 2;
  c.dropout = 0.5;  // train mode would change every token
  c.max_len = 24;
  c.pad_id = -1;
  c.norm = NormPlacement::pre;
  c.positional = positional;
  c.tie_output = true;
  return c;
}

TransformerConfig seq2seq_config() {
  TransformerConfig c;
  c.src_vocab = 11;
  c.tgt_vocab = 13;
  c.d_model = 16;
  c.n_heads = 4;
  c.d_ff = 24;
  c.n_encoder_layers = c.n_decoder_layers = 2;
  c.dropout = 0.5;
  c.max_len = 20;
  c.pad_id = 0;
  return c;
}

GenerateOptions sampling_options() {
  GenerateOptions o;
  o.sample = true;
  o.temperature = 1.5;  // flatter: the untrained models' choices vary more
  o.top_k = 8;
  o.top_p = 0.95;
  o.repetition_penalty = 1.2;
  o.max_new_tokens = 9;
  return o;
}

/// Decoder-only generation of one prompt by the definition: a full forward pass over the whole
/// sequence for every token, and choose_token with the generator generate() gives the sequence
/// (the first rng.split()); stops at max_new_tokens or a stop token.
template <class Scalar>
std::vector<Index> reference_generate(DecoderOnlyLM<Scalar>& lm, std::vector<Index> seq,
                                      const GenerateOptions& opt, Rng& rng, size_t window = 0) {
  Rng own(rng.split());
  const size_t P = seq.size();
  for (Index n = 0; n < opt.max_new_tokens; ++n) {
    // With a window: the last `window` tokens only, at positions 0 .. window - 1.
    const size_t first = window > 0 && seq.size() > window ? seq.size() - window : 0;
    IdMatrix ids(1, static_cast<Index>(seq.size() - first));
    for (size_t t = first; t < seq.size(); ++t) ids(0, Index(t - first)) = seq[t];
    typename DecoderOnlyLM<Scalar>::Cache cache;
    const Matrix<Scalar> logits = lm.forward(ids, cache);
    const Index token = choose_token(RowVector<Scalar>(logits.row(ids.cols() - 1)), opt, seq, own);
    seq.push_back(token);
    if (std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), token) != opt.stop_tokens.end())
      break;
  }
  return std::vector<Index>(seq.begin() + std::ptrdiff_t(P), seq.end());
}

/// Every dropout flag of a model, in for_each_dropout's order.
template <class Model>
std::vector<bool> dropout_flags(Model& model) {
  std::vector<bool> flags;
  detail::for_each_dropout(model, [&](auto& d) { flags.push_back(d.training); });
  return flags;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The sampling pieces

TEST_CASE("softmax_with_temperature is exp(x / T) / sum exp(x / T); -inf gives 0") {
  const RowVector<double> x = row({1.0, -2.0, 0.5, -kInf, 3.0});
  for (double T : {0.25, 1.0, 4.0}) {
    const RowVector<double> p = softmax_with_temperature(x, T);
    double z = 0;
    for (Index i = 0; i < x.size(); ++i) z += std::exp(x(i) / T);
    for (Index i = 0; i < x.size(); ++i) CHECK(p(i) == doctest::Approx(std::exp(x(i) / T) / z));
    CHECK(p(3) == 0.0);
    CHECK(p.sum() == doctest::Approx(1.0));
  }
  // No overflow for large logits, and floats give the same within float rounding.
  const RowVector<float> big = (RowVector<float>(3) << 1000.f, 999.f, -1000.f).finished();
  const RowVector<float> pf = softmax_with_temperature(big, 1.0);
  CHECK(pf(0) == doctest::Approx(1.0 / (1.0 + std::exp(-1.0))).epsilon(1e-6));
  CHECK(pf(2) == 0.0f);
}

TEST_CASE("apply_repetition_penalty divides positive logits and multiplies the others, once per "
          "distinct id") {
  RowVector<double> x = row({2.0, -1.0, 0.0, 3.0, -kInf, 1.5});
  apply_repetition_penalty(x, {0, 1, 2, 4, 0, 0, 1}, 2.0);
  CHECK(x(0) == 1.0);     // 2 / 2, once although it occurs three times
  CHECK(x(1) == -2.0);    // -1 * 2, once
  CHECK(x(2) == 0.0);     // 0 stays 0
  CHECK(x(3) == 3.0);     // not in the sequence
  CHECK(x(4) == -kInf);   // stays ruled out
  CHECK(x(5) == 1.5);
  RowVector<float> y = (RowVector<float>(3) << 1.f, -1.f, 4.f).finished();
  apply_repetition_penalty(y, {0, 1, 2}, 0.5);  // < 1 favours repeats
  CHECK(y(0) == 2.f);
  CHECK(y(1) == -0.5f);
  CHECK(y(2) == 8.f);
  const RowVector<float> before = y;
  apply_repetition_penalty(y, {0, 1, 2}, 1.0);
  CHECK(y == before);
}

TEST_CASE("top_k_filter keeps exactly min(k, V) of the largest logits, ties to the lower id") {
  Rng rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const Index V = 1 + rng.index(12);
    const RowVector<double> x = tied_logits(V, rng, trial % 3 == 0);
    for (Index k = 0; k <= V + 1; ++k) {
      RowVector<double> f = x;
      top_k_filter(f, k);
      const std::vector<Index> kept = kept_ids(f);
      // Kept entries are unchanged; -inf entries of x count as kept only if they rank in the top
      // k, so count by rank instead: the kept set is the first min(k, V) ids of the ranking.
      std::vector<Index> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), Index(0));
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return x(a) > x(b); });
      const Index n = k == 0 ? V : std::min(k, V);
      for (Index r = 0; r < V; ++r) {
        const Index id = order[size_t(r)];
        INFO("trial " << trial << " k " << k << " rank " << r << " id " << id);
        CHECK(f(id) == (r < n ? x(id) : -kInf));
      }
      for (Index a : kept)  // every kept logit >= every dropped one
        for (Index d = 0; d < V; ++d)
          if (f(d) == -kInf && x(d) != -kInf) CHECK(x(a) >= x(d));
    }
  }
  // The rule on ties: the k-th and (k+1)-th largest are equal, the lower id stays.
  RowVector<double> t = row({1.0, 2.0, 1.0, 0.0, 1.0});
  top_k_filter(t, 2);
  CHECK(kept_ids(t) == std::vector<Index>{0, 1});
}

TEST_CASE("top_p_filter keeps the smallest set of most likely tokens whose probability reaches "
          "p (checked against every subset)") {
  // The definition's boundaries on a small case: probabilities 0.5, 0.3, 0.2.
  const RowVector<double> x = row({std::log(0.3), std::log(0.5), std::log(0.2)});
  auto kept_at = [&](double p) {
    RowVector<double> f = x;
    top_p_filter(f, p);
    return kept_ids(f);
  };
  CHECK(kept_at(0.3) == std::vector<Index>{1});
  CHECK(kept_at(0.5) == std::vector<Index>{1});
  CHECK(kept_at(0.51) == std::vector<Index>{0, 1});
  CHECK(kept_at(0.8) == std::vector<Index>{0, 1});  // reached exactly (within rounding)
  CHECK(kept_at(0.81) == std::vector<Index>{0, 1, 2});
  CHECK(kept_at(1.0) == std::vector<Index>{0, 1, 2});
  CHECK(kept_at(1e-9) == std::vector<Index>{1});  // always the most likely one

  Rng rng(12);
  for (int trial = 0; trial < 300; ++trial) {
    const Index V = 1 + rng.index(8);
    const RowVector<double> logits = tied_logits(V, rng, trial % 4 == 0);
    const RowVector<double> probs = softmax_with_temperature(logits, 1.0);
    const double p = trial % 10 == 0 ? 1.0 : 0.01 + 0.98 * rng.uniform();
    RowVector<double> f = logits;
    top_p_filter(f, p);
    const std::vector<Index> kept = kept_ids(f);
    // The smallest size of any subset whose probability reaches p.
    size_t smallest = size_t(V) + 1;
    for (unsigned mask = 1; mask < (1u << V); ++mask) {
      double mass = 0;
      size_t size = 0;
      for (Index i = 0; i < V; ++i)
        if (mask & (1u << i)) mass += probs(i), ++size;
      if (mass >= p - 1e-12) smallest = std::min(smallest, size);
    }
    INFO("trial " << trial << " V " << V << " p " << p);
    if (p == 1.0) {
      CHECK(f == logits);  // off
      continue;
    }
    CHECK(kept.size() == smallest);
    double mass = 0;
    for (Index i : kept) {
      mass += probs(i);
      CHECK(f(i) == logits(i));
    }
    CHECK(mass >= p - 1e-12);
    for (Index a : kept)  // the most likely ones, ties to the lower id
      for (Index d = 0; d < V; ++d)
        if (f(d) == -kInf) CHECK((probs(a) > probs(d) || (probs(a) == probs(d) && a < d)));
  }
}

TEST_CASE("sample_categorical draws each id with probability weight / sum; zero weights never; "
          "the same generator state gives the same draws") {
  const RowVector<double> w = row({2.0, 0.0, 1.0, 5.0, 0.0, 2.0});  // need not sum to 1
  const RowVector<double> p = w / w.sum();
  const Index n = 40000;
  Rng rng(5);
  std::vector<Index> counts(6, 0), draws;
  for (Index i = 0; i < n; ++i) {
    const Index id = sample_categorical(w, rng);
    ++counts[size_t(id)];
    if (i < 100) draws.push_back(id);
  }
  check_frequencies(counts, p, n);
  Rng again(5);
  for (Index id : draws) CHECK(sample_categorical(w, again) == id);
  // One weight: always it; float weights.
  const RowVector<float> one = (RowVector<float>(3) << 0.f, 3.f, 0.f).finished();
  for (int i = 0; i < 20; ++i) CHECK(sample_categorical(one, rng) == 1);
}

TEST_CASE("choose_token draws from next_token_distribution: temperature, then top-k, then top-p on "
          "the tempered probabilities; tokens outside the filters never appear") {
  RowVector<float> logits(8);  // not (...).finished(): GCC 12 warns falsely of its copy
  logits << 2.0f, 1.5f, 0.2f, 1.5f, -1.0f, 0.9f, 3.0f, -0.5f;
  SamplingOptions opt;
  opt.sample = true;
  opt.temperature = 0.8;
  opt.top_k = 5;
  opt.top_p = 0.9;
  opt.repetition_penalty = 1.5;
  const std::vector<Index> previous{6, 0, 6};

  // The definition, step by step.
  RowVector<double> x = logits.cast<double>();
  x(6) /= 1.5, x(0) /= 1.5;  // both positive
  x /= 0.8;
  std::vector<Index> order(8);
  std::iota(order.begin(), order.end(), Index(0));
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return x(a) > x(b); });
  RowVector<double> top5 = RowVector<double>::Constant(8, -kInf);
  for (int r = 0; r < 5; ++r) top5(order[size_t(r)]) = x(order[size_t(r)]);
  const RowVector<double> q = softmax_with_temperature(top5, 1.0);
  double mass = 0;
  RowVector<double> expected = RowVector<double>::Zero(8);
  for (int r = 0; r < 5 && mass < 0.9 - 1e-12; ++r) {
    mass += q(order[size_t(r)]);
    expected(order[size_t(r)]) = q(order[size_t(r)]);
  }
  expected /= expected.sum();
  const RowVector<double> dist = next_token_distribution(logits, opt, previous);
  CHECK((dist - expected).cwiseAbs().maxCoeff() <= 1e-12);
  CHECK(std::count_if(dist.data(), dist.data() + 8, [](double v) { return v > 0; }) >= 2);
  CHECK(std::count_if(dist.data(), dist.data() + 8, [](double v) { return v > 0; }) <= 5);

  const Index n = 30000;
  Rng rng(9);
  std::vector<Index> counts(8, 0);
  for (Index i = 0; i < n; ++i) ++counts[size_t(choose_token(logits, opt, previous, rng))];
  check_frequencies(counts, dist, n);  // zero-probability ids (outside top-k / top-p): never

  // Greedy: the argmax after the penalty, the lowest id on ties, and no draw.
  SamplingOptions greedy;
  greedy.repetition_penalty = 1.5;
  Rng r1(3), r2(3);
  CHECK(choose_token(logits, greedy, previous, r1) == 6);  // 3 / 1.5 = 2 > 1.5 > 2 / 1.5
  CHECK(r1.next_u64() == r2.next_u64());
  const RowVector<double> tie = row({1.0, 4.0, 4.0, -kInf});
  CHECK(choose_token(tie, SamplingOptions{}, {}, r1) == 1);
  // top_k = 1 samples the greedy token whatever the temperature.
  SamplingOptions k1 = opt;
  k1.top_k = 1;
  k1.temperature = 50.0;
  for (int i = 0; i < 50; ++i)
    CHECK(choose_token(logits, k1, previous, rng) == choose_token(logits, greedy, previous, rng));
}

TEST_CASE("the sampling functions reject bad arguments, naming function, argument and value, and "
          "change nothing") {
  using eftest::check_throws_with;
  const RowVector<double> x = row({0.5, -1.0, 2.0});
  RowVector<double> y = x;
  check_throws_with([&] { top_k_filter(y, -1); }, {"top_k_filter", "'k'", "-1"});
  check_throws_with([&] { top_p_filter(y, 0.0); }, {"top_p_filter", "'p'", "is 0,"});
  check_throws_with([&] { top_p_filter(y, 1.5); }, {"top_p_filter", "'p'", "1.5"});
  check_throws_with([&] { top_p_filter(y, std::nan("")); }, {"top_p_filter", "'p'", "nan"});
  check_throws_with([&] { softmax_with_temperature(y, 0.0); },
                    {"softmax_with_temperature", "'temperature'", "is 0,"});
  check_throws_with([&] { softmax_with_temperature(y, -2.0); },
                    {"softmax_with_temperature", "'temperature'", "-2"});
  check_throws_with([&] { apply_repetition_penalty(y, {0}, 0.0); },
                    {"apply_repetition_penalty", "'penalty'", "is 0,"});
  check_throws_with([&] { apply_repetition_penalty(y, {0, 3}, 1.2); },
                    {"apply_repetition_penalty", "'previous'", "id 3"});
  check_throws_with([&] { apply_repetition_penalty(y, {-1}, 1.2); },
                    {"apply_repetition_penalty", "'previous'", "id -1"});
  CHECK(y == x);
  RowVector<double> nan = x, pinf = x, all_inf = RowVector<double>::Constant(3, -kInf);
  nan(1) = std::nan("");
  pinf(2) = kInf;
  check_throws_with([&] { top_k_filter(nan, 1); }, {"top_k_filter", "'logits'", "nan at id 1"});
  check_throws_with([&] { top_p_filter(pinf, 0.5); }, {"top_p_filter", "'logits'", "inf at id 2"});
  check_throws_with([&] { top_k_filter(all_inf, 1); }, {"top_k_filter", "'logits'", "-inf"});
  Rng rng(1), copy(1);
  check_throws_with([&] { sample_categorical(row({1.0, -0.5}), rng); },
                    {"sample_categorical", "'weights'", "-0.5 at id 1"});
  check_throws_with([&] { sample_categorical(row({0.0, 0.0}), rng); },
                    {"sample_categorical", "'weights'", "sum to 0"});
  SamplingOptions bad;
  bad.sample = true;
  bad.top_k = -3;
  check_throws_with([&] { choose_token(x, bad, {}, rng); },
                    {"next_token_distribution", "'options.top_k'", "-3"});
  bad.top_k = 0;
  bad.temperature = 0.0;
  bad.sample = false;  // checked even when greedy
  check_throws_with([&] { choose_token(x, bad, {}, rng); },
                    {"choose_token", "'options.temperature'", "is 0,"});
  CHECK(rng.next_u64() == copy.next_u64());  // nothing drawn
}

// ---------------------------------------------------------------------------------------------
// Inference mode

TEST_CASE("ScopedEval turns every dropout off and puts each flag back, also on an exception") {
  Rng rng(21);
  DecoderOnlyLM<double> lm(lm_config(), rng);
  Transformer<double> seq2seq(seq2seq_config(), rng);
  IdMatrix ids(2, 6);
  ids << 1, 5, 7, 2, 9, 11,  //
      4, 3, 12, 6, 0, 8;
  const IdMatrix src = eftest::padded_source();

  lm.eval();
  seq2seq.eval();
  DecoderOnlyLM<double>::Cache c1;
  Transformer<double>::Cache c2;
  const eftest::MatD lm_eval = lm.forward(ids, c1);
  const eftest::MatD s2s_eval = seq2seq.forward(src, ids, c2);

  lm.train();
  seq2seq.train();
  // A mixed state: some parts already in eval mode must stay so.
  seq2seq.decoder.layers[1].ffn.train(false);
  lm.stack.layers[0].attn_drop.train(false);
  const std::vector<bool> lm_before = dropout_flags(lm), s2s_before = dropout_flags(seq2seq);
  CHECK(lm_before.size() == 1 + 2 * 3);
  CHECK(s2s_before.size() == (1 + 2 * 3) + (1 + 2 * 4));
  {
    ScopedEval a(lm);
    ScopedEval b(seq2seq);
    for (bool f : dropout_flags(lm)) CHECK_FALSE(f);
    // The training forward (with caches, which applies dropout in train mode) is the eval one:
    // no dropout was left out.
    CHECK(lm.forward(ids, c1) == lm_eval);
    CHECK(seq2seq.forward(src, ids, c2) == s2s_eval);
  }
  CHECK(dropout_flags(lm) == lm_before);
  CHECK(dropout_flags(seq2seq) == s2s_before);
  try {
    ScopedEval guard(lm);
    throw std::runtime_error("leaves the scope");
  } catch (const std::runtime_error&) {
  }
  CHECK(dropout_flags(lm) == lm_before);
}

// ---------------------------------------------------------------------------------------------
// Generation

TEST_CASE("greedy generate equals greedy_generate and greedy_decode") {
  Rng rng(31);
  for (PositionalKind kind : {PositionalKind::learned, PositionalKind::rotary}) {
    DecoderOnlyLM<float> lm(lm_config(kind), rng);
    lm.eval();
    IdMatrix prompt(3, 3);
    prompt << 4, 7, 1,  //
        9, 12, 3,       //
        0, 6, 2;
    for (Index eos : {Index(-1), Index(5)}) {
      const IdMatrix expected = greedy_generate(lm, prompt, 10, eos);
      GenerateOptions opt;
      opt.max_new_tokens = 10;
      if (eos >= 0) opt.stop_tokens = {eos};
      const GenerateResult r = generate(lm, prompt, opt, rng);
      for (Index b = 0; b < 3; ++b) {
        const std::vector<Index>& got = r.tokens[size_t(b)];
        INFO("eos " << eos << " row " << b);
        REQUIRE(static_cast<Index>(got.size()) <= 10);
        for (size_t j = 0; j < got.size(); ++j) CHECK(got[j] == expected(b, 3 + Index(j)));
        const bool stopped = r.reasons[size_t(b)] == StopReason::stop_token;
        CHECK(stopped == (eos >= 0 && got.back() == eos));
        if (!stopped) CHECK(got.size() == 10);
        for (Index j = 3 + Index(got.size()); j < expected.cols(); ++j)  // EOS fill after EOS
          CHECK(expected(b, j) == eos);
      }
    }
  }
  Transformer<float> seq2seq(seq2seq_config(), rng);
  seq2seq.eval();
  const IdMatrix src = eftest::padded_source();
  const IdMatrix expected = greedy_decode(seq2seq, src, {1, 2, 12});
  GenerateOptions opt;
  opt.bos = 1;
  opt.stop_tokens = {2};
  opt.max_new_tokens = 12;
  const GenerateResult r = generate(seq2seq, src, opt, rng);
  for (Index b = 0; b < 2; ++b)
    for (size_t j = 0; j < r.tokens[size_t(b)].size(); ++j)
      CHECK(r.tokens[size_t(b)][j] == expected(b, Index(j)));
}

TEST_CASE("generate equals its definition: a full forward pass over the sequence per token, then "
          "choose_token (sampling and greedy, with a repetition penalty)") {
  Rng init(41);
  DecoderOnlyLM<double> lm(lm_config(), init);
  lm.eval();
  const std::vector<Index> prompt{3, 8, 8, 1};
  GenerateOptions greedy;
  greedy.repetition_penalty = 1.3;
  greedy.max_new_tokens = 12;
  for (const GenerateOptions& opt : {sampling_options(), greedy}) {
    Rng a(7), b(7);
    const GenerateResult r = generate(lm, {prompt}, opt, a);
    CHECK(r.tokens[0] == reference_generate(lm, prompt, opt, b));
  }
}

TEST_CASE("generate: the same seed gives the same tokens, other seeds others") {
  Rng init(51);
  DecoderOnlyLM<float> lm(lm_config(), init);
  Transformer<float> seq2seq(seq2seq_config(), init);
  const GenerateOptions opt = sampling_options();
  const std::vector<std::vector<Index>> prompts{{2, 5}, {7}};
  Rng a(99), b(99);
  const GenerateResult first = generate(lm, prompts, opt, a);
  CHECK(generate(lm, prompts, opt, b).tokens == first.tokens);
  CHECK(a.next_u64() == b.next_u64());  // one split per sequence, whatever the lengths
  bool differs = false;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng c(seed);
    differs = differs || generate(lm, prompts, opt, c).tokens != first.tokens;
  }
  CHECK(differs);
  Rng d(5), e(5);
  CHECK(generate(seq2seq, eftest::padded_source(), opt, d).tokens ==
        generate(seq2seq, eftest::padded_source(), opt, e).tokens);
}

TEST_CASE("generate: a batch of prompts of different lengths gives what one prompt at a time "
          "gives") {
  Rng init(61);
  for (PositionalKind kind :
       {PositionalKind::learned, PositionalKind::sinusoidal, PositionalKind::rotary}) {
    DecoderOnlyLM<double> lm(lm_config(kind), init);
    const std::vector<std::vector<Index>> prompts{{4, 9, 1, 1, 7}, {2}, {11, 3}, {6, 6, 6, 0}};
    GenerateOptions greedy;
    greedy.max_new_tokens = 7;
    greedy.stop_tokens = {3, 10};
    for (const GenerateOptions& opt : {sampling_options(), greedy}) {
      Rng batch_rng(8), single_rng(8);
      const GenerateResult batch = generate(lm, prompts, opt, batch_rng);
      for (size_t b = 0; b < prompts.size(); ++b) {
        const GenerateResult one = generate(lm, {prompts[b]}, opt, single_rng);
        INFO("positions " << int(kind) << ", row " << b << ", sample " << opt.sample);
        CHECK(batch.tokens[b] == one.tokens[0]);
        CHECK(batch.reasons[b] == one.reasons[0]);
      }
      CHECK(batch_rng.next_u64() == single_rng.next_u64());
    }
  }
  Transformer<double> seq2seq(seq2seq_config(), init);
  const IdMatrix src = eftest::padded_source();
  Rng batch_rng(4), single_rng(4);
  const GenerateResult batch = generate(seq2seq, src, sampling_options(), batch_rng);
  for (Index b = 0; b < src.rows(); ++b) {
    const GenerateResult one = generate(seq2seq, IdMatrix(src.row(b)), sampling_options(),
                                        single_rng);
    CHECK(batch.tokens[size_t(b)] == one.tokens[0]);
  }
}

TEST_CASE("generate runs in inference mode: train mode gives the eval-mode tokens and stays on") {
  Rng init(71);
  DecoderOnlyLM<float> lm(lm_config(), init);
  Transformer<float> seq2seq(seq2seq_config(), init);
  const GenerateOptions opt = sampling_options();
  const std::vector<std::vector<Index>> prompts{{2, 5, 9}, {7}};
  lm.eval();
  seq2seq.eval();
  Rng a(3), b(3), c(3), d(3);
  const GenerateResult lm_eval = generate(lm, prompts, opt, a);
  const GenerateResult s2s_eval = generate(seq2seq, eftest::padded_source(), opt, b);
  const IdMatrix greedy_eval = greedy_generate(lm, IdMatrix::Constant(1, 2, 4), 6);
  const BeamOptions beam{1, 2, 8, 3, 0.0};
  const IdMatrix beam_eval = beam_search(seq2seq, eftest::padded_source(), beam);
  lm.train();
  seq2seq.train();
  CHECK(generate(lm, prompts, opt, c).tokens == lm_eval.tokens);
  CHECK(generate(seq2seq, eftest::padded_source(), opt, d).tokens == s2s_eval.tokens);
  CHECK(greedy_generate(lm, IdMatrix::Constant(1, 2, 4), 6) == greedy_eval);
  CHECK(beam_search(seq2seq, eftest::padded_source(), beam) == beam_eval);
  for (bool f : dropout_flags(lm)) CHECK(f);
  for (bool f : dropout_flags(seq2seq)) CHECK(f);
}

TEST_CASE("generate stops a sequence at any stop token, at max_new_tokens, or when the callback "
          "says so, and calls back once per token, step by step") {
  Rng init(81);
  DecoderOnlyLM<double> lm(lm_config(), init);
  const std::vector<std::vector<Index>> prompts{{1, 2, 3}, {4}, {5, 6}};
  GenerateOptions opt = sampling_options();
  opt.max_new_tokens = 10;
  // Stop tokens: the first token each sequence generates without them, so each stops at once.
  Rng probe(1);
  const GenerateResult free_run = generate(lm, prompts, opt, probe);
  opt.stop_tokens = {free_run.tokens[0][0], free_run.tokens[1][0], free_run.tokens[2][0]};
  Rng r1(1);
  const GenerateResult stopped = generate(lm, prompts, opt, r1);
  for (size_t b = 0; b < 3; ++b) {
    CHECK(stopped.tokens[b] == std::vector<Index>{free_run.tokens[b][0]});
    CHECK(stopped.reasons[b] == StopReason::stop_token);
  }

  opt.stop_tokens.clear();
  std::vector<TokenEvent> events;
  Rng r2(1);
  const GenerateResult r = generate(lm, prompts, opt, r2, [&](const TokenEvent& e) {
    events.push_back(e);
    return !(e.row == 1 && e.index == 3);  // sequence 1 ends after its 4th token
  });
  CHECK(r.tokens[0] == free_run.tokens[0]);  // the others run on unchanged
  CHECK(r.tokens[2] == free_run.tokens[2]);
  CHECK(r.tokens[1] == std::vector<Index>(free_run.tokens[1].begin(), free_run.tokens[1].begin() + 4));
  CHECK(r.reasons[0] == StopReason::max_new_tokens);
  CHECK(r.reasons[1] == StopReason::callback);
  CHECK(r.tokens[0].size() == 10);
  // Events: every token once, in step order (the 1-token prompt first, then the 2-token one, ...).
  std::vector<size_t> seen(3, 0);
  Index last_step = -1;
  for (const TokenEvent& e : events) {
    const Index P = static_cast<Index>(prompts[size_t(e.row)].size());
    const Index step = P + e.index;  // the step (position) that chose it
    CHECK(step >= last_step);
    last_step = step;
    CHECK(e.index == Index(seen[size_t(e.row)]));
    CHECK(e.token == r.tokens[size_t(e.row)][seen[size_t(e.row)]]);
    CHECK(e.last == (e.row != 1 && e.index == 9));
    ++seen[size_t(e.row)];
  }
  CHECK(seen == std::vector<size_t>{10, 4, 10});

  // Encoder-decoder: BOS is never in the output; max_new_tokens bounds it.
  Transformer<double> seq2seq(seq2seq_config(), init);
  GenerateOptions s = sampling_options();
  s.max_new_tokens = 5;
  Rng r3(2);
  const GenerateResult t = generate(seq2seq, eftest::padded_source(), s, r3);
  for (const auto& tokens : t.tokens) CHECK(tokens.size() == 5);
}

TEST_CASE("generate rejects bad options and arguments, naming them and the value, and changes "
          "nothing") {
  using eftest::check_throws_with;
  Rng init(91);
  DecoderOnlyLM<float> lm(lm_config(), init);
  Transformer<float> seq2seq(seq2seq_config(), init);
  lm.train();
  const std::vector<bool> lm_flags = dropout_flags(lm), s2s_flags = dropout_flags(seq2seq);
  const std::vector<std::vector<Index>> prompts{{1, 2}};
  Rng rng(5), copy(5);
  auto lm_fails = [&](const GenerateOptions& o, const std::vector<std::string>& frags) {
    check_throws_with([&] { generate(lm, prompts, o, rng); }, frags);
  };
  auto s2s_fails = [&](const GenerateOptions& o, const IdMatrix& src,
                       const std::vector<std::string>& frags) {
    check_throws_with([&] { generate(seq2seq, src, o, rng); }, frags);
  };
  GenerateOptions o = sampling_options();
  o.top_k = -1;
  lm_fails(o, {"generate", "'options.top_k'", "-1"});
  o = sampling_options(), o.top_p = 0.0;
  lm_fails(o, {"generate", "'options.top_p'", "is 0,"});
  o.top_p = 1.25;
  s2s_fails(o, eftest::padded_source(), {"generate", "'options.top_p'", "1.25"});
  o = sampling_options(), o.temperature = 0.0;
  lm_fails(o, {"generate", "'options.temperature'", "is 0,"});
  o.temperature = -1.0;
  lm_fails(o, {"generate", "'options.temperature'", "-1"});
  o = sampling_options(), o.repetition_penalty = 0.0;
  lm_fails(o, {"generate", "'options.repetition_penalty'", "is 0,"});
  o = sampling_options(), o.max_new_tokens = 0;
  lm_fails(o, {"generate", "'options.max_new_tokens'", "is 0,"});
  o.max_new_tokens = 23;  // 2 + 23 > max_len 24
  lm_fails(o, {"generate", "'options.max_new_tokens'", "23", "max_len 24"});
  o.max_new_tokens = 21;  // > max_len 20
  s2s_fails(o, eftest::padded_source(), {"generate", "'options.max_new_tokens'", "21"});
  o = sampling_options(), o.stop_tokens = {2, 13};
  lm_fails(o, {"generate", "'options.stop_tokens'", "id 13"});
  o.stop_tokens = {-1};
  s2s_fails(o, eftest::padded_source(), {"generate", "'options.stop_tokens'", "id -1"});
  o = sampling_options(), o.bos = 13;
  s2s_fails(o, eftest::padded_source(), {"generate", "'options.bos'", "13"});
  o = sampling_options();
  check_throws_with([&] { generate(lm, {{1, 13}}, o, rng); },
                    {"generate", "'prompts'", "id 13", "row 0, position 1"});
  check_throws_with([&] { generate(lm, {{1}, {}}, o, rng); },
                    {"generate", "'prompts'", "empty prompt at row 1"});
  check_throws_with([&] { generate(lm, std::vector<std::vector<Index>>{}, o, rng); },
                    {"generate", "'prompts'", "empty"});
  IdMatrix bad_src = eftest::padded_source();
  bad_src(1, 0) = 11;
  s2s_fails(o, bad_src, {"generate", "'src'", "id 11"});
  s2s_fails(o, IdMatrix(0, 3), {"generate", "'src'", "(0, 3)"});
  CHECK(rng.next_u64() == copy.next_u64());
  CHECK(dropout_flags(lm) == lm_flags);
  CHECK(dropout_flags(seq2seq) == s2s_flags);
}

TEST_CASE("generate goes past max_len with a sliding window for rotary and relative positions, "
          "and says why learned and sinusoidal tables cannot") {
  const std::vector<Index> prompt{3, 8, 8, 1};
  GenerateOptions opt = sampling_options();
  opt.max_new_tokens = 20;  // 4 + 20 > max_len 8
  for (const PositionalKind kind :
       {PositionalKind::rotary, PositionalKind::relative, PositionalKind::none}) {
    INFO("positions " << positional_kind_name(kind));
    TransformerConfig c = lm_config(kind);
    c.max_len = 8;
    {
      // One layer: its cached keys and values depend on their own token only, so the window's
      // cache equals a forward pass over the last max_len tokens.
      c.n_layers = 1;
      Rng init(61);
      DecoderOnlyLM<double> lm(c, init);
      lm.eval();
      Rng a(7), b(7);
      const GenerateResult r = generate(lm, {prompt}, opt, a);
      CHECK(r.tokens[0].size() == 20);
      CHECK(r.tokens[0] == reference_generate(lm, prompt, opt, b, size_t(c.max_len)));
    }
    // Deeper: a batch of prompts of different lengths gives what each alone gives.
    c.n_layers = 2;
    Rng init(62);
    DecoderOnlyLM<double> lm(c, init);
    const std::vector<std::vector<Index>> prompts{prompt, {5}, {2, 9, 4, 4, 6, 7, 1, 3}};
    Rng batch_rng(9), single_rng(9);
    const GenerateResult batch = generate(lm, prompts, opt, batch_rng);
    for (size_t i = 0; i < prompts.size(); ++i) {
      CHECK(batch.tokens[i].size() == 20);
      CHECK(generate(lm, {prompts[i]}, opt, single_rng).tokens[0] == batch.tokens[i]);
    }
  }
  for (const PositionalKind kind : {PositionalKind::learned, PositionalKind::sinusoidal}) {
    TransformerConfig c = lm_config(kind);
    c.max_len = 8;
    Rng init(63), rng(1);
    DecoderOnlyLM<float> lm(c, init);
    eftest::check_throws_with([&] { generate(lm, {prompt}, opt, rng); },
                              {"generate", "'options.max_new_tokens'", "max_len 8",
                               positional_kind_name(kind), "table", "rotary or relative"});
    DecodeState<float> state = lm.begin_decode(1, 8);
    eftest::check_throws_with([&] { lm.slide_window(state, 1); },
                              {"DecoderOnlyLM::slide_window", "config.positional",
                               positional_kind_name(kind), "max_len"});
  }
  TransformerConfig c = lm_config(PositionalKind::rotary);
  c.max_len = 8;
  Rng init(64), rng(1);
  DecoderOnlyLM<float> lm(c, init);
  eftest::check_throws_with([&] { generate(lm, {{1, 2, 3, 4, 5, 6, 7, 8, 9}}, opt, rng); },
                            {"generate", "'prompts'", "9 tokens", "max_len 8"});
  DecodeState<float> state = lm.begin_decode(1, 8);
  eftest::check_throws_with([&] { lm.slide_window(state, 1); },
                            {"DecoderOnlyLM::slide_window", "'n'", "is 1", "0 <= n <= 0"});
}
