// Bad input at the public entry points whose own test files do not show the message: each throws
// the library's exception naming the function, the argument, what was expected and what came,
// and a stateful entry point (a layer's backward, an optimizer's step, a load) leaves its object
// as it was.
//
// A test marked doctest::skip() documents a check that the entry point does not make yet (today
// the call reaches an Eigen assertion, or indexes out of range, in Release builds). Its comment
// says "needs:" and what to add; the header's owner adds the check and removes the skip.
#include <eigenformer/core/param.hpp>
#include <eigenformer/core/random.hpp>
#include <eigenformer/core/tensor.hpp>
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/io/checkpoint.hpp>
#include <eigenformer/layers/activation.hpp>
#include <eigenformer/layers/attention.hpp>
#include <eigenformer/layers/kv_cache.hpp>
#include <eigenformer/layers/linear.hpp>
#include <eigenformer/layers/positional.hpp>
#include <eigenformer/model/decode_state.hpp>
#include <eigenformer/model/language_models.hpp>
#include <eigenformer/model/transformer.hpp>
#include <eigenformer/ops/additive_attention.hpp>
#include <eigenformer/ops/attention.hpp>
#include <eigenformer/ops/flash_attention.hpp>
#include <eigenformer/ops/linear.hpp>
#include <eigenformer/ops/relative_position.hpp>
#include <eigenformer/ops/rotary.hpp>
#include <eigenformer/train/gradcheck.hpp>
#include <eigenformer/train/optim.hpp>
#include <limits>
#include <string>
#include <vector>

#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;
using eftest::check_throws_with;
using eftest::MatD;

namespace {

using Mat = Matrix<float>;

/// Every parameter value of a list, to compare before and after a call that throws.
template <class Scalar>
std::vector<Matrix<Scalar>> values_of(const ParamList<Scalar>& params) {
  std::vector<Matrix<Scalar>> out;
  for (const auto& p : params) out.push_back(p.param->value);
  return out;
}

template <class Scalar>
std::vector<Matrix<Scalar>> grads_of(const ParamList<Scalar>& params) {
  std::vector<Matrix<Scalar>> out;
  for (const auto& p : params) out.push_back(p.param->grad);
  return out;
}

/// f must throw ArgumentError with every fragment and leave every value and gradient as it was.
template <class Scalar, class F>
void check_throws_unchanged(const ParamList<Scalar>& params, F&& f,
                            const std::vector<std::string>& fragments) {
  const auto values = values_of(params), grads = grads_of(params);
  check_throws_with(f, fragments);
  CHECK(values_of(params) == values);
  CHECK(grads_of(params) == grads);
}

/// A tiny encoder-decoder: vocabularies of 8 and 9, 2 heads of 4, max_len 6.
TransformerConfig tiny_config() {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = 8;
  c.tgt_vocab = c.vocab = 9;
  c.d_ff = 16;
  c.n_encoder_layers = c.n_decoder_layers = c.n_layers = 1;
  c.max_len = 6;
  return c;
}

IdMatrix ids(Index rows, Index cols, Index value) { return IdMatrix::Constant(rows, cols, value); }

}  // namespace

// ---- core/tensor.hpp, core/param.hpp, core/random.hpp -------------------------------------

TEST_CASE("Batch constructors name the bad size or data shape") {
  check_throws_with([] { Batch<float>(0, 3, 4); },
                    {"eigenformer::Batch::Batch", "'B'", "must be positive, got 0"});
  check_throws_with([] { Batch<float>(2, -1, 4); }, {"Batch::Batch", "'T'", "got -1"});
  check_throws_with([] { Batch<float>(2, 3, 0); }, {"Batch::Batch", "'C'", "got 0"});
  check_throws_with([] { Batch<float>(Mat::Zero(5, 3), 2, 3); },
                    {"Batch::Batch", "'data'", "has shape (5, 3)", "expected (6, *)"});
}

