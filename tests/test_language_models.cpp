// Decoder-only (GPT-style) and encoder-only (BERT-style) models built from the encoder's layers.
#include <algorithm>
#include <cmath>
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/model/language_models.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>
#include <type_traits>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

TransformerConfig tiny_lm_config() {
  TransformerConfig c = eftest::tiny_config();
  c.vocab = 7;
  c.pad_id = -1;
  return c;
}

template <class Model>
void check_model_gradients(Model& model, const IdMatrix& ids, Rng& rng) {
  const MatD R = eftest::random_matrix(ids.size(), model.config().vocab, rng);
  auto loss = [&] {
    typename Model::Cache cache;
    return projection(model.forward(ids, cache), R);
  };
  eftest::check_param_grads(model.parameters(), loss, [&] {
    typename Model::Cache cache;
    model.forward(ids, cache);
    model.backward(R, cache);
  });
}

}  // namespace

TEST_CASE("decoder-only model gradients match finite differences") {
  Rng rng(1);
  IdMatrix ids(2, 4);
  ids << 1, 2, 3, 4, 6, 5, 4, 0;
  TransformerConfig c = tiny_lm_config();
  auto check = [&] {
    DecoderOnlyLM<double> lm(c, rng);
    check_model_gradients(lm, ids, rng);
  };
  SUBCASE("post-norm, untied") { check(); }
  SUBCASE("pre-norm, tied, learned positions") {
    c.norm = NormPlacement::pre;
    c.tie_output = true;
    c.positional = PositionalKind::learned;
    check();
  }
  SUBCASE("one layer, rotary") {
    c.n_layers = 1;
    c.positional = PositionalKind::rotary;
    c.rotary_base = 100.0;
    check();
  }
  SUBCASE("one layer, relative (causal buckets), additive scoring") {
    c.n_layers = 1;
    c.positional = PositionalKind::relative;
    c.relative_buckets = 4;
    c.relative_max_distance = 3;
    c.attention = AttentionScoring::additive;
    check();
  }
}

TEST_CASE("encoder-only model gradients match finite differences") {
  Rng rng(2);
  IdMatrix ids(2, 3);
  ids << 1, 2, 3, 6, 5, 4;
  SUBCASE("sinusoidal") {
    EncoderOnlyModel<double> model(tiny_lm_config(), rng);
    check_model_gradients(model, ids, rng);
  }
  SUBCASE("one layer, relative (bidirectional buckets)") {
    TransformerConfig c = tiny_lm_config();
    c.n_layers = 1;
    c.positional = PositionalKind::relative;
    c.relative_buckets = 4;
    c.relative_max_distance = 3;
    EncoderOnlyModel<double> model(c, rng);
    CHECK(model.stack.layers[0].self_attn.positions().bidirectional);
    check_model_gradients(model, ids, rng);
  }
}

// In float, whose decoding code the other tests compile anyway; the additive attention layer's own
// test checks its steps in double to 1e-12.
TEST_CASE(
    "decoder-only, every positional kind and scoring: decode_step equals the full "
    "forward, greedy generation equals greedy by full recompute") {
  for (PositionalKind positional : {PositionalKind::sinusoidal, PositionalKind::learned,
                                    PositionalKind::relative, PositionalKind::rotary})
    for (AttentionScoring scoring : {AttentionScoring::dot_product, AttentionScoring::additive}) {
      CAPTURE(positional_kind_name(positional));
      CAPTURE(attention_scoring_name(scoring));
      TransformerConfig c = tiny_lm_config();
      c.n_layers = 1;
      c.positional = positional;
      c.attention = scoring;
      c.relative_buckets = 4;
      c.relative_max_distance = 3;
      c.pad_id = 0;
      Rng rng(5);
      DecoderOnlyLM<float> lm(c, rng);
      CHECK_FALSE(lm.stack.layers[0].self_attn.positions().bidirectional);
      lm.eval();
      IdMatrix seq(2, 6);
      seq << 4, 1, 6, 2, 5, 3,  //
          0, 6, 2, 1, 0, 5;     // padded positions stay masked in the cache
      DecodeState<float> state = lm.begin_decode(2, seq.cols());
      Index pos = 0;
      for (Index n : {3, 1, 2}) {
        const Matrix<float> step = lm.decode_step(seq.middleCols(pos, n), state);
        DecoderOnlyLM<float>::Cache cache;
        const Matrix<float> full = lm.forward(seq.leftCols(pos + n), cache);
        for (Index b = 0; b < 2; ++b)
          CHECK((step.middleRows(b * n, n) - full.middleRows(b * (pos + n) + pos, n))
                    .cwiseAbs()
                    .maxCoeff() < 1e-5f);
        pos += n;
      }
      // Greedy by recomputing the whole sequence at every step.
      IdMatrix expected = seq.leftCols(2);
      for (Index t = 2; t < 9; ++t) {
        DecoderOnlyLM<float>::Cache cache;
        const Matrix<float> logits = lm.forward(expected, cache);
        expected.conservativeResize(Eigen::NoChange, t + 1);
        for (Index b = 0; b < 2; ++b) logits.row(b * t + t - 1).maxCoeff(&expected(b, t));
      }
      CHECK(greedy_generate(lm, seq.leftCols(2), 7) == expected);
    }
}

