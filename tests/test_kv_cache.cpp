// Incremental decoding with key/value caches (layers/kv_cache.hpp and the decode_step methods of
// the attention layer and the models): every step's logits equal a full forward over the prefix,
// greedy decoding returns what the old full-recompute loop returned, and overflow is rejected.
#include <eigenformer/decode/greedy.hpp>
#include <eigenformer/layers/kv_cache.hpp>
#include <eigenformer/model/decode_state.hpp>
#include <eigenformer/model/language_models.hpp>
#include <eigenformer/model/transformer.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "attention_cases.hpp"
#include "model_cases.hpp"
#include "test_util.hpp"

using namespace eigenformer;

namespace {

struct Variant {
  NormPlacement norm;
  PositionalKind positional;
  bool tie;
  const char* name;
};

const Variant kVariants[] = {
    {NormPlacement::post, PositionalKind::sinusoidal, false, "post-norm, sinusoidal"},
    {NormPlacement::post, PositionalKind::learned, true, "post-norm, learned, tied"},
    {NormPlacement::pre, PositionalKind::sinusoidal, true, "pre-norm, sinusoidal, tied"},
    {NormPlacement::pre, PositionalKind::learned, false, "pre-norm, learned"},
};

TransformerConfig small_config(const Variant& v) {
  TransformerConfig c = eftest::tiny_config();
  c.src_vocab = 11;
  c.tgt_vocab = c.vocab = 13;
  c.d_model = 16;
  c.n_heads = 4;
  c.d_ff = 24;
  c.dropout = 0.1;  // eval() turns it off
  c.max_len = 20;
  c.norm = v.norm;
  c.positional = v.positional;
  c.tie_output = v.tie;
  return c;
}

/// Largest |a - b| relative to the largest |b| (at least 1).
template <class Scalar>
double rel_diff(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double scale = std::max(1.0, double(b.cwiseAbs().maxCoeff()));
  return double((a - b).cwiseAbs().maxCoeff()) / scale;
}

/// Rows b*T + t0 .. b*T + t0 + n - 1 of each of B sequences of T rows: (B*n, C).
template <class Scalar>
Matrix<Scalar> rows_of(const Matrix<Scalar>& m, Index B, Index T, Index t0, Index n) {
  Matrix<Scalar> out(B * n, m.cols());
  for (Index b = 0; b < B; ++b) out.middleRows(b * n, n) = m.middleRows(b * T + t0, n);
  return out;
}

// Decoder input: BOS (1), then tokens; sequence 1 holds a padding id at position 3, which the
// full pass masks as a key: the cache must keep masking it in later steps.
IdMatrix decoder_input() {
  IdMatrix tgt(2, 8);
  tgt << 1, 5, 7, 2, 9, 11, 4, 3,  //
      1, 12, 6, 0, 8, 3, 10, 5;
  return tgt;
}

/// The greedy decoding loop as it was before the KV cache: the decoder reruns over the whole
/// prefix at every step.
template <class Scalar>
IdMatrix reference_greedy_decode(Transformer<Scalar>& model, const IdMatrix& src,
                                 const GreedyOptions& opt,
                                 typename Transformer<Scalar>::Cache* last = nullptr) {
  typename Transformer<Scalar>::Cache cache;
  const Matrix<Scalar> memory = model.encode(src, cache.encoder);
  const Index B = src.rows();
  IdMatrix prefix = IdMatrix::Constant(B, 1, opt.bos);
  std::vector<bool> done(size_t(B), false);
  Index n_done = 0;
  for (Index t = 0; t < opt.max_len && n_done < B; ++t) {
    const Matrix<Scalar> logits = model.decode(prefix, src, memory, cache);
    prefix.conservativeResize(B, t + 2);
    for (Index b = 0; b < B; ++b) {
      Index next = opt.eos;
      if (!done[size_t(b)]) logits.row(b * (t + 1) + t).maxCoeff(&next);
      prefix(b, t + 1) = next;
      if (!done[size_t(b)] && next == opt.eos) {
        done[size_t(b)] = true;
        ++n_done;
      }
    }
  }
  if (last) *last = std::move(cache);
  return prefix.rightCols(prefix.cols() - 1);
}

/// greedy_generate as it was before the KV cache.
template <class Scalar>
IdMatrix reference_greedy_generate(DecoderOnlyLM<Scalar>& model, const IdMatrix& prompt,
                                   Index n_new, Index eos = -1) {
  IdMatrix seq = prompt;
  const Index B = prompt.rows();
  std::vector<bool> done(size_t(B), false);
  typename DecoderOnlyLM<Scalar>::Cache cache;
  for (Index step = 0; step < n_new; ++step) {
    const Index T = seq.cols();
    const Matrix<Scalar> logits = model.forward(seq, cache);
    seq.conservativeResize(B, T + 1);
    bool all_done = true;
    for (Index b = 0; b < B; ++b) {
      Index next = eos;
      if (!done[size_t(b)]) logits.row(b * T + T - 1).maxCoeff(&next);
      seq(b, T) = next;
      if (eos >= 0 && next == eos) done[size_t(b)] = true;
      all_done = all_done && done[size_t(b)];
    }
    if (all_done) break;
  }
  return seq;
}

/// Encoder-decoder: feed tgt in chunks of the given sizes; after each chunk compare the chunk's
/// logits with the matching rows of a full decode over the prefix.
template <class Scalar>
void check_seq2seq_steps(Transformer<Scalar>& model, const std::vector<Index>& chunks,
                         double tol) {
  const IdMatrix src = eftest::padded_source(), tgt = decoder_input();
  const Index B = src.rows();
  typename Encoder<Scalar>::Cache enc;
  const Matrix<Scalar> memory = model.encode(src, enc);
  DecodeState<Scalar> state = model.begin_decode(src, memory, tgt.cols());
  Index pos = 0;
  for (Index n : chunks) {
    const Matrix<Scalar> step = model.decode_step(tgt.middleCols(pos, n), state);  // (B*n, V)
    typename Transformer<Scalar>::Cache cache;
    const Matrix<Scalar> full = model.decode(tgt.leftCols(pos + n), src, memory, cache);
    INFO("positions " << pos << ".." << pos + n - 1);
    CHECK(rel_diff(step, rows_of(full, B, pos + n, pos, n)) <= tol);
    pos += n;
    CHECK(state.position == pos);
  }
}

/// Decoder-only: the same with a prompt that holds a padding id.
template <class Scalar>
void check_lm_steps(DecoderOnlyLM<Scalar>& model, const std::vector<Index>& chunks, double tol) {
  IdMatrix seq(2, 9);
  seq << 4, 7, 1, 9, 12, 3, 3, 8, 5,  //
      0, 6, 2, 11, 5, 0, 10, 1, 7;
  const Index B = seq.rows();
  DecodeState<Scalar> state = model.begin_decode(B, seq.cols());
  Index pos = 0;
  for (Index n : chunks) {
    const Matrix<Scalar> step = model.decode_step(seq.middleCols(pos, n), state);
    typename DecoderOnlyLM<Scalar>::Cache cache;
    const Matrix<Scalar> full = model.forward(seq.leftCols(pos + n), cache);
    INFO("positions " << pos << ".." << pos + n - 1);
    CHECK(rel_diff(step, rows_of(full, B, pos + n, pos, n)) <= tol);
    pos += n;
  }
}

}  // namespace