TEST_CASE("Batch::seq and Batch::head reject an index outside the batch") {
  Batch<float> x(2, 3, 4);
  check_throws_with([&] { x.seq(2); }, {"Batch::seq", "'b'", "is 2", "0 <= b < 2"});
  check_throws_with([&] { x.head(0, 2, 2); }, {"Batch::head", "'h'", "is 2"});
}

TEST_CASE("Param and parameter-list helpers reject negative sizes and null pointers") {
  check_throws_with([] { Param<float>(-1, 2); }, {"Param::Param", "'rows'", "got -1"});
  const ParamList<float> with_null{{"w", nullptr}};
  check_throws_with([&] { zero_grad(with_null); }, {"zero_grad", "'params'", "'w'"});
  check_throws_with([&] { count_params(with_null); }, {"count_params", "'params'", "'w'"});
}

TEST_CASE("random helpers reject empty ranges and negative deviations") {
  Rng rng(1);
  Mat m(2, 2);
  check_throws_with([&] { rng.index(0); }, {"Rng::index", "'n'", "must be positive, got 0"});
  check_throws_with([&] { fill_uniform(m, 1.0, -1.0, rng); }, {"fill_uniform", "'hi'"});
  check_throws_with([&] { fill_normal(m, 0.0, -1.0, rng); }, {"fill_normal", "'stddev'", "-1"});
}

// ---- ops/linear.hpp, ops/attention.hpp, ops/flash_attention.hpp -----------------------------

TEST_CASE("linear ops reject mismatched shapes, changing no gradient") {
  Mat out, dinp;
  const Mat x = Mat::Ones(3, 4), w = Mat::Ones(2, 5), b = Mat::Ones(1, 2);
  check_throws_with([&] { linear_forward<float>(out, x, w, &b); },
                    {"linear_forward", "'inp'", "(3, 4)", "(*, 5)"});
  const Mat w4 = Mat::Ones(2, 4), b3 = Mat::Ones(1, 3);
  check_throws_with([&] { linear_forward<float>(out, x, w4, &b3); },
                    {"linear_forward", "'bias'", "(1, 3)", "(1, 2)"});
  Mat dw = Mat::Zero(2, 4);
  check_throws_with([&] { linear_backward<float>(dinp, &dw, nullptr, Mat::Ones(3, 3), x, w4); },
                    {"linear_backward", "'dout'", "(3, 3)", "(3, 2)"});
  CHECK(dw.isZero());
}

TEST_CASE("attention kernels reject inputs that do not match their dims") {
  AttentionDims d;
  d.B = 2, d.Tq = 3, d.Tk = 3, d.H = 2, d.dh = 2;
  const Mat q = Mat::Ones(5, 4), kv = Mat::Ones(6, 4);
  Mat out, probs, lse;
  check_throws_with([&] { attention_forward<float>(out, probs, q, kv, kv, d, {}); },
                    {"attention_forward", "'q'", "(5, 4)", "(6, 4)"});
  check_throws_with([&] { flash_attention_forward<float>(out, lse, q, kv, kv, d, {}); },
                    {"flash_attention_forward", "'q'", "(5, 4)", "(6, 4)"});
}

TEST_CASE("rotary ops reject a table that does not fit the heads") {
  check_throws_with([] { rotary_table<float>(0, 4, 3, 10000.0); },
                    {"rotary_table", "'dh'", "is 3", "even"});
  const RotaryTable<float> tab = rotary_table<float>(0, 4, 4, 10000.0);
  Mat x = Mat::Ones(8, 6);
  check_throws_with([&] { rotary_forward<float>(x, 2, tab); },
                    {"rotary_forward", "'x'", "(8, 6)", "(*, 8)"});
}

TEST_CASE("relative-position ops reject bucket settings and buckets outside the table") {
  check_throws_with([] { relative_position_bucket(3, true, 2, 8); },
                    {"relative_position_bucket", "'num_buckets'", "is 2"});
  Mat bias;
  const Mat table = Mat::Ones(4, 2);
  check_throws_with([&] { relative_bias_forward<float>(bias, table, {0, 7}); },
                    {"relative_bias_forward", "'buckets'", "7", "[0, 4)"});
}

