// The encoder-decoder Transformer: whole-model gradient checks, masks from padding, training on a
// small task, and greedy decoding.
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/model/transformer.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

TransformerConfig small_config() { return eftest::tiny_config(); }

IdMatrix ids(std::initializer_list<std::initializer_list<Index>> rows) {
  IdMatrix m(Index(rows.size()), Index(rows.begin()->size()));
  Index i = 0;
  for (const auto& r : rows) {
    Index j = 0;
    for (Index v : r) m(i, j++) = v;
    ++i;
  }
  return m;
}

void check_model_gradients(const TransformerConfig& c) {
  Rng rng(5);
  Transformer<double> model(c, rng);
  const IdMatrix src = ids({{3, 4, 5, 0}, {6, 2, 1, 4}});  // sequence 0 has a padded position
  const IdMatrix tgt = ids({{1, 2, 3}, {1, 5, 0}});
  // Outputs at the padded target position are ignored, as a loss with ignore_id does: the
  // padding embedding row then influences nothing, matching its zero gradient (PyTorch's rule).
  MatD R = eftest::random_matrix(6, c.tgt_vocab, rng);
  R.row(5).setZero();
  auto loss = [&] {
    Transformer<double>::Cache cache;
    return projection(model.forward(src, tgt, cache), R);
  };
  eftest::check_param_grads(model.parameters(), loss, [&] {
    Transformer<double>::Cache cache;
    model.forward(src, tgt, cache);
    model.backward(R, cache);
  });
}

}  // namespace

TEST_CASE("a 2-layer Transformer's gradients match finite differences") {
  SUBCASE("post-norm, sinusoidal, untied") { check_model_gradients(small_config()); }
  SUBCASE("pre-norm, learned positions, tied output, GELU") {
    TransformerConfig c = small_config();
    c.norm = NormPlacement::pre;
    c.positional = PositionalKind::learned;
    c.tie_output = true;
    c.activation = Activation::gelu_erf;
    check_model_gradients(c);
  }
}

TEST_CASE("a 1+1-layer Transformer's gradients match finite differences with rotary and relative "
          "positions and additive attention") {
  TransformerConfig c = small_config();
  c.n_encoder_layers = c.n_decoder_layers = 1;
  SUBCASE("rotary, post-norm") {
    c.positional = PositionalKind::rotary;
    c.rotary_base = 100.0;  // turns fast enough to matter over 4 positions
    check_model_gradients(c);
  }
  SUBCASE("relative, pre-norm, few buckets (exact and log-spaced distances)") {
    c.positional = PositionalKind::relative;
    c.norm = NormPlacement::pre;
    c.relative_buckets = 4;
    c.relative_max_distance = 3;
    check_model_gradients(c);
  }
  SUBCASE("additive scoring, sinusoidal, score width 3") {
    c.attention = AttentionScoring::additive;
    c.additive_dim = 3;
    check_model_gradients(c);
  }
  SUBCASE("additive scoring with relative positions") {
    c.attention = AttentionScoring::additive;
    c.positional = PositionalKind::relative;
    c.relative_buckets = 6;
    c.relative_max_distance = 4;
    check_model_gradients(c);
  }
}

