// The umbrella header compiles on its own, in float and double.
#include <eigenformer/eigenformer.hpp>

#include <doctest/doctest.h>

TEST_CASE_TEMPLATE("the umbrella header gives every model", Scalar, float, double) {
  eigenformer::Rng rng(0);
  eigenformer::TransformerConfig c;
  c.src_vocab = 7;
  c.tgt_vocab = 9;
  c.d_model = 8;
  c.n_heads = 2;
  c.d_ff = 16;
  c.n_encoder_layers = c.n_decoder_layers = 1;
  eigenformer::Transformer<Scalar> t(c, rng);
  eigenformer::DecoderOnlyLM<Scalar> lm(c, rng);
  eigenformer::EncoderOnlyModel<Scalar> enc(c, rng);
  CHECK(eigenformer::count_params(t.parameters()) > 0);
  CHECK(eigenformer::count_params(lm.parameters()) > 0);
  CHECK(eigenformer::count_params(enc.parameters()) > 0);
}