TEST_CASE("decoder-only logits at t ignore tokens after t; encoder-only logits do not") {
  Rng rng(3);
  DecoderOnlyLM<double> lm(tiny_lm_config(), rng);
  EncoderOnlyModel<double> bert(tiny_lm_config(), rng);
  IdMatrix a(1, 4), b(1, 4);
  a << 1, 2, 3, 4;
  b << 1, 2, 6, 6;
  DecoderOnlyLM<double>::Cache c1, c2;
  const MatD la = lm.forward(a, c1), lb = lm.forward(b, c2);
  CHECK((la.topRows(2) - lb.topRows(2)).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((la.row(2) - lb.row(2)).cwiseAbs().maxCoeff() > 1e-6);
  EncoderOnlyModel<double>::Cache e1, e2;
  const MatD ea = bert.forward(a, e1), eb = bert.forward(b, e2);
  CHECK((ea.row(0) - eb.row(0)).cwiseAbs().maxCoeff() > 1e-6);
}

TEST_CASE("a decoder-only model learns a cycle and greedy generation continues it") {
  TransformerConfig c = tiny_lm_config();
  c.d_model = 16;
  c.d_ff = 32;
  c.n_layers = 1;
  Rng rng(4);
  DecoderOnlyLM<float> lm(c, rng);
  Adam<float> opt(lm.parameters(), 1e-2f);
  // Sequences 0 1 2 3 4 5 6 0 1 ... starting anywhere: the next token is (t + 1) mod 7.
  float loss = 0;
  for (int step = 0; step < 150; ++step) {
    IdMatrix x(8, 9);
    for (Index b = 0; b < 8; ++b) {
      const Index start = rng.index(7);
      for (Index t = 0; t < 9; ++t) x(b, t) = (start + t) % 7;
    }
    DecoderOnlyLM<float>::Cache cache;
    CrossEntropyCache<float> ce;
    const IdMatrix inputs = x.leftCols(8), targets = x.rightCols(8);
    loss = cross_entropy_forward(ce, lm.forward(inputs, cache), targets);
    opt.zero_grad();
    lm.backward(cross_entropy_backward(ce), cache);
    opt.step();
  }
  CHECK(loss < 0.05f);
  lm.eval();
  IdMatrix prompt(1, 2);
  prompt << 3, 4;
  IdMatrix expected(1, 7);
  expected << 3, 4, 5, 6, 0, 1, 2;
  CHECK(greedy_generate(lm, prompt, 5) == expected);
  IdMatrix stop(1, 4);
  stop << 3, 4, 5, 6;
  CHECK(greedy_generate(lm, prompt, 5, /*eos=*/6) == stop);
}

TEST_CASE("single-stack models take vocab and n_layers, and say so when vocab is missing") {
  TransformerConfig c = tiny_lm_config();
  c.n_layers = 3;
  Rng rng(5);
  DecoderOnlyLM<float> lm(c, rng);
  CHECK(lm.stack.layers.size() == 3);
  CHECK(lm.vocab_size() == 7);
  c.vocab = 0;
  c.tgt_vocab = 7;  // the encoder-decoder's field: not this model's
  eftest::check_throws_with([&] { DecoderOnlyLM<float>(c, rng); },
                            {"DecoderOnlyLM::DecoderOnlyLM", "'config.vocab'", "got 0",
                             "take their vocabulary from vocab"});
  eftest::check_throws_with([&] { EncoderOnlyModel<float>(c, rng); },
                            {"EncoderOnlyModel::EncoderOnlyModel", "'config.vocab'"});
  CHECK(TransformerConfig().pad_id == -1);  // no id is padding unless chosen
}

TEST_CASE("learned positions start at the scale of the token embeddings") {
  TransformerConfig c = tiny_lm_config();
  c.d_model = 64;
  c.n_heads = 4;
  c.max_len = 64;
  c.positional = PositionalKind::learned;
  for (bool scaled : {true, false}) {
    c.scale_embeddings = scaled;
    Rng rng(6);
    DecoderOnlyLM<double> lm(c, rng);
    const MatD table = lm.input.learned.weight.value;
    const double rms = std::sqrt(table.squaredNorm() / double(table.size()));
    CAPTURE(scaled);
    CHECK(rms == doctest::Approx(1.0).epsilon(0.05));
  }
}

TEST_CASE("single-stack backward reports each parameter to GradReady once, already final") {
  for (const bool pre_norm : {false, true}) {
    CAPTURE(pre_norm);
    TransformerConfig c = tiny_lm_config();
    if (pre_norm) c.norm = NormPlacement::pre;
    c.tie_output = pre_norm;
    Rng rng(4);
    DecoderOnlyLM<float> model(c, rng);
    IdMatrix ids(2, 4);
    ids << 1, 2, 3, 4, 5, 6, 1, 2;
    DecoderOnlyLM<float>::Cache cache;
    const Matrix<float> dlogits = model.forward(ids, cache);
    model.zero_grad();
    eftest::check_grad_ready(model.parameters(), [&](const GradReady<float>& ready) {
      model.backward(dlogits, cache, ready);
    });
  }
}

TEST_CASE("single-stack models take a custom mask: a prefix LM, ALiBi; gradients match") {
  Rng rng(3);
  IdMatrix ids(2, 4);
  ids << 1, 2, 3, 4, 6, 5, 4, 2;
  TransformerConfig c = tiny_lm_config();
  DecoderOnlyLM<double> lm(c, rng);
  DecoderOnlyLM<double>::Cache cache;
  const MatD plain = lm.forward(ids, cache);
  AttentionMask causal;
  causal.causal = true;
  CHECK((lm.forward(ids, causal, cache) - plain).cwiseAbs().maxCoeff() < 1e-14);
  // A prefix LM: the first 2 positions see each other, the rest is causal.
  AttentionMask prefix;
  prefix.attn_mask = BoolMatrix::Zero(4, 4);
  for (Index i = 0; i < 4; ++i)
    for (Index j = std::max<Index>(i, 1) + 1; j < 4; ++j) prefix.attn_mask(i, j) = true;
  const MatD with_prefix = lm.forward(ids, prefix, cache);
  CHECK((with_prefix.bottomRows(4) - plain.bottomRows(4)).cwiseAbs().maxCoeff() > 1e-6);
  IdMatrix changed = ids;
  changed(0, 3) = 5;  // after the prefix: earlier positions must not see it
  const MatD after = lm.forward(changed, prefix, cache);
  CHECK((after.topRows(3) - with_prefix.topRows(3)).cwiseAbs().maxCoeff() < 1e-14);
  changed = ids;
  changed(0, 1) = 5;  // inside the prefix: position 0 sees it
  CHECK((lm.forward(changed, prefix, cache).row(0) - with_prefix.row(0)).cwiseAbs().maxCoeff() >
        1e-6);
  auto check_grads = [&](auto& model, const AttentionMask& mask) {
    using Model = std::decay_t<decltype(model)>;
    const MatD R = eftest::random_matrix(ids.size(), c.vocab, rng);
    auto loss = [&] {
      typename Model::Cache cc;
      return projection(model.forward(ids, mask, cc), R);
    };
    eftest::check_param_grads(model.parameters(), loss, [&] {
      typename Model::Cache cc;
      model.forward(ids, mask, cc);
      model.backward(R, cc);
    });
  };
  check_grads(lm, prefix);
  EncoderOnlyModel<double> bert(c, rng);
  AttentionMask alibi;
  alibi.attn_bias = MatD::Zero(2 * c.n_heads * 4, 4);
  for (Index r = 0; r < alibi.attn_bias.rows(); ++r)
    for (Index j = 0; j < 4; ++j)
      alibi.attn_bias(r, j) = -0.5 * double((r / 4) % c.n_heads + 1) * std::abs(double(r % 4 - j));
  alibi.key_padding = BoolMatrix::Zero(2, 4);
  alibi.key_padding(1, 3) = true;
  check_grads(bert, alibi);
  AttentionMask bad;
  bad.attn_mask = BoolMatrix::Zero(3, 4);
  eftest::check_throws_with([&] { lm.forward(ids, bad, cache); },
                            {"DecoderOnlyLM::forward", "mask.attn_mask", "(3, 4)", "(4, 4)"});
}
