// One process, or data-parallel training over the processes of mpirun when the examples are built
// with -DEIGENFORMER_MPI=ON (EIGENFORMER_EXAMPLE_MPI): `mpirun -np N translate train ...` trains
// on the same global batches, each process on its rows (dist/data_parallel.hpp). Rank 0 prints,
// evaluates and writes; the others wait for it. Without MPI this is the plain training step.
#pragma once

#include <cstdio>
#include <eigenformer/eigenformer.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#ifdef EIGENFORMER_EXAMPLE_MPI
#include <eigenformer/dist/data_parallel.hpp>
#endif

namespace cli {

/// The processes of this run: MPI's (started here) when built with it, else just this one.
class Processes {
 public:
  /// Starts MPI when built with it (mpirun or not: alone, a process is rank 0 of 1). Only rank 0
  /// prints: the others' stdout goes to /dev/null (stderr stays, for errors).
  Processes(int& argc, char**& argv) {
#ifdef EIGENFORMER_EXAMPLE_MPI
    env_ = std::make_unique<eigenformer::dist::Environment>(argc, argv);
    comm_ = std::make_unique<eigenformer::dist::Communicator>();
    if (!is_root() && !std::freopen("/dev/null", "w", stdout)) std::perror("/dev/null");
#else
    (void)argc, (void)argv;
#endif
  }

  /// Whether this process prints and writes (rank 0), and how many there are.
  bool is_root() const { return rank() == 0; }
  int rank() const {
#ifdef EIGENFORMER_EXAMPLE_MPI
    return comm_->rank();
#else
    return 0;
#endif
  }
  int size() const {
#ifdef EIGENFORMER_EXAMPLE_MPI
    return comm_->size();
#else
    return 1;
#endif
  }

  /// Runs f on rank 0; the other processes wait until it is done (a file rank 0 writes is whole).
  template <class F>
  void on_root(F&& f) const {
    if (is_root()) std::forward<F>(f)();
    barrier();
  }

  /// Waits for every process (nothing to wait for without MPI).
  void barrier() const {
#ifdef EIGENFORMER_EXAMPLE_MPI
    comm_->barrier();
#endif
  }

  /// An error that ends the run: with several processes, ends them all (MPI_Abort, naming this
  /// rank), since the others would wait for this one for ever; alone, returns to the caller.
  void end_all_on_error(const std::string& message) const {
#ifdef EIGENFORMER_EXAMPLE_MPI
    if (comm_->size() > 1) comm_->abort(message);
#else
    (void)message;
#endif
  }

#ifdef EIGENFORMER_EXAMPLE_MPI
  const eigenformer::dist::Communicator& comm() const { return *comm_; }

 private:
  std::unique_ptr<eigenformer::dist::Environment> env_;
  std::unique_ptr<eigenformer::dist::Communicator> comm_;
#endif
};

/// The training step of an example: forward, loss, backward, the non-finite check, clipping at 1
/// and the optimizer step (the schedule stays with the caller: set the learning rate first).
/// Data-parallel over procs when built with MPI: each process's share of the global batch's loss
/// (DataParallel::cross_entropy_share, no waiting between forward and backward), every process's
/// gradients summed, and the check and the clipping's norm taken from the sums in one pass, with
/// the loss's shares (DataParallel::finish_gradients). The optimizer step zeroes the gradients for
/// the next one as it reads them (Optimizer::step_and_zero_grad), so that no pass over them is
/// spent on zeroing: the optimizer must hold every parameter of the model. It keeps the model's
/// cache, the loss's and the logits' gradient from one step to the next, so that a step reuses
/// their buffers.
template <class Model>
class TrainStep {
 public:
  /// model and procs must outlive this object. Under MPI, a collective: copies rank 0's weights
  /// and dropout generators to every process.
  TrainStep(const Processes& procs, Model& model) : model_(model), params_(model.parameters()) {
#ifdef EIGENFORMER_EXAMPLE_MPI
    dp_ = std::make_unique<eigenformer::dist::DataParallel<float>>(procs.comm(), model);
#else
    (void)procs;
#endif
  }

