// MPI for data-parallel training: the process's MPI lifetime, a communicator with the few
// collectives training needs, and the rule that a failure anywhere ends the whole job.
//
//   int main(int argc, char** argv) {
//     eigenformer::dist::Environment env(argc, argv);
//     eigenformer::dist::Communicator comm;  // MPI_COMM_WORLD
//     return eigenformer::dist::run_or_abort(comm, [&] { ...train...; return 0; });
//   }
//
// Why abort: a rank that throws while the others wait in a collective would leave them waiting
// for ever. run_or_abort and the communicator's MPI error handler print the rank and the error to
// stderr and call MPI_Abort, which makes mpirun end every process of the job. A rank killed by a
// signal is mpirun's to notice: it then ends the others too.
// Only the headers in dist/ include <mpi.h> (link eigenformer::mpi).
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace eigenformer::dist {

namespace detail {

/// "eigenformer: rank R of N: message" on stderr, then MPI_Abort(comm, code): ends the whole job.
[[noreturn]] inline void abort_job(MPI_Comm comm, const std::string& message, int code = 1) {
  int rank = -1, size = -1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  std::fprintf(stderr, "eigenformer: rank %d of %d: %s\n", rank, size, message.c_str());
  std::fflush(stderr);
  MPI_Abort(comm, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever did
}

/// The MPI error handler: names the rank and MPI's own description of the error, then aborts.
inline void on_mpi_error(MPI_Comm* comm, int* code, ...) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(*code, text, &length);
  abort_job(*comm, "MPI error " + std::to_string(*code) + ": " + std::string(text, length));
}

/// The non-blocking collectives of objects destroyed while they were in flight (a
/// GradientReducer whose step was abandoned between begin() and finish()): MPI may still read and
/// write their buffers, and forbids cancelling or freeing such a request, so each request's
/// buffers are kept here until MPI_Test finds it complete. Never destroyed, so that a reducer
/// destroyed during static destruction does not push into a destroyed vector.
struct Abandoned {
  MPI_Request request;
  std::shared_ptr<void> send, receive;
};
inline std::vector<Abandoned>& abandoned() {
  static auto* list = new std::vector<Abandoned>();
  return *list;
}

/// Tests each abandoned request (letting MPI progress it) and frees the buffers of those that
/// completed. Returns the number still in flight. Does nothing once MPI is finalised.
inline std::size_t settle_abandoned() {
  auto& list = abandoned();
  if (list.empty()) return 0;
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (finalised) return list.size();
  for (std::size_t i = 0; i < list.size();) {
    int done = 0;
    MPI_Test(&list[i].request, &done, MPI_STATUS_IGNORE);
    if (done) {
      list[i] = std::move(list.back());
      list.pop_back();
    } else {
      ++i;
    }
  }
  return list.size();
}
inline std::size_t abandoned_requests() { return abandoned().size(); }

/// settle_abandoned() every millisecond for up to `seconds` seconds, until none is left. Returns
/// the number left (at once when there are none).
inline std::size_t settle_abandoned_within(double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (settle_abandoned() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return abandoned_requests();
}

/// Before MPI_Finalize, which needs every operation completed: settles the abandoned requests
/// for up to `seconds` seconds, then says on stderr how many the other ranks did not match in
/// time, rather than wait for ever. Returns at once when there are none.
inline void settle_abandoned_before_finalize(double seconds = 10.0) {
  if (settle_abandoned_within(seconds) == 0) return;
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::fprintf(stderr,
               "eigenformer: rank %d of %d: %zu gradient sums of an abandoned step never "
               "completed (not matched by the other ranks in time); finalising MPI regardless\n",
               rank, size, abandoned_requests());
}

}  // namespace detail

/// MPI for the lifetime of the object: one per process, first thing in main.
class Environment {
 public:
  /// MPI_Init_thread with MPI_THREAD_FUNNELED (OpenMP threads compute, only the main thread calls
  /// MPI). Throws std::runtime_error if MPI was already initialised or fails to start.
  Environment(int& argc, char**& argv) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (initialised)
      throw std::runtime_error("eigenformer::dist::Environment: MPI already running");
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      throw std::runtime_error("eigenformer::dist::Environment: MPI_Init_thread failed");
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  /// MPI_Finalize (unless something finalised MPI already), after up to 10 s for the gradient
  /// sums of an abandoned step to complete (detail::settle_abandoned_before_finalize).
  ~Environment() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (finalised) return;
    detail::settle_abandoned_before_finalize();
    MPI_Finalize();
  }
};

/// A communicator (MPI_COMM_WORLD by default) whose MPI errors end the job with a message naming
/// the rank and the error, and the collectives data-parallel training uses. Every collective
/// must be called by every rank of the communicator, in the same order.
class Communicator {
 public:
  /// comm must be a valid communicator of an initialised MPI (see Environment); its error handler
  /// is set to abort the job with the rank and MPI's error text.
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    MPI_Errhandler handler;
    MPI_Comm_create_errhandler(&detail::on_mpi_error, &handler);
    MPI_Comm_set_errhandler(comm_, handler);
    MPI_Errhandler_free(&handler);  // the communicator keeps its own reference
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  /// This process's rank, the number of ranks, and whether this is rank 0 (the one that prints
  /// and writes files).
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  /// The MPI handle, for the user's own MPI calls.
  MPI_Comm get() const { return comm_; }

  /// Waits until every rank has called it.
  void barrier() const { MPI_Barrier(comm_); }

  /// The sum of value over all ranks, on every rank.
  double sum(double value) const {
    double out = 0;
    MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_SUM, comm_);
    return out;
  }
  /// The sum of an integer count over all ranks, on every rank.
  Index sum(Index value) const {
    std::int64_t in = value, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT64_T, MPI_SUM, comm_);
    return static_cast<Index>(out);
  }
  /// true on every rank when ok is true on every rank.
  bool all(bool ok) const {
    int in = ok ? 1 : 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, comm_);
    return out == 1;
  }

  /// Every rank's count values at mine, on every rank, in rank order: rank r's at
  /// all[r * count, (r + 1) * count). all holds size() * count values and must not overlap mine
  /// (as MPI_Allgather's buffers).
  void all_gather(const double* mine, int count, double* all) const {
    MPI_Allgather(mine, count, MPI_DOUBLE, all, count, MPI_DOUBLE, comm_);
  }

  /// Copies bytes bytes at data on rank root to data on every other rank (any size: sent in
  /// pieces below INT_MAX).
  void broadcast(void* data, std::size_t bytes, int root = 0) const {
    auto* p = static_cast<char*>(data);
    while (bytes > 0) {
      const int piece = static_cast<int>(bytes < std::size_t(INT_MAX) ? bytes : INT_MAX);
      MPI_Bcast(p, piece, MPI_BYTE, root, comm_);
      p += piece;
      bytes -= static_cast<std::size_t>(piece);
    }
  }
  /// root's string on every rank.
  std::string broadcast(std::string text, int root = 0) const {
    std::uint64_t n = text.size();
    broadcast(&n, sizeof n, root);
    text.resize(static_cast<std::size_t>(n));
    broadcast(text.data(), text.size(), root);
    return text;
  }

  /// Prints "eigenformer: rank R of N: message" to stderr and ends the whole job (MPI_Abort).
  [[noreturn]] void abort(const std::string& message, int code = 1) const {
    detail::abort_job(comm_, message, code);
  }

  /// Runs write() on rank 0 only, then waits at a barrier: no rank goes on (e.g. to read the
  /// file) before rank 0 has finished. An exception in write() propagates on rank 0 (and,
  /// under run_or_abort, ends the job instead of leaving the others at the barrier).
  template <class F>
  void on_root(F&& write) const {
    if (is_root()) std::forward<F>(write)();
    barrier();
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

/// Runs body() and returns its result; an exception ends the whole job through comm.abort with a
/// message naming this rank and the exception's what(), so that no other rank waits for ever in
/// a collective. body must return an int (the exit code).
template <class F>
int run_or_abort(const Communicator& comm, F&& body) {
  try {
    return std::forward<F>(body)();
  } catch (const std::exception& e) {
    comm.abort(e.what());
  } catch (...) {
    comm.abort("an exception of unknown type");
  }
}

}  // namespace eigenformer::dist
