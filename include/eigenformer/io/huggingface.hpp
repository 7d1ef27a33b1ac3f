// GPT-2 and BERT checkpoints in Hugging Face's layout (model.safetensors + config.json, as the
// `transformers` library writes them), read into and written from this library's models:
//   load_gpt2(dir_or_file)     -> DecoderOnlyLM (pre-norm, learned positions, tanh GELU, tied head)
//   save_gpt2(dir, model)      writes dir/model.safetensors and dir/config.json for transformers
//   load_bert(dir_or_file)     -> HfBert: EncoderOnlyModel (token types, embedding LayerNorm,
//                                 post-norm, erf GELU) and the pooler when the file has one
// docs/huggingface.md has the table of names. In short, for layer i (Conv1D weights are stored
// (in, out) and transposed; c_attn holds q|k|v side by side):
//   GPT-2 [transformer.]wte, wpe           embedding.weight, position.weight
//         h.i.ln_1, h.i.ln_2               layers.i.norm1, layers.i.norm2
//         h.i.attn.c_attn (d, 3d)          layers.i.self_attn.{q,k,v}_proj
//         h.i.attn.c_proj, h.i.mlp.c_fc, h.i.mlp.c_proj   out_proj, linear1, linear2
//         ln_f                             norm
//   BERT  [bert.]embeddings.{word,position,token_type}_embeddings, embeddings.LayerNorm
//                                          embedding, position, token_type, input_norm
//         encoder.layer.i.attention.self.{query,key,value}   self_attn.{q,k,v}_proj
//         attention.output.dense / .LayerNorm                 out_proj / norm1
//         intermediate.dense, output.dense / .LayerNorm       linear1, linear2 / norm2
//         pooler.dense                                        HfBert::pooler.dense
// Tensors a loader skips: GPT-2's attention-mask buffers (h.i.attn.bias, h.i.attn.masked_bias), a
// lm_head.weight equal to wte (the tied head), BERT's embeddings.position_ids and its pre-training
// heads (cls.*). Any other name, a shape or a dtype that does not fit is an IoError naming the
// tensor; the file is checked whole before a model is returned. F32, F64, F16 and BF16 load.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "../core/precompiled.hpp"
#include "../layers/linear.hpp"
#include "../model/language_models.hpp"
#include "safetensors.hpp"

namespace eigenformer {

/// What the Hugging Face loaders do beyond reading the files.
struct HfLoadOptions {
  /// The id masked as padding (config.pad_id). Unset: none for GPT-2 (it has no pad token, and
  /// its end-of-text id is a real token), config.json's pad_token_id (0) for BERT.
  std::optional<Index> pad_id;
  /// Throw IoError naming the first tensor that holds a NaN or an infinity.
  bool check_finite = true;
};

/// BERT's pooler: tanh(dense(hidden state of each sequence's first token)).
template <class Scalar = float>
class BertPooler {
 public:
  using Mat = Matrix<Scalar>;
  Linear<Scalar> dense;  // (d, d); empty when the checkpoint has no pooler

  BertPooler() = default;
  /// A dense layer of width d from rng (ArgumentError unless d > 0).
  BertPooler(Index d, Rng& rng) : dense(d, d, rng) {}

  /// False for a default-constructed pooler (a checkpoint without one).
  bool has_value() const { return dense.in_features() > 0; }

  /// hidden (B*T, d) of B sequences -> (B, d) = tanh(dense(row b*T of hidden)), inference only.
  /// Throws ArgumentError naming BertPooler::forward unless the pooler has a value, B > 0 and
  /// hidden is (B*T, d) for some T >= 1.
  Mat forward(ConstRef<Scalar> hidden, Index B) const;

  /// "dense.weight", "dense.bias" (none when empty).
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out;
    if (has_value()) append_params(out, "dense", dense.parameters());
    return out;
  }
};

