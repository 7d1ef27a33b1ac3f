// io/huggingface.hpp: GPT-2 and BERT checkpoints in Hugging Face's layout against PyTorch.
// The checkpoints and reference outputs are tests/fixtures/hf/, written by
// tools/make_hf_fixtures.py with transformers' names, layouts and numerics (random weights, tiny
// configs). Tolerance: max |ours - torch| <= 1e-4 max |torch| over each output.
// Also: token types and the input LayerNorm of TokenInput (BERT's embeddings), gradient-checked.
#include <doctest/doctest.h>

#include <cmath>
#include <eigenformer/eigenformer.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "test_util.hpp"

using namespace eigenformer;
namespace fs = std::filesystem;

namespace {

using Mat = Matrix<float>;
using eftest::check_throws_with;
using eftest::MatD;

std::string hf_dir(const std::string& name) {
  return std::string(EIGENFORMER_FIXTURES_DIR) + "/hf/" + name;
}

/// Every tensor of a safetensors file as a float matrix (1-D as one row).
std::map<std::string, Mat> read_all(const std::string& path) {
  const SafetensorsHeader header = read_safetensors_header(path);
  std::map<std::string, Param<float>> params;
  ParamList<float> list;
  for (const auto& [name, t] : header.tensors) {
    REQUIRE((t.shape.size() == 1 || t.shape.size() == 2));
    Param<float>& p = params[name];
    p = t.shape.size() == 1 ? Param<float>(1, t.shape[0], true)
                            : Param<float>(t.shape[0], t.shape[1]);
    list.push_back({name, &p});
  }
  load_safetensors(path, list);
  std::map<std::string, Mat> out;
  for (auto& [name, p] : params) out[name] = p.value;
  return out;
}

IdMatrix to_id_matrix(const Mat& m) {
  IdMatrix ids(m.rows(), m.cols());
  for (Index i = 0; i < m.size(); ++i) ids.data()[i] = static_cast<Index>(std::lround(m.data()[i]));
  return ids;
}

void check_close(const Mat& got, const Mat& want, const std::string& what, double rtol = 1e-4) {
  INFO(what << ": shape " << detail::shape_of(got) << " vs torch " << detail::shape_of(want));
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  const double err = (got - want).cwiseAbs().maxCoeff();
  const double scale = want.cwiseAbs().maxCoeff();
  INFO("max error " << err << ", max |torch| " << scale);
  MESSAGE(what << ": max |ours - torch| / max |torch| = " << err / scale);
  CHECK(err <= rtol * scale);
}

/// GPT-2's last hidden states (after ln_f): causal, keys of pad_id masked.
Mat gpt2_hidden(DecoderOnlyLM<float>& model, const IdMatrix& ids) {
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = key_padding_mask(ids, model.config().pad_id);
  DecoderOnlyLM<float>::Cache cache;
  const Mat x = model.input.forward(ids, cache.input);
  return model.stack.forward(x, ids.rows(), mask, cache.stack);
}

/// A fresh directory under the temporary directory.
fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("eigenformer_test_hf_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

/// Copies a fixture checkpoint into a fresh directory, to damage it.
fs::path copy_fixture(const std::string& fixture, const std::string& name) {
  const fs::path dir = temp_dir(name);
  fs::copy(hf_dir(fixture), dir,
           fs::copy_options::overwrite_existing | fs::copy_options::recursive);
  return dir;
}

/// Writes tensors (name -> matrix; vector names in `vectors` are 1-D) as dir/model.safetensors.
void write_tensors(const fs::path& dir, const std::map<std::string, Mat>& tensors,
                   const std::set<std::string>& vectors) {
  std::map<std::string, Param<float>> params;
  ParamList<float> list;
  for (const auto& [name, m] : tensors) {
    Param<float>& p = params[name];
    p.value = m;
    p.is_vector = vectors.count(name) > 0;
    list.push_back({name, &p});
  }
  save_safetensors((dir / "model.safetensors").string(), list, {{"format", "pt"}});
}

std::set<std::string> vector_names(const std::string& path) {
  std::set<std::string> out;
  for (const auto& [name, t] : read_safetensors_header(path).tensors)
    if (t.shape.size() == 1) out.insert(name);
  return out;
}

}  // namespace

TEST_CASE("GPT-2: logits and hidden states of a padded batch match transformers' numerics") {
  const auto ref = read_all(hf_dir("gpt2_reference.safetensors"));
  HfLoadOptions options;
  options.pad_id = 0;  // the fixture pads with id 0 and uses it nowhere else
  DecoderOnlyLM<float> model = load_gpt2(hf_dir("gpt2"), options);
  const IdMatrix ids = to_id_matrix(ref.at("input.ids"));
  CHECK(model.config().d_model == 16);
  CHECK(model.config().n_layers == 2);
  CHECK(model.config().vocab == 64);
  CHECK(model.config().activation == Activation::gelu_tanh);
  DecoderOnlyLM<float>::Cache cache;
  check_close(model.forward(ids, cache), ref.at("expected.logits"), "logits");
  check_close(gpt2_hidden(model, ids), ref.at("expected.hidden"), "hidden states");

  SUBCASE("without the transformer. prefix, with the attention-mask buffers, the same model") {
    DecoderOnlyLM<float> bare = load_gpt2(hf_dir("gpt2_noprefix") + "/model.safetensors", options);
    DecoderOnlyLM<float>::Cache c2;
    CHECK(bare.forward(ids, c2) == model.forward(ids, cache));
  }
}

TEST_CASE("GPT-2: KV-cache decode steps match transformers' past_key_values") {
  const auto ref = read_all(hf_dir("gpt2_reference.safetensors"));
  DecoderOnlyLM<float> model = load_gpt2(hf_dir("gpt2"));
  const IdMatrix prompt = to_id_matrix(ref.at("kv.prompt"));  // (2, 5)
  const IdMatrix steps = to_id_matrix(ref.at("kv.steps"));    // (2, 3)
  const Mat& want = ref.at("kv.logits");                      // (2*5 + 3*2, V)
  const Index B = prompt.rows(), P = prompt.cols(), S = steps.cols();
  DecodeState<float> state = model.begin_decode(B, P + S);
  check_close(model.decode_step(prompt, state), want.topRows(B * P), "prompt logits");
  for (Index s = 0; s < S; ++s) {
    const IdMatrix one = steps.col(s);
    check_close(model.decode_step(one, state), want.middleRows(B * P + s * B, B),
                "step " + std::to_string(s));
  }

  SUBCASE("and the next-token loss of the whole sequence matches F.cross_entropy") {
    IdMatrix full(B, P + S);
    full << prompt, steps;
    const IdMatrix inputs = full.leftCols(P + S - 1), targets = full.rightCols(P + S - 1);
    DecoderOnlyLM<float>::Cache cache;
    const Mat logits = model.forward(inputs, cache);
    CrossEntropyCache<float> ce;
    const float loss = cross_entropy_forward<float>(ce, logits, targets);
    CHECK(loss == doctest::Approx(ref.at("expected.loss")(0, 0)).epsilon(1e-5));
  }
}

TEST_CASE("GPT-2: F16 and BF16 checkpoints load, each weight the F32 weight rounded") {
  DecoderOnlyLM<float> f32 = load_gpt2(hf_dir("gpt2"));
  DecoderOnlyLM<float> f16 = load_gpt2(hf_dir("gpt2_f16"));
  DecoderOnlyLM<float> bf16 = load_gpt2(hf_dir("gpt2_bf16"));
  const auto p32 = f32.parameters(), p16 = f16.parameters(), pb16 = bf16.parameters();
  REQUIRE(p32.size() == p16.size());
  Index differ = 0;
  for (size_t i = 0; i < p32.size(); ++i) {
    INFO(p32[i].name);
    const Mat& w = p32[i].param->value;
    const Mat half = w.unaryExpr([](float x) { return static_cast<float>(Eigen::half(x)); });
    const Mat brain = w.unaryExpr([](float x) { return static_cast<float>(Eigen::bfloat16(x)); });
    CHECK(p16[i].param->value == half);
    CHECK(pb16[i].param->value == brain);
    differ += (half.array() != w.array()).count();
  }
  CHECK(differ > 0);  // the conversion did round

  SUBCASE("load_safetensors converts them too") {
    const auto f32_file = read_all(hf_dir("gpt2") + "/model.safetensors");
    const auto f16_file = read_all(hf_dir("gpt2_f16") + "/model.safetensors");
    for (const auto& entry : f32_file) {  // not [name, w]: INFO's lambda captures name
      const std::string& name = entry.first;
      const auto& w = entry.second;
      INFO(name);
      CHECK(f16_file.at(name) == w.unaryExpr([](float x) { return float(Eigen::half(x)); }));
    }
  }
}

TEST_CASE("GPT-2: save_gpt2 writes Hugging Face's layout, and it loads back exactly") {
  DecoderOnlyLM<float> model = load_gpt2(hf_dir("gpt2"));
  const fs::path dir = temp_dir("save") / "nested";
  save_gpt2(dir.string(), model);
  const SafetensorsHeader h = read_safetensors_header((dir / "model.safetensors").string());
  const SafetensorsHeader orig = read_safetensors_header(hf_dir("gpt2") + "/model.safetensors");
  std::set<std::string> names, orig_names;
  for (const auto& kv : h.tensors) names.insert(kv.first);
  for (const auto& kv : orig.tensors) orig_names.insert(kv.first);
  CHECK(names == orig_names);
  for (const auto& kv : h.tensors) CHECK(kv.second.shape == orig.tensors.at(kv.first).shape);
  CHECK(h.metadata.at("format") == "pt");
  const auto saved = read_all((dir / "model.safetensors").string());
  const auto original = read_all(hf_dir("gpt2") + "/model.safetensors");
  for (const auto& entry : original) {
    const std::string& name = entry.first;
    const auto& m = entry.second;
    INFO(name);
    CHECK(saved.at(name) == m);
  }
  const nlohmann::json config = nlohmann::json::parse(read_text(dir / "config.json"));
  CHECK(config.at("n_embd") == 16);
  CHECK(config.at("n_layer") == 2);
  CHECK(config.at("n_head") == 2);
  CHECK(config.at("n_positions") == 32);
  CHECK(config.at("vocab_size") == 64);
  CHECK(config.at("activation_function") == "gelu_new");
  CHECK(config.at("model_type") == "gpt2");

  DecoderOnlyLM<float> back = load_gpt2(dir.string());
  const auto a = model.parameters(), b = back.parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].param->value == b[i].param->value);
  fs::remove_all(dir.parent_path());
}

