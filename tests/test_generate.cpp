// The sampling pieces of generation (decode/sampling.hpp): each function against its definition,
// sampled frequencies against the filtered distribution, seeds, and bad arguments.
#include <eigenformer/decode/sampling.hpp>

#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

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
  const RowVector<float> logits =
      (RowVector<float>(8) << 2.0f, 1.5f, 0.2f, 1.5f, -1.0f, 0.9f, 3.0f, -0.5f).finished();
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
