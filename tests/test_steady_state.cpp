// Steady-state training allocates nothing (issue 18): after the first steps, a training step of
// each model kind (encoder-decoder, decoder-only, encoder-only, and the encoder's task models:
// classifier and masked LM) makes no heap allocation above 64 KB and takes fewer than 200 minor
// page faults.
//
// Allocations are counted at malloc itself, which this program replaces by forwarding to glibc's
// own (__libc_malloc & co.): that catches Eigen's matrices (Eigen::internal::aligned_malloc calls
// std::malloc), std::vector and operator new alike. glibc returns blocks above its mmap threshold
// to the kernel on free, so each fresh large block is also first-touch page faults, counted with
// getrusage. Under a sanitizer (which owns malloc) nothing is replaced and the counts are skipped.
#include <doctest/doctest.h>
#include <sys/resource.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <eigenformer/eigenformer.hpp>

#include "model_cases.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EIGENFORMER_COUNT_MALLOC 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define EIGENFORMER_COUNT_MALLOC 0
#endif
#endif
#ifndef EIGENFORMER_COUNT_MALLOC
#define EIGENFORMER_COUNT_MALLOC 1
#endif

namespace {

constexpr std::size_t kLarge = 64 * 1024;  // bytes: the allocations that count

std::atomic<bool> counting{false};
std::atomic<long> allocations{0};  // of any size
std::atomic<long> large_allocations{0};
std::atomic<std::size_t> largest{0};

[[maybe_unused]] void note(std::size_t size) {  // unused under sanitizers
  if (!counting.load(std::memory_order_relaxed)) return;
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (size <= kLarge) return;
  large_allocations.fetch_add(1, std::memory_order_relaxed);
  std::size_t seen = largest.load(std::memory_order_relaxed);
  while (size > seen && !largest.compare_exchange_weak(seen, size)) {
  }
}

}  // namespace

#if EIGENFORMER_COUNT_MALLOC
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t size) {
  note(size);
  return __libc_malloc(size);
}
void* calloc(std::size_t n, std::size_t size) {
  note(n * size);
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t size) {
  note(size);
  return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
  note(size);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  note(size);
  void* p = __libc_memalign(alignment, size);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}
#endif

namespace {

using eigenformer::IdMatrix;
using eigenformer::Index;
using eigenformer::Matrix;

/// What one training step cost: large allocations, the largest, minor page faults.
struct StepCost {
  long allocations = 0;
  std::size_t largest = 0;
  long faults = 0;
};

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

/// Runs step() five times and returns the worst cost of steps 3 to 5 (1 and 2 size every buffer
/// and the optimiser's state).
template <class Step>
StepCost worst_steady_step(Step&& step) {
  step();
  step();
  StepCost worst;
  for (int i = 3; i <= 5; ++i) {
    large_allocations = 0;
    largest = 0;
    const long faults_before = minor_faults();
    counting = true;
    step();
    counting = false;
    const long faults = minor_faults() - faults_before;
    worst.allocations = std::max(worst.allocations, large_allocations.load());
    worst.largest = std::max(worst.largest, largest.load());
    worst.faults = std::max(worst.faults, faults);
  }
  return worst;
}

void check_steady(const char* model, const StepCost& cost) {
  std::printf("%s: %ld allocations > 64 KB (largest %zu bytes), %ld minor page faults per step\n",
              model, cost.allocations, cost.largest, cost.faults);
#if EIGENFORMER_COUNT_MALLOC
  CHECK(cost.allocations == 0);
  CHECK(cost.faults < 200);
#else
  MESSAGE("malloc belongs to the sanitizer: counts not checked");
#endif
}

/// Small, but with every (B*T, C) activation above 64 KB: B = 4, T = 40 (N = 160 rows), width
/// 128 (80 KB), d_ff 512 (320 KB), vocabularies of 1000 (640 KB logits), 4 heads (scores of
/// 4 x 4 x 40 x 40, 100 KB), dropout on.
eigenformer::TransformerConfig steady_config() {
  eigenformer::TransformerConfig c = eftest::tiny_config();
  c.src_vocab = c.tgt_vocab = c.vocab = 1000;
  c.d_model = 128;
  c.n_heads = 4;
  c.d_ff = 512;
  c.dropout = 0.1;
  c.max_len = 64;
  return c;
}

constexpr Index kBatch = 4, kSteps = 40;

/// Random ids in [1, vocab), with the last 5 positions of sequence 0 padded (id 0).
IdMatrix padded_ids(Index vocab, std::uint64_t seed) {
  eigenformer::Rng rng(seed);
  IdMatrix ids(kBatch, kSteps);
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = 1 + rng.index(vocab - 1);
  ids.block(0, kSteps - 5, 1, 5).setZero();
  return ids;
}

/// One step of a single-stack model (next-token or same-position targets).
template <class Model>
StepCost single_stack_cost(Model& model, bool next_token) {
  model.train();
  eigenformer::AdamW<float> opt(model.parameters(), 1e-3);
  const IdMatrix ids = padded_ids(model.vocab_size(), 7);
  const IdMatrix input = next_token ? IdMatrix(ids.leftCols(kSteps - 1)) : ids;
  const IdMatrix target = next_token ? IdMatrix(ids.rightCols(kSteps - 1)) : ids;
  typename Model::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  const eigenformer::CrossEntropyOptions options{0, 0.0};
  Matrix<float> dlogits;  // (B*T, V)
  return worst_steady_step([&] {
    opt.zero_grad();
    const Matrix<float>& logits = model.forward(input, cache);  // (B*T, V), in cache
    eigenformer::cross_entropy_forward(ce, logits, target, options);
    eigenformer::cross_entropy_backward(dlogits, ce);
    model.backward(dlogits, cache);
    opt.step();
  });
}

}  // namespace

