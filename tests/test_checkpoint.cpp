#include <eigenformer/io/checkpoint.hpp>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;

namespace {

TransformerConfig tiny() {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = 9;
  c.tgt_vocab = c.vocab = 7;
  c.d_ff = 16;
  c.n_encoder_layers = 1;
  c.n_decoder_layers = c.n_layers = 2;
  c.dropout = 0.125;
  c.norm = NormPlacement::pre;
  c.positional = PositionalKind::learned;
  c.activation = Activation::gelu_tanh;
  c.tie_output = true;
  c.max_len = 20;
  c.eps = 1e-6;
  return c;
}

std::string checkpoint_path(const std::string& name) {
  return eftest::temp_file("eigenformer_test_checkpoint", name);
}

/// The two models give the same logits on a small batch.
void check_same_logits(Transformer<float>& a, Transformer<float>& b) {
  IdMatrix src(1, 3), tgt(1, 2);
  src << 3, 4, 5;
  tgt << 1, 6;
  Transformer<float>::Cache c1, c2;
  CHECK(a.forward(src, tgt, c1) == b.forward(src, tgt, c2));
}

}  // namespace

TEST_CASE("a saved Transformer loads back with its config and gives the same logits") {
  Rng rng(1);
  Transformer<float> model(tiny(), rng);
  model.eval();
  const std::string path = checkpoint_path("model.safetensors");
  save_model(path, model, {{"vocab", "a b c"}});

  std::map<std::string, std::string> meta;
  Transformer<float> loaded = load_model<Transformer<float>>(path, &meta);
  loaded.eval();
  CHECK(meta.at("vocab") == "a b c");
  const TransformerConfig& c = loaded.config();
  CHECK(c.d_model == 8);
  CHECK(c.n_decoder_layers == 2);
  CHECK(c.dropout == 0.125);
  CHECK(c.eps == 1e-6);
  CHECK(c.norm == NormPlacement::pre);
  CHECK(c.positional == PositionalKind::learned);
  CHECK(c.activation == Activation::gelu_tanh);
  CHECK(c.tie_output);
  check_same_logits(model, loaded);
}

TEST_CASE("a decoder-only model round-trips, and load_model checks the model kind") {
  Rng rng(2);
  DecoderOnlyLM<double> lm(tiny(), rng);
  const std::string path = checkpoint_path("lm.safetensors");
  save_model(path, lm);
  DecoderOnlyLM<double> back = load_model<DecoderOnlyLM<double>>(path);
  CHECK(back.parameters().size() == lm.parameters().size());
  for (size_t i = 0; i < back.parameters().size(); ++i)
    CHECK(back.parameters()[i].param->value == lm.parameters()[i].param->value);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<double>>(path); },
                 {"holds a 'decoder_only' model, expected 'transformer'"});
}

TEST_CASE("each positional kind and scoring round-trips, with its fields") {
  struct Case {
    PositionalKind positional;
    AttentionScoring attention;
  };
  for (const Case& k : {Case{PositionalKind::relative, AttentionScoring::dot_product},
                        Case{PositionalKind::rotary, AttentionScoring::dot_product},
                        Case{PositionalKind::sinusoidal, AttentionScoring::additive},
                        Case{PositionalKind::relative, AttentionScoring::additive}}) {
    CAPTURE(positional_kind_name(k.positional));
    CAPTURE(attention_scoring_name(k.attention));
    TransformerConfig c = tiny();
    c.positional = k.positional;
    c.attention = k.attention;
    c.additive_dim = 3;
    c.relative_buckets = 6;
    c.relative_max_distance = 9;
    c.rotary_base = 500.5;
    Rng rng(4);
    Transformer<float> model(c, rng);
    model.eval();
    const std::string path = checkpoint_path("kind.safetensors");
    save_model(path, model);
    Transformer<float> loaded = load_model<Transformer<float>>(path);
    loaded.eval();
    const TransformerConfig& l = loaded.config();
    CHECK(l.positional == k.positional);
    CHECK(l.attention == k.attention);
    CHECK(l.additive_dim == 3);
    CHECK(l.relative_buckets == 6);
    CHECK(l.relative_max_distance == 9);
    CHECK(l.rotary_base == 500.5);
    check_same_logits(model, loaded);
  }
}

