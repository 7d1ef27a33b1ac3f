// Includes the umbrella header and runs one layer: proof that a consumer builds and links.
#include <eigenformer/eigenformer.hpp>

#include <iostream>

int main() {
  eigenformer::Rng rng(0);
  eigenformer::Attention<float> attn(8, 2, rng);
  eigenformer::Attention<float>::Cache cache;
  eigenformer::AttentionMask mask;
  mask.causal = true;
  const eigenformer::Matrix<float> x = eigenformer::Matrix<float>::Ones(4, 8);
  const eigenformer::Matrix<float> y = attn.forward(x, 1, mask, cache);
  std::cout << "consumer ok " << y.rows() << "x" << y.cols() << "\n";
  return y.allFinite() ? 0 : 1;
}
