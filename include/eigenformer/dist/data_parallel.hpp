// Data-parallel training on MPI, as PyTorch's DistributedDataParallel and Horovod: every rank
// holds the whole model, runs forward and backward on its rows of one global batch, and the
// gradients are summed across ranks so that every rank takes the same optimizer step.
//
//   dist::DataParallel<float> dp(comm, model);          // same model everywhere, rank 0's weights
//   for (each step) {
//     const IdMatrix src = ..., tgt = ...;              // the GLOBAL batch, the same on every rank
//     const dist::Shard s = dp.shard(src.rows());       // this rank's rows
//     dist::key_dropout(model, s);                      // masks by global example, not by rank
//     logits = model.forward(rows(src, s), shift_right(rows(tgt, s), bos), cache);
//     LossShare share = dp.cross_entropy_share(ce, dlogits, logits, rows(tgt, s),
//                                              loss_divisor(tgt, {pad}), {pad});  // no waiting
//     opt.zero_grad();
//     model.backward(dlogits, cache, dp.begin_backward(model));  // buckets sum meanwhile
//     auto done = dp.finish_gradients(guard, share, 1.0f);  // summed, checked, clipped; done.loss
//     if (done.ok) opt.step();
//   }
//
// The result equals one process's on the whole batch up to rounding: the loss and gradients are
// normalised by the global batch's divisor (its count of target tokens, or their class weights),
// clipping uses the norm of the summed gradients (the same figure on every rank, so every rank
// scales alike), the non-finite guard skips on every rank or none, and dropout masks depend on the
// global example index (key_dropout), not on the number of ranks. See docs/distributed.md.
#pragma once

#include <mpi.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/param.hpp"
#include "../core/random.hpp"
#include "../model/eval_mode.hpp"
#include "../train/guard.hpp"
#include "../train/loss.hpp"
#include "communicator.hpp"

namespace eigenformer::dist {

/// The rows [begin, begin + count) of a global batch that one rank works on.
struct Shard {
  Index begin = 0;
  Index count = 0;
};

/// Rank rank's rows of a global batch of rows rows over size ranks: contiguous, in rank order,
/// the first rows % size ranks one row more (64 on 3 ranks: 22, 21, 21).
/// Throws ArgumentError naming shard_of unless 1 <= size <= rows and 0 <= rank < size.
inline Shard shard_of(Index rows, int rank, int size) {
  eigenformer::detail::require(size >= 1 && rank >= 0 && rank < size, "shard_of", "rank", [&] {
    return "is " + std::to_string(rank) + " of " + std::to_string(size) + " ranks";
  });
  eigenformer::detail::require(rows >= size, "shard_of", "rows", [&] {
    return "is " + std::to_string(rows) + ", fewer than the " + std::to_string(size) +
           " ranks: every rank needs at least one row";
  });
  const Index base = rows / size, extra = rows % size;
  return {rank * base + std::min<Index>(rank, extra), base + (rank < extra ? 1 : 0)};
}

/// shard's rows of a (B, T) id matrix, all T columns kept (so that every rank sees the global
/// batch's padding and length). Throws ArgumentError naming rows unless shard lies within B.
inline IdMatrix rows(const IdMatrix& global, const Shard& shard) {
  eigenformer::detail::require(
      shard.begin >= 0 && shard.count >= 0 && shard.begin + shard.count <= global.rows(), "rows",
      "shard", [&] {
        return "is rows [" + std::to_string(shard.begin) + ", " +
               std::to_string(shard.begin + shard.count) + ") of a batch of " +
               std::to_string(global.rows());
      });
  return global.middleRows(shard.begin, shard.count);
}

/// Keys every dropout mask of model by global example: the forward on shard's rows draws, for
/// each example, the mask that a forward on the whole global batch would draw for it
/// (Dropout::first_example). The model's dropouts must draw in step on every rank (DataParallel
/// copies rank 0's generators), and every rank's inputs must have the global batch's lengths
/// (rows() keeps them).
template <class Model>
void key_dropout(Model& model, const Shard& shard) {
  eigenformer::detail::for_each_dropout(model, [&](auto& d) {
    d.first_example = shard.begin;
    d.examples = shard.count;
  });
}

/// The divisor of a loss over a whole global batch, as cross_entropy_forward finds it on all of
/// global_targets (CrossEntropyCache::divisor is this figure rounded to Scalar): with the mean
/// reduction, the number of targets that are not options.ignore_id (with class_weights, the sum of
/// their classes' weights); with sum and none, 1. Every rank holds the global batch, so every rank
/// finds the same figure alone, with no collective, for DataParallel::cross_entropy_share. Throws
/// ArgumentError naming loss_divisor for a target that has no class weight (ignore_id aside).
inline double loss_divisor(const IdMatrix& global_targets,
                           const CrossEntropyOptions& options = {}) {
  if (options.reduction != LossReduction::mean) return 1.0;
  const Index V = options.class_weights.size();
  for (Index i = 0; i < global_targets.rows() && V != 0; ++i)
    for (Index j = 0; j < global_targets.cols(); ++j) {
      const Index t = global_targets(i, j);
      eigenformer::detail::require(
          t == options.ignore_id || (t >= 0 && t < V), "loss_divisor", "global_targets", [&] {
            return "holds " + std::to_string(t) + " at (" + std::to_string(i) + ", " +
                   std::to_string(j) + "), outside the " + std::to_string(V) + " class weights";
          });
    }
  return eigenformer::detail::counted_weight(global_targets, options);
}

/// This rank's part of a global batch's loss (DataParallel::cross_entropy_share): its rows'
/// summed loss over the global batch's divisor. The parts of all ranks add up to the global loss.
struct LossShare {
  double value = 0.0;
};

namespace detail {

template <class Scalar>
MPI_Datatype mpi_type() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "eigenformer::dist supports float and double parameters");
  return std::is_same_v<Scalar, float> ? MPI_FLOAT : MPI_DOUBLE;
}