TEST_CASE("Attention: cached steps equal a full causal forward; cached memory equals "
          "cross-attention") {
  Rng rng(7);
  Attention<double> mha(8, 2, rng);
  const Index B = 2, T = 6, S = 4;
  const eftest::MatD x = eftest::random_matrix(B * T, 8, rng);
  const eftest::MatD mem = eftest::random_matrix(B * S, 8, rng);
  BoolMatrix pad = BoolMatrix::Constant(B, T, false);
  pad(1, 1) = pad(0, 4) = true;
  AttentionMask mask;
  mask.causal = true;
  mask.key_padding = pad;
  Attention<double>::Cache c;
  const eftest::MatD full = mha.forward(x, B, mask, c);

  KVCache<double> cache(B, T, 8);
  Index pos = 0;
  for (Index n : {2, 1, 3}) {
    eftest::MatD xn(B * n, 8);
    for (Index b = 0; b < B; ++b) xn.middleRows(b * n, n) = x.middleRows(b * T + pos, n);
    const eftest::MatD y = mha.forward_step(xn, B, cache, pad.middleCols(pos, n));
    CHECK(rel_diff(y, rows_of(full, B, T, pos, n)) <= 1e-12);
    pos += n;
  }
  CHECK(cache.len == T);

  BoolMatrix src_pad = BoolMatrix::Constant(B, S, false);
  src_pad(1, 3) = src_pad(1, 2) = true;
  AttentionMask cross;
  cross.key_padding = src_pad;
  const eftest::MatD expected = mha.forward(x, mem, B, cross, c);
  KVCache<double> memory;
  mha.cache_memory(mem, B, src_pad, memory);
  CHECK(memory.len == S);
  CHECK(rel_diff(mha.forward_cached_memory(x, B, memory), expected) <= 1e-12);
}

