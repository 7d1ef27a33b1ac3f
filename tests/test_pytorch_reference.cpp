// Agreement with PyTorch: every layer and the full encoder-decoder against reference values that
// tools/make_fixtures.py computed with PyTorch 1.13 (float32, CPU, dropout 0) and stored in
// tests/fixtures/pytorch/<case>.safetensors. No Python is needed to run these tests.
//
// Each fixture holds the weights in the library's parameter names (loaded straight into the
// library's object with load_safetensors), the inputs (input.*), a random R, the forward output
// (expected.*) and the gradient of loss = sum(output * R) for every parameter and float input
// (grad.*); its __metadata__ holds the configuration. The test runs forward, then backward with
// dy = R, and compares.
//
// Tolerances, entrywise: |ours - torch| <= kRtol * max(|ours|, |torch|) + kAtol, with
constexpr double kRtol = 1e-4;  // float32 arithmetic in a different order than PyTorch's
constexpr double kAtol = 1e-5;  // a floor for entries that cancel to ~0 (e.g. k_proj.bias grads)

#include <cmath>
#include <eigenformer/eigenformer.hpp>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;

namespace {

using Mat = Matrix<float>;

std::string fixture_path(const std::string& name) {
  return std::string(EIGENFORMER_FIXTURES_DIR) + "/pytorch/" + name + ".safetensors";
}

/// One fixture file: the tensors named in `model` go into the model's parameters (strictly, by
/// load_safetensors); every other tensor (inputs, R, expected outputs, gradients) into a
/// temporary Param this object keeps. Metadata values are available through meta*().
class Fixture {
 public:
  Fixture(const std::string& case_name, const ParamList<float>& model) : name_(case_name) {
    const std::string path = fixture_path(case_name);
    const SafetensorsHeader header = read_safetensors_header(path);
    meta_ = header.metadata;
    std::set<std::string> model_names;
    for (const auto& p : model) model_names.insert(p.name);
    ParamList<float> all = model;
    for (const auto& entry : header.tensors) {  // not [name, t]: INFO's lambda captures name
      const std::string& name = entry.first;
      const SafetensorsTensor& t = entry.second;
      if (model_names.count(name)) continue;
      INFO(case_name << ": tensor " << name);
      REQUIRE((t.shape.size() == 1 || t.shape.size() == 2));
      Param<float>& p = extra_[name];
      p = t.shape.size() == 1 ? Param<float>(1, t.shape[0], true)
                              : Param<float>(t.shape[0], t.shape[1]);
      all.push_back({name, &p});
    }
    load_safetensors(path, all);  // throws unless every model parameter is in the file
  }

  bool has(const std::string& name) const { return extra_.count(name) != 0; }

  const Mat& operator[](const std::string& name) const {
    INFO(name_ << ": tensor " << name);
    REQUIRE(has(name));
    return extra_.at(name).value;
  }

  /// Token ids stored as F32 (exact for these small vocabularies).
  IdMatrix ids(const std::string& name) const {
    const Mat& m = (*this)[name];
    IdMatrix out(m.rows(), m.cols());
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) {
        REQUIRE(m(i, j) == std::round(m(i, j)));
        out(i, j) = static_cast<Index>(m(i, j));
      }
    return out;
  }

  /// A mask stored as F32: 1 = masked (true), 0 = kept.
  BoolMatrix mask(const std::string& name) const { return ((*this)[name].array() != 0.f).matrix(); }

  /// Names after `prefix` of the tensors starting with it, e.g. the gradients' names.
  std::set<std::string> names_after(const std::string& prefix) const {
    std::set<std::string> out;
    for (const auto& kv : extra_)
      if (kv.first.compare(0, prefix.size(), prefix) == 0)
        out.insert(kv.first.substr(prefix.size()));
    return out;
  }

  std::string meta(const std::string& key) const {
    INFO(name_ << ": metadata " << key);
    REQUIRE(meta_.count(key) == 1);
    return meta_.at(key);
  }
  Index meta_int(const std::string& key) const { return std::stol(meta(key)); }
  double meta_double(const std::string& key) const { return std::stod(meta(key)); }
  bool meta_bool(const std::string& key) const { return meta(key) == "true"; }

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::map<std::string, Param<float>> extra_;
  std::map<std::string, std::string> meta_;
};

