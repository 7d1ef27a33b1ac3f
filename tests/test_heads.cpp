// Task heads (model/heads.hpp) and the models that carry them (model/task_models.hpp):
// gradients against finite differences in double, properties of pooling and tying, checkpoints,
// learning, and agreement with PyTorch (tools/make_heads_fixtures.py).
#include <cstdio>
#include <eigenformer/io/checkpoint.hpp>
#include <eigenformer/model/heads.hpp>
#include <eigenformer/model/task_models.hpp>
#include <eigenformer/train/loss.hpp>
#include <eigenformer/train/optim.hpp>
#include <map>
#include <string>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

constexpr Index kSeqs = 2, kT = 3, kD = 8;

BoolMatrix padding_of_second_sequence() {
  BoolMatrix pad = BoolMatrix::Zero(kSeqs, kT);
  pad(1, 2) = true;  // the second sequence's last token is padding
  return pad;
}

/// Every parameter of the head and its input h against finite differences of <logits, R>.
void check_classifier_head(const ClassifierConfig& hc, const BoolMatrix& pad) {
  Rng rng(3);
  ClassificationHead<double> head(kD, hc, rng);
  MatD h = eftest::random_matrix(kSeqs * kT, kD, rng);
  const MatD R = eftest::random_matrix(kSeqs, hc.n_classes, rng);
  auto loss = [&] {
    ClassificationHead<double>::Cache cache;
    return projection(head.forward(h, kSeqs, pad, cache), R);
  };
  ClassificationHead<double>::Cache cache;
  head.forward(h, kSeqs, pad, cache);
  const MatD dh = head.backward(R, cache);
  eftest::check_grad(h, dh, loss, "h");
  eftest::check_param_grads(head.parameters(), loss, [&] {
    ClassificationHead<double>::Cache c;
    head.forward(h, kSeqs, pad, c);
    head.backward(R, c);
  });
  eftest::check_gradient_contract(head.parameters(), [&] {
    ClassificationHead<double>::Cache c;
    head.forward(h, kSeqs, pad, c);
    return head.backward(R, c);
  });
}

void check_mlm_head(bool tied, bool transform) {
  Rng rng(4);
  const Index V = 6;
  Embedding<double> embedding(V, kD, rng);
  MaskedLMHead<double> head(kD, V, tied, MaskedLMConfig{transform}, Activation::gelu, 1e-5, rng);
  fill_normal(head.bias.value, 0.0, 0.3, rng);
  if (transform) {
    fill_normal(head.norm.weight.value, 1.0, 0.2, rng);
    fill_normal(head.norm.bias.value, 0.0, 0.2, rng);
  }
  MatD h = eftest::random_matrix(kSeqs * kT, kD, rng);
  const MatD R = eftest::random_matrix(kSeqs * kT, V, rng);
  auto loss = [&] { return projection(head.forward(h, embedding), R); };
  MaskedLMHead<double>::Cache cache;
  head.forward(h, embedding, cache);
  const MatD dh = head.backward(R, cache, embedding);
  eftest::check_grad(h, dh, loss, "h");
  ParamList<double> params = head.parameters();
  if (tied) append_params(params, "embedding", embedding.parameters());
  eftest::check_param_grads(params, loss, [&] {
    MaskedLMHead<double>::Cache c;
    head.forward(h, embedding, c);
    head.backward(R, c, embedding);
  });
}

TransformerConfig encoder_config() {
  TransformerConfig c = eftest::tiny_config();
  c.vocab = 7;
  c.n_layers = 1;
  return c;
}