// The pieces the layers call directly check their own arguments.
TEST_CASE("additive attention's public pieces reject mismatched shapes") {
  Mat a;
  check_throws_with(
      [&] { additive_score_projection<float>(a, Mat::Ones(3, 4), Mat::Ones(5, 2), nullptr, 2); },
      {"additive_score_projection", "'w'", "(5, 2)"});
  check_throws_with(
      [&] { additive_score_projection<float>(a, Mat::Ones(3, 5), Mat::Ones(4, 2), nullptr, 2); },
      {"additive_score_projection", "'x'", "(3, 5)", "(*, 4)"});
  AttentionDims d;
  d.B = 1, d.Tq = 2, d.Tk = 3, d.H = 2, d.dh = 2;
  Mat out, probs;
  check_throws_with(
      [&] {
        additive_attention_attend<float>(out, probs, Mat::Ones(2, 6), Mat::Ones(3, 4),
                                         Mat::Ones(3, 4), Mat::Ones(2, 3), d, {});
      },
      {"additive_attention_attend", "'ak'", "(3, 4)", "(3, 6)"});
}

TEST_CASE("KVCache accessors and append reject what does not fit, changing nothing") {
  KVCache<float> cache(2, 3, 4);
  check_throws_with([&] { cache.keys(2); }, {"KVCache::keys", "'b'", "is 2"});
  check_throws_with([&] { cache.append(Mat::Ones(3, 4), Mat::Ones(3, 4), BoolMatrix()); },
                    {"KVCache::append", "'k_new'", "(3, 4)"});
  CHECK(cache.len == 0);
}

// ---- layers -------------------------------------------------------------------------------

TEST_CASE("Linear::backward rejects a cache of another layer, changing no gradient") {
  Rng rng(2);
  Linear<float> a(4, 2, rng), other(5, 2, rng);
  Linear<float>::Cache cache;
  other.forward(Mat::Ones(3, 5), cache);
  check_throws_unchanged(a.parameters(), [&] { a.backward(Mat::Ones(3, 2), cache); },
                         {"Linear::backward", "'cache.x'", "(3, 5)", "(*, 4)"});
}

TEST_CASE("Attention: batch mismatch, head index and backward leave the layer as it was") {
  Rng rng(3);
  Attention<float> mha(8, 2, rng);
  Attention<float>::Cache cache;
  check_throws_with([&] { mha.forward(Mat::Ones(6, 8), Mat::Ones(4, 8), 3, {}, cache); },
                    {"Attention::forward", "'memory'", "4 rows", "B = 3"});
  mha.forward(Mat::Ones(6, 8), 2, {}, cache);
  check_throws_with([&] { mha.attention_weights(cache, 0, 2); },
                    {"Attention::attention_weights", "'h'", "is 2", "0 <= h < 2"});
  check_throws_unchanged(mha.parameters(), [&] { mha.backward(Mat::Ones(6, 7), cache); },
                         {"Attention::backward", "'dy'", "(6, 7)", "(6, 8)"});
}