TEST_CASE("BERT: hidden states and pooler output of a padded batch with token types match") {
  const auto ref = read_all(hf_dir("bert_reference.safetensors"));
  HfBert<float> bert = load_bert(hf_dir("bert"));
  CHECK(bert.model.config().pad_id == 0);
  CHECK(bert.model.config().type_vocab == 2);
  CHECK(bert.model.config().eps == 1e-12);
  CHECK(bert.model.config().activation == Activation::gelu_erf);
  CHECK(bert.model.config().norm == NormPlacement::post);
  REQUIRE(bert.pooler.has_value());
  const IdMatrix ids = to_id_matrix(ref.at("input.ids"));
  const IdMatrix types = to_id_matrix(ref.at("input.token_types"));
  const Mat hidden = bert_hidden_states(bert.model, ids, types);
  check_close(hidden, ref.at("expected.hidden"), "hidden states");
  check_close(bert.pooler.forward(hidden, ids.rows()), ref.at("expected.pooled"), "pooled");

  SUBCASE("without the bert. prefix and without a pooler: the same encoder") {
    HfBert<float> bare = load_bert(hf_dir("bert_noprefix"));
    CHECK_FALSE(bare.pooler.has_value());
    CHECK(bert_hidden_states(bare.model, ids, types) == hidden);
    check_throws_with([&] { bare.pooler.forward(hidden, ids.rows()); }, {"has no pooler"});
  }
  SUBCASE("BF16: each weight the F32 weight rounded") {
    HfBert<float> b16 = load_bert(hf_dir("bert_bf16"));
    const auto p = bert.model.parameters(), q = b16.model.parameters();
    REQUIRE(p.size() == q.size());
    for (size_t i = 0; i < p.size(); ++i) {
      INFO(p[i].name);
      CHECK(q[i].param->value ==
            p[i].param->value.unaryExpr([](float x) { return float(Eigen::bfloat16(x)); }));
    }
    check_close(bert_hidden_states(b16.model, ids, types), hidden, "BF16 hidden states", 0.05);
  }
  SUBCASE("the model's forward takes token types too, and checks them") {
    EncoderOnlyModel<float>::Cache cache;
    const Mat logits = bert.model.forward(ids, types, cache);
    CHECK(logits.rows() == ids.size());
    check_throws_with([&] { bert.model.forward(ids, IdMatrix::Constant(3, 8, 2), cache); },
                      {"TokenInput::forward", "token_types", "[0, 2)"});
    check_throws_with([&] { bert.model.forward(ids, IdMatrix::Zero(3, 7), cache); },
                      {"token_types", "has shape (3, 7), expected ids' (3, 8)"});
  }
}