/// One line per parameter: "name (rows, cols)".
template <class Scalar>
std::vector<std::string> describe(const ParamList<Scalar>& params) {
  std::vector<std::string> out;
  for (const auto& p : params)
    out.push_back(p.name + " " + eigenformer::detail::shape_of(p.param->value));
  return out;
}

/// The first difference between two descriptions, or "" when they agree.
inline std::string first_difference(const std::vector<std::string>& mine,
                                    const std::vector<std::string>& root) {
  const std::size_t n = std::min(mine.size(), root.size());
  for (std::size_t i = 0; i < n; ++i)
    if (mine[i] != root[i])
      return "parameter " + std::to_string(i) + " is '" + mine[i] + "' where rank 0 has '" +
             root[i] + "'";
  if (mine.size() != root.size())
    return "has " + std::to_string(mine.size()) + " parameters where rank 0 has " +
           std::to_string(root.size()) +
           (mine.size() > n ? ", the first extra '" + mine[n] + "'"
                            : ", the first missing '" + root[n] + "'");
  return "";
}

inline std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

inline std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

/// The allocator of the gradient buckets: a block of 1 MB or more is mapped fresh from the
/// kernel on whole 2 MB pages, aligned on one, and Linux is asked to back it with transparent huge
/// pages (Debian's default THP mode, "madvise", gives them only on request). Open MPI's
/// shared-memory transport reads a large message straight from the other process
/// (process_vm_readv), pinning each page it reads: on 4 KB pages, bench_dist's ranks spent as long
/// pinning as copying. Fresh mappings, not malloc's heap, whose reused pages may already be small.
/// Under 1 MB a block would waste over half of its huge page, so it is an ordinary allocation.
/// The advice is only advice: without THP the buffer keeps small pages and works the same.
template <class T>
struct HugePageAllocator {
  using value_type = T;
  static constexpr std::size_t kPageBytes = std::size_t(2) << 20;

  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

  /// Whether a block of n elements goes on huge pages (else it is an ordinary allocation).
  static bool on_huge_pages(std::size_t n) { return n * sizeof(T) >= kPageBytes / 2; }

  T* allocate(std::size_t n) {
    if (n > (std::numeric_limits<std::size_t>::max() - 2 * kPageBytes) / sizeof(T))
      throw std::bad_array_new_length();
    if (!on_huge_pages(n)) return std::allocator<T>().allocate(n);
    // Map one page more than needed, then unmap the unaligned head and the tail.
    const std::size_t bytes = rounded_bytes(n), mapped = bytes + kPageBytes;
    void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (start + kPageBytes - 1) / kPageBytes * kPageBytes;
    if (aligned > start) munmap(raw, aligned - start);
    if (aligned + bytes < start + mapped)
      munmap(reinterpret_cast<void*>(aligned + bytes), start + mapped - aligned - bytes);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<T*>(aligned);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (on_huge_pages(n))
      munmap(p, rounded_bytes(n));
    else
      std::allocator<T>().deallocate(p, n);
  }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const HugePageAllocator<U>&) const noexcept {
    return false;
  }

 private:
  static std::size_t rounded_bytes(std::size_t n) {
    return (n * sizeof(T) + kPageBytes - 1) / kPageBytes * kPageBytes;
  }
};

template <class Scalar>
using BucketBuffer = std::vector<Scalar, HugePageAllocator<Scalar>>;

}  // namespace detail

/// Checks, on every rank at once, that params has the same names, shapes and count as on rank 0.
/// A collective: every rank calls it. Throws ArgumentError naming func and 'params' on EVERY rank
/// when some rank differs, with the lowest such rank's first difference, e.g. "rank 2: parameter
/// 5 is 'encoder.layers.0.linear1.weight (16, 8)' where rank 0 has '... (12, 8)'".
template <class Scalar>
void check_same_parameters(const Communicator& comm, const ParamList<Scalar>& params,
                           std::string_view func = "check_same_parameters") {
  eigenformer::detail::check_no_null_params("check_same_parameters", params);
  const auto mine = detail::describe(params);
  const auto root = detail::split_lines(comm.broadcast(detail::join_lines(mine)));
  const std::string diff = detail::first_difference(mine, root);
  // The lowest differing rank tells everyone, so that all ranks throw together.
  int bad = diff.empty() ? comm.size() : comm.rank(), first_bad = 0;
  MPI_Allreduce(&bad, &first_bad, 1, MPI_INT, MPI_MIN, comm.get());
  if (first_bad == comm.size()) return;
  const std::string message = comm.broadcast(diff, first_bad);
  eigenformer::detail::throw_argument(
      func, "params", "differs between ranks: rank " + std::to_string(first_bad) + ": " + message);
}

/// Copies every parameter value of rank 0 to every rank (a collective). params must have the
/// same shapes everywhere (check_same_parameters).
template <class Scalar>
void broadcast_parameters(const Communicator& comm, const ParamList<Scalar>& params) {
  for (const auto& p : params)
    comm.broadcast(p.param->value.data(),
                   sizeof(Scalar) * static_cast<std::size_t>(p.param->size()));
}

