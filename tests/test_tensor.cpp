// core/tensor.hpp: the batch layout and the conversions of token ids from other containers.
#include <eigenformer/core/tensor.hpp>
#include <vector>

#include "test_util.hpp"

using namespace eigenformer;

TEST_CASE("to_ids converts Eigen integer matrices and rows of ints, and names a ragged row") {
  Eigen::MatrixXi col_major(2, 3);  // column-major int, as Eigen's default
  col_major << 1, 2, 3, 4, 5, 6;
  const IdMatrix ids = to_ids(col_major);
  CHECK(ids.rows() == 2);
  CHECK(ids(1, 0) == 4);
  CHECK(ids(0, 2) == 3);
  const std::vector<std::vector<int>> rows{{1, 2, 3}, {4, 5, 6}};
  CHECK(to_ids(rows) == ids);
  CHECK(to_ids(std::vector<std::vector<int>>{}).size() == 0);
  eftest::check_throws_with(
      [&] {
        to_ids(std::vector<std::vector<int>>{{1, 2}, {3}});
      },
      {"to_ids", "'rows'", "row 1 of length 1", "expected 2"});
}

TEST_CASE("Batch views sequences and heads of the (B*T, C) layout without copies") {
  Batch<float> x(2, 3, 4);
  x.data().setRandom();
  CHECK(x.seq(1).rows() == 3);
  CHECK(&x.seq(1)(0, 0) == &x.data()(3, 0));
  CHECK(&x.head(1, 1, 2)(0, 0) == &x.data()(3, 2));
}
