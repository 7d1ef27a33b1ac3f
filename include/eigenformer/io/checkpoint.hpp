// Model checkpoints: the parameters in a safetensors file, with the model kind and its
// TransformerConfig in the file's metadata, so a model can be rebuilt from the file alone.
//   save_model(path, model, extra)       writes atomically (temporary file + rename)
//   load_model<Model>(path)              rebuilds the model and loads its parameters
// Metadata keys: "eigenformer.model" (transformer | decoder_only | encoder_only |
// encoder_classifier | masked_lm), "eigenformer.config.<field>", and for the models with a task
// head (model/task_models.hpp) "eigenformer.head.<field>"; callers may add their own keys (e.g. a
// vocabulary). The fields
// added with selectable attention (attention, additive_dim, relative_buckets,
// relative_max_distance, rotary_base) are optional when loading: files written before them hold
// dot-product models, and get those fields' defaults.
#pragma once

#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../core/precompiled.hpp"
#include "../model/language_models.hpp"
#include "../model/task_models.hpp"
#include "../model/transformer.hpp"
#include "safetensors.hpp"

namespace eigenformer {

namespace detail {

template <class Model>
struct ModelKind;
template <class S>
struct ModelKind<Transformer<S>> {
  static constexpr const char* name = "transformer";
};
template <class S>
struct ModelKind<DecoderOnlyLM<S>> {
  static constexpr const char* name = "decoder_only";
};
template <class S>
struct ModelKind<EncoderOnlyModel<S>> {
  static constexpr const char* name = "encoder_only";
};

template <class S>
struct ModelKind<EncoderClassifier<S>> {
  static constexpr const char* name = "encoder_classifier";
};
template <class S>
struct ModelKind<MaskedLM<S>> {
  static constexpr const char* name = "masked_lm";
};

constexpr const char* kConfigPrefix = "eigenformer.config.";
constexpr const char* kHeadPrefix = "eigenformer.head.";

inline const std::string& metadata_field(const std::map<std::string, std::string>& meta,
                                         const std::string& key, const std::string& path) {
  const auto it = meta.find(key);
  if (it == meta.end())
    throw IoError("eigenformer::load_model: file '" + path + "': metadata has no '" + key +
                  "' (not an eigenformer checkpoint?)");
  return it->second;
}

/// parse(text) of metadata "<prefix><field>" (prefix: "eigenformer.config." unless given); any
/// failure becomes an IoError naming the file, the key and the text.
template <class Parse>
auto metadata_value(const std::map<std::string, std::string>& meta, const std::string& field,
                    const std::string& path, Parse&& parse, const char* prefix = kConfigPrefix) {
  const std::string key = prefix + field;
  const std::string& text = metadata_field(meta, key, path);
  try {
    return parse(text);
  } catch (const std::exception&) {
    throw IoError("eigenformer::load_model: file '" + path + "': metadata '" + key +
                  "' has an invalid value '" + text + "'");
  }
}

/// metadata_value, or fallback when the file has no such key (it predates the field).
template <class T, class Parse>
T optional_metadata_value(const std::map<std::string, std::string>& meta, const std::string& field,
                          const std::string& path, Parse&& parse, T fallback) {
  if (meta.count(kConfigPrefix + field) == 0) return fallback;
  return static_cast<T>(metadata_value(meta, field, path, parse));
}

/// std::stoll / std::stod that also reject trailing characters.
inline long long parse_int(const std::string& text) {
  size_t used = 0;
  const long long v = std::stoll(text, &used);
  if (used != text.size()) throw std::invalid_argument(text);
  return v;
}
inline double parse_double(const std::string& text) {
  size_t used = 0;
  const double v = std::stod(text, &used);
  if (used != text.size()) throw std::invalid_argument(text);
  return v;
}

inline std::string number_text(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

/// The task head's settings as metadata "eigenformer.head.<field>": none for a model without one.
template <class Model>
std::map<std::string, std::string> head_metadata(const Model&) {
  return {};
}
template <class S>
std::map<std::string, std::string> head_metadata(const EncoderClassifier<S>& m) {
  const ClassifierConfig& h = m.head_config();
  const std::string p = kHeadPrefix;
  return {{p + "n_classes", std::to_string(h.n_classes)},
          {p + "pooling", pooling_name(h.pooling)},
          {p + "pooler", h.pooler ? "1" : "0"},
          {p + "dropout", number_text(h.dropout)}};
}
template <class S>
std::map<std::string, std::string> head_metadata(const MaskedLM<S>& m) {
  return {{std::string(kHeadPrefix) + "transform", m.head_config().transform ? "1" : "0"}};
}

/// metadata_value of "eigenformer.head.<field>".
template <class Parse>
auto head_value(const std::map<std::string, std::string>& meta, const std::string& field,
                const std::string& path, Parse&& parse) {
  return metadata_value(meta, field, path, parse, kHeadPrefix);
}

/// Builds the model a checkpoint describes (its weights then loaded): Model(config, rng), or with
/// the head's settings read from meta.
template <class Model>
struct ModelBuilder {
  static Model build(const TransformerConfig& c, const std::map<std::string, std::string>&,
                     const std::string&, Rng& rng) {
    return Model(c, rng);
  }
};
template <class S>
struct ModelBuilder<EncoderClassifier<S>> {
  static EncoderClassifier<S> build(const TransformerConfig& c,
                                    const std::map<std::string, std::string>& meta,
                                    const std::string& path, Rng& rng) {
    ClassifierConfig h;
    h.n_classes = head_value(meta, "n_classes", path, parse_int);
    h.pooling = head_value(meta, "pooling", path, parse_pooling);
    h.pooler = head_value(meta, "pooler", path, parse_int) != 0;
    h.dropout = head_value(meta, "dropout", path, parse_double);
    return EncoderClassifier<S>(c, h, rng);
  }
};
template <class S>
struct ModelBuilder<MaskedLM<S>> {
  static MaskedLM<S> build(const TransformerConfig& c,
                           const std::map<std::string, std::string>& meta, const std::string& path,
                           Rng& rng) {
    MaskedLMConfig h;
    h.transform = head_value(meta, "transform", path, parse_int) != 0;
    return MaskedLM<S>(c, h, rng);
  }
};

}  // namespace detail

/// The config as metadata entries "eigenformer.config.<field>". type_vocab and input_norm are
/// written only when set (BERT-style input), so files of other models stay as they were.
/// Throws ArgumentError for an enum field (activation, norm, positional, attention) that holds no
/// enumerator.
inline std::map<std::string, std::string> config_to_metadata(const TransformerConfig& c) {
  const std::string p = detail::kConfigPrefix;
  std::map<std::string, std::string> meta = {
      {p + "src_vocab", std::to_string(c.src_vocab)},
      {p + "tgt_vocab", std::to_string(c.tgt_vocab)},
      {p + "vocab", std::to_string(c.vocab)},
      {p + "n_layers", std::to_string(c.n_layers)},
      {p + "d_model", std::to_string(c.d_model)},
      {p + "n_heads", std::to_string(c.n_heads)},
      {p + "n_encoder_layers", std::to_string(c.n_encoder_layers)},
      {p + "n_decoder_layers", std::to_string(c.n_decoder_layers)},
      {p + "d_ff", std::to_string(c.d_ff)},
      {p + "dropout", detail::number_text(c.dropout)},
      {p + "activation", to_string(c.activation)},
      {p + "norm", to_string(c.norm)},
      {p + "positional", positional_kind_name(c.positional)},
      {p + "max_len", std::to_string(c.max_len)},
      {p + "scale_embeddings", c.scale_embeddings ? "1" : "0"},
      {p + "tie_output", c.tie_output ? "1" : "0"},
      {p + "pad_id", std::to_string(c.pad_id)},
      {p + "eps", detail::number_text(c.eps)},
      {p + "attention", attention_scoring_name(c.attention)},
      {p + "additive_dim", std::to_string(c.additive_dim)},
      {p + "relative_buckets", std::to_string(c.relative_buckets)},
      {p + "relative_max_distance", std::to_string(c.relative_max_distance)},
      {p + "rotary_base", detail::number_text(c.rotary_base)}};
  if (c.type_vocab != 0) meta[p + "type_vocab"] = std::to_string(c.type_vocab);
  if (c.input_norm) meta[p + "input_norm"] = "1";
  return meta;
}

/// Reads a config written by config_to_metadata; IoError naming the file and key if a field is
/// missing or malformed. The fields of selectable attention may be missing (older files), and
/// type_vocab and input_norm (written only when set).
inline TransformerConfig config_from_metadata(const std::map<std::string, std::string>& meta,
                                              const std::string& path) {
  TransformerConfig c;
  c.src_vocab = detail::metadata_value(meta, "src_vocab", path, detail::parse_int);
  c.tgt_vocab = detail::metadata_value(meta, "tgt_vocab", path, detail::parse_int);
  c.d_model = detail::metadata_value(meta, "d_model", path, detail::parse_int);
  c.n_heads = detail::metadata_value(meta, "n_heads", path, detail::parse_int);
  c.n_encoder_layers = detail::metadata_value(meta, "n_encoder_layers", path, detail::parse_int);
  c.n_decoder_layers = detail::metadata_value(meta, "n_decoder_layers", path, detail::parse_int);
  c.d_ff = detail::metadata_value(meta, "d_ff", path, detail::parse_int);
  c.dropout = detail::metadata_value(meta, "dropout", path, detail::parse_double);
  c.activation = detail::metadata_value(meta, "activation", path, parse_activation);
  c.norm = detail::metadata_value(meta, "norm", path, parse_norm_placement);
  c.positional = detail::metadata_value(meta, "positional", path, parse_positional_kind);
  c.max_len = detail::metadata_value(meta, "max_len", path, detail::parse_int);
  c.scale_embeddings = detail::metadata_value(meta, "scale_embeddings", path, detail::parse_int) != 0;
  c.tie_output = detail::metadata_value(meta, "tie_output", path, detail::parse_int) != 0;
  c.pad_id = detail::metadata_value(meta, "pad_id", path, detail::parse_int);
  c.eps = detail::metadata_value(meta, "eps", path, detail::parse_double);
  const TransformerConfig defaults;
  // vocab and n_layers came with the single-stack models' own fields: an older decoder-only file
  // kept them in tgt_vocab and n_decoder_layers, an encoder-only one in n_encoder_layers.
  const auto kind = meta.find("eigenformer.model");
  const bool encoder_only = kind != meta.end() && kind->second == "encoder_only";
  c.vocab = detail::optional_metadata_value(meta, "vocab", path, detail::parse_int, c.tgt_vocab);
  c.n_layers =
      detail::optional_metadata_value(meta, "n_layers", path, detail::parse_int,
                                      encoder_only ? c.n_encoder_layers : c.n_decoder_layers);
  c.attention = detail::optional_metadata_value(meta, "attention", path, parse_attention_scoring,
                                                defaults.attention);
  c.additive_dim = detail::optional_metadata_value(meta, "additive_dim", path, detail::parse_int,
                                                   defaults.additive_dim);
  c.relative_buckets = detail::optional_metadata_value(meta, "relative_buckets", path,
                                                       detail::parse_int, defaults.relative_buckets);
  c.relative_max_distance = detail::optional_metadata_value(
      meta, "relative_max_distance", path, detail::parse_int, defaults.relative_max_distance);
  c.rotary_base = detail::optional_metadata_value(meta, "rotary_base", path, detail::parse_double,
                                                  defaults.rotary_base);
  c.type_vocab = detail::optional_metadata_value(meta, "type_vocab", path, detail::parse_int,
                                                 defaults.type_vocab);
  c.input_norm = detail::optional_metadata_value(meta, "input_norm", path, detail::parse_int,
                                                 0) != 0;
  return c;
}

/// Saves the model's parameters, its kind and config (and its task head's settings), and the
/// caller's extra metadata. Model: Transformer, DecoderOnlyLM, EncoderOnlyModel,
/// EncoderClassifier or MaskedLM. Throws ArgumentError naming save_model if extra uses a key that
/// it writes itself ("eigenformer.model", "eigenformer.config.<field>", "eigenformer.head.<field>"),
/// and as save_safetensors: IoError when the
/// file cannot be written, an existing file then left as it was.
template <class Model>
void save_model(const std::string& path, Model& model,
                const std::map<std::string, std::string>& extra = {}) {
  std::map<std::string, std::string> meta = config_to_metadata(model.config());
  meta.merge(detail::head_metadata(model));
  meta["eigenformer.model"] = detail::ModelKind<Model>::name;
  for (const auto& kv : extra) {
    detail::require(meta.count(kv.first) == 0, "save_model", "extra",
                    [&] { return "uses the reserved key '" + kv.first + "'"; });
    meta.insert(kv);
  }
  save_safetensors(path, model.parameters(), meta);
}

/// What load_model checks beyond the file's structure.
struct LoadOptions {
  /// Throw IoError naming the first tensor that holds a NaN or an infinity (a damaged file whose
  /// structure is intact loads otherwise). Costs one pass over the weights.
  bool check_finite = false;
};

/// Rebuilds a model of type Model from a checkpoint written by save_model, in eval mode (dropout
/// off; call train() to go on training). metadata, when not null, receives the file's metadata.
/// Throws IoError if the file is unreadable, of another model kind, does not match its own config,
/// or (options.check_finite) holds a non-finite weight (a config the model rejects is an IoError
/// too, naming the file); ArgumentError for an empty path.
template <class Model>
Model load_model(const std::string& path, std::map<std::string, std::string>* metadata = nullptr,
                 const LoadOptions& options = {}) {
  const std::map<std::string, std::string> meta = read_safetensors_metadata(path);
  const std::string& kind = detail::metadata_field(meta, "eigenformer.model", path);
  if (kind != detail::ModelKind<Model>::name)
    throw IoError("eigenformer::load_model: file '" + path + "' holds a '" + kind +
                  "' model, expected '" + detail::ModelKind<Model>::name + "'");
  const TransformerConfig config = config_from_metadata(meta, path);
  Rng rng(0);  // the initial values are all overwritten
  Model model = [&] {
    try {
      return detail::ModelBuilder<Model>::build(config, meta, path, rng);
    } catch (const ArgumentError& e) {
      throw IoError("eigenformer::load_model: file '" + path + "': bad config: " + e.what());
    }
  }();
  load_safetensors(path, model.parameters());
  if (options.check_finite)
    for (const auto& p : model.parameters())
      if (!detail::all_finite(p.param->value))
        throw IoError("eigenformer::load_model: file '" + path + "': tensor '" + p.name +
                      "' holds a NaN or an infinity");
  model.eval();
  if (metadata) *metadata = meta;
  return model;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_CHECKPOINT_MODEL_(S, Model)                                                  \
  EIGENFORMER_FOR(S, void save_model<Model<S>>(const std::string& path, Model<S>& model,         \
                                               const std::map<std::string, std::string>& extra)) \
  EIGENFORMER_FOR(S, Model<S> load_model<Model<S>>(const std::string& path,                      \
                                                   std::map<std::string, std::string>* metadata, const LoadOptions& options))
#define EIGENFORMER_CHECKPOINT_TEMPLATES(S)          \
  EIGENFORMER_CHECKPOINT_MODEL_(S, Transformer)      \
  EIGENFORMER_CHECKPOINT_MODEL_(S, DecoderOnlyLM)    \
  EIGENFORMER_CHECKPOINT_MODEL_(S, EncoderOnlyModel) \
  EIGENFORMER_CHECKPOINT_MODEL_(S, EncoderClassifier) EIGENFORMER_CHECKPOINT_MODEL_(S, MaskedLM)
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_CHECKPOINT_TEMPLATES)
// clang-format on

}  // namespace eigenformer