TEST_CASE("a name, shape, dtype or config field that does not fit is an IoError naming it") {
  using eftest::check_throws_with;
  const std::string gpt2_file = hf_dir("gpt2") + "/model.safetensors";
  SUBCASE("a shape") {
    const fs::path dir = copy_fixture("gpt2", "shape");
    std::string config = read_text(dir / "config.json");
    const auto at = config.find("\"n_positions\": 32");
    REQUIRE(at != std::string::npos);
    config.replace(at, 17, "\"n_positions\": 16");
    write_text(dir / "config.json", config);
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"load_gpt2",
                                "tensor 'transformer.wpe.weight': shape [32, 16] in "
                                "the file, [16, 16] expected from config.json"});
  }
  SUBCASE("a missing and an unexpected tensor") {
    const fs::path dir = copy_fixture("gpt2", "names");
    auto tensors = read_all(gpt2_file);
    tensors.erase("transformer.h.1.mlp.c_fc.bias");
    tensors["transformer.h.0.attn.rotary"] = Mat::Zero(2, 2);
    write_tensors(dir, tensors, vector_names(gpt2_file));
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"missing tensors: 'transformer.h.1.mlp.c_fc.bias'"});
    tensors["transformer.h.1.mlp.c_fc.bias"] =
        read_all(gpt2_file).at("transformer.h.1.mlp.c_fc.bias");
    write_tensors(dir, tensors, vector_names(gpt2_file));
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"unexpected tensors", "'transformer.h.0.attn.rotary'"});
  }
  SUBCASE("an untied lm_head") {
    const fs::path dir = copy_fixture("gpt2", "head");
    auto tensors = read_all(gpt2_file);
    tensors["lm_head.weight"] = tensors.at("transformer.wte.weight");
    write_tensors(dir, tensors, vector_names(gpt2_file));
    CHECK_NOTHROW(load_gpt2(dir.string()));  // tied: the same matrix, accepted
    tensors["lm_head.weight"](3, 4) += 1.0f;
    write_tensors(dir, tensors, vector_names(gpt2_file));
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"'lm_head.weight' differs from the token embedding"});
  }
  SUBCASE("a dtype") {
    const fs::path dir = copy_fixture("gpt2_f16", "dtype");
    std::string bytes = read_text(dir / "model.safetensors");
    const auto at = bytes.find("\"F16\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 5, "\"I16\"");
    write_text(dir / "model.safetensors", bytes);
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"dtype I16 is not supported for loading"});
  }
  SUBCASE("a non-finite weight, unless the check is off") {
    const fs::path dir = copy_fixture("gpt2", "nan");
    auto tensors = read_all(gpt2_file);
    tensors.at("transformer.h.0.ln_2.bias")(0, 1) = NAN;
    write_tensors(dir, tensors, vector_names(gpt2_file));
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"tensor 'transformer.h.0.ln_2.bias' holds a NaN or an infinity"});
    HfLoadOptions unchecked;
    unchecked.check_finite = false;
    CHECK_NOTHROW(load_gpt2(dir.string(), unchecked));
  }
  SUBCASE("config.json") {
    const fs::path dir = copy_fixture("gpt2", "config");
    const std::string good = read_text(dir / "config.json");
    auto edit = [&](const std::string& from, const std::string& to) {
      std::string text = good;
      const auto at = text.find(from);
      REQUIRE(at != std::string::npos);
      text.replace(at, from.size(), to);
      write_text(dir / "config.json", text);
    };
    edit("\"n_embd\"", "\"n_embed\"");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"config.json", "has no 'n_embd'"});
    edit("\"gelu_new\"", "\"swish\"");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"'activation_function' is \"swish\""});
    edit("\"scale_attn_weights\": true", "\"scale_attn_weights\": false");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"'scale_attn_weights' is false: only true is supported"});
    edit("\"n_head\": 2", "\"n_head\": 3");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"describes a model this library cannot build", "n_heads"});
    write_text(dir / "config.json", "{not json");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); }, {"is not valid JSON"});
    fs::remove(dir / "config.json");
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); }, {"config.json", "cannot open"});
  }
  SUBCASE("a GPT-2 file is not BERT, nor the reverse") {
    check_throws_with<IoError>([&] { load_bert(hf_dir("gpt2")); }, {"has no 'hidden_size'"});
    const fs::path dir = copy_fixture("gpt2", "mixed");
    fs::copy_file(hf_dir("bert") + "/model.safetensors", dir / "model.safetensors",
                  fs::copy_options::overwrite_existing);
    check_throws_with<IoError>([&] { load_gpt2(dir.string()); },
                               {"has no tensor 'wte.weight' or 'transformer.wte.weight'"});
  }
  SUBCASE("a missing file") {
    check_throws_with<IoError>([&] { load_gpt2(hf_dir("none")); }, {"cannot open"});
    check_throws_with<ArgumentError>([&] { load_gpt2(""); }, {"path"});
  }
}

