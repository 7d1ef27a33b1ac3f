// Must NOT compile: prompts of another id type passed to generate(). The compiler's message must
// say how to convert them (tests/CMakeLists.txt checks it), not list every overload.
#include <eigenformer/decode/generate.hpp>

int main() {
  eigenformer::Rng rng(1);
  eigenformer::TransformerConfig c;
  c.vocab = 5;
  eigenformer::DecoderOnlyLM<float> lm(c, rng);
  std::vector<std::vector<int>> prompts{{1, 2}};
  eigenformer::generate(lm, prompts, eigenformer::GenerateOptions{}, rng);
}
