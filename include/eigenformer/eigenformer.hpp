// eigenformer: a header-only Transformer library over Eigen, every block with a hand-written
// backward pass. This umbrella header includes all of it; each header also stands alone.
#pragma once

#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/param.hpp"
#include "core/random.hpp"
#include "core/tensor.hpp"

#include "ops/activations.hpp"
#include "ops/additive_attention.hpp"
#include "ops/attention.hpp"
#include "ops/embedding.hpp"
#include "ops/flash_attention.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/relative_position.hpp"
#include "ops/rotary.hpp"
#include "ops/softmax.hpp"

#include "layers/activation.hpp"
#include "layers/additive_attention.hpp"
#include "layers/dropout.hpp"
#include "layers/embedding.hpp"
#include "layers/feed_forward.hpp"
#include "layers/layernorm.hpp"
#include "layers/linear.hpp"
#include "layers/multihead_attention.hpp"
#include "layers/positional.hpp"
#include "layers/residual.hpp"

#include "model/config.hpp"
#include "model/decoder.hpp"
#include "model/encoder.hpp"
#include "model/language_models.hpp"
#include "model/output_head.hpp"
#include "model/token_input.hpp"
#include "model/transformer.hpp"

#include "train/gradcheck.hpp"
#include "train/guard.hpp"
#include "train/loss.hpp"
#include "train/optim.hpp"
#include "train/schedule.hpp"

#include "decode/beam.hpp"
#include "decode/greedy.hpp"
#include "decode/kv_cache.hpp"

#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