TEST_CASE("save_gpt2 refuses a model without GPT-2's structure, writing nothing") {
  TransformerConfig c;
  c.vocab = 10, c.d_model = 8, c.n_heads = 2, c.n_layers = 1, c.d_ff = 16, c.max_len = 8;
  c.norm = NormPlacement::pre, c.positional = PositionalKind::learned, c.tie_output = true;
  c.scale_embeddings = false;
  Rng rng(1);
  const fs::path dir = temp_dir("refuse");
  for (int variant = 0; variant < 3; ++variant) {
    TransformerConfig bad = c;
    std::string field;
    if (variant == 0) bad.norm = NormPlacement::post, field = "model.config().norm";
    if (variant == 1)
      bad.positional = PositionalKind::sinusoidal, field = "model.config().positional";
    if (variant == 2) bad.tie_output = false, field = "model.config().tie_output";
    DecoderOnlyLM<float> model(bad, rng);
    eftest::check_throws_with([&] { save_gpt2((dir / "out").string(), model); },
                              {"save_gpt2", field, "for GPT-2's layout"});
  }
  CHECK_FALSE(fs::exists(dir / "out"));
  DecoderOnlyLM<float> good(c, rng);
  save_gpt2((dir / "out").string(), good);
  CHECK(fs::exists(dir / "out" / "config.json"));
  fs::remove_all(dir);
}