TEST_CASE_TEMPLATE("Attention with rotary or relative positions: cached steps equal a "
                   "full causal forward",
                   Scalar, float, double) {
  const double tol = std::is_same<Scalar, float>::value ? 2e-5 : 1e-12;
  AttentionPositions rotary, relative, causal_relative;
  rotary.kind = PositionalKind::rotary;
  relative.kind = causal_relative.kind = PositionalKind::relative;
  relative.num_buckets = 8;  // bidirectional; distances beyond 4 share the last bucket
  relative.max_distance = 4;
  causal_relative.num_buckets = 6;
  causal_relative.max_distance = 5;
  causal_relative.bidirectional = false;
  for (const AttentionPositions& positions : {rotary, relative, causal_relative}) {
    CAPTURE(int(positions.kind));
    CAPTURE(positions.bidirectional);
    Rng rng(8);
    Attention<Scalar> mha(8, 2, rng, eftest::positioned(positions));
    if (positions.kind == PositionalKind::relative)  // one bias scale with the scores
      fill_normal(param_named(mha.parameters(), "relative_bias").value, 0.0, 1.0, rng);
    const Index B = 2, T = 9;
    const Matrix<Scalar> x = eftest::random_matrix<Scalar>(B * T, 8, rng);
    BoolMatrix pad = BoolMatrix::Constant(B, T, false);
    pad(1, 1) = pad(0, 4) = pad(1, 7) = true;
    AttentionMask mask;
    mask.causal = true;
    mask.key_padding = pad;
    typename Attention<Scalar>::Cache c;
    const Matrix<Scalar> full = mha.forward(x, B, mask, c);
    KVCache<Scalar> cache(B, T, 8);
    Index pos = 0;
    for (Index n : {2, 1, 3, 1, 2}) {
      Matrix<Scalar> xn(B * n, 8);
      for (Index b = 0; b < B; ++b) xn.middleRows(b * n, n) = x.middleRows(b * T + pos, n);
      const Matrix<Scalar> y = mha.forward_step(xn, B, cache, pad.middleCols(pos, n));
      INFO("positions " << pos << ".." << pos + n - 1);
      CHECK(rel_diff(y, rows_of(full, B, T, pos, n)) <= tol);
      pos += n;
    }
    CHECK(cache.len == T);
  }
}

TEST_CASE("encoder-decoder: incremental logits equal the full-prefix recompute at every step") {
  for (const Variant& v : kVariants) {
    CAPTURE(v.name);
    {  // float, one token per step
      Rng rng(11);
      Transformer<float> model(small_config(v), rng);
      model.eval();
      check_seq2seq_steps(model, {1, 1, 1, 1, 1, 1, 1, 1}, 2e-5);
    }
    {  // double, chunks of several tokens (causal inside a chunk)
      Rng rng(12);
      Transformer<double> model(small_config(v), rng);
      model.eval();
      check_seq2seq_steps(model, {3, 1, 2, 2}, 1e-12);
    }
  }
}