TEST_CASE("a steady-state training step of the encoder-decoder allocates nothing large") {
  eigenformer::TransformerConfig c = steady_config();
  eigenformer::Rng rng(1);
  eigenformer::Transformer<float> model(c, rng);
  model.train();
  eigenformer::Adam<float> opt(model.parameters(), 1e-3);
  const IdMatrix src = padded_ids(c.src_vocab, 2), tgt = padded_ids(c.tgt_vocab, 3);
  const IdMatrix tgt_in = eigenformer::shift_right(tgt, 1);
  eigenformer::Transformer<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  const eigenformer::CrossEntropyOptions options{0, 0.1};
  Matrix<float> dlogits;  // (B*T, V)
  check_steady("Transformer", worst_steady_step([&] {
                 opt.zero_grad();
                 const Matrix<float>& logits = model.forward(src, tgt_in, cache);  // in cache
                 eigenformer::cross_entropy_forward(ce, logits, tgt, options);
                 eigenformer::cross_entropy_backward(dlogits, ce);
                 model.backward(dlogits, cache);
                 opt.step();
               }));
}

TEST_CASE("a steady-state training step of a GPT-style DecoderOnlyLM allocates nothing large") {
  eigenformer::TransformerConfig c = steady_config();
  c.norm = eigenformer::NormPlacement::pre;
  c.activation = eigenformer::Activation::gelu_tanh;
  c.positional = eigenformer::PositionalKind::learned;
  c.tie_output = true;
  eigenformer::Rng rng(1);
  eigenformer::DecoderOnlyLM<float> model(c, rng);
  check_steady("DecoderOnlyLM", single_stack_cost(model, true));
}

TEST_CASE("a steady-state training step of an EncoderOnlyModel allocates nothing large") {
  eigenformer::TransformerConfig c = steady_config();
  eigenformer::Rng rng(1);
  eigenformer::EncoderOnlyModel<float> model(c, rng);
  check_steady("EncoderOnlyModel", single_stack_cost(model, false));
}