/// Copies the generator of every dropout of model from rank 0 (a collective), so that all ranks
/// draw the same masks whatever seed each built its model with.
template <class Model>
void broadcast_dropout_state(const Communicator& comm, Model& model) {
  static_assert(std::is_trivially_copyable_v<Rng>, "Rng is sent as bytes");
  eigenformer::detail::for_each_dropout(model,
                                        [&](auto& d) { comm.broadcast(&d.rng(), sizeof(Rng)); });
}

/// What the non-finite check and clipping need of a gradient (detail::measure).
struct GradientMeasure {
  bool finite = true;         // every entry finite
  double squared_norm = 0.0;  // the sum of squared entries, in double (as clip_grad_norm)
};

namespace detail {

/// g's squared norm, as clip_grad_norm sums it, and with it whether g is finite, in one pass: a
/// NaN or infinite entry makes the norm NaN or infinite, and finite floats cannot (their squares
/// stay far below double's range); only a norm that is not finite is checked entry by entry (a
/// double may square to infinity).
template <class Scalar>
GradientMeasure measure(const GradMatrix<Scalar>& g) {
  const double sum = eigenformer::detail::squared_norm_double(g);
  return {std::isfinite(sum) || eigenformer::detail::all_finite(g), sum};
}

/// The parameters [first, second) of params that rank rank of size measures: contiguous shares in
/// rank order, of about equal numbers of entries (each parameter goes to the rank in whose
/// share of the entries its middle falls). A rank may get none (first == second).
template <class Scalar>
std::pair<std::size_t, std::size_t> measure_share(const ParamList<Scalar>& params, int rank,
                                                  int size) {
  // In integers, so that every rank computes the same shares exactly.
  std::uint64_t total = 0;
  for (const auto& p : params) total += static_cast<std::uint64_t>(p.param->size());
  std::size_t first = params.size(), last = 0;
  std::uint64_t before = 0;  // entries of the parameters before params[i]
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto n = static_cast<std::uint64_t>(params[i].param->size());
    // The rank whose share of [0, total) holds before + n / 2 (the last, for empty ones at the
    // end).
    const auto at =
        total > 0 ? (2 * before + n) * static_cast<std::uint64_t>(size) / (2 * total) : 0;
    const int owner =
        static_cast<int>(std::min<std::uint64_t>(at, static_cast<std::uint64_t>(size - 1)));
    before += n;
    if (owner != rank) continue;
    first = std::min(first, i);
    last = i + 1;
  }
  return first < last ? std::make_pair(first, last) : std::make_pair(last, last);
}

}  // namespace detail

/// Sums gradients across ranks in flat buckets, each started (MPI_Iallreduce, non-blocking) as
/// soon as backward has reported all of its parameters final, so that the communication of the
/// last layers overlaps the backward of the first ones. Buckets hold parameters in the reverse
/// of the list's order (the order backward finishes them), up to bucket_bytes each and up to a
/// quarter of all the gradients when that is above 1 MB (a larger parameter gets a bucket of its
/// own). On one rank nothing is sent, and the gradients are left as they are.
///
/// On more ranks the gradients live in the buckets, as with PyTorch DDP's
/// gradient_as_bucket_view: each bucket has two buffers, and every gradient is lent a slice of
/// one (GradMatrix::lend, its own memory freed). Backward adds into it, the bucket is sent from
/// it, the sums arrive in the other, and finish() lends the gradients the other instead: the two
/// swap roles every step, and no gradient is copied in or out. So a pointer into a gradient is
/// valid until the next finish() at most, and a GradMatrix moved out of one still views a buffer
/// that later steps write into (copy it to keep the values). The buffers live as long as a
/// gradient is lent them, after this object too, and as long as MPI may read or write them (see
/// the destructor). A gradient that got memory of its own of the same shape meanwhile (resized and
/// back, swapped with another) is lent its slice again, its values copied, by begin() or, during
/// backward, when its bucket starts.
template <class Scalar = float>
class GradientReducer {
 public:
  static constexpr std::size_t kDefaultBucketBytes = std::size_t(25) << 20;  // as PyTorch DDP
  static constexpr std::size_t kMinBuckets = 4;  // buckets capped at a quarter of the gradients

  /// params: every parameter to sum, the same list on every rank (check_same_parameters).
  /// Throws ArgumentError naming GradientReducer::GradientReducer for a bucket_bytes of 0, an
  /// empty list, a null pointer or a gradient not shaped as its value.
  GradientReducer(const Communicator& comm, const ParamList<Scalar>& params,
                  std::size_t bucket_bytes = kDefaultBucketBytes);
  // Neither copied (a copy would send from the same buffers, with the same MPI requests) nor
  // moved (begin()'s callback points to this object).
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  GradientReducer(GradientReducer&&) = delete;
  GradientReducer& operator=(GradientReducer&&) = delete;
  /// A step abandoned between begin() and finish() (an exception in backward, caught on every
  /// rank after the same buckets started: MPI needs every rank to call its collectives in the
  /// same order, so normally the exception ends the job through run_or_abort): the buckets in
  /// flight keep their buffers until MPI has completed them (detail::settle_abandoned, called by
  /// every begin() and before MPI_Finalize). The gradients still view the buffers sent from:
  /// write them only once those sums have settled.
  ~GradientReducer();

  /// Starts a step's backward: checks that params is still the list of construction (every
  /// parameter of it, once or more, and no other, each of its shape at construction, gradient
  /// too) and forgets the last step's progress. Returns the callback to pass to
  /// the model's backward. Throws ArgumentError naming GradientReducer::begin, changing nothing,
  /// at the first difference; and when the last step was not finished.
  GradReady<Scalar> begin(const ParamList<Scalar>& params);

