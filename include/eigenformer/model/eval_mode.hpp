// Inference mode for one scope, whatever the model's train flag: every dropout of a model off on
// entry, each one's flag put back as it was on exit (also when an exception leaves the scope).
//
//   {
//     ScopedEval eval(model);  // model.train(true) or not: no dropout in here
//     ... decode_step, forward ...
//   }                          // the flags are what they were, one by one
//
// The decoding and generation functions (decode/) run in one, so that their tokens never depend on
// whether the caller called eval(). Switching dropout off draws nothing from the dropouts'
// generators, so a training run that generates samples on the way continues as it would without.
// The guard is for one thread: the model must not be used elsewhere while it lives.
#pragma once

#include <utility>
#include <vector>

#include "decoder.hpp"
#include "encoder.hpp"
#include "language_models.hpp"
#include "token_input.hpp"
#include "transformer.hpp"

namespace eigenformer {

namespace detail {

// for_each_dropout(part, f) calls f(Dropout&) on every dropout layer of part. A new Dropout
// member of a model part must be listed here (tests/test_generate.cpp checks a forward under
// ScopedEval against one in eval mode, so one left out fails there).

template <class Scalar, class F>
void for_each_dropout(TokenInput<Scalar>& input, F&& f) {
  f(input.dropout);
}

template <class Scalar, class F>
void for_each_dropout(EncoderLayer<Scalar>& layer, F&& f) {
  f(layer.attn_drop);
  f(layer.ffn_drop);
  f(layer.ffn.dropout);
}

template <class Scalar, class F>
void for_each_dropout(DecoderLayer<Scalar>& layer, F&& f) {
  f(layer.self_drop);
  f(layer.cross_drop);
  f(layer.ffn_drop);
  f(layer.ffn.dropout);
}

template <class Scalar, class F>
void for_each_dropout(EncoderStack<Scalar>& stack, F&& f) {
  for (auto& layer : stack.layers) for_each_dropout(layer, f);
}

template <class Scalar, class F>
void for_each_dropout(Encoder<Scalar>& encoder, F&& f) {
  for_each_dropout(encoder.input, f);
  for_each_dropout(encoder.stack, f);
}

template <class Scalar, class F>
void for_each_dropout(Decoder<Scalar>& decoder, F&& f) {
  for_each_dropout(decoder.input, f);
  for (auto& layer : decoder.layers) for_each_dropout(layer, f);
}

/// DecoderOnlyLM and EncoderOnlyModel.
template <class Scalar, class F>
void for_each_dropout(SingleStackModel<Scalar>& model, F&& f) {
  for_each_dropout(model.input, f);
  for_each_dropout(model.stack, f);
}

template <class Scalar, class F>
void for_each_dropout(Transformer<Scalar>& model, F&& f) {
  for_each_dropout(model.encoder, f);
  for_each_dropout(model.decoder, f);
}

}  // namespace detail

/// Turns every dropout of model off for the guard's lifetime and restores each dropout's own flag
/// when it ends, so a model whose parts were in mixed modes gets exactly them back. Model:
/// Transformer, DecoderOnlyLM, EncoderOnlyModel, or one of their parts (Encoder, Decoder,
/// EncoderStack, a layer, TokenInput). The model must outlive the guard. Throws only
/// std::bad_alloc, before it changes anything.
template <class Model>
class ScopedEval {
 public:
  /// Saves every dropout's mode of model, then turns each off.
  explicit ScopedEval(Model& model) {
    detail::for_each_dropout(model, [&](auto& d) { saved_.emplace_back(&d.training, d.training); });
    for (auto& entry : saved_) *entry.first = false;  // after every allocation: nothing throws now
  }
  /// Restores every dropout's saved mode.
  ~ScopedEval() {
    for (auto& [flag, was] : saved_) *flag = was;
  }
  ScopedEval(const ScopedEval&) = delete;
  ScopedEval& operator=(const ScopedEval&) = delete;

 private:
  std::vector<std::pair<bool*, bool>> saved_;  // every dropout's flag and its value on entry
};

}  // namespace eigenformer