template <class Scalar>
auto BertPooler<Scalar>::forward(ConstRef<Scalar> hidden, Index B) const -> Mat {
  const char* func = "BertPooler::forward";
  detail::require(has_value(), func, "this", "has no pooler (the checkpoint had none)");
  detail::check_positive(func, "B", B);
  detail::require(
      hidden.rows() > 0 && hidden.rows() % B == 0 && hidden.cols() == dense.in_features(), func,
      "hidden", [&] {
        return "has shape " + detail::shape_of(hidden) + ", expected (B*T, " +
               std::to_string(dense.in_features()) + ") with B " + std::to_string(B);
      });
  const Index T = hidden.rows() / B;
  Mat first(B, hidden.cols());  // (B, d)
  for (Index b = 0; b < B; ++b) first.row(b) = hidden.row(b * T);
  return dense.forward(first).array().tanh().matrix();
}

/// A BERT checkpoint: the encoder and, when the file has one, the pooler.
template <class Scalar = float>
struct HfBert {
  EncoderOnlyModel<Scalar> model;
  BertPooler<Scalar> pooler;  // has_value() false without pooler.dense in the file
};

namespace detail {

/// One tensor of a Hugging Face checkpoint and where it lives in a model.
template <class Scalar>
struct HfTensor {
  std::string name;                                // without the "transformer." / "bert." prefix
  std::vector<Index> shape;                        // as the file holds it
  std::function<Matrix<Scalar>()> get;             // the model's value in the file's layout
  std::function<void(const Matrix<Scalar>&)> set;  // (rows, cols) of shape; 1-D as (1, n)
};

template <class Scalar>
using HfTable = std::vector<HfTensor<Scalar>>;

/// name <-> p, in the same layout (1-D for a vector parameter).
template <class Scalar>
void hf_direct(HfTable<Scalar>& t, const std::string& name, Param<Scalar>& p) {
  t.push_back(
      {name, p.shape(), [&p] { return p.value; }, [&p](const Matrix<Scalar>& m) { p.value = m; }});
}

/// name (in, out) <-> p (out, in): a Conv1D weight.
template <class Scalar>
void hf_transposed(HfTable<Scalar>& t, const std::string& name, Param<Scalar>& p) {
  t.push_back({name,
               {p.value.cols(), p.value.rows()},
               [&p] { return Matrix<Scalar>(p.value.transpose()); },
               [&p](const Matrix<Scalar>& m) { p.value = m.transpose(); }});
}

template <class Scalar>
void hf_layernorm(HfTable<Scalar>& t, const std::string& name, LayerNorm<Scalar>& ln) {
  hf_direct(t, name + ".weight", ln.weight);
  hf_direct(t, name + ".bias", ln.bias);
}

/// An nn.Linear (BERT) or, transposed, a Conv1D (GPT-2).
template <class Scalar>
void hf_linear(HfTable<Scalar>& t, const std::string& name, Linear<Scalar>& l, bool conv1d) {
  if (conv1d)
    hf_transposed(t, name + ".weight", l.weight);
  else
    hf_direct(t, name + ".weight", l.weight);
  hf_direct(t, name + ".bias", l.bias);
}

/// GPT-2's c_attn: weight (d, 3d) and bias (3d) holding q | k | v side by side.
template <class Scalar>
void hf_c_attn(HfTable<Scalar>& t, const std::string& name, Attention<Scalar>& a) {
  Linear<Scalar>* parts[3] = {&a.q_proj, &a.k_proj, &a.v_proj};
  const Index d = a.d_model();
  t.push_back({name + ".weight",
               {d, 3 * d},
               [=] {
                 Matrix<Scalar> m(d, 3 * d);
                 for (int j = 0; j < 3; ++j)
                   m.middleCols(j * d, d) = parts[j]->weight.value.transpose();
                 return m;
               },
               [=](const Matrix<Scalar>& m) {
                 for (int j = 0; j < 3; ++j)
                   parts[j]->weight.value = m.middleCols(j * d, d).transpose();
               }});
  t.push_back({name + ".bias",
               {3 * d},
               [=] {
                 Matrix<Scalar> m(1, 3 * d);
                 for (int j = 0; j < 3; ++j) m.middleCols(j * d, d) = parts[j]->bias.value;
                 return m;
               },
               [=](const Matrix<Scalar>& m) {
                 for (int j = 0; j < 3; ++j) parts[j]->bias.value = m.middleCols(j * d, d);
               }});
}

/// Every tensor of a GPT-2 checkpoint (GPT2Model's names) and its place in model.
template <class Scalar>
HfTable<Scalar> gpt2_table(DecoderOnlyLM<Scalar>& model) {
  HfTable<Scalar> t;
  hf_direct(t, "wte.weight", model.input.embedding.weight);
  hf_direct(t, "wpe.weight", model.input.learned.weight);
  for (size_t i = 0; i < model.stack.layers.size(); ++i) {
    EncoderLayer<Scalar>& l = model.stack.layers[i];
    const std::string h = "h." + std::to_string(i) + ".";
    hf_layernorm(t, h + "ln_1", l.attn_block.norm);
    hf_c_attn(t, h + "attn.c_attn", l.self_attn);
    hf_linear(t, h + "attn.c_proj", l.self_attn.out_proj, true);
    hf_layernorm(t, h + "ln_2", l.ffn_block.norm);
    hf_linear(t, h + "mlp.c_fc", l.ffn.linear1, true);
    hf_linear(t, h + "mlp.c_proj", l.ffn.linear2, true);
  }
  hf_layernorm(t, "ln_f", model.stack.final_norm);
  return t;
}

/// Every tensor of a BERT checkpoint (BertModel's names) and its place in bert.
template <class Scalar>
HfTable<Scalar> bert_table(HfBert<Scalar>& bert) {
  HfTable<Scalar> t;
  auto& in = bert.model.input;
  hf_direct(t, "embeddings.word_embeddings.weight", in.embedding.weight);
  hf_direct(t, "embeddings.position_embeddings.weight", in.learned.weight);
  hf_direct(t, "embeddings.token_type_embeddings.weight", in.token_type.weight);
  hf_layernorm(t, "embeddings.LayerNorm", in.norm);
  for (size_t i = 0; i < bert.model.stack.layers.size(); ++i) {
    EncoderLayer<Scalar>& l = bert.model.stack.layers[i];
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    hf_linear(t, p + "attention.self.query", l.self_attn.q_proj, false);
    hf_linear(t, p + "attention.self.key", l.self_attn.k_proj, false);
    hf_linear(t, p + "attention.self.value", l.self_attn.v_proj, false);
    hf_linear(t, p + "attention.output.dense", l.self_attn.out_proj, false);
    hf_layernorm(t, p + "attention.output.LayerNorm", l.attn_block.norm);
    hf_linear(t, p + "intermediate.dense", l.ffn.linear1, false);
    hf_linear(t, p + "output.dense", l.ffn.linear2, false);
    hf_layernorm(t, p + "output.LayerNorm", l.ffn_block.norm);
  }
  if (bert.pooler.has_value()) hf_linear(t, "pooler.dense", bert.pooler.dense, false);
  return t;
}

/// The model file and config.json of a checkpoint given as its directory or its .safetensors file
/// (config.json next to it).
struct HfPaths {
  std::string weights, config;
};

inline HfPaths hf_paths(std::string_view func, const std::string& path_or_dir) {
  check_path(func, path_or_dir);
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path_or_dir, ec)) {
    const fs::path dir(path_or_dir);
    if (!fs::exists(dir / "model.safetensors") && fs::exists(dir / "model.safetensors.index.json"))
      throw_io(func, path_or_dir,
               "holds a sharded checkpoint (model.safetensors.index.json), which is not supported");
    if (!fs::exists(dir / "model.safetensors") && fs::exists(dir / "pytorch_model.bin"))
      throw_io(func, path_or_dir,
               "holds pytorch_model.bin but no model.safetensors: only safetensors files are read");
    return {(dir / "model.safetensors").string(), (dir / "config.json").string()};
  }
  const fs::path file(path_or_dir);
  return {path_or_dir, (file.parent_path() / "config.json").string()};
}