TEST_CASE("Attention: scoring and d_attn are named; the additive kernel's backward checks dout") {
  Rng rng(9);
  const auto bogus = static_cast<AttentionScoring>(5);
  AttentionOptions options;
  options.scoring = bogus;
  check_throws_with(
      [&] { Attention<float>(8, 2, rng, options); },
      {"Attention::Attention", "'options.scoring'", "is 5", "not an AttentionScoring"});
  options.scoring = AttentionScoring::additive;
  options.additive_dim = -1;
  check_throws_with([&] { Attention<float>(8, 2, rng, options); },
                    {"Attention::Attention", "'options.additive_dim'", "must be >= 0", "got -1"});
  check_throws_with([&] { attention_scoring_name(bogus); },
                    {"attention_scoring_name", "'scoring'", "is 5"});

  AttentionDims d;
  d.B = 1, d.Tq = 2, d.Tk = 3, d.H = 2, d.dh = 2;
  const Mat q = Mat::Ones(2, 4), kv = Mat::Ones(3, 4);
  const Mat w_q = Mat::Ones(6, 2), w_k = Mat::Ones(6, 2), w = Mat::Ones(2, 3);
  const AdditiveScoreWeights<float> p{w_q, w_k, nullptr, w};
  Mat out, probs, dq, dk, dv, dw = Mat::Zero(2, 3);
  AdditiveAttentionCache<float> cache;
  additive_attention_forward<float>(out, probs, cache, q, kv, kv, p, d, {});
  AdditiveScoreGrads<float> grads;
  grads.w = &dw;
  check_throws_with(
      [&] {
        additive_attention_backward<float>(dq, dk, dv, grads, Mat::Ones(2, 3), probs, cache, q,
                                           kv, kv, p, d);
      },
      {"additive_attention_backward", "'dout'", "(2, 3)", "(2, 4)"});
  CHECK(dw.isZero());
}

TEST_CASE("positional_kind_name names a value that is not a PositionalKind") {
  check_throws_with([] { positional_kind_name(static_cast<PositionalKind>(9)); },
                    {"positional_kind_name", "'kind'", "is 9", "not a PositionalKind"});
}

// ---- model --------------------------------------------------------------------------------

TEST_CASE("Transformer rejects a bad config field by name") {
  Rng rng(4);
  auto with = [](auto change) {
    TransformerConfig c = tiny_config();
    change(c);
    return c;
  };
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.dropout = 1.0; }), rng); },
      {"Transformer::Transformer", "'config.dropout'", "must be in [0, 1)", "got 1"});
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.eps = 0.0; }), rng); },
      {"Transformer::Transformer", "'config.eps'", "must be positive"});
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.src_vocab = 0; }), rng); },
      {"Transformer::Transformer", "'config.src_vocab'", "must be positive, got 0"});
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.max_len = 0; }), rng); },
      {"Transformer::Transformer", "'config.max_len'", "got 0"});
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.pad_id = 9; }), rng); },
      {"Transformer::Transformer", "'config.pad_id'", "must be -1 or a valid id", "got 9"});
  check_throws_with(
      [&] { Transformer<float>(with([](TransformerConfig& c) { c.d_ff = 0; }), rng); },
      {"Transformer::Transformer", "'config.d_ff'", "got 0"});
}

TEST_CASE("Transformer: decode_step ids, backward's dlogits; nothing changes") {
  Rng rng(5);
  Transformer<float> model(tiny_config(), rng);
  const IdMatrix src = ids(2, 3, 3);
  DecodeState<float> state = model.begin_decode(src, 4);
  check_throws_with([&] { model.decode_step(ids(2, 1, 9), state); },
                    {"Transformer::decode_step", "'ids'", "has id 9", "outside [0, 9)"});
  CHECK(state.position == 0);

  Transformer<float>::Cache cache;
  model.forward(src, ids(2, 2, 4), cache);
  // The check is OutputHead::backward's, which runs first.
  check_throws_unchanged(model.parameters(), [&] { model.backward(Mat::Ones(4, 8), cache); },
                         {"OutputHead::backward", "'dlogits'", "(4, 8)", "(4, 9)"});
}