TEST_CASE("a steady-state training step of a BERT-style MaskedLM allocates nothing large") {
  eigenformer::TransformerConfig c = steady_config();
  c.type_vocab = 2;  // token type 0 everywhere, and BERT's input LayerNorm
  c.input_norm = true;
  c.tie_output = true;
  eigenformer::Rng rng(1);
  eigenformer::MaskedLM<float> model(c, rng);
  check_steady("MaskedLM", single_stack_cost(model, false));
}

TEST_CASE("a steady-state training step of an EncoderClassifier allocates nothing large") {
  eigenformer::TransformerConfig c = steady_config();
  eigenformer::ClassifierConfig hc;
  hc.n_classes = 3;
  hc.pooling = eigenformer::Pooling::mean;
  eigenformer::Rng rng(1);
  eigenformer::EncoderClassifier<float> model(c, hc, rng);
  model.train();
  eigenformer::AdamW<float> opt(model.parameters(), 1e-3);
  const IdMatrix ids = padded_ids(c.vocab, 7);
  IdMatrix labels(kBatch, 1);  // (B, 1): one class per sequence
  for (Index b = 0; b < kBatch; ++b) labels(b, 0) = b % hc.n_classes;
  eigenformer::EncoderClassifier<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  Matrix<float> dlogits;  // (B, n_classes)
  check_steady("EncoderClassifier", worst_steady_step([&] {
                 opt.zero_grad();
                 const Matrix<float> logits = model.forward(ids, cache);  // (B, n_classes)
                 eigenformer::cross_entropy_forward(ce, logits, labels);
                 eigenformer::cross_entropy_backward(dlogits, ce);
                 model.backward(dlogits, cache);
                 opt.step();
               }));
}

TEST_CASE("a steady-state step of a DecoderOnlyLM with per-head ALiBi biases allocates nothing") {
  eigenformer::TransformerConfig c = steady_config();
  c.positional = eigenformer::PositionalKind::none;
  eigenformer::Rng rng(1);
  eigenformer::DecoderOnlyLM<float> model(c, rng);
  model.train();
  eigenformer::AdamW<float> opt(model.parameters(), 1e-3);
  const IdMatrix ids = padded_ids(c.vocab, 7);
  const IdMatrix input = ids.leftCols(kSteps - 1), target = ids.rightCols(kSteps - 1);
  const Index T = kSteps - 1, H = c.n_heads;
  eigenformer::AttentionMask alibi;  // causal, with a bias (B*H*T, T) of -slope_h * distance
  alibi.causal = true;
  alibi.attn_bias.resize(kBatch * H * T, T);
  for (Index b = 0; b < kBatch; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < T; ++i)
        for (Index j = 0; j < T; ++j)
          alibi.attn_bias((b * H + h) * T + i, j) = -std::pow(0.5, h + 1) * double(i - j);
  eigenformer::DecoderOnlyLM<float>::Cache cache;
  eigenformer::CrossEntropyCache<float> ce;
  Matrix<float> dlogits;  // (B*T, V)
  check_steady("DecoderOnlyLM with ALiBi", worst_steady_step([&] {
                 opt.zero_grad();
                 const Matrix<float>& logits = model.forward(input, alibi, cache);
                 eigenformer::cross_entropy_forward(ce, logits, target);
                 eigenformer::cross_entropy_backward(dlogits, ce);
                 model.backward(dlogits, cache);
                 opt.step();
               }));
}

TEST_CASE("an optimizer's zero_grad allocates nothing and clears every gradient") {
  eigenformer::Rng rng(1);
  eigenformer::Transformer<float> model(steady_config(), rng);
  eigenformer::AdamW<float> opt(model.parameters());
  opt.zero_grad();
  for (const auto& p : model.parameters()) p.param->grad.setConstant(1.0f);
  allocations = 0;
  counting = true;
  opt.zero_grad();
  counting = false;
  std::printf("Optimizer::zero_grad: %ld allocations\n", allocations.load());
#if EIGENFORMER_COUNT_MALLOC
  CHECK(allocations == 0);
#else
  MESSAGE("malloc belongs to the sanitizer: counts not checked");
#endif
  for (const auto& p : model.parameters()) REQUIRE(p.param->grad.isZero(0));
}