/// Asserts |got - want| <= kRtol * max(|got|, |want|) + kAtol entrywise; reports the worst entry.
void check_torch(const Mat& got, const Mat& want, const std::string& what) {
  INFO(what << ": shape " << eigenformer::detail::shape_of(got) << " vs torch "
            << eigenformer::detail::shape_of(want));
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double worst = -1.0;  // largest |diff| / allowed
  Index wi = 0, wj = 0;
  bool finite = true;
  for (Index i = 0; i < got.rows(); ++i)
    for (Index j = 0; j < got.cols(); ++j) {
      const double a = got(i, j), b = want(i, j);
      finite = finite && std::isfinite(a);
      const double allowed = kRtol * std::max(std::abs(a), std::abs(b)) + kAtol;
      const double ratio = std::abs(a - b) / allowed;
      if (!(ratio <= worst)) {
        worst = ratio;
        wi = i;
        wj = j;
      }
    }
  INFO(what << ": worst entry (" << wi << ", " << wj << ") ours " << got(wi, wj) << " torch "
            << want(wi, wj) << ", |diff| / allowed = " << worst);
  CHECK(finite);
  CHECK(worst <= 1.0);
}

/// Compares every parameter gradient and the given input gradients with the fixture's grad.*, and
/// checks that the fixture has a gradient for exactly those names.
void check_grads(const Fixture& fx, const ParamList<float>& params,
                 const std::vector<std::pair<std::string, Mat>>& input_grads) {
  std::set<std::string> compared;
  for (const auto& p : params) {
    check_torch(p.param->grad, fx["grad." + p.name], fx.name() + ": grad of " + p.name);
    compared.insert(p.name);
  }
  for (const auto& [name, g] : input_grads) {
    check_torch(g, fx["grad." + name], fx.name() + ": grad of input " + name);
    compared.insert(name);
  }
  CHECK(fx.names_after("grad.") == compared);
}

std::map<std::string, std::string> metadata_of(const std::string& case_name) {
  return read_safetensors_metadata(fixture_path(case_name));
}

/// metadata[key], which must exist.
std::string meta_get(const std::map<std::string, std::string>& m, const std::string& key) {
  INFO("metadata " << key);
  REQUIRE(m.count(key) == 1);
  return m.at(key);
}

/// A layer's configuration from its fixture's metadata (dropout 0, as the fixtures use).
LayerConfig layer_config(const std::map<std::string, std::string>& m) {
  LayerConfig c;
  c.d_model = std::stol(meta_get(m, "d_model"));
  c.n_heads = std::stol(meta_get(m, "n_heads"));
  c.d_ff = std::stol(meta_get(m, "d_ff"));
  c.dropout = 0.0;
  c.activation = parse_activation(meta_get(m, "activation"));
  c.norm = parse_norm_placement(meta_get(m, "norm"));
  c.eps = std::stod(meta_get(m, "eps"));
  return c;
}

TransformerConfig transformer_config(const std::map<std::string, std::string>& m) {
  auto get = [&](const std::string& key) { return meta_get(m, key); };
  TransformerConfig c;
  c.src_vocab = std::stol(get("src_vocab"));
  c.tgt_vocab = std::stol(get("tgt_vocab"));
  c.d_model = std::stol(get("d_model"));
  c.n_heads = std::stol(get("n_heads"));
  c.n_encoder_layers = std::stol(get("n_encoder_layers"));
  c.n_decoder_layers = std::stol(get("n_decoder_layers"));
  c.d_ff = std::stol(get("d_ff"));
  c.dropout = std::stod(get("dropout"));
  c.activation = parse_activation(get("activation"));
  c.norm = parse_norm_placement(get("norm"));
  c.positional = parse_positional_kind(get("positional"));
  c.max_len = std::stol(get("max_len"));
  c.scale_embeddings = get("scale_embeddings") == "true";
  c.tie_output = get("tie_output") == "true";
  c.pad_id = std::stol(get("pad_id"));
  c.eps = std::stod(get("eps"));
  return c;
}

}  // namespace

TEST_CASE("PyTorch reference: LayerNorm") {
  LayerNorm<float> ln(16);
  Fixture fx("layernorm", ln.parameters());
  REQUIRE(fx.meta_double("eps") == doctest::Approx(ln.eps()));
  LayerNorm<float>::Cache cache;
  ln.zero_grad();
  check_torch(ln.forward(fx["input.x"], cache), fx["expected.y"], "layernorm: y");
  const Mat dx = ln.backward(fx["R"], cache);
  check_grads(fx, ln.parameters(), {{"x", dx}});
}