inline nlohmann::json read_hf_config(std::string_view func, const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_io(func, path, "cannot open for reading (config.json must sit next to the model)");
  try {
    nlohmann::json j = nlohmann::json::parse(in);
    if (!j.is_object()) throw_io(func, path, "is not a JSON object");
    return j;
  } catch (const nlohmann::json::exception& e) {
    throw_io(func, path, std::string("is not valid JSON: ") + e.what());
  }
}

/// config[key] as an integer > 0 (or fallback when absent or null and fallback > 0).
inline Index hf_int(std::string_view func, const std::string& path, const nlohmann::json& j,
                    const std::string& key, Index fallback = 0) {
  const auto it = j.find(key);
  if ((it == j.end() || it->is_null()) && fallback > 0) return fallback;
  if (it == j.end()) throw_io(func, path, "has no '" + key + "'");
  if (!it->is_number_integer() || it->get<long long>() <= 0)
    throw_io(func, path, "'" + key + "' is " + it->dump() + ", expected a positive integer");
  return static_cast<Index>(it->get<long long>());
}

/// config[key] as a number >= 0, or fallback when absent.
inline double hf_number(std::string_view func, const std::string& path, const nlohmann::json& j,
                        const std::string& key, double fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number() || it->get<double>() < 0)
    throw_io(func, path, "'" + key + "' is " + it->dump() + ", expected a number >= 0");
  return it->get<double>();
}