  /// backward's report: these parameters' gradients are final. Starts every bucket it completes,
  /// and lets MPI progress the buckets in flight. Parameters not in the list are ignored, and a
  /// parameter reported twice counts once. A reported gradient must not be written, resized,
  /// moved or swapped until finish(): its bucket is sent from it while backward goes on. Throws
  /// ArgumentError naming GradientReducer::ready when a bucket to start has a gradient of
  /// another shape than at construction (the bucket is not started; finish() tries again).
  void ready(const ParamList<Scalar>& params);

  /// Starts the buckets backward did not complete, waits for all, and lends the gradients the
  /// sums. Returns the seconds spent waiting (communication that backward did not hide).
  /// Throws ArgumentError naming GradientReducer::finish when begin() was not called, and as
  /// ready() for a bucket it starts.
  double finish();

  /// The number of buckets, and the parameters of each (indices into the list), for tests.
  std::size_t buckets() const { return buckets_.size(); }
  const std::vector<std::size_t>& bucket_params(std::size_t b) const {
    return buckets_.at(b).params;
  }

 private:
  // MPI_Iallreduce reads grads and writes sums, rather than MPI_IN_PLACE: in place, Open MPI's
  // non-blocking allreduce first copies the buffer into one it allocates on every call (8% of a
  // rank's step time, most of it page faults, in bench_dist on 2 ranks).
  using Buffer = std::shared_ptr<detail::BucketBuffer<Scalar>>;  // shared with the gradients
  struct Bucket {
    std::vector<std::size_t> params;  // indices into entries_
    Buffer grads;             // (sum of their sizes) their gradients, lent; null on one rank
    Buffer sums;              // (sum of their sizes) the sums over ranks arrive here
    std::size_t pending = 0;  // parameters not yet reported this step
    bool started = false;
    MPI_Request request = MPI_REQUEST_NULL;
  };
  struct Entry {
    std::string name;
    Param<Scalar>* param;
    Index rows, cols;
    std::size_t bucket;
    std::size_t offset;  // of its gradient in the bucket's buffers
    bool ready = false;
  };

  const Communicator* comm_;
  std::vector<Entry> entries_;
  std::vector<Bucket> buckets_;
  std::unordered_map<const Param<Scalar>*, std::size_t> index_;
  bool in_step_ = false;
  mutable std::vector<char> seen_;  // check_unchanged's scratch, one flag per entry

  static std::size_t bucket_capacity(const ParamList<Scalar>& params, std::size_t bucket_bytes);
  void check_unchanged(const ParamList<Scalar>& params) const;
  void start(Bucket& b, const char* func);
  void progress();
  /// Lends e's gradient its slice of its bucket's grads, copying its values there when it is
  /// elsewhere and keep_values.
  void lend(Entry& e, bool keep_values);
  /// Whether e's gradient is its slice (or nothing is lent: one rank).
  bool in_place(const Entry& e) const;
  /// Puts the gradients that are away from their slices back into them, values kept: all
  /// when only is null; else only's, while any other sitting in only's slices (about to be sent)
  /// gets memory of its own. Throws ArgumentError naming func, changing nothing, for one to put
  /// back that no longer has its shape at construction.
  void put_back(const Bucket* only, const char* func);
};

template <class Scalar>
GradientReducer<Scalar>::GradientReducer(const Communicator& comm, const ParamList<Scalar>& params,
                                         std::size_t bucket_bytes)
    : comm_(&comm) {
  const char* func = "GradientReducer::GradientReducer";
  eigenformer::detail::require(bucket_bytes > 0, func, "bucket_bytes", "must be positive, got 0");
  eigenformer::detail::require(!params.empty(), func, "params", "is empty");
  eigenformer::detail::check_no_null_params(func, params);
  for (const auto& p : params)  // the buckets' slices are cut to the values' shapes
    eigenformer::detail::require(
        p.param->grad.rows() == p.param->value.rows() &&
            p.param->grad.cols() == p.param->value.cols(),
        func, "params", [&] {
          return "'" + p.name + "' has shape " + eigenformer::detail::shape_of(p.param->value) +
                 " and gradient " + eigenformer::detail::shape_of(p.param->grad);
        });
  const std::size_t capacity = bucket_capacity(params, bucket_bytes);
  std::size_t filled = capacity;                   // forces a first bucket
  for (std::size_t k = params.size(); k-- > 0;) {  // reverse: the order backward finishes them
    Param<Scalar>* p = params[k].param;
    if (index_.count(p)) continue;  // listed twice: summed once
    const auto n = static_cast<std::size_t>(p->size());
    if (buckets_.empty() || (filled + n > capacity && filled > 0)) {
      buckets_.emplace_back();
      filled = 0;
    }
    index_[p] = entries_.size();
    entries_.push_back(
        {params[k].name, p, p->value.rows(), p->value.cols(), buckets_.size() - 1, filled});
    buckets_.back().params.push_back(entries_.size() - 1);
    filled += n;
  }
  if (comm.size() == 1) return;  // the gradients are the sums: no buffers, nothing sent
  for (auto& b : buckets_) {
    std::size_t n = 0;
    for (std::size_t e : b.params) n += static_cast<std::size_t>(entries_[e].param->size());
    b.grads = std::make_shared<detail::BucketBuffer<Scalar>>(n);
    b.sums = std::make_shared<detail::BucketBuffer<Scalar>>(n);
  }
  for (auto& e : entries_) lend(e, true);
}