TEST_CASE("PyTorch reference: Linear") {
  Rng rng(1);
  Linear<float> lin(12, 16, rng);
  Fixture fx("linear", lin.parameters());
  Linear<float>::Cache cache;
  lin.zero_grad();
  check_torch(lin.forward(fx["input.x"], cache), fx["expected.y"], "linear: y");
  const Mat dx = lin.backward(fx["R"], cache);
  check_grads(fx, lin.parameters(), {{"x", dx}});
}

TEST_CASE("PyTorch reference: Embedding with padding_idx") {
  Rng rng(2);
  Embedding<float> emb(10, 16, rng, /*padding_id=*/0);
  Fixture fx("embedding", emb.parameters());
  REQUIRE(fx.meta_int("padding_idx") == emb.padding_id);
  const IdMatrix ids = fx.ids("input.ids");
  emb.zero_grad();
  check_torch(emb.forward(ids), fx["expected.y"], "embedding: y");
  emb.backward(fx["R"], ids);
  check_grads(fx, emb.parameters(), {});
  CHECK(emb.weight.grad.row(0).isZero());
}

/// One nn.MultiheadAttention fixture (tools/make_fixtures.py, tools/make_parity_fixtures.py):
/// output and every gradient with the fixture's masks (causal, key padding, a bool attn_mask, a
/// float one as attn_bias), with the given kernel. Returns the layer and the fixture's mask.
std::pair<Attention<float>, AttentionMask> check_mha_fixture(const Fixture& fx, AttentionImpl impl,
                                                             Attention<float> mha) {
  mha.impl = impl;
  REQUIRE(fx.meta_int("n_heads") == mha.n_heads());
  const bool cross = fx.meta_bool("cross");
  const Index B = fx.meta_int("B");
  AttentionMask mask;
  mask.causal = fx.meta_bool("causal");
  if (fx.has("input.key_padding_mask")) mask.key_padding = fx.mask("input.key_padding_mask");
  if (fx.has("input.attn_mask")) mask.attn_mask = fx.mask("input.attn_mask");
  if (fx.has("input.attn_bias")) mask.attn_bias = fx["input.attn_bias"].cast<double>();
  const Mat& x = fx["input.x"];
  Attention<float>::Cache cache;
  mha.zero_grad();
  const Mat y =
      cross ? mha.forward(x, fx["input.memory"], B, mask, cache) : mha.forward(x, B, mask, cache);
  check_torch(y, fx["expected.y"], fx.name() + ": y");
  Mat dmemory;
  const Mat dx = mha.backward(fx["R"], cache, cross ? &dmemory : nullptr);
  std::vector<std::pair<std::string, Mat>> input_grads{{"x", dx}};
  if (cross) input_grads.push_back({"memory", dmemory});
  check_grads(fx, mha.parameters(), input_grads);
  return {mha, mask};
}

TEST_CASE("PyTorch reference: nn.MultiheadAttention") {
  for (const char* name : {"mha_self", "mha_cross", "mha_causal", "mha_key_padding"}) {
    CAPTURE(name);
    Rng rng(3);
    Attention<float> layer(16, 2, rng);
    Fixture fx(name, layer.parameters());
    auto [mha, mask] = check_mha_fixture(fx, AttentionImpl::automatic, layer);
    if (mask.causal) {  // PyTorch's attn_mask form of the same mask gives the same output
      AttentionMask explicit_mask;
      const Index T = fx.meta_int("Tq");
      explicit_mask.attn_mask = BoolMatrix::Zero(T, T);
      for (Index i = 0; i < T; ++i)
        for (Index j = i + 1; j < T; ++j) explicit_mask.attn_mask(i, j) = true;
      Attention<float>::Cache cache;
      check_torch(mha.forward(fx["input.x"], fx.meta_int("B"), explicit_mask, cache),
                  fx["expected.y"], fx.name() + ": y with attn_mask");
    }
  }
}