TEST_CASE("decoder-only: incremental logits equal the full-prefix recompute at every step") {
  for (const Variant& v : kVariants) {
    CAPTURE(v.name);
    {  // float, a prompt then one token per step
      Rng rng(21);
      DecoderOnlyLM<float> model(small_config(v), rng);
      model.eval();
      check_lm_steps(model, {3, 1, 1, 1, 1, 1, 1}, 2e-5);
    }
    {  // double, chunks
      Rng rng(22);
      DecoderOnlyLM<double> model(small_config(v), rng);
      model.eval();
      check_lm_steps(model, {1, 4, 2, 2}, 1e-12);
    }
  }
}

TEST_CASE("greedy decoding with the KV cache returns what the full-recompute loop returned") {
  for (const Variant& v : kVariants) {
    CAPTURE(v.name);
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
      CAPTURE(seed);
      Rng rng(100 + seed);
      Transformer<float> model(small_config(v), rng);
      model.eval();
      GreedyOptions opt;
      opt.max_len = 12;
      if (seed == 2) opt.eos = 5;  // some sequences stop early
      const IdMatrix src = eftest::padded_source();
      typename Transformer<float>::Cache ref_last, last;
      const IdMatrix expected = reference_greedy_decode(model, src, opt, &ref_last);
      CHECK(greedy_decode(model, src, opt) == expected);
      CHECK(greedy_decode(model, src, opt, &last) == expected);
      // `last` holds the final full decoder pass, as before (translate --attention reads it).
      const auto& a = last.decoder.layers.back().cross_attn;
      const auto& r = ref_last.decoder.layers.back().cross_attn;
      CHECK(a.dims.Tq == r.dims.Tq);
      CHECK(a.dims.Tk == r.dims.Tk);
      CHECK(a.score.probs == r.score.probs);

      DecoderOnlyLM<float> lm(small_config(v), rng);
      lm.eval();
      IdMatrix prompt(2, 3);
      prompt << 4, 7, 9,  //
          0, 6, 2;
      CHECK(greedy_generate(lm, prompt, 10) == reference_greedy_generate(lm, prompt, 10));
      CHECK(greedy_generate(lm, prompt, 10, 3) == reference_greedy_generate(lm, prompt, 10, 3));
      CHECK(greedy_generate(lm, prompt, 0) == prompt);
    }
  }
}