/// config[key] as a string, or fallback when absent.
inline std::string hf_string(std::string_view func, const std::string& path,
                             const nlohmann::json& j, const std::string& key,
                             const std::string& fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw_io(func, path, "'" + key + "' is " + it->dump() + ", not a string");
  return it->get<std::string>();
}

/// Throws unless config[key], when present, is `want` (a setting this library does not model).
inline void hf_require(std::string_view func, const std::string& path, const nlohmann::json& j,
                       const std::string& key, const nlohmann::json& want) {
  const auto it = j.find(key);
  if (it != j.end() && !it->is_null() && *it != want)
    throw_io(func, path,
             "'" + key + "' is " + it->dump() + ": only " + want.dump() + " is supported");
}

/// The activation transformers calls name.
inline Activation hf_activation(std::string_view func, const std::string& path,
                                const std::string& key, const std::string& name) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Activation::gelu_tanh;
  if (name == "gelu") return Activation::gelu_erf;
  if (name == "relu") return Activation::relu;
  throw_io(func, path,
           "'" + key + "' is \"" + name + "\": expected gelu_new, gelu_pytorch_tanh, gelu or relu");
}

inline const char* hf_activation_name(Activation a) {
  return a == Activation::gelu_tanh ? "gelu_new" : a == Activation::relu ? "relu" : "gelu";
}

/// Builds Model from c, an invalid config becoming an IoError naming the file.
template <class Model>
Model hf_build(std::string_view func, const std::string& path, const TransformerConfig& c) {
  Rng rng(0);  // every value is overwritten by the file's
  try {
    return Model(c, rng);
  } catch (const ArgumentError& e) {
    throw_io(func, path, std::string("describes a model this library cannot build: ") + e.what());
  }
}

/// The file's name of `name`: with the prefix, and LayerNorm.gamma / .beta for .weight / .bias
/// in files converted from TensorFlow; "" if the file has neither.
inline std::string hf_find(const SafetensorsHeader& h, const std::string& prefix,
                           const std::string& name) {
  if (h.tensors.count(prefix + name)) return prefix + name;
  const auto swap_suffix = [&](const std::string& from, const std::string& to) -> std::string {
    if (name.size() < from.size() || name.compare(name.size() - from.size(), from.size(), from))
      return "";
    const std::string alt = prefix + name.substr(0, name.size() - from.size()) + to;
    return h.tensors.count(alt) ? alt : "";
  };
  std::string alt = swap_suffix("LayerNorm.weight", "LayerNorm.gamma");
  if (alt.empty()) alt = swap_suffix("LayerNorm.bias", "LayerNorm.beta");
  return alt;
}