template <class Scalar>
GradientReducer<Scalar>::~GradientReducer() {
  // The buckets started and not yet found complete. (A bad_alloc here terminates, the destructor
  // being noexcept, rather than free buffers MPI still uses.)
  for (auto& b : buckets_)
    if (b.request != MPI_REQUEST_NULL) detail::abandoned().push_back({b.request, b.grads, b.sums});
  detail::settle_abandoned();
}

template <class Scalar>
void GradientReducer<Scalar>::lend(Entry& e, bool keep_values) {
  const Buffer& grads = buckets_[e.bucket].grads;
  e.param->grad.lend(grads->data() + e.offset, e.rows, e.cols, grads, keep_values);
}

template <class Scalar>
bool GradientReducer<Scalar>::in_place(const Entry& e) const {
  const Buffer& grads = buckets_[e.bucket].grads;
  return !grads || e.param->grad.data() == grads->data() + e.offset;
}

template <class Scalar>
void GradientReducer<Scalar>::put_back(const Bucket* only, const char* func) {
  // Gradients that moved may sit in each other's slices (std::swap of two), so that putting
  // them back one at a time would overwrite another's values: everything is read first.
  struct Moved {
    Entry* e;
    bool home;                // to go into its slice, with values; else to become copy,
    Matrix<Scalar> values;    // memory of its own (one of another bucket sitting in only's
    GradMatrix<Scalar> copy;  // slices)
  };
  std::vector<Moved> moved;
  for (auto& e : entries_) {
    if (in_place(e)) continue;
    if (only && &buckets_[e.bucket] != only) {
      const Scalar* data = e.param->grad.data();
      const Scalar *begin = only->grads->data(), *end = begin + only->grads->size();
      if (e.param->grad.size() > 0 && data >= begin && data < end)
        moved.push_back({&e, false, Matrix<Scalar>(), e.param->grad});
      continue;
    }
    eigenformer::detail::require(
        e.param->grad.rows() == e.rows && e.param->grad.cols() == e.cols, func, "params", [&] {
          return "'" + e.name + "' has gradient " + eigenformer::detail::shape_of(e.param->grad) +
                 ", " + eigenformer::detail::shape_str(e.rows, e.cols) + " at construction";
        });
    moved.push_back({&e, true, Matrix<Scalar>(e.param->grad), GradMatrix<Scalar>()});
  }
  for (auto& m : moved) {
    if (m.home) {
      lend(*m.e, false);
      m.e->param->grad = m.values;
    } else {
      m.e->param->grad = std::move(m.copy);
    }
  }
}

template <class Scalar>
std::size_t GradientReducer<Scalar>::bucket_capacity(const ParamList<Scalar>& params,
                                                     std::size_t bucket_bytes) {
  // A quarter of the gradients at most, but not under 1 MB: a model smaller than bucket_bytes
  // (24 MB of gradients against the 25 MB default) would otherwise make one bucket, which starts
  // only when backward has ended, so that no communication overlaps it.
  std::unordered_set<const Param<Scalar>*> seen;
  std::size_t total = 0;
  for (const auto& p : params)
    if (seen.insert(p.param).second) total += static_cast<std::size_t>(p.param->size());
  const std::size_t floor_bytes = std::size_t(1) << 20;
  const std::size_t bytes =
      std::min(bucket_bytes, std::max(floor_bytes, total * sizeof(Scalar) / kMinBuckets));
  return std::max<std::size_t>(1, bytes / sizeof(Scalar));
}

template <class Scalar>
void GradientReducer<Scalar>::check_unchanged(const ParamList<Scalar>& params) const {
  const char* func = "GradientReducer::begin";
  eigenformer::detail::check_no_null_params(func, params);
  std::size_t known = 0;  // distinct parameters of the list
  seen_.assign(entries_.size(), 0);
  for (const auto& p : params) {
    const auto it = index_.find(p.param);
    eigenformer::detail::require(it != index_.end(), func, "params", [&] {
      return "has '" + p.name + "', which was not in the list at construction";
    });
    const Entry& e = entries_[it->second];
    eigenformer::detail::require(
        p.param->value.rows() == e.rows && p.param->value.cols() == e.cols &&
            p.param->grad.rows() == e.rows && p.param->grad.cols() == e.cols,
        func, "params", [&] {
          return "'" + p.name + "' has shape " + eigenformer::detail::shape_of(p.param->value) +
                 " and gradient " + eigenformer::detail::shape_of(p.param->grad) + ", " +
                 eigenformer::detail::shape_str(e.rows, e.cols) + " at construction";
        });
    if (!seen_[it->second]) ++known;
    seen_[it->second] = 1;
  }
  eigenformer::detail::require(known == entries_.size(), func, "params", [&] {
    const auto missing = std::find(seen_.begin(), seen_.end(), 0) - seen_.begin();
    return "names " + std::to_string(known) + " of the " + std::to_string(entries_.size()) +
           " parameters at construction, not '" + entries_[missing].name + "'";
  });
}

template <class Scalar>
auto GradientReducer<Scalar>::begin(const ParamList<Scalar>& params) -> GradReady<Scalar> {
  eigenformer::detail::require(!in_step_, "GradientReducer::begin", "this",
                               "the last step was not finished (call finish())");
  check_unchanged(params);
  detail::settle_abandoned();
  for (auto& e : entries_) e.ready = false;
  put_back(nullptr, "GradientReducer::begin");  // given memory of their own, or swapped
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.started = false;
  }
  in_step_ = true;
  return [this](const ParamList<Scalar>& done) { ready(done); };
}

template <class Scalar>
void GradientReducer<Scalar>::ready(const ParamList<Scalar>& params) {
  if (!in_step_) return;
  for (const auto& p : params) {
    const auto it = index_.find(p.param);
    if (it == index_.end()) continue;
    Entry& e = entries_[it->second];
    if (e.ready) continue;
    e.ready = true;
    Bucket& b = buckets_[e.bucket];
    if (--b.pending == 0) start(b, "GradientReducer::ready");
  }
  progress();
}