TEST_CASE("a checkpoint written before selectable attention loads as a dot-product model") {
  Rng rng(5);
  TransformerConfig c = tiny();
  Transformer<float> model(c, rng);
  std::map<std::string, std::string> meta = config_to_metadata(c);
  for (const char* field : {"attention", "additive_dim", "relative_buckets",
                            "relative_max_distance", "rotary_base"})
    REQUIRE(meta.erase(std::string("eigenformer.config.") + field) == 1);
  meta["eigenformer.model"] = "transformer";
  const std::string path = checkpoint_path("old.safetensors");
  save_safetensors(path, model.parameters(), meta);
  const Transformer<float> loaded = load_model<Transformer<float>>(path);
  CHECK(loaded.config().attention == AttentionScoring::dot_product);
  CHECK(loaded.config().positional == PositionalKind::learned);
  CHECK(loaded.config().relative_buckets == TransformerConfig().relative_buckets);

  meta["eigenformer.config.attention"] = "bahdanau";
  save_safetensors(path, model.parameters(), meta);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(path); },
                 {"'eigenformer.config.attention' has an invalid value 'bahdanau'"});
  // A file that says additive but holds dot-product weights is refused by name.
  meta["eigenformer.config.attention"] = "additive";
  save_safetensors(path, model.parameters(), meta);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(path); }, {"score"});
}

TEST_CASE("checkpoints with missing or bad metadata give clear errors") {
  Rng rng(3);
  Linear<float> lin(2, 2, rng);
  const std::string plain = checkpoint_path("plain.safetensors");
  save_safetensors(plain, lin.parameters());
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(plain); },
                 {"metadata has no 'eigenformer.model'"});

  Transformer<float> model(tiny(), rng);
  std::map<std::string, std::string> meta = config_to_metadata(tiny());
  meta["eigenformer.model"] = "transformer";
  meta["eigenformer.config.d_model"] = "8x";
  const std::string bad = checkpoint_path("bad.safetensors");
  save_safetensors(bad, model.parameters(), meta);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(bad); },
                 {"'eigenformer.config.d_model' has an invalid value '8x'"});
  meta["eigenformer.config.d_model"] = "8";
  meta["eigenformer.config.norm"] = "middle";
  save_safetensors(bad, model.parameters(), meta);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(bad); },
                 {"'eigenformer.config.norm' has an invalid value 'middle'"});
  meta["eigenformer.config.norm"] = "pre";
  meta["eigenformer.config.n_heads"] = "3";
  save_safetensors(bad, model.parameters(), meta);
  eftest::check_throws_with<IoError>([&] { load_model<Transformer<float>>(bad); }, {"bad config"});

  eftest::check_throws_with([&] { save_model(bad, model, {{"eigenformer.model", "x"}}); },
                            {"save_model", "reserved key 'eigenformer.model'"});
}

TEST_CASE("load_model returns a model in eval mode, and check_finite names a damaged tensor") {
  Rng rng(3);
  DecoderOnlyLM<float> lm(tiny(), rng);  // dropout 0.125
  const std::string path = checkpoint_path("eval.safetensors");
  save_model(path, lm);
  DecoderOnlyLM<float> back = load_model<DecoderOnlyLM<float>>(path);
  IdMatrix ids(1, 4);
  ids << 1, 2, 3, 4;
  DecoderOnlyLM<float>::Cache c1, c2;
  CHECK(back.forward(ids, c1) == back.forward(ids, c2));  // no dropout: eval mode
  back.train();
  CHECK(!(back.forward(ids, c1) == back.forward(ids, c2)));  // train() turns it back on

  param_named(lm.parameters(), "layers.1.linear2.weight").value(0, 1) = NAN;
  save_model(path, lm);
  CHECK_NOTHROW(load_model<DecoderOnlyLM<float>>(path));  // structure intact: loads
  LoadOptions options;
  options.check_finite = true;
  eftest::check_throws_with<IoError>(
      [&] { load_model<DecoderOnlyLM<float>>(path, nullptr, options); },
      {"load_model", "'layers.1.linear2.weight'", "NaN or an infinity"});
}

TEST_CASE(
    "a single-stack checkpoint written before vocab and n_layers loads them from the old fields") {
  Rng rng(4);
  TransformerConfig c = tiny();
  EncoderOnlyModel<float> bert(c, rng);
  // What save_model wrote then: no vocab or n_layers; tgt_vocab and n_encoder_layers held them.
  std::map<std::string, std::string> meta = config_to_metadata(c);
  meta.erase("eigenformer.config.vocab");
  meta.erase("eigenformer.config.n_layers");
  meta["eigenformer.config.n_encoder_layers"] = "2";
  meta["eigenformer.model"] = "encoder_only";
  const std::string path = checkpoint_path("old_encoder.safetensors");
  save_safetensors(path, bert.parameters(), meta);
  const EncoderOnlyModel<float> back = load_model<EncoderOnlyModel<float>>(path);
  CHECK(back.config().vocab == 7);
  CHECK(back.config().n_layers == 2);
}