/// Reads the tensors of table from the safetensors file at path (names prefix + entry name)
/// into the model the table points into. Everything is checked first: every entry present with
/// its shape and a float dtype, every other tensor of the file skippable (skip(name)), and with
/// check_finite every value finite; then the values are set. Throws IoError naming the tensor.
/// h and data are the file's, from read_file.
template <class Scalar>
void load_hf_table(std::string_view func, const std::string& path, const HfTable<Scalar>& table,
                   const std::string& prefix, const std::function<bool(const std::string&)>& skip,
                   bool check_finite, const std::vector<unsigned char>& data,
                   const SafetensorsHeader& h) {
  std::set<std::string> used;
  std::string missing;
  for (const auto& e : table) {
    const std::string name = hf_find(h, prefix, e.name);
    if (name.empty()) {
      missing += (missing.empty() ? "'" : ", '") + prefix + e.name + "'";
      continue;
    }
    used.insert(name);
    const SafetensorsTensor& t = h.tensors.at(name);
    loadable_width(func, path, name, t);
    if (t.shape != e.shape)
      throw_io(func, path,
               "tensor '" + name + "': shape " + shape_list(t.shape) + " in the file, " +
                   shape_list(e.shape) + " expected from config.json");
  }
  if (!missing.empty()) throw_io(func, path, "missing tensors: " + missing);
  std::string unexpected;
  for (const auto& kv : h.tensors)
    if (!used.count(kv.first) && !skip(kv.first))
      unexpected += (unexpected.empty() ? "'" : ", '") + kv.first + "'";
  if (!unexpected.empty())
    throw_io(func, path, "unexpected tensors (not part of the model): " + unexpected);
  std::vector<Matrix<Scalar>> values;
  for (const auto& e : table) {
    const std::string name = hf_find(h, prefix, e.name);
    const Index rows = e.shape.size() == 2 ? e.shape[0] : 1;
    Matrix<Scalar> m(rows, e.shape.back());
    decode_tensor(data, h.tensors.at(name), m.data(), m.size());
    if (check_finite && !detail::all_finite(m))
      throw_io(func, path, "tensor '" + name + "' holds a NaN or an infinity");
    values.push_back(std::move(m));
  }
  for (size_t i = 0; i < table.size(); ++i) table[i].set(values[i]);
}

/// Whether name (in a file of prefix) is one of GPT-2's attention-mask buffers.
inline bool gpt2_buffer(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size() + 2, prefix + "h.") != 0) return false;
  const auto ends = [&](const std::string& s) {
    return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".attn.bias") || ends(".attn.masked_bias");
}

/// Writes text to path atomically (temporary file, fsync, rename), or throws IoError.
inline void write_text_file(std::string_view func, const std::string& path,
                            const std::string& text) {
  std::string tmp;
  Fd fd(create_temp(path, tmp));
  if (fd.get() < 0) throw_io(func, path, "cannot create a temporary file: " + errno_str());
  const bool ok =
      write_all(fd.get(), reinterpret_cast<const unsigned char*>(text.data()), text.size()) &&
      ::fsync(fd.get()) == 0 && fd.close() && std::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) {
    const std::string why = errno_str();
    ::unlink(tmp.c_str());
    throw_io(func, path, "writing failed: " + why);
  }
  sync_directory_of(path);
}

}  // namespace detail

/// The TransformerConfig of a GPT-2 config.json (n_embd, n_layer, n_head, n_positions or n_ctx,
/// vocab_size, n_inner (null: 4 n_embd), layer_norm_epsilon, activation_function, resid_pdrop):
/// pre-norm, learned positions, no embedding scaling, output tied to the token embedding, pad_id
/// -1. path names the file in errors. Throws IoError for a missing or malformed field, and for
/// settings the model does not have (scale_attn_weights false, scale_attn_by_inverse_layer_idx,
/// an untied head, a model_type other than gpt2).
inline TransformerConfig gpt2_config(const nlohmann::json& j, const std::string& path) {
  const char* func = "load_gpt2";
  detail::hf_require(func, path, j, "model_type", "gpt2");
  detail::hf_require(func, path, j, "scale_attn_weights", true);
  detail::hf_require(func, path, j, "scale_attn_by_inverse_layer_idx", false);
  detail::hf_require(func, path, j, "tie_word_embeddings", true);
  TransformerConfig c;
  c.vocab = detail::hf_int(func, path, j, "vocab_size");
  c.d_model = detail::hf_int(func, path, j, "n_embd");
  c.n_layers = detail::hf_int(func, path, j, "n_layer");
  c.n_heads = detail::hf_int(func, path, j, "n_head");
  c.max_len =
      detail::hf_int(func, path, j, "n_positions", detail::hf_int(func, path, j, "n_ctx", 1024));
  c.d_ff = detail::hf_int(func, path, j, "n_inner", 4 * c.d_model);
  c.eps = detail::hf_number(func, path, j, "layer_norm_epsilon", 1e-5);
  c.dropout = detail::hf_number(func, path, j, "resid_pdrop", 0.1);
  c.activation =
      detail::hf_activation(func, path, "activation_function",
                            detail::hf_string(func, path, j, "activation_function", "gelu_new"));
  c.norm = NormPlacement::pre;
  c.positional = PositionalKind::learned;
  c.scale_embeddings = false;
  c.tie_output = true;
  c.pad_id = -1;
  return c;
}