TEST_CASE("every backward names a cache that no forward filled, changing nothing") {
  // A newcomer's mistake: backward with a fresh cache reported "argument 'dlogits' has shape
  // (16, 10), expected (0, 10)". Every layer and model now says that the cache is empty.
  Rng rng(12);
  const TransformerConfig c = tiny_config();
  const std::vector<std::string> empty = {"'cache'", "is empty: no forward pass has filled it"};
  auto expect = [&](const char* func) {
    std::vector<std::string> out = empty;
    out.push_back(func);
    return out;
  };
  Transformer<float> transformer(c, rng);
  check_throws_unchanged(
      transformer.parameters(), [&] { transformer.backward(Mat::Ones(4, 9), {}); },
      expect("Transformer::backward"));
  DecoderOnlyLM<float> lm(c, rng);
  check_throws_unchanged(
      lm.parameters(), [&] { lm.backward(Mat::Ones(4, 9), {}); },
      expect("DecoderOnlyLM::backward"));
  EncoderOnlyModel<float> bert(c, rng);
  check_throws_unchanged(
      bert.parameters(), [&] { bert.backward(Mat::Ones(4, 9), {}); },
      expect("EncoderOnlyModel::backward"));
  const Mat dy = Mat::Ones(4, c.d_model);
  check_throws_with([&] { transformer.encoder.backward(dy, {}); }, expect("Encoder::backward"));
  check_throws_with([&] { transformer.decoder.backward(dy, {}); }, expect("Decoder::backward"));
  check_throws_with([&] { lm.stack.backward(dy, {}); }, expect("EncoderStack::backward"));
  check_throws_with([&] { lm.stack.layers[0].backward(dy, {}); }, expect("EncoderLayer::backward"));
  Mat dmemory;
  check_throws_with([&] { transformer.decoder.layers[0].backward(dy, {}, dmemory); },
                    expect("DecoderLayer::backward"));
  check_throws_with([&] { lm.input.backward(dy, {}); }, expect("TokenInput::backward"));
  check_throws_with([&] { lm.head.backward(Mat::Ones(4, 9), {}, lm.input.embedding); },
                    expect("OutputHead::backward"));
  check_throws_with([&] { lm.stack.layers[0].self_attn.backward(dy, {}); },
                    expect("Attention::backward"));
  check_throws_with([&] { lm.stack.layers[0].ffn.backward(dy, {}); },
                    expect("FeedForward::backward"));
  check_throws_with([&] { lm.stack.layers[0].ffn.linear1.backward(dy, {}); },
                    expect("Linear::backward"));
  check_throws_with([&] { lm.stack.layers[0].attn_block.norm.backward(dy, {}); },
                    expect("LayerNorm::backward"));
  check_throws_with(
      [&] { lm.stack.layers[0].attn_block.backward(dy, {}, [](const Mat& d) { return d; }); },
      expect("Residual::backward"));
  check_throws_with([&] { lm.stack.layers[0].attn_drop.backward(dy, {}); },
                    expect("Dropout::backward"));
  check_throws_with([&] { ActivationLayer<float>(Activation::gelu).backward(dy, {}); },
                    expect("ActivationLayer::backward"));
}

TEST_CASE("model building blocks name their own bad arguments") {
  Rng rng(10);
  LayerConfig lc = tiny_config().layer();
  lc.d_ff = 0;
  check_throws_with([&] { EncoderLayer<float>(lc, rng); },
                    {"EncoderLayer::EncoderLayer", "'config.d_ff'", "must be positive, got 0"});
  check_throws_with([&] { DecoderLayer<float>(lc, rng); },
                    {"DecoderLayer::DecoderLayer", "'config.d_ff'", "got 0"});

  Transformer<float> model(tiny_config(), rng);
  check_throws_with([&] { model.head.forward(Mat::Ones(2, 7), model.decoder.input.embedding); },
                    {"OutputHead::forward", "'h'", "(2, 7)", "(*, 8)"});
  check_throws_with(
      [&] { model.decoder.begin_decode(Mat::Ones(3, 8), 1, BoolMatrix(), 0); },
      {"Decoder::begin_decode", "'max_len'", "must be positive, got 0"});
  std::vector<KVCache<float>> caches;  // one per layer expected
  check_throws_with(
      [&] { model.encoder.stack.decode_step(Mat::Ones(1, 8), 1, caches); },
      {"EncoderStack::decode_step", "'caches'", "has 0 entries", "one per layer (1)"});
}