template <class Scalar>
void GradientReducer<Scalar>::start(Bucket& b, const char* func) {
  // Moved during backward: the slices must hold the gradients. (Marked started after: a throw
  // leaves the bucket to start again, not to be taken as summed.)
  if (b.grads && std::any_of(b.params.begin(), b.params.end(),
                             [&](std::size_t k) { return !in_place(entries_[k]); }))
    put_back(&b, func);
  b.started = true;
  if (!b.grads) return;  // one rank
  MPI_Iallreduce(b.grads->data(), b.sums->data(), static_cast<int>(b.sums->size()),
                 detail::mpi_type<Scalar>(), MPI_SUM, comm_->get(), &b.request);
}

template <class Scalar>
void GradientReducer<Scalar>::progress() {
  // Open MPI moves a non-blocking collective on only inside MPI calls: a test per layer keeps
  // the buckets in flight moving while backward computes.
  for (auto& b : buckets_) {
    if (!b.started || b.request == MPI_REQUEST_NULL) continue;
    int done = 0;
    MPI_Test(&b.request, &done, MPI_STATUS_IGNORE);
  }
}

template <class Scalar>
double GradientReducer<Scalar>::finish() {
  const char* func = "GradientReducer::finish";
  eigenformer::detail::require(in_step_, func, "this",
                               "no step begun (call begin() before backward)");
  // Buckets backward did not complete (parameters it never reported), in bucket order: the same
  // order on every rank, as MPI needs.
  for (auto& b : buckets_)
    if (!b.started) start(b, func);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : buckets_) MPI_Wait(&b.request, MPI_STATUS_IGNORE);
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& b : buckets_) {
    if (!b.grads) continue;  // one rank: the gradients are the sums
    b.grads.swap(b.sums);    // the sums become the gradients
    for (std::size_t k : b.params) lend(entries_[k], false);
  }
  in_step_ = false;
  return waited;
}

/// Options of DataParallel.
struct DataParallelOptions {
  std::size_t bucket_bytes = std::size_t(25) << 20;  // gradient bucket size (> 0)
};

/// The pieces of a data-parallel step over one model's parameters: shards, the global loss,
/// the gradient reducer, global clipping and a global non-finite guard (see the top of the file).
template <class Scalar = float>
class DataParallel {
 public:
  /// A collective: checks that model has the same parameters on every rank (ArgumentError naming
  /// DataParallel::DataParallel on every rank, with the first difference), then copies rank 0's
  /// parameter values and dropout generators to every rank. comm must outlive this object, model
  /// too (its parameters are kept). Throws ArgumentError for a bucket_bytes of 0 and a gradient
  /// not shaped as its value.
  template <class Model>
  DataParallel(const Communicator& comm, Model& model, DataParallelOptions options = {})
      : comm_(&comm),
        params_(model.parameters()),
        reducer_(comm, checked(comm, params_), options.bucket_bytes),
        share_(detail::measure_share(params_, comm.rank(), comm.size())),
        shares_(3 * static_cast<std::size_t>(comm.size())) {
    broadcast_parameters(comm, params_);
    broadcast_dropout_state(comm, model);
  }

  /// The communicator; this rank's rows of a global batch of global_rows rows (shard_of).
  const Communicator& comm() const { return *comm_; }
  Shard shard(Index global_rows) const {
    return shard_of(global_rows, comm_->rank(), comm_->size());
  }

  /// Cross-entropy of this rank's logits (N, V) and targets, as cross_entropy_forward would give
  /// it on the whole global batch (a collective): with the mean reduction, normalised by the
  /// GLOBAL batch's divisor (the counted targets, or their class weights' sum, of every rank);
  /// with sum and none, the sum over every rank's rows. Returns that global loss (the same on
  /// every rank) and this rank's dlogits, whose sum over ranks is its gradient. Fills cache as
  /// cross_entropy_forward (cache.count and cache.divisor: this rank's). Throws as
  /// cross_entropy_forward.
  std::pair<double, Matrix<Scalar>> cross_entropy(CrossEntropyCache<Scalar>& cache,
                                                  ConstRef<Scalar> logits, const IdMatrix& targets,
                                                  const CrossEntropyOptions& options = {}) {
    Matrix<Scalar> dlogits;
    const double loss = cross_entropy(cache, dlogits, logits, targets, options);
    return {loss, std::move(dlogits)};
  }
  /// The same, with this rank's dlogits written into dlogits, whose buffer is reused once it is
  /// (N, V): no new buffer per step. Returns the global loss.
  double cross_entropy(CrossEntropyCache<Scalar>& cache, Matrix<Scalar>& dlogits,
                       ConstRef<Scalar> logits, const IdMatrix& targets,
                       const CrossEntropyOptions& options = {}) {
    const Scalar local = cross_entropy_forward(cache, logits, targets, options);
    const double global = options.reduction == LossReduction::mean
                              ? comm_->sum(static_cast<double>(cache.divisor))
                              : 1.0;
    return comm_->sum(backward_share(cache, dlogits, local, global).value);
  }