/// The TransformerConfig of a BERT config.json (hidden_size, num_hidden_layers,
/// num_attention_heads, intermediate_size, max_position_embeddings, type_vocab_size, vocab_size,
/// layer_norm_eps, hidden_act, hidden_dropout_prob, pad_token_id): post-norm, learned positions,
/// token types, the embedding LayerNorm, no embedding scaling, the output tied to the word
/// embedding. path names the file in errors. Throws IoError for a missing or malformed field or a
/// position_embedding_type other than absolute.
inline TransformerConfig bert_config(const nlohmann::json& j, const std::string& path) {
  const char* func = "load_bert";
  detail::hf_require(func, path, j, "position_embedding_type", "absolute");
  TransformerConfig c;
  c.vocab = detail::hf_int(func, path, j, "vocab_size");
  c.d_model = detail::hf_int(func, path, j, "hidden_size");
  c.n_layers = detail::hf_int(func, path, j, "num_hidden_layers");
  c.n_heads = detail::hf_int(func, path, j, "num_attention_heads");
  c.d_ff = detail::hf_int(func, path, j, "intermediate_size");
  c.max_len = detail::hf_int(func, path, j, "max_position_embeddings");
  c.type_vocab = detail::hf_int(func, path, j, "type_vocab_size", 2);
  c.eps = detail::hf_number(func, path, j, "layer_norm_eps", 1e-12);
  c.dropout = detail::hf_number(func, path, j, "hidden_dropout_prob", 0.1);
  c.activation = detail::hf_activation(func, path, "hidden_act",
                                       detail::hf_string(func, path, j, "hidden_act", "gelu"));
  const auto pad = j.find("pad_token_id");
  c.pad_id = pad == j.end() ? 0 : pad->is_number_integer() ? pad->get<Index>() : -1;
  c.norm = NormPlacement::post;
  c.positional = PositionalKind::learned;
  c.scale_embeddings = false;
  c.tie_output = true;
  c.input_norm = true;
  return c;
}

/// The encoder's last hidden states (B*T, d) of ids (B, T) with token types (B, T) (empty: all
/// 0), keys whose id is the pad id masked: transformers' last_hidden_state. Runs in the model's
/// mode (load_bert gives eval mode). Throws ArgumentError for empty ids, an id or token type out
/// of range or T beyond max_len.
template <class Scalar>
Matrix<Scalar> bert_hidden_states(EncoderOnlyModel<Scalar>& model, const IdMatrix& ids,
                                  const IdMatrix& token_types = IdMatrix()) {
  const char* func = "bert_hidden_states";
  detail::require(ids.rows() > 0 && ids.cols() > 0, func, "ids", [&] {
    return "has shape " + detail::shape_of(ids) + ", expected a non-empty (B, T)";
  });
  detail::check_embedding_ids(func, "ids", ids, model.config().vocab);
  AttentionMask mask;
  mask.key_padding = key_padding_mask(ids, model.config().pad_id);
  typename EncoderOnlyModel<Scalar>::Cache cache;
  const Matrix<Scalar> x = model.input.forward(ids, token_types, cache.input);
  return model.stack.forward(x, ids.rows(), mask, cache.stack);
}