TEST_CASE("positions and scoring choose the parameters: a relative bias per self-attention, no "
          "position table inside, score networks for additive") {
  auto names = [](const TransformerConfig& c) {
    Rng rng(3);
    Transformer<float> model(c, rng);
    std::set<std::string> out;
    for (const auto& p : model.parameters()) out.insert(p.name);
    return out;
  };
  TransformerConfig c = small_config();
  c.positional = PositionalKind::relative;
  c.relative_buckets = 8;
  const std::set<std::string> rel = names(c);
  for (const std::string layer : {"encoder.layers.0", "encoder.layers.1", "decoder.layers.0",
                                  "decoder.layers.1"}) {
    CAPTURE(layer);
    CHECK(rel.count(layer + ".self_attn.relative_bias") == 1);
    CHECK(rel.count(layer + ".multihead_attn.relative_bias") == 0);
  }
  CHECK(rel.count("encoder.position.weight") == 0);
  Rng rng(3);
  const Transformer<float> model(c, rng);
  // T5's buckets: both directions in the encoder, only earlier keys in the causal decoder.
  CHECK(model.encoder.stack.layers[0].self_attn.positions().bidirectional);
  CHECK_FALSE(model.decoder.layers[0].self_attn.positions().bidirectional);
  CHECK(model.decoder.layers[0].cross_attn.positions().kind == PositionalKind::none);
  CHECK(param_named(const_cast<Transformer<float>&>(model).decoder.layers[1].self_attn.parameters(),
                    "relative_bias")
            .value.rows() == 8);

  c.positional = PositionalKind::rotary;
  const std::set<std::string> rot = names(c);
  c.positional = PositionalKind::sinusoidal;
  CHECK(rot == names(c));  // rotary has no parameters; neither has the sinusoidal table
  c.positional = PositionalKind::learned;
  CHECK(names(c).count("encoder.position.weight") == 1);

  c.attention = AttentionScoring::additive;
  const std::set<std::string> add = names(c);
  CHECK(add.count("decoder.layers.1.multihead_attn.score.v") == 1);
  CHECK(add.count("encoder.layers.0.self_attn.score.q_weight") == 1);
  CHECK(add.count("encoder.layers.0.self_attn.q_proj.weight") == 1);
}

TEST_CASE("gradients reach the encoder through cross-attention") {
  Rng rng(6);
  TransformerConfig c = small_config();
  Transformer<double> model(c, rng);
  Transformer<double>::Cache cache;
  const IdMatrix src = ids({{3, 4, 5}});
  const IdMatrix tgt = ids({{1, 2}});
  const MatD logits = model.forward(src, tgt, cache);
  model.zero_grad();
  model.backward(MatD::Ones(logits.rows(), logits.cols()) + logits, cache);
  for (const auto& p : model.parameters()) {
    if (p.name.rfind("encoder.", 0) != 0) continue;
    INFO(p.name);
    CHECK(p.param->grad.norm() > 0.0);
  }
}