TEST_CASE("shift_right rejects targets without a column") {
  check_throws_with([] { shift_right(IdMatrix(2, 0), 1); },
                    {"shift_right", "'targets'", "(2, 0)"});
}

TEST_CASE("DecoderOnlyLM: config, ids, batch size and length are named") {
  Rng rng(6);
  TransformerConfig c = tiny_config();
  c.n_heads = 3;
  check_throws_with([&] { DecoderOnlyLM<float>(c, rng); },
                    {"DecoderOnlyLM::DecoderOnlyLM", "'config.n_heads'",
                     "must divide d_model: d_model 8, n_heads 3"});
  DecoderOnlyLM<float> lm(tiny_config(), rng);
  DecoderOnlyLM<float>::Cache cache;
  check_throws_with([&] { lm.forward(IdMatrix(0, 3), cache); },
                    {"DecoderOnlyLM::forward", "'ids'", "(0, 3)", "non-empty (B, T)"});
  check_throws_with([&] { lm.forward(ids(1, 2, -1), cache); },
                    {"DecoderOnlyLM::forward", "'ids'", "has id -1", "[0, 9)"});
  check_throws_with([&] { lm.begin_decode(0, 4); },
                    {"DecoderOnlyLM::begin_decode", "'B'", "must be positive, got 0"});
  check_throws_with([&] { lm.begin_decode(1, 7); },
                    {"DecoderOnlyLM::begin_decode", "'max_len'", "is 7", "1..6"});
}

TEST_CASE("DecoderOnlyLM::forward rejects a sequence beyond max_len even without a table") {
  Rng rng(11);
  TransformerConfig c = tiny_config();
  c.positional = PositionalKind::rotary;  // no positional table whose check would catch it
  DecoderOnlyLM<float> lm(c, rng);
  DecoderOnlyLM<float>::Cache cache;
  // The check is TokenInput::forward's, which runs before anything changes.
  check_throws_with([&] { lm.forward(ids(1, 7, 3), cache); },
                    {"TokenInput::forward", "'T'", "is 7", "beyond max_len 6"});
}

// ---- decode -------------------------------------------------------------------------------

TEST_CASE("KVCache: sizes and an unallocated cache are named") {
  check_throws_with([] { KVCache<float>(0, 4, 8); },
                    {"KVCache::reset", "'batch'", "must be positive, got 0"});
  KVCache<float> cache;
  check_throws_with([&] { cache.reset(1, 0, 8); }, {"KVCache::reset", "'max_len'", "got 0"});
  check_throws_with([&] { cache.check_room("f", "x", 1); },
                    {"eigenformer::f", "'cache'", "is not allocated"});
  CHECK(cache.B == 0);
}

TEST_CASE("greedy_decode and greedy_generate check their options against the model") {
  Rng rng(7);
  Transformer<float> model(tiny_config(), rng);
  const IdMatrix src = ids(1, 3, 3);
  check_throws_with([&] { greedy_decode(model, src, {/*bos*/ 9, 2, 4}); },
                    {"greedy_decode", "'options.bos'", "is 9", "[0, 9)"});
  check_throws_with([&] { greedy_decode(model, src, {1, /*eos*/ -1, 4}); },
                    {"greedy_decode", "'options.eos'", "is -1"});
  check_throws_with([&] { greedy_decode(model, src, {1, 2, /*max_len*/ 6}); },
                    {"greedy_decode", "'options.max_len'", "is 6", "1..5"});
  DecoderOnlyLM<float> lm(tiny_config(), rng);
  check_throws_with([&] { greedy_generate(lm, ids(1, 2, 3), 5); },
                    {"greedy_generate", "'n_new'", "is 5", "max_len 6"});
  check_throws_with([&] { greedy_generate(lm, ids(1, 2, 3), -1); },
                    {"greedy_generate", "'n_new'", "is -1"});
}

TEST_CASE("greedy_generate rejects an eos outside the vocabulary") {
  Rng rng(8);
  DecoderOnlyLM<float> lm(tiny_config(), rng);
  check_throws_with([&] { greedy_generate(lm, ids(1, 2, 3), 2, 9); },
                    {"greedy_generate", "'eos'", "is 9"});
}

