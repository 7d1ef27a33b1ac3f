// A project linking eigenformer::mpi: starts MPI, checks that every rank holds the same model and
// sums a gradient across ranks (run alone: one rank).
#include <eigenformer/dist/data_parallel.hpp>
#include <eigenformer/eigenformer.hpp>
#include <iostream>

int main(int argc, char** argv) {
  eigenformer::dist::Environment env(argc, argv);
  const eigenformer::dist::Communicator comm;
  return eigenformer::dist::run_or_abort(comm, [&] {
    eigenformer::Rng rng(0);
    eigenformer::LayerNorm<float> norm(8);
    eigenformer::dist::GradientReducer<float> reducer(comm, norm.parameters());
    norm.parameters()[0].param->grad.setOnes();
    (void)reducer.begin(norm.parameters());
    reducer.finish();
    const float sum = norm.parameters()[0].param->grad(0, 0);
    comm.on_root([&] { std::cout << "consumer_mpi ok on " << comm.size() << " rank(s)\n"; });
    return sum == float(comm.size()) ? 0 : 1;
  });
}