TEST_CASE("the KV cache rejects positions beyond its max_len") {
  Rng rng(5);
  const Variant v = kVariants[0];
  Transformer<float> model(small_config(v), rng);
  model.eval();
  const IdMatrix src = eftest::padded_source();
  DecodeState<float> state = model.begin_decode(src, 3);
  const IdMatrix two = IdMatrix::Constant(2, 2, 4), one = IdMatrix::Constant(2, 1, 4);
  model.decode_step(two, state);
  eftest::check_throws_with([&] { model.decode_step(two, state); },
                            {"Decoder::decode_step", "adds 2 positions", "holding 2 of max_len 3"});
  CHECK(state.position == 2);  // nothing changed
  CHECK(state.self[0].len == 2);
  model.decode_step(one, state);
  eftest::check_throws_with([&] { model.decode_step(one, state); },
                            {"Decoder::decode_step", "adds 1 positions", "holding 3 of max_len 3"});
  eftest::check_throws_with([&] { model.begin_decode(src, 21); },
                            {"Transformer::begin_decode", "max_len", "is 21", "1..20"});
  eftest::check_throws_with([&] { model.decode_step(IdMatrix::Constant(3, 1, 4), state); },
                            {"Decoder::decode_step", "ids", "(3, 1)"});

  DecoderOnlyLM<float> lm(small_config(v), rng);
  DecodeState<float> lm_state = lm.begin_decode(1, 4);
  lm.decode_step(IdMatrix::Constant(1, 4, 3), lm_state);
  eftest::check_throws_with([&] { lm.decode_step(IdMatrix::Constant(1, 1, 3), lm_state); },
                            {"DecoderOnlyLM::decode_step", "holding 4 of max_len 4"});
  eftest::check_throws_with([&] { greedy_generate(lm, IdMatrix(1, 0), 2); },
                            {"greedy_generate", "prompt", "(1, 0)"});
  EncoderOnlyModel<float> bert(small_config(v), rng);
  eftest::check_throws_with([&] { bert.begin_decode(1, 4); },
                            {"EncoderOnlyModel::begin_decode", "not causal"});

  Attention<float> mha(16, 4, rng);
  KVCache<float> cache(1, 2, 16);
  eftest::check_throws_with(
      [&] { mha.forward_step(Matrix<float>::Zero(3, 16), 1, cache); },
      {"Attention::forward_step", "x_new", "adds 3 positions", "holding 0 of max_len 2"});
  eftest::check_throws_with([&] { mha.forward_step(Matrix<float>::Zero(2, 16), 2, cache); },
                            {"Attention::forward_step", "cache", "holds 1 sequences"});

  // The cache itself: sequence indices, and appends that do not fit leave it as it was.
  KVCache<float> kv(2, 3, 4);
  const Matrix<float> kv_rows = Matrix<float>::Ones(4, 4);
  kv.append(kv_rows, kv_rows, BoolMatrix());
  eftest::check_throws_with([&] { kv.keys(2); }, {"KVCache::keys", "'b'", "is 2", "0 <= b < 2"});
  eftest::check_throws_with([&] { kv.values(-1); }, {"KVCache::values", "'b'", "is -1"});
  eftest::check_throws_with([&] { kv.any_padding(2); }, {"KVCache::any_padding", "'b'"});
  eftest::check_throws_with([&] { kv.append(Matrix<float>::Ones(3, 4), kv_rows, BoolMatrix()); },
                            {"KVCache::append", "'k_new'", "(3, 4)", "B = 2"});
  eftest::check_throws_with([&] { kv.append(kv_rows, Matrix<float>::Ones(4, 5), BoolMatrix()); },
                            {"KVCache::append", "'v_new'", "(4, 5)", "(4, 4)"});
  eftest::check_throws_with([&] { kv.append(kv_rows, kv_rows, BoolMatrix::Zero(2, 1)); },
                            {"KVCache::append", "'pad_new'", "(2, 1)", "(2, 2)"});
  eftest::check_throws_with([&] { kv.append(kv_rows, kv_rows, BoolMatrix()); },
                            {"KVCache::append", "'k_new'", "adds 2 positions", "holding 2"});
  CHECK(kv.len == 2);
  eftest::check_throws_with([&] { KVCache<float>().append(kv_rows, kv_rows, BoolMatrix()); },
                            {"KVCache::append", "'cache'", "not allocated"});
}

TEST_CASE("KVCache::drop_front keeps the newest positions at the front and counts the dropped") {
  KVCache<double> cache(2, 4, 3, 2);
  Matrix<double> k(2 * 3, 3), v(2 * 3, 2);
  for (Index i = 0; i < k.rows(); ++i) k.row(i).setConstant(double(i)), v.row(i).setConstant(-i);
  BoolMatrix pad = BoolMatrix::Zero(2, 3);
  pad(1, 1) = true;
  cache.append(k, v, pad);
  cache.drop_front(2);
  CHECK(cache.len == 1);
  CHECK(cache.offset == 2);
  CHECK(cache.room() == 3);
  CHECK(cache.keys(0)(0, 0) == 2.0);   // sequence 0's third position
  CHECK(cache.values(1)(0, 0) == -5.0);  // sequence 1's third position
  CHECK(!cache.any_padding(1));        // its padded second position is gone
  eftest::check_throws_with([&] { cache.drop_front(2); },
                            {"KVCache::drop_front", "'n'", "is 2", "len = 1"});
  CHECK(cache.len == 1);
  cache.clear();
  CHECK(cache.offset == 0);
}