// ---- train --------------------------------------------------------------------------------

TEST_CASE("SGD and Adam steps reject a parameter resized since construction, changing nothing") {
  Param<float> w(2, 3), b(1, 3, true);
  w.value.setConstant(1.0f);
  w.grad.setConstant(0.5f);
  const ParamList<float> params{{"w", &w}, {"b", &b}};
  check_throws_with([&] { SGD<float>(params, 0.1f, 0.9f, -1.0f); },
                    {"SGD::SGD", "'weight_decay'", "must be in [0, inf)", "got -1"});
  SGD<float> sgd(params, 0.1f, 0.9f);
  Adam<float> adam(params, 0.1f);
  b.grad.resize(1, 2);
  check_throws_with([&] { sgd.step(); },
                    {"SGD::step", "'params'", "'b'", "grad (1, 2)", "expected (1, 3)"});
  check_throws_with([&] { adam.step(); }, {"Adam::step", "'params'", "'b'", "(1, 3)"});
  CHECK(sgd.steps() == 0);
  CHECK(adam.steps() == 0);
  CHECK((w.value.array() == 1.0f).all());
}

TEST_CASE("clip_grad_norm and grads_finite reject null parameters") {
  Param<float> w(2, 2);
  const ParamList<float> with_null{{"w", &w}, {"gone", nullptr}};
  check_throws_with([&] { clip_grad_norm(with_null, 1.0f); },
                    {"clip_grad_norm", "'params'", "null pointer for 'gone'"});
  check_throws_with([&] { grads_finite(with_null); },
                    {"grads_finite", "'params'", "null pointer for 'gone'"});
  check_throws_with(
      [&] { clip_grad_norm(ParamList<float>{{"w", &w}}, std::numeric_limits<float>::infinity()); },
      {"clip_grad_norm", "'max_norm'", "must be positive and finite", "inf"});
}

TEST_CASE("check_gradient and projection reject mismatched shapes and bad options") {
  MatD x = MatD::Ones(2, 3);
  auto loss = [&] { return x.sum(); };
  check_throws_with([&] { check_gradient(x, MatD::Ones(3, 2), loss); },
                    {"check_gradient", "'analytic'", "(3, 2)", "(2, 3)"});
  GradCheckOptions opt;
  opt.eps = 0;
  check_throws_with([&] { check_gradient(x, MatD::Ones(2, 3), loss, opt); },
                    {"check_gradient", "'opt.eps'", "must be positive and finite", "got 0"});
  opt = {};
  opt.rtol = -1e-6;
  check_throws_with([&] { check_gradient(x, MatD::Ones(2, 3), loss, opt); },
                    {"check_gradient", "'opt.rtol'", "must be finite and >= 0", "-1e-06"});
  opt = {};
  opt.rtol = opt.atol = 0;
  check_throws_with([&] { check_gradient(x, MatD::Ones(2, 3), loss, opt); },
                    {"check_gradient", "'opt'", "rtol = atol = 0"});
  CHECK(x == MatD::Ones(2, 3));
  check_throws_with([] { projection(MatD::Ones(2, 3), MatD::Ones(3, 2)); },
                    {"projection", "'b'", "(3, 2)", "(2, 3)"});
}

// ---- io -----------------------------------------------------------------------------------

TEST_CASE("load_model of a missing file throws IoError naming the file") {
  bool threw = false;
  try {
    load_model<Transformer<float>>("/nonexistent/eigenformer-bad-input.safetensors");
  } catch (const IoError& e) {
    threw = true;
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find("/nonexistent/eigenformer-bad-input.safetensors") != std::string::npos);
    CHECK(msg.find("cannot open for reading") != std::string::npos);
  }
  CHECK(threw);
  check_throws_with([] { load_model<Transformer<float>>(""); }, {"'path'", "is empty"});
}