TEST_CASE("PyTorch reference: nn.MultiheadAttention with per-head and float attn_masks") {
  // tools/make_parity_fixtures.py: a 3-D bool attn_mask (B*H, Tq, Tk) with key padding, a 3-D
  // float mask (ALiBi plus noise, -inf entries) in cross-attention, a 2-D float mask; both kernels.
  for (const char* name : {"mha_per_head_mask", "mha_float_mask", "mha_float_mask_shared"})
    for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
      CAPTURE(name);
      CAPTURE(int(impl));
      Rng rng(3);
      Attention<float> layer(16, 2, rng);
      Fixture fx(name, layer.parameters());
      check_mha_fixture(fx, impl, layer);
    }
}

TEST_CASE("PyTorch reference: nn.MultiheadAttention with kdim and vdim") {
  // tools/make_parity_fixtures.py: cross-attention over keys of width 6 and values of width 10,
  // with key padding; both kernels.
  for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
    CAPTURE(int(impl));
    Rng rng(3);
    AttentionOptions o;
    o.kdim = 6;
    o.vdim = 10;
    Attention<float> mha(16, 2, rng, o);
    mha.impl = impl;
    Fixture fx("mha_kdim_vdim", mha.parameters());
    REQUIRE(fx.meta_int("kdim") == 6);
    REQUIRE(fx.meta_int("vdim") == 10);
    AttentionMask mask;
    mask.key_padding = fx.mask("input.key_padding_mask");
    Attention<float>::Cache cache;
    mha.zero_grad();
    check_torch(mha.forward(fx["input.x"], fx["input.key"], fx["input.value"], fx.meta_int("B"),
                            mask, cache),
                fx["expected.y"], "y");
    Mat dkey, dvalue;
    const Mat dx = mha.backward(fx["R"], cache, &dkey, &dvalue);
    check_grads(fx, mha.parameters(), {{"x", dx}, {"key", dkey}, {"value", dvalue}});
  }
}

TEST_CASE("PyTorch reference: self-attention with RoPE (causal) and T5's relative bias (padding)") {
  for (const char* name : {"mha_rotary", "mha_relative"}) {
    CAPTURE(name);
    const std::map<std::string, std::string> m = metadata_of(name);
    AttentionPositions positions;
    if (meta_get(m, "positions") == "rotary") {
      positions.kind = PositionalKind::rotary;
      positions.rotary_base = std::stod(meta_get(m, "rotary_base"));
    } else {
      positions.kind = PositionalKind::relative;
      positions.num_buckets = std::stol(meta_get(m, "num_buckets"));
      positions.max_distance = std::stol(meta_get(m, "max_distance"));
      positions.bidirectional = meta_get(m, "bidirectional") == "true";
    }
    Rng rng(3);
    AttentionOptions options;
    options.positions = positions;
    Attention<float> mha(std::stol(meta_get(m, "d_model")), std::stol(meta_get(m, "n_heads")), rng,
                         options);
    Fixture fx(name, mha.parameters());
    AttentionMask mask;
    mask.causal = fx.meta_bool("causal");
    if (fx.has("input.key_padding_mask")) mask.key_padding = fx.mask("input.key_padding_mask");
    const Index B = fx.meta_int("B");
    for (AttentionImpl impl : {AttentionImpl::plain, AttentionImpl::tiled}) {
      CAPTURE(int(impl));
      mha.impl = impl;
      Attention<float>::Cache cache;
      mha.zero_grad();
      check_torch(mha.forward(fx["input.x"], B, mask, cache), fx["expected.y"], fx.name() + ": y");
      const Mat dx = mha.backward(fx["R"], cache);
      check_grads(fx, mha.parameters(), {{"x", dx}});
    }
  }
}

TEST_CASE("PyTorch reference: T5's relative position buckets") {
  Fixture fx("t5_buckets", {});
  const Mat& rel = fx["relative_position"];
  const std::set<std::string> names = fx.names_after("bucket.");
  REQUIRE(names.size() == 3);
  for (const std::string& name : names) {
    CAPTURE(name);
    // "<bidirectional|causal>_<num_buckets>_<max_distance>"
    const size_t a = name.find('_'), b = name.rfind('_');
    const bool bidirectional = name.substr(0, a) == "bidirectional";
    const Index num_buckets = std::stol(name.substr(a + 1, b - a - 1));
    const Index max_distance = std::stol(name.substr(b + 1));
    const Mat& expected = fx["bucket." + name];
    for (Index c = 0; c < rel.cols(); ++c) {
      const Index r = static_cast<Index>(rel(0, c));
      CAPTURE(r);
      CHECK(relative_position_bucket(r, bidirectional, num_buckets, max_distance) ==
            static_cast<Index>(expected(0, c)));
    }
  }
}