  /// cross_entropy without its collective, so that no rank waits for the others between forward
  /// and backward: the global batch's divisor is given (loss_divisor of the global targets, which
  /// every rank computes alike) rather than summed over the ranks. Writes this rank's dlogits as
  /// cross_entropy does (the same values, given the same divisor) and returns this rank's share of
  /// the global loss; finish_gradients(guard, share, max_norm) adds up the shares in the
  /// collective it makes anyway. Throws ArgumentError naming DataParallel::cross_entropy_share,
  /// before cache or dlogits change: for the arguments cross_entropy_forward rejects, and unless
  /// global_divisor is finite and at least this rank's own divisor (mean: a smaller one is not
  /// the global batch's) or is 1 (sum and none).
  LossShare cross_entropy_share(CrossEntropyCache<Scalar>& cache, Matrix<Scalar>& dlogits,
                                ConstRef<Scalar> logits, const IdMatrix& targets,
                                double global_divisor, const CrossEntropyOptions& options = {}) {
    const char* func = "DataParallel::cross_entropy_share";
    eigenformer::detail::check_cross_entropy_args<Scalar>(func, logits, targets, options);
    const bool mean = options.reduction == LossReduction::mean;
    // The ids were checked above: no need for loss_divisor's own check of them.
    const double mine = eigenformer::detail::counted_weight(targets, options);
    eigenformer::detail::require(
        mean ? std::isfinite(global_divisor) && global_divisor >= mine * (1 - 1e-12)
             : global_divisor == 1.0,
        func, "global_divisor", [&] {
          return (mean ? "must be finite and at least this rank's own divisor " +
                             std::to_string(mine) + " (loss_divisor of the global targets)"
                       : std::string("must be 1 (loss_divisor's) with the sum and none "
                                     "reductions")) +
                 ", got " + std::to_string(global_divisor);
        });
    const Scalar local = cross_entropy_forward(cache, logits, targets, options);
    return backward_share(cache, dlogits, local, global_divisor);
  }

  /// Starts the reducer for this step's backward and returns the callback to pass to the model's
  /// backward. Throws ArgumentError (GradientReducer::begin) if the model's parameter list is no
  /// longer the one of construction.
  template <class Model>
  GradReady<Scalar> begin_backward(Model& model) {
    return reducer_.begin(model.parameters());
  }
  /// After backward: every gradient holds the sum over ranks. Returns the seconds spent waiting
  /// for communication that backward did not hide.
  double end_backward() { return reducer_.finish(); }

  /// true, on every rank, when the global step may go ahead: check_step on this rank's (summed)
  /// gradients, the verdict combined over ranks and given to guard (StepGuard::apply), so that
  /// every rank skips, or stops, together. A rank whose own check passed while another's failed
  /// sees a NaN loss (the other rank's message is in its own exception). Throws as
  /// StepGuard::check, the message naming DataParallel::check_step.
  bool check_step(StepGuard<Scalar>& guard, double loss) {
    return apply_everywhere(guard, eigenformer::check_step(loss, params_),  // one pass
                            "DataParallel::check_step");
  }

  /// clip_grad_norm with rank 0's norm of the summed gradients, so that every rank scales by the
  /// same factor (as torch.nn.utils.clip_grad_norm_; the gradients are left alone for a
  /// non-finite norm). Returns the norm. Throws ArgumentError naming DataParallel::clip_grad_norm
  /// unless max_norm is positive and finite.
  Scalar clip_grad_norm(Scalar max_norm);

  /// What finish_gradients did.
  struct Finished {
    bool ok = false;      // the step may go ahead (check_step's verdict)
    Scalar norm = 0;      // when ok: the norm before clipping (clip_grad_norm's result)
    double waited = 0.0;  // seconds waited for gradient sums (end_backward's result)
    double loss = 0.0;    // the global loss (as given, or the sum of the ranks' shares)
  };

  /// end_backward(), check_step(guard, loss) and, when the step may go ahead,
  /// clip_grad_norm(max_norm), with the same results (the norm up to the order of its sum), in
  /// fewer passes: the sums being the same on every rank, each rank checks and measures its share
  /// of them (about 1 / size of the entries, each gradient read once), and one collective gives
  /// every rank all the shares. The separate calls have every rank read every gradient twice.
  /// Throws ArgumentError naming DataParallel::finish_gradients, before anything is done, unless
  /// max_norm is positive and finite; else throws as the three calls (NonFiniteError naming
  /// DataParallel::finish_gradients under a stop policy).
  Finished finish_gradients(StepGuard<Scalar>& guard, double loss, Scalar max_norm) {
    return finish(guard, loss, false, max_norm);
  }
  /// The same, given this rank's share of the loss (cross_entropy_share) rather than the global
  /// loss: the shares travel in the collective the gradients' check and norm make, so that the
  /// step waits for the other ranks once, here, rather than also after the loss. The global loss,
  /// their sum in rank order (the same on every rank), is checked and returned in
  /// Finished::loss. Throws as finish_gradients(guard, loss, max_norm).
  Finished finish_gradients(StepGuard<Scalar>& guard, LossShare share, Scalar max_norm) {
    return finish(guard, share.value, true, max_norm);
  }

  /// The parameters the reducer sums (the model's, at construction).
  const ParamList<Scalar>& parameters() const { return params_; }

 private:
  const Communicator* comm_;
  ParamList<Scalar> params_;
  GradientReducer<Scalar> reducer_;
  std::pair<std::size_t, std::size_t> share_;  // the parameters this rank measures
                                               // (detail::measure_share)
  std::vector<double> shares_;                 // (3 per rank) finish_gradients' gathered measures

