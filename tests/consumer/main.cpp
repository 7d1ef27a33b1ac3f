// Includes the umbrella header and runs one layer: proof that a consumer builds and links. A small
// layer, since check.sh compiles this file header-only three times.
#include <eigenformer/eigenformer.hpp>

#include <iostream>

int main() {
  eigenformer::Rng rng(0);
  eigenformer::LayerNorm<float> norm(8);
  const eigenformer::Matrix<float> x = eigenformer::Matrix<float>::Ones(4, 8);
  const eigenformer::Matrix<float> y = norm.forward(x);
  std::cout << "consumer ok " << y.rows() << "x" << y.cols() << "\n";
  return y.allFinite() ? 0 : 1;
}