TEST_CASE("PyTorch reference: nn.TransformerEncoderLayer (relu/gelu, post/pre-norm)") {
  for (const char* name : {"encoder_layer_relu_post", "encoder_layer_relu_pre",
                           "encoder_layer_gelu_post", "encoder_layer_gelu_pre"}) {
    CAPTURE(name);
    const LayerConfig c = layer_config(metadata_of(name));
    Rng rng(4);
    EncoderLayer<float> layer(c, rng);
    Fixture fx(name, layer.parameters());
    AttentionMask mask;
    mask.key_padding = fx.mask("input.key_padding_mask");
    EncoderLayer<float>::Cache cache;
    layer.zero_grad();
    check_torch(layer.forward(fx["input.x"], fx.meta_int("B"), mask, cache), fx["expected.y"],
                fx.name() + ": y");
    const Mat dx = layer.backward(fx["R"], cache);
    check_grads(fx, layer.parameters(), {{"x", dx}});
  }
}

TEST_CASE("PyTorch reference: nn.TransformerDecoderLayer (relu/gelu, post/pre-norm)") {
  for (const char* name : {"decoder_layer_relu_post", "decoder_layer_relu_pre",
                           "decoder_layer_gelu_post", "decoder_layer_gelu_pre"}) {
    CAPTURE(name);
    const LayerConfig c = layer_config(metadata_of(name));
    Rng rng(5);
    DecoderLayer<float> layer(c, rng);
    Fixture fx(name, layer.parameters());
    AttentionMask self_mask, cross_mask;
    self_mask.causal = true;
    cross_mask.key_padding = fx.mask("input.memory_key_padding_mask");
    DecoderLayer<float>::Cache cache;
    layer.zero_grad();
    check_torch(layer.forward(fx["input.x"], fx["input.memory"], fx.meta_int("B"), self_mask,
                              cross_mask, cache),
                fx["expected.y"], fx.name() + ": y");
    Mat dmemory;
    const Mat dx = layer.backward(fx["R"], cache, dmemory);
    check_grads(fx, layer.parameters(), {{"x", dx}, {"memory", dmemory}});
  }
}

TEST_CASE("PyTorch reference: full encoder-decoder, logits and every gradient") {
  for (const char* name : {"transformer_post", "transformer_pre"}) {
    CAPTURE(name);
    Rng rng(6);
    Transformer<float> model(transformer_config(metadata_of(name)), rng);
    Fixture fx(name, model.parameters());
    const IdMatrix src = fx.ids("input.src"), tgt_in = fx.ids("input.tgt_in");
    Transformer<float>::Cache cache;
    model.zero_grad();
    check_torch(model.forward(src, tgt_in, cache), fx["expected.logits"], fx.name() + ": logits");
    model.backward(fx["R"], cache);
    check_grads(fx, model.parameters(), {});
  }
}

TEST_CASE("PyTorch reference: a checkpoint from tools/export_pytorch.py loads and agrees") {
  // The exported file holds exactly Transformer::parameters() and the model kind and config in
  // eigenformer's metadata keys, so load_model rebuilds the model from the file alone.
  const std::string path = fixture_path("transformer_post_checkpoint");
  Transformer<float> model = load_model<Transformer<float>>(path);
  model.eval();

  Rng rng2(8);
  Transformer<float> reference(transformer_config(metadata_of("transformer_post")), rng2);
  const Fixture fx("transformer_post", reference.parameters());
  const ParamList<float> a = model.parameters(), b = reference.parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].name);
    CHECK(a[i].param->value == b[i].param->value);
  }

  const IdMatrix src = fx.ids("input.src"), tgt_in = fx.ids("input.tgt_in");
  Transformer<float>::Cache cache;
  check_torch(model.forward(src, tgt_in, cache), fx["expected.logits"], "checkpoint: logits");
  // Inference path: encode once, then decode.
  const Mat memory = model.encode(src, cache.encoder);
  check_torch(model.decode(tgt_in, src, memory, cache), fx["expected.logits"],
              "checkpoint: encode + decode logits");
}