/// Loads a GPT-2-family checkpoint in Hugging Face's layout: path_or_dir is a directory holding
/// model.safetensors and config.json, or the .safetensors file with config.json beside it. Names
/// with or without the "transformer." prefix; F32, F64, F16 and BF16 tensors (converted to
/// Scalar). Returns the model in eval mode (call train() to fine-tune), its config from
/// gpt2_config() with options.pad_id. Throws IoError naming the file and the tensor when a file
/// cannot be read, a field, name, shape or dtype does not fit (see the file comment for what is
/// skipped), or (options.check_finite) a weight is not finite; ArgumentError for an empty path.
template <class Scalar = float>
DecoderOnlyLM<Scalar> load_gpt2(const std::string& path_or_dir, const HfLoadOptions& options = {}) {
  const char* func = "load_gpt2";
  const detail::HfPaths paths = detail::hf_paths(func, path_or_dir);
  TransformerConfig c = gpt2_config(detail::read_hf_config(func, paths.config), paths.config);
  if (options.pad_id) c.pad_id = *options.pad_id;
  auto model = detail::hf_build<DecoderOnlyLM<Scalar>>(func, paths.config, c);
  std::vector<unsigned char> data;
  const SafetensorsHeader h = detail::read_file(func, paths.weights, data);
  const std::string prefix = h.tensors.count("transformer.wte.weight") ? "transformer." : "";
  if (!h.tensors.count(prefix + "wte.weight"))
    detail::throw_io(func, paths.weights,
                     "has no tensor 'wte.weight' or 'transformer.wte.weight': not GPT-2's layout");
  const auto skip = [&](const std::string& name) {
    return detail::gpt2_buffer(name, prefix) || name == "lm_head.weight";
  };
  detail::load_hf_table(func, paths.weights, detail::gpt2_table(model), prefix, skip,
                        options.check_finite, data, h);
  const auto head = h.tensors.find("lm_head.weight");
  if (head != h.tensors.end()) {  // a saved tied head: it must be the embedding
    const Matrix<Scalar>& wte = model.input.embedding.weight.value;
    Matrix<Scalar> m(wte.rows(), wte.cols());
    if (head->second.shape == std::vector<Index>{wte.rows(), wte.cols()})
      detail::decode_tensor(data, head->second, m.data(), m.size());
    if (head->second.shape != std::vector<Index>{wte.rows(), wte.cols()} || m != wte)
      detail::throw_io(func, paths.weights,
                       "tensor 'lm_head.weight' differs from the token embedding: an untied "
                       "output head is not supported");
  }
  model.eval();
  return model;
}

/// Writes model to dir/model.safetensors (F32, "transformer."-prefixed names, metadata
/// {"format": "pt"}) and dir/config.json (GPT2LMHeadModel's fields), creating dir if needed, each
/// file atomically: transformers' GPT2LMHeadModel.from_pretrained(dir) reads them. Throws
/// ArgumentError naming save_gpt2 and the config field unless the model has GPT-2's structure
/// (pre-norm, learned positions, tied output, no embedding scaling, dot-product attention, no
/// token types or input norm); IoError when a file cannot be written.
template <class Scalar>
void save_gpt2(const std::string& dir, DecoderOnlyLM<Scalar>& model) {
  const char* func = "save_gpt2";
  detail::check_path(func, dir);
  const TransformerConfig& c = model.config();
  const auto need = [&](bool ok, const char* field, const char* what) {
    detail::require(ok, func, field, std::string("must be ") + what + " for GPT-2's layout");
  };
  need(c.norm == NormPlacement::pre, "model.config().norm", "pre");
  need(c.positional == PositionalKind::learned, "model.config().positional", "learned");
  need(c.tie_output, "model.config().tie_output", "true");
  need(!c.scale_embeddings, "model.config().scale_embeddings", "false");
  need(c.attention == AttentionScoring::dot_product, "model.config().attention", "dot_product");
  need(c.type_vocab == 0, "model.config().type_vocab", "0");
  need(!c.input_norm, "model.config().input_norm", "false");
  const detail::HfTable<Scalar> table = detail::gpt2_table(model);
  std::vector<Param<Scalar>> values;  // the file's layout
  values.reserve(table.size());
  ParamList<Scalar> params;
  for (const auto& e : table) {
    values.emplace_back();
    values.back().value = e.get();
    values.back().is_vector = e.shape.size() == 1;
    params.push_back({"transformer." + e.name, &values.back()});
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) detail::throw_io(func, dir, "cannot create the directory: " + ec.message());
  nlohmann::json j = {{"architectures", {"GPT2LMHeadModel"}},
                      {"model_type", "gpt2"},
                      {"activation_function", detail::hf_activation_name(c.activation)},
                      {"vocab_size", c.vocab},
                      {"n_embd", c.d_model},
                      {"n_layer", c.n_layers},
                      {"n_head", c.n_heads},
                      {"n_inner", c.d_ff},
                      {"n_positions", c.max_len},
                      {"n_ctx", c.max_len},
                      {"layer_norm_epsilon", c.eps},
                      {"resid_pdrop", c.dropout},
                      {"embd_pdrop", c.dropout},
                      {"attn_pdrop", c.dropout},
                      {"initializer_range", 0.02},
                      {"scale_attn_weights", true},
                      {"tie_word_embeddings", true},
                      {"use_cache", true},
                      {"torch_dtype", "float32"}};
  if (c.vocab == 50257) j["bos_token_id"] = j["eos_token_id"] = 50256;  // GPT-2's <|endoftext|>
  const std::string base = (std::filesystem::path(dir) / "").string();
  save_safetensors(base + "model.safetensors", params, {{"format", "pt"}}, Dtype::F32);
  detail::write_text_file(func, base + "config.json", j.dump(2) + "\n");
}

