// The encoder-decoder Transformer: whole-model gradient checks, masks from padding, training on a
// small task, and greedy decoding.
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/model/transformer.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

TransformerConfig small_config() {
  TransformerConfig c;
  c.src_vocab = 7;
  c.tgt_vocab = 6;
  c.d_model = 8;
  c.n_heads = 2;
  c.d_ff = 12;
  c.n_encoder_layers = 2;
  c.n_decoder_layers = 2;
  c.dropout = 0.0;
  c.max_len = 16;
  c.pad_id = 0;
  return c;
}

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
