// Must NOT compile: token ids of another type passed to a model. The compiler's message must say
// how to convert them (tests/CMakeLists.txt checks it), not come from deep inside Eigen.
#include <eigenformer/model/language_models.hpp>

int main() {
  eigenformer::Rng rng(1);
  eigenformer::TransformerConfig c;
  c.vocab = 5;
  eigenformer::DecoderOnlyLM<float> lm(c, rng);
  Eigen::MatrixXi ids(1, 3);
  eigenformer::DecoderOnlyLM<float>::Cache cache;
  lm.forward(ids, cache);
}