/// Loads a BERT-family checkpoint in Hugging Face's layout (as load_gpt2: a directory or the
/// .safetensors file), names with or without the "bert." prefix, and the pooler when the file has
/// pooler.dense. The model is in eval mode, its config from bert_config() with options.pad_id;
/// its logits are hidden states times the word embeddings (not BERT's masked-LM head, which is
/// not loaded): use bert_hidden_states. Throws as load_gpt2.
template <class Scalar = float>
HfBert<Scalar> load_bert(const std::string& path_or_dir, const HfLoadOptions& options = {}) {
  const char* func = "load_bert";
  const detail::HfPaths paths = detail::hf_paths(func, path_or_dir);
  TransformerConfig c = bert_config(detail::read_hf_config(func, paths.config), paths.config);
  if (options.pad_id) c.pad_id = *options.pad_id;
  HfBert<Scalar> bert;
  bert.model = detail::hf_build<EncoderOnlyModel<Scalar>>(func, paths.config, c);
  std::vector<unsigned char> data;
  const SafetensorsHeader h = detail::read_file(func, paths.weights, data);
  const std::string prefix =
      h.tensors.count("bert.embeddings.word_embeddings.weight") ? "bert." : "";
  if (!h.tensors.count(prefix + "embeddings.word_embeddings.weight"))
    detail::throw_io(func, paths.weights,
                     "has no tensor 'embeddings.word_embeddings.weight' (with or without 'bert.'): "
                     "not BERT's layout");
  if (h.tensors.count(prefix + "pooler.dense.weight")) {
    Rng rng(0);
    bert.pooler = BertPooler<Scalar>(c.d_model, rng);
  }
  const auto skip = [&](const std::string& name) {
    return name == prefix + "embeddings.position_ids" || name.compare(0, 4, "cls.") == 0;
  };
  detail::load_hf_table(func, paths.weights, detail::bert_table(bert), prefix, skip,
                        options.check_finite, data, h);
  bert.model.eval();
  return bert;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_HUGGINGFACE_TEMPLATES(S)                                                      \
  EIGENFORMER_FOR(S, DecoderOnlyLM<S> load_gpt2<S>(const std::string&, const HfLoadOptions&))     \
  EIGENFORMER_FOR(S, void save_gpt2<S>(const std::string&, DecoderOnlyLM<S>&))                    \
  EIGENFORMER_FOR(S, HfBert<S> load_bert<S>(const std::string&, const HfLoadOptions&))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_HUGGINGFACE_TEMPLATES)
// clang-format on
EIGENFORMER_CLASS_TEMPLATES(BertPooler)

}  // namespace eigenformer