TEST_CASE("token types and the input LayerNorm: gradients, checkpoints") {
  TransformerConfig c;
  c.vocab = 7, c.d_model = 6, c.n_heads = 2, c.n_layers = 1, c.d_ff = 8, c.max_len = 5;
  c.dropout = 0.0, c.positional = PositionalKind::learned, c.type_vocab = 3, c.input_norm = true;
  c.activation = Activation::gelu_erf;  // no pad id: a padding row gets no gradient at all
  Rng rng(3);
  EncoderOnlyModel<double> model(c, rng);
  std::set<std::string> names;
  for (const auto& p : model.parameters()) names.insert(p.name);
  CHECK(names.count("token_type.weight") == 1);
  CHECK(names.count("input_norm.weight") == 1);
  CHECK(names.count("input_norm.bias") == 1);
  IdMatrix ids(2, 4), types(2, 4);
  ids << 1, 2, 3, 4, 5, 6, 0, 0;
  types << 0, 1, 2, 1, 0, 0, 1, 1;
  const MatD R = eftest::random_matrix(8, 7, rng);
  auto loss = [&] {
    EncoderOnlyModel<double>::Cache cache;
    return projection(model.forward(ids, types, cache), R);
  };
  eftest::check_param_grads(model.parameters(), loss, [&] {
    EncoderOnlyModel<double>::Cache cache;
    model.forward(ids, types, cache);
    model.backward(R, cache);
  });

  SUBCASE("no types means type 0") {
    EncoderOnlyModel<double>::Cache a, b;
    CHECK(model.forward(ids, a) == model.forward(ids, IdMatrix::Zero(2, 4), b));
  }
  SUBCASE("a model without a table takes no types") {
    TransformerConfig plain = c;
    plain.type_vocab = 0;
    EncoderOnlyModel<double> m(plain, rng);
    EncoderOnlyModel<double>::Cache cache;
    eftest::check_throws_with([&] { m.forward(ids, types, cache); },
                              {"token_types", "no token-type table"});
  }
  SUBCASE("save_model / load_model keep them; other models' metadata is as before") {
    const fs::path dir = temp_dir("types");
    const std::string path = (dir / "m.safetensors").string();
    save_model(path, model);
    auto back = load_model<EncoderOnlyModel<double>>(path);
    CHECK(back.config().type_vocab == 3);
    CHECK(back.config().input_norm);
    EncoderOnlyModel<double>::Cache a, b;
    CHECK(back.forward(ids, types, a) == model.forward(ids, types, b));
    TransformerConfig plain = c;
    plain.type_vocab = 0, plain.input_norm = false;
    const auto meta = config_to_metadata(plain);
    CHECK(meta.count("eigenformer.config.type_vocab") == 0);
    CHECK(meta.count("eigenformer.config.input_norm") == 0);
    fs::remove_all(dir);
  }
}
