// Must NOT compile: loss targets of another type than IdMatrix. The compiler's message must say
// how to convert them (tests/CMakeLists.txt checks it), not list overload candidates.
#include <eigenformer/train/loss.hpp>

int main() {
  eigenformer::CrossEntropyCache<float> cache;
  eigenformer::Matrix<float> logits(3, 5);
  Eigen::MatrixXi targets(1, 3);
  eigenformer::cross_entropy_forward(cache, logits, targets);
}