  static const ParamList<Scalar>& checked(const Communicator& comm, const ParamList<Scalar>& p) {
    check_same_parameters(comm, p, "DataParallel::DataParallel");
    return p;
  }
  static void check_max_norm(const char* func, Scalar max_norm) {
    eigenformer::detail::require(
        max_norm > 0 && std::isfinite(static_cast<double>(max_norm)), func, "max_norm",
        [&] { return "must be positive and finite, got " + std::to_string(max_norm); });
  }
  /// guard.apply on mine, this rank's verdict, combined over ranks (a collective), so that every
  /// rank skips, or stops, together: a rank whose own check passed while another's failed sees a
  /// NaN loss.
  bool apply_everywhere(StepGuard<Scalar>& guard, StepCheck mine, const char* func) {
    if (!comm_->all(mine.ok) && mine.ok) mine = eigenformer::check_step(std::nan(""), params_);
    return guard.apply(std::move(mine), params_, func);
  }
  /// After cross_entropy_forward returned local for this rank's rows: their dlogits for the
  /// global loss whose divisor is global, as one process on the whole batch writes them (each
  /// counted row's loss gradient / global; all zero when global rounds to 0), and their share of
  /// that loss (their summed loss / global). Both divide by global rounded to Scalar, as one
  /// process divides by its cache.divisor: on one rank, where that is the rank's own divisor
  /// (loss_divisor and cross_entropy_forward sum it alike, detail::counted_weight), the dlogits
  /// are cross_entropy_backward's and the share cross_entropy_forward's loss, bit for bit.
  LossShare backward_share(const CrossEntropyCache<Scalar>& cache, Matrix<Scalar>& dlogits,
                           Scalar local, double global) {
    const auto divisor = static_cast<Scalar>(global);
    if (divisor == Scalar(0)) {  // nothing counted on any rank: no loss, as one process gives
      dlogits.setZero(cache.probs.rows(), cache.probs.cols());
      return {0.0};
    }
    const Scalar scale = Scalar(1) / divisor;  // as backward's 1 / divisor
    eigenformer::detail::cross_entropy_grad(dlogits, cache, [&](Index) { return scale; });
    // The rows' summed loss: the mean times this rank's divisor (sum and none return it, divisor
    // 1). A divisor of 0 here (counted rows all of class weight 0) leaves label smoothing's
    // terms, which the mean dropped: they are in cache.losses.
    const auto mine = static_cast<double>(cache.divisor);
    const double total =
        mine == 0 ? cache.losses.template cast<double>().sum() : static_cast<double>(local) * mine;
    return {total / static_cast<double>(divisor)};
  }
  /// clip_grad_norm's scaling, given this rank's sum of squared gradients. A collective (rank 0's
  /// norm is broadcast): every rank calls it, or none.
  Scalar clip_to(Scalar max_norm, double squared_sum) {
    double norm = std::sqrt(squared_sum);
    comm_->broadcast(&norm, sizeof norm);
    return scale_to(max_norm, norm);
  }
  /// Scales the gradients, whose norm is norm, as clip_grad_norm does; returns norm.
  Scalar scale_to(Scalar max_norm, double norm);
  /// finish_gradients with loss the global loss, or this rank's share of it when is_share.
  Finished finish(StepGuard<Scalar>& guard, double loss, bool is_share, Scalar max_norm);
};

template <class Scalar>
Scalar DataParallel<Scalar>::clip_grad_norm(Scalar max_norm) {
  check_max_norm("DataParallel::clip_grad_norm", max_norm);
  double sum = 0.0;  // as eigenformer::clip_grad_norm, in double
  for (const auto& p : params_) sum += eigenformer::detail::squared_norm_double(p.param->grad);
  return clip_to(max_norm, sum);
}

template <class Scalar>
auto DataParallel<Scalar>::finish(StepGuard<Scalar>& guard, double loss, bool is_share,
                                  Scalar max_norm) -> Finished {
  const char* func = "DataParallel::finish_gradients";
  check_max_norm(func, max_norm);
  Finished out;
  out.waited = reducer_.finish();
  // This rank's measures: its share's sum of squares (as clip_grad_norm sums, in double), 1 when
  // those entries and a global loss are finite (else 0), and its share of the loss (or 0). Every
  // rank adds them up in rank order, so all take their decisions from the same figures.
  double measures[3] = {0.0, is_share || std::isfinite(loss) ? 1.0 : 0.0, is_share ? loss : 0.0};
  for (std::size_t i = share_.first; i < share_.second; ++i) {
    const GradientMeasure m = detail::measure(params_[i].param->grad);
    measures[0] += m.squared_norm;
    if (!m.finite) measures[1] = 0.0;
  }
  comm_->all_gather(measures, 3, shares_.data());
  double sum = 0.0, shares = 0.0;
  bool finite = true;
  for (std::size_t r = 0; r < static_cast<std::size_t>(comm_->size()); ++r) {
    sum += shares_[3 * r];
    finite = finite && shares_[3 * r + 1] == 1.0;
    shares += shares_[3 * r + 2];
  }
  out.loss = is_share ? shares : loss;
  finite = finite && std::isfinite(out.loss);  // the shares' sum: the same figure on every rank
  StepCheck mine;  // passed; when not, the full check names what failed, here
  if (!finite) mine = eigenformer::check_step(out.loss, params_);
  if (!finite && mine.ok) mine = eigenformer::check_step(std::nan(""), params_);  // another's loss
  out.ok = guard.apply(std::move(mine), params_, func);
  if (out.ok) out.norm = scale_to(max_norm, std::sqrt(sum));
  return out;
}

template <class Scalar>
Scalar DataParallel<Scalar>::scale_to(Scalar max_norm, double norm) {
  const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1.0)
    for (const auto& p : params_) p.param->grad *= static_cast<Scalar>(coef);
  return static_cast<Scalar>(norm);
}

}  // namespace eigenformer::dist