  /// forward(begin, count, cache) runs the model on rows [begin, begin + count) of the global
  /// batch whose targets (B, T) are tgt, returning their logits (a reference into cache, as the
  /// models' forward returns them). guard sees the global batch's loss and the summed gradients
  /// (so every process decides alike). Under its stop policy a non-finite one throws
  /// std::runtime_error naming step_number (the run's) and what went bad; under skip, opt does
  /// not step, the gradients are zeroed, and guard.skipped() counts it. Returns the global batch's
  /// loss.
  template <class Forward>
  double operator()(eigenformer::Optimizer<float>& opt, eigenformer::StepGuard<float>& guard,
                    long step_number, const eigenformer::IdMatrix& tgt,
                    const eigenformer::CrossEntropyOptions& loss_options, Forward&& forward) {
    if (dirty_) opt.zero_grad();  // before the first step, or after one that threw
    dirty_ = true;
    const double part = loss_and_gradients(tgt, loss_options, forward);
    const auto [ok, loss] = checked(guard, part, step_number);
    if (ok) opt.step_and_zero_grad();
    dirty_ = false;
    return loss;
  }

 private:
  Model& model_;
  const eigenformer::ParamList<float> params_;  // the model's
  typename Model::Cache cache_;
  eigenformer::CrossEntropyCache<float> ce_;
  eigenformer::Matrix<float> dlogits_;  // (B*T, V), this process's rows
  bool dirty_ = true;                   // the gradients may not be zero
#ifdef EIGENFORMER_EXAMPLE_MPI
  std::unique_ptr<eigenformer::dist::DataParallel<float>> dp_;
#endif

  /// Forward on this process's rows (all of them without MPI), the loss and backward, the
  /// gradients summed over the processes as backward goes. Returns this process's share of the
  /// global batch's loss (cross_entropy_share), or without MPI that loss.
  template <class Forward>
  double loss_and_gradients(const eigenformer::IdMatrix& tgt,
                            const eigenformer::CrossEntropyOptions& loss_options,
                            Forward& forward) {
#ifdef EIGENFORMER_EXAMPLE_MPI
    const eigenformer::dist::Shard s = dp_->shard(tgt.rows());
    eigenformer::dist::key_dropout(model_, s);
    const eigenformer::Matrix<float>& logits = forward(s.begin, s.count, cache_);  // (b*T, V)
    const double loss =
        dp_->cross_entropy_share(ce_, dlogits_, logits, eigenformer::dist::rows(tgt, s),
                                 eigenformer::dist::loss_divisor(tgt, loss_options), loss_options)
            .value;
    model_.backward(dlogits_, cache_, dp_->begin_backward(model_));
#else
    const eigenformer::Matrix<float>& logits =
        forward(eigenformer::Index(0), tgt.rows(), cache_);  // (B*T, V)
    const double loss = eigenformer::cross_entropy_forward(ce_, logits, tgt, loss_options);
    eigenformer::cross_entropy_backward(dlogits_, ce_);
    model_.backward(dlogits_, cache_);
#endif
    return loss;
  }

  /// The guard's check of the step and, when it may go ahead (first: true), clipping; second: the
  /// global batch's loss, from part (loss_and_gradients' result). A step the guard skips has its
  /// gradients zeroed; a NonFiniteError becomes "training diverged at step N".
  std::pair<bool, double> checked(eigenformer::StepGuard<float>& guard, double part,
                                  long step_number) {
    try {
#ifdef EIGENFORMER_EXAMPLE_MPI
      const auto done = dp_->finish_gradients(guard, eigenformer::dist::LossShare{part}, 1.0f);
      return {done.ok, done.loss};
#else
      if (!guard.check(part, params_)) return {false, part};
      eigenformer::clip_grad_norm(params_, 1.0f);
      return {true, part};
#endif
    } catch (const eigenformer::NonFiniteError&) {
      throw std::runtime_error("training diverged at step " + std::to_string(step_number) + ": " +
                               guard.last().what + "; try a lower --lr");
    }
  }
};

}  // namespace cli