TEST_CASE("PyTorch reference: 10 steps of cross-entropy + Adam follow PyTorch's losses") {
  const std::string name = "transformer_training";
  Rng rng(9);
  Transformer<float> model(transformer_config(metadata_of(name)), rng);
  Fixture fx(name, model.parameters());
  const Index steps = fx.meta_int("steps");
  const float lr = static_cast<float>(fx.meta_double("lr"));
  const IdMatrix src = fx.ids("input.src"), tgt_in = fx.ids("input.tgt_in"),
                 tgt_out = fx.ids("input.tgt_out");
  const Mat& expected = fx["expected.losses"];
  REQUIRE(expected.cols() == steps);

  Adam<float> opt(model.parameters(), lr);
  CrossEntropyOptions ce;
  ce.ignore_id = model.config().pad_id;
  Mat losses(1, steps);
  for (Index step = 0; step < steps; ++step) {
    opt.zero_grad();
    Transformer<float>::Cache cache;
    const Mat logits = model.forward(src, tgt_in, cache);
    CrossEntropyCache<float> ce_cache;
    losses(0, step) = cross_entropy_forward(ce_cache, logits, tgt_out, ce);
    model.backward(cross_entropy_backward(ce_cache), cache);
    opt.step();
  }
  INFO("ours  " << losses);
  INFO("torch " << expected);
  check_torch(losses, expected, "training losses");
}

TEST_CASE("PyTorch reference: F.cross_entropy reductions, class weights, ignore_index, smoothing") {
  // tools/make_parity_fixtures.py: every reduction, with and without weight= and label_smoothing.
  Fixture fx("cross_entropy_options", {});
  const Mat& logits = fx["input.logits"];
  const IdMatrix targets = fx.ids("input.targets");
  const Eigen::VectorXd weight = fx["input.weight"].row(0).transpose().cast<double>();
  const std::map<std::string, LossReduction> reductions = {
      {"mean", LossReduction::mean}, {"sum", LossReduction::sum}, {"none", LossReduction::none}};
  std::string configs = fx.meta("configs") + ";";
  for (size_t end; (end = configs.find(';')) != std::string::npos; configs.erase(0, end + 1)) {
    const std::string name = configs.substr(0, end);
    CAPTURE(name);
    const size_t a = name.find('_'), b = name.rfind('_');
    CrossEntropyOptions o{fx.meta_int("ignore_index"), std::stod(name.substr(b + 1)),
                          reductions.at(name.substr(0, a)),
                          name.substr(a + 1, b - a - 1) == "weighted" ? weight : Eigen::VectorXd()};
    CrossEntropyCache<float> cache;
    const float loss = cross_entropy_forward(cache, logits, targets, o);
    const Mat& R = fx["R." + name];  // (1, N) for none, (1, 1) otherwise
    Mat dlogits;
    if (o.reduction == LossReduction::none) {
      check_torch(Mat(cache.losses.transpose()), fx["expected." + name], name + ": losses");
      dlogits = cross_entropy_backward(cache, Eigen::VectorXf(R.row(0).transpose()));
    } else {
      check_torch(Mat::Constant(1, 1, loss), fx["expected." + name], name + ": loss");
      dlogits = cross_entropy_backward(cache, R(0, 0));
    }
    check_torch(dlogits, fx["grad." + name], name + ": grad of logits");
  }
}

TEST_CASE("PyTorch reference: nn.Transformer's src_mask, tgt_mask (a prefix LM) and memory_mask") {
  // tools/make_parity_fixtures.py: a per-head bool src_mask, a float tgt_mask (-inf above the
  // prefix-LM pattern), a per-head float memory_mask, with the padding masks of the ids.
  const char* name = "transformer_masks";
  Rng rng(6);
  Transformer<float> model(transformer_config(metadata_of(name)), rng);
  Fixture fx(name, model.parameters());
  TransformerMasks masks;
  masks.src = AttentionMask();
  masks.src->attn_mask = fx.mask("input.src_mask");
  masks.tgt = AttentionMask();
  masks.tgt->attn_bias = fx["input.tgt_mask"].cast<double>();
  masks.memory = AttentionMask();
  masks.memory->attn_bias = fx["input.memory_mask"].cast<double>();
  Transformer<float>::Cache cache;
  model.zero_grad();
  check_torch(model.forward(fx.ids("input.src"), fx.ids("input.tgt_in"), masks, cache),
              fx["expected.logits"], "logits");
  model.backward(fx["R"], cache);
  check_grads(fx, model.parameters(), {});
}