TEST_CASE("padded source positions and future target tokens do not change the logits") {
  Rng rng(7);
  Transformer<double> model(small_config(), rng);
  Transformer<double>::Cache c1, c2;
  const MatD a = model.forward(ids({{3, 4, 0, 0}}), ids({{1, 2, 3}}), c1);
  const MatD b = model.forward(ids({{3, 4, 0, 0, 0}}), ids({{1, 2, 5}}), c2);
  // The source differs only in padding; the target only at its last position.
  CHECK((a.topRows(2) - b.topRows(2)).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((a.row(2) - b.row(2)).cwiseAbs().maxCoeff() > 1e-6);
}

TEST_CASE("Transformer rejects bad ids and shapes") {
  Rng rng(8);
  Transformer<float> model(small_config(), rng);
  const Matrix<float> before = model.encoder.input.embedding.weight.value;
  Transformer<float>::Cache cache;
  eftest::check_throws_with([&] { model.forward(ids({{3, 9}}), ids({{1, 2}}), cache); },
                            {"Transformer::forward", "'src'", "9", "(0, 1)"});
  eftest::check_throws_with([&] { model.forward(ids({{3, 4}}), ids({{1, 6}}), cache); },
                            {"'tgt_in'", "6"});
  eftest::check_throws_with(
      [&] { model.forward(ids({{3, 4}}), ids({{1, 2}, {1, 2}}), cache); },
      {"'tgt_in'", "2 sequences", "src has 1"});
  eftest::check_throws_with(
      [&] { model.forward(IdMatrix::Constant(1, 17, 3), ids({{1, 2}}), cache); },
      {"'src'", "17 positions", "max_len 16"});
  TransformerConfig bad = small_config();
  bad.n_heads = 3;
  eftest::check_throws_with([&] { Transformer<float>(bad, rng); },
                            {"Transformer::Transformer", "config.n_heads", "must divide"});
  CHECK(model.encoder.input.embedding.weight.value == before);
}

namespace {

const PositionalKind kAllPositional[] = {PositionalKind::sinusoidal, PositionalKind::learned,
                                         PositionalKind::relative, PositionalKind::rotary};
const AttentionScoring kAllScoring[] = {AttentionScoring::dot_product, AttentionScoring::additive};

/// Greedy decoding by rerunning the decoder over the whole prefix at every step, no KV cache; a
/// sequence that produced eos keeps producing it (greedy_decode's output layout).
IdMatrix recompute_greedy(Transformer<float>& model, const IdMatrix& src, Index steps, Index eos) {
  Transformer<float>::Cache cache;
  const Matrix<float> memory = model.encode(src, cache.encoder);
  IdMatrix prefix = IdMatrix::Constant(src.rows(), 1, /*bos=*/1);
  for (Index t = 0; t < steps; ++t) {
    const Matrix<float> logits = model.decode(prefix, src, memory, cache);
    prefix.conservativeResize(Eigen::NoChange, t + 2);
    for (Index b = 0; b < src.rows(); ++b) {
      logits.row(b * (t + 1) + t).maxCoeff(&prefix(b, t + 1));
      if (t > 0 && prefix(b, t) == eos) prefix(b, t + 1) = eos;
    }
  }
  return prefix.rightCols(steps);
}

}  // namespace

// In float, whose decoding code the other tests compile anyway (double would compile the whole
// decoding path again); the additive attention layer's own test checks its steps in double to 1e-12.
TEST_CASE("every positional kind and scoring: decode_step equals the full decode, greedy "
          "decoding equals greedy by full recompute") {
  const IdMatrix src = ids({{3, 4, 5, 6, 0}, {6, 2, 1, 0, 0}});  // padded sources
  const IdMatrix tgt = ids({{1, 5, 2, 3, 4, 5}, {1, 3, 0, 4, 2, 2}});  // a padded target id too
  for (PositionalKind positional : kAllPositional)
    for (AttentionScoring scoring : kAllScoring) {
      CAPTURE(positional_kind_name(positional));
      CAPTURE(attention_scoring_name(scoring));
      TransformerConfig c = small_config();
      c.n_encoder_layers = c.n_decoder_layers = 1;
      c.positional = positional;
      c.attention = scoring;
      c.relative_buckets = 6;
      c.relative_max_distance = 4;
      c.dropout = 0.1;  // eval() turns it off
      Rng rng(11);
      Transformer<float> model(c, rng);
      model.eval();
      Transformer<float>::Cache cache;
      const Matrix<float> memory = model.encode(src, cache.encoder);
      DecodeState<float> state = model.begin_decode(src, memory, tgt.cols());
      Index pos = 0;
      for (Index n : {2, 1, 3}) {  // a prompt of two tokens, then one, then three
        const Matrix<float> step = model.decode_step(tgt.middleCols(pos, n), state);  // (B*n, V)
        const Matrix<float> full = model.decode(tgt.leftCols(pos + n), src, memory, cache);
        for (Index b = 0; b < src.rows(); ++b)
          CHECK((step.middleRows(b * n, n) - full.middleRows(b * (pos + n) + pos, n))
                    .cwiseAbs()
                    .maxCoeff() < 1e-5f);
        pos += n;
      }
      GreedyOptions g;
      g.max_len = 7;
      g.eos = 2;
      const IdMatrix greedy = greedy_decode(model, src, g);
      CHECK(greedy == recompute_greedy(model, src, g.max_len, g.eos).leftCols(greedy.cols()));
    }
}

TEST_CASE("TransformerConfig rejects bad positional and attention settings with messages") {
  Rng rng(12);
  auto rejects = [&](const TransformerConfig& c, const std::vector<std::string>& fragments) {
    eftest::check_throws_with([&] { Transformer<float>(c, rng); }, fragments);
  };
  TransformerConfig c = small_config();
  c.positional = PositionalKind::rotary;
  c.d_model = 6;  // head_dim 3
  rejects(c, {"Transformer::Transformer", "config.positional", "rotary", "even head_dim", "got 3"});
  c.d_model = 8;
  c.rotary_base = 0.0;
  rejects(c, {"config.rotary_base", "positive and finite", "got 0"});
  c = small_config();
  c.positional = PositionalKind::relative;
  c.relative_buckets = 3;
  rejects(c, {"config.relative_buckets", "at least 4", "is 3"});
  c.relative_buckets = 8;
  c.relative_max_distance = 4;
  rejects(c, {"config.relative_max_distance", "above the 4 exactly bucketed", "is 4"});
  c = small_config();
  c.additive_dim = -1;
  rejects(c, {"config.additive_dim", ">= 0", "got -1"});
  c = small_config();
  c.attention = static_cast<AttentionScoring>(7);
  rejects(c, {"config.attention", "is 7"});
  c = small_config();
  c.positional = static_cast<PositionalKind>(9);
  rejects(c, {"config.positional", "is 9"});
  // Fields of a scheme not in use are not checked.
  c = small_config();
  c.relative_buckets = 0;
  c.rotary_base = -1.0;
  CHECK_NOTHROW(Transformer<float>(c, rng));
  eftest::check_throws_with([] { parse_attention_scoring("mlp"); },
                            {"parse_attention_scoring", "'mlp'", "'dot' or 'additive'"});
  CHECK(parse_attention_scoring(attention_scoring_name(AttentionScoring::additive)) ==
        AttentionScoring::additive);
  CHECK(parse_attention_scoring("dot") == AttentionScoring::dot_product);
  // Longer than max_len is still refused without a position table.
  c.positional = PositionalKind::rotary;
  c.rotary_base = 10000.0;
  Transformer<float> model(c, rng);
  Transformer<float>::Cache cache;
  eftest::check_throws_with(
      [&] { model.forward(IdMatrix::Constant(1, 17, 3), ids({{1, 2}}), cache); },
      {"'src'", "17 positions", "max_len 16"});
}

TEST_CASE("teacher forcing shifts targets right behind BOS") {
  CHECK(shift_right(ids({{5, 6, 2}}), 1) == ids({{1, 5, 6}}));
}

TEST_CASE("a small Transformer learns to reverse sequences and greedy decoding returns them") {
  // Vocabulary: 0 pad, 1 bos, 2 eos, 3..7 symbols. Target: the source reversed, then EOS.
  TransformerConfig c = small_config();
  c.src_vocab = c.tgt_vocab = 8;
  c.d_model = 32;
  c.n_heads = 4;
  c.d_ff = 64;
  c.n_encoder_layers = c.n_decoder_layers = 1;
  c.dropout = 0.0;
  Rng rng(9);
  Transformer<float> model(c, rng);
  Adam<float> opt(model.parameters(), 3e-3f);
  const Index B = 32, L = 4;
  auto make_batch = [&](IdMatrix& src, IdMatrix& tgt) {
    src.resize(B, L);
    tgt.resize(B, L + 1);
    for (Index b = 0; b < B; ++b) {
      for (Index t = 0; t < L; ++t) src(b, t) = 3 + rng.index(5);
      for (Index t = 0; t < L; ++t) tgt(b, t) = src(b, L - 1 - t);
      tgt(b, L) = 2;
    }
  };
  float loss = 0;
  for (int step = 0; step < 400; ++step) {
    IdMatrix src, tgt;
    make_batch(src, tgt);
    Transformer<float>::Cache cache;
    CrossEntropyCache<float> ce;
    loss = cross_entropy_forward(ce, model.forward(src, shift_right(tgt, 1), cache), tgt);
    opt.zero_grad();
    model.backward(cross_entropy_backward(ce), cache);
    opt.step();
  }
  CHECK(loss < 0.05f);
  model.eval();
  IdMatrix src, tgt;
  make_batch(src, tgt);
  GreedyOptions g;
  g.max_len = 8;
  const IdMatrix out = greedy_decode(model, src, g);
  REQUIRE(out.cols() == L + 1);
  Index exact = 0;
  for (Index b = 0; b < B; ++b) exact += out.row(b) == tgt.row(b);
  CHECK(exact >= B - 1);
}

TEST_CASE("backward reports each parameter to GradReady once, its gradient already final") {
  for (const bool pre_norm : {false, true}) {
    CAPTURE(pre_norm);
    TransformerConfig c = eftest::tiny_config();
    c.dropout = 0.1;
    c.tie_output = pre_norm;  // tied: the output weight is the decoder embedding, reported last
    if (pre_norm) c.norm = NormPlacement::pre;
    Rng rng(3);
    Transformer<float> model(c, rng);
    IdMatrix src(2, 5), tgt(2, 4);
    src << 1, 2, 3, 0, 0, 4, 5, 6, 1, 2;
    tgt << 1, 2, 3, 4, 5, 1, 0, 0;
    Transformer<float>::Cache cache;
    const Matrix<float> dlogits = model.forward(src, tgt, cache);  // any dlogits will do
    model.zero_grad();
    eftest::check_grad_ready(model.parameters(), [&](const GradReady<float>& ready) {
      model.backward(dlogits, cache, ready);
    });
  }
}

TEST_CASE("Transformer takes src, tgt and memory masks; gradients match finite differences") {
  Rng rng(41);
  TransformerConfig c = eftest::tiny_config();
  c.n_encoder_layers = c.n_decoder_layers = 1;
  Transformer<double> model(c, rng);
  IdMatrix src(2, 3), tgt(2, 4);
  src << 1, 2, 3, 4, 5, 0;
  tgt << 1, 2, 3, 4, 5, 4, 3, 2;  // no target padding: the padding row of an embedding is frozen
  Transformer<double>::Cache cache;
  const MatD plain = model.forward(src, tgt, cache);
  TransformerMasks same;  // the defaults written out
  same.tgt = AttentionMask();
  same.tgt->causal = true;
  CHECK((model.forward(src, tgt, same, cache) - plain).cwiseAbs().maxCoeff() < 1e-14);
  TransformerMasks masks;
  masks.src = AttentionMask();
  masks.src->attn_mask = BoolMatrix::Zero(2 * 2 * 3, 3);
  masks.src->attn_mask(1, 2) = masks.src->attn_mask(8, 0) = true;
  masks.tgt = AttentionMask();  // a prefix LM over the first 2 target positions
  masks.tgt->attn_mask = BoolMatrix::Zero(4, 4);
  for (Index i = 0; i < 4; ++i)
    for (Index j = std::max<Index>(i, 1) + 1; j < 4; ++j) masks.tgt->attn_mask(i, j) = true;
  masks.memory = AttentionMask();
  masks.memory->attn_bias = eftest::random_matrix(2 * 4, 3, rng);
  const MatD R = eftest::random_matrix(8, c.tgt_vocab, rng);
  auto loss = [&] {
    Transformer<double>::Cache cc;
    return projection(model.forward(src, tgt, masks, cc), R);
  };
  eftest::check_param_grads(model.parameters(), loss, [&] {
    Transformer<double>::Cache cc;
    model.forward(src, tgt, masks, cc);
    model.backward(R, cc);
  });
  TransformerMasks bad;
  bad.memory = AttentionMask();
  bad.memory->attn_bias = MatD::Zero(4, 4);
  eftest::check_throws_with([&] { model.forward(src, tgt, bad, cache); },
                            {"Transformer::forward", "mask.attn_bias", "(4, 4)", "(4, 3)"});
}