/// Every parameter of a whole task model (the encoder's too: the gradient reaches it through
/// backward alone) against finite differences of <logits, R>. R is zero in the rows of
/// ignored_rows: a padding token's own logits, which a loss ignores, depend on the padding
/// embedding row, and that row gets no gradient by design (PyTorch's padding_idx).
template <class Model>
void check_model_gradients(Model& model, const IdMatrix& ids, Index out_rows, Index out_cols,
                           std::vector<Index> ignored_rows = {}) {
  Rng rng(5);
  MatD R = eftest::random_matrix(out_rows, out_cols, rng);
  for (Index i : ignored_rows) R.row(i).setZero();
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

TEST_CASE("classification head gradients match finite differences") {
  ClassifierConfig hc;
  hc.n_classes = 3;
  hc.dropout = 0.0;
  SUBCASE("first token, pooler") { check_classifier_head(hc, BoolMatrix()); }
  SUBCASE("first token, no pooler") {
    hc.pooler = false;
    check_classifier_head(hc, BoolMatrix());
  }
  SUBCASE("mean over unpadded tokens, pooler") {
    hc.pooling = Pooling::mean;
    check_classifier_head(hc, padding_of_second_sequence());
  }
  SUBCASE("mean, no padding mask, no pooler") {
    hc.pooling = Pooling::mean;
    hc.pooler = false;
    check_classifier_head(hc, BoolMatrix());
  }
}

TEST_CASE("masked-LM head gradients match finite differences, tied and untied") {
  SUBCASE("tied, transform") { check_mlm_head(true, true); }
  SUBCASE("untied, transform") { check_mlm_head(false, true); }
  SUBCASE("tied, no transform") { check_mlm_head(true, false); }
}

TEST_CASE("task models: every gradient, the encoder's included, matches finite differences") {
  IdMatrix ids(2, 3);
  ids << 1, 2, 3, 6, 5, 0;  // id 0 is padding
  Rng rng(6);
  SUBCASE("classifier, mean pooling") {
    ClassifierConfig hc;
    hc.n_classes = 2;
    hc.pooling = Pooling::mean;
    hc.dropout = 0.0;
    EncoderClassifier<double> model(encoder_config(), hc, rng);
    check_model_gradients(model, ids, 2, 2);
  }
  SUBCASE("masked LM, tied, pre-norm") {
    TransformerConfig c = encoder_config();
    c.tie_output = true;
    c.norm = NormPlacement::pre;
    MaskedLM<double> model(c, rng);
    check_model_gradients(model, ids, 6, 7, {5});
  }
}

TEST_CASE("mean pooling ignores padding and first-token pooling reads one token") {
  Rng rng(7);
  ClassifierConfig hc;
  hc.n_classes = 2;
  hc.dropout = 0.0;
  const MatD h = eftest::random_matrix(kSeqs * kT, kD, rng);
  const MatD dlogits = eftest::random_matrix(kSeqs, 2, rng);
  MatD changed = h;
  changed.row(1 * kT + 2).setConstant(100.0);  // the padded token of sequence 1
  SUBCASE("mean") {
    hc.pooling = Pooling::mean;
    ClassificationHead<double> head(kD, hc, rng);
    const BoolMatrix pad = padding_of_second_sequence();
    ClassificationHead<double>::Cache c1, c2;
    const MatD y1 = head.forward(h, kSeqs, pad, c1);
    const MatD y2 = head.forward(changed, kSeqs, pad, c2);
    CHECK((y1 - y2).cwiseAbs().maxCoeff() == 0.0);
    const MatD dh = head.backward(dlogits, c1);
    CHECK(dh.row(1 * kT + 2).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dh.row(1 * kT + 1).cwiseAbs().maxCoeff() > 0.0);
    // Without a mask every token counts, the padded one too.
    ClassificationHead<double>::Cache c3;
    CHECK((head.forward(changed, kSeqs, BoolMatrix(), c3) - y1).cwiseAbs().maxCoeff() > 0.0);
  }
  SUBCASE("first") {
    ClassificationHead<double> head(kD, hc, rng);
    ClassificationHead<double>::Cache c1;
    head.forward(h, kSeqs, BoolMatrix(), c1);
    const MatD dh = head.backward(dlogits, c1);
    for (Index b = 0; b < kSeqs; ++b) {
      CHECK(dh.row(b * kT).cwiseAbs().maxCoeff() > 0.0);
      CHECK(dh.middleRows(b * kT + 1, kT - 1).cwiseAbs().maxCoeff() == 0.0);
    }
  }
}

TEST_CASE("a tied masked-LM head has no matrix of its own and trains the embedding") {
  Rng rng(8);
  TransformerConfig c = encoder_config();
  c.tie_output = true;
  MaskedLM<float> tied(c, rng);
  c.tie_output = false;
  MaskedLM<float> untied(c, rng);
  const auto names = [](ParamList<float> ps) {
    std::string all;
    for (const auto& p : ps) all += p.name + " ";
    return all;
  };
  CHECK(names(tied.parameters()).find("mlm.decoder.weight") == std::string::npos);
  CHECK(names(untied.parameters()).find("mlm.decoder.weight ") != std::string::npos);
  for (const char* n : {"mlm.transform.dense.weight", "mlm.transform.LayerNorm.weight", "mlm.bias"})
    CHECK(names(tied.parameters()).find(n) != std::string::npos);
  // Neither carries the encoder's unused per-token output projection.
  CHECK(names(untied.parameters()).find("output.") == std::string::npos);
  EncoderClassifier<float> clf(c, ClassifierConfig{}, rng);
  CHECK(names(clf.parameters()).find("output.") == std::string::npos);
  for (const char* n : {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight",
                        "classifier.bias", "embedding.weight", "layers.0.self_attn.q_proj.weight"})
    CHECK(names(clf.parameters()).find(n) != std::string::npos);
}

TEST_CASE("task models save and load with their heads, in eval mode") {
  Rng rng(9);
  TransformerConfig c = encoder_config();
  c.dropout = 0.1;
  IdMatrix ids(2, 3);
  ids << 1, 2, 3, 6, 5, 0;
  const std::string path = "test_heads_checkpoint.safetensors";
  SUBCASE("classifier") {
    ClassifierConfig hc;
    hc.n_classes = 4;
    hc.pooling = Pooling::mean;
    hc.pooler = false;
    hc.dropout = 0.25;
    EncoderClassifier<float> model(c, hc, rng);
    save_model(path, model);
    EncoderClassifier<float> back = load_model<EncoderClassifier<float>>(path);
    CHECK(back.head_config().n_classes == 4);
    CHECK(back.head_config().pooling == Pooling::mean);
    CHECK(!back.head_config().pooler);
    CHECK(back.head_config().dropout == 0.25);
    CHECK(!back.head.dropout.training);
    model.eval();
    EncoderClassifier<float>::Cache c1, c2;
    CHECK((model.forward(ids, c1) - back.forward(ids, c2)).cwiseAbs().maxCoeff() == 0.f);
    eftest::check_throws_with<IoError>([&] { load_model<MaskedLM<float>>(path); },
                                       {"encoder_classifier", "masked_lm"});
  }
  SUBCASE("masked LM, untied, no transform") {
    c.tie_output = false;
    MaskedLM<float> model(c, MaskedLMConfig{false}, rng);
    save_model(path, model);
    MaskedLM<float> back = load_model<MaskedLM<float>>(path);
    CHECK(!back.head_config().transform);
    CHECK(!back.head.tied());
    model.eval();
    MaskedLM<float>::Cache c1, c2;
    CHECK((model.forward(ids, c1) - back.forward(ids, c2)).cwiseAbs().maxCoeff() == 0.f);
    eftest::check_throws_with(
        [&] {
          save_model(path, model, {{"eigenformer.head.transform", "1"}});
        },
        {"save_model", "reserved key"});
  }
  std::remove(path.c_str());
}

TEST_CASE("bad input to the heads names the function, the argument and the shapes") {
  Rng rng(10);
  ClassifierConfig hc;
  hc.n_classes = 0;
  eftest::check_throws_with([&] { ClassificationHead<float>(kD, hc, rng); },
                            {"ClassificationHead::ClassificationHead", "head.n_classes"});
  hc.n_classes = 2;
  ClassificationHead<float> head(kD, hc, rng);
  ClassificationHead<float>::Cache cache;
  const Matrix<float> h = Matrix<float>::Zero(kSeqs * kT, kD);
  eftest::check_throws_with([&] { head.forward(h, 4, BoolMatrix(), cache); },
                            {"ClassificationHead::forward", "'B'", "divisor"});
  eftest::check_throws_with([&] { head.forward(h, kSeqs, BoolMatrix::Zero(kSeqs, kT + 1), cache); },
                            {"ClassificationHead::forward", "key_padding", "(2, 4)"});
  eftest::check_throws_with(
      [&] { head.forward(Matrix<float>::Zero(kSeqs * kT, 5), kSeqs, {}, cache); },
      {"ClassificationHead::forward", "'h'", "(6, 5)"});
  head.forward(h, kSeqs, BoolMatrix(), cache);
  eftest::check_throws_with([&] { head.backward(Matrix<float>::Zero(kSeqs, 3), cache); },
                            {"ClassificationHead::backward", "dlogits", "(2, 3)"});
  EncoderClassifier<float> model(encoder_config(), hc, rng);
  EncoderClassifier<float>::Cache mc;
  IdMatrix bad(1, 2);
  bad << 1, 9;
  eftest::check_throws_with([&] { model.forward(bad, mc); }, {"EncoderOnlyModel::forward", "ids"});
}

TEST_CASE("a classifier learns which of two tokens a sequence holds; a masked LM its tokens") {
  Rng rng(11);
  TransformerConfig c = encoder_config();
  c.d_model = 16, c.d_ff = 32;
  SUBCASE("classifier") {
    ClassifierConfig hc;
    hc.dropout = 0.0;
    EncoderClassifier<float> model(c, hc, rng);
    AdamW opt(model.parameters(), 3e-3);
    IdMatrix ids(4, 4), labels(4, 1);
    ids << 1, 3, 4, 5, 1, 5, 4, 2, 1, 2, 2, 6, 1, 6, 3, 3;
    labels << 0, 1, 1, 0;  // 1 when the sequence holds a 2
    float first = 0, last = 0;
    for (int step = 0; step < 150; ++step) {
      EncoderClassifier<float>::Cache cache;
      CrossEntropyCache<float> ce;
      last = cross_entropy_forward(ce, model.forward(ids, cache), labels);
      if (step == 0) first = last;
      opt.zero_grad();
      model.backward(cross_entropy_backward(ce), cache);
      opt.step();
    }
    INFO("loss " << first << " -> " << last);
    CHECK(last < 0.05f);
  }
  SUBCASE("masked LM") {
    c.tie_output = true;
    MaskedLM<float> model(c, rng);
    AdamW opt(model.parameters(), 3e-3);
    IdMatrix ids(1, 5), targets(1, 5);
    ids << 1, 2, 6, 4, 5;  // 6 plays [MASK] over the 3 the targets ask for
    targets << -1, -1, 3, -1, -1;
    float last = 0;
    for (int step = 0; step < 100; ++step) {
      MaskedLM<float>::Cache cache;
      CrossEntropyCache<float> ce;
      last = cross_entropy_forward(ce, model.forward(ids, cache), targets);
      opt.zero_grad();
      model.backward(cross_entropy_backward(ce), cache);
      opt.step();
    }
    CHECK(last < 0.05f);
  }
}

namespace {

/// A fixture of tools/make_heads_fixtures.py: the tensors named in `model` are loaded into the
/// head; the rest (input.*, R, expected.*, grad.*) are returned by name.
std::map<std::string, Matrix<float>> load_fixture(const std::string& name,
                                                  const ParamList<float>& model) {
  const std::string path =
      std::string(EIGENFORMER_FIXTURES_DIR) + "/pytorch/" + name + ".safetensors";
  const SafetensorsHeader header = read_safetensors_header(path);
  std::map<std::string, Param<float>> extra;
  ParamList<float> all = model;
  for (const auto& [tensor, info] : header.tensors) {
    bool in_model = false;
    for (const auto& p : model) in_model = in_model || p.name == tensor;
    if (in_model) continue;
    Param<float>& p = extra[tensor];
    p = info.shape.size() == 1 ? Param<float>(1, info.shape[0], true)
                               : Param<float>(info.shape[0], info.shape[1]);
    all.push_back({tensor, &p});
  }
  load_safetensors(path, all);  // throws unless every head parameter is in the file
  std::map<std::string, Matrix<float>> out;
  for (auto& [tensor, p] : extra) out[tensor] = p.value;
  return out;
}

/// |got - want| <= 1e-4 max(|got|, |want|) + 1e-5 entrywise, as test_pytorch_reference.
void check_close(const Matrix<float>& got, const Matrix<float>& want, const std::string& what) {
  INFO(what);
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  const Matrix<float> allowed = (1e-4f * got.cwiseAbs().cwiseMax(want.cwiseAbs())).array() + 1e-5f;
  CHECK(((got - want).cwiseAbs().array() <= allowed.array()).all());
}

/// Every "grad.<name>" of the fixture against the parameter of that name.
void check_param_grads_close(const ParamList<float>& params,
                             const std::map<std::string, Matrix<float>>& f) {
  for (const auto& p : params) check_close(p.param->grad, f.at("grad." + p.name), p.name);
}

}  // namespace

TEST_CASE("classification heads agree with PyTorch (BERT's pooler + classifier, mean pooling)") {
  for (const bool first : {true, false}) {
    Rng rng(12);
    ClassifierConfig hc;
    hc.n_classes = 3;
    hc.dropout = 0.0;
    hc.pooling = first ? Pooling::first : Pooling::mean;
    hc.pooler = first;
    ClassificationHead<float> head(16, hc, rng);
    const auto f =
        load_fixture(first ? "heads_classifier_first" : "heads_classifier_mean", head.parameters());
    const BoolMatrix pad = (f.at("input.pad").array() != 0.f).matrix();
    ClassificationHead<float>::Cache cache;
    head.zero_grad();
    check_close(head.forward(f.at("input.h"), 2, pad, cache), f.at("expected.y"), "logits");
    check_close(head.backward(f.at("R"), cache), f.at("grad.h"), "dh");
    check_param_grads_close(head.parameters(), f);
  }
}

TEST_CASE("masked-LM heads agree with PyTorch (BERT's transform, tied and untied decoder)") {
  for (const bool tied : {true, false}) {
    Rng rng(13);
    Embedding<float> embedding(11, 16, rng);
    MaskedLMHead<float> head(16, 11, tied, MaskedLMConfig{}, Activation::gelu, 1e-12, rng);
    ParamList<float> params = head.parameters();
    if (tied) append_params(params, "embedding", embedding.parameters());
    const auto f = load_fixture(tied ? "heads_mlm_tied" : "heads_mlm_untied", params);
    zero_grad(params);
    MaskedLMHead<float>::Cache cache;
    check_close(head.forward(f.at("input.h"), embedding, cache), f.at("expected.y"), "logits");
    check_close(head.backward(f.at("R"), cache, embedding), f.at("grad.h"), "dh");
    check_param_grads_close(params, f);
  }
}
