// CPU entry points of the attention weights and top-k attention (interp_kernels.h, float64 in
// interp_float64.cpp), on the instruction set attention_forward uses (backend.h: active_isa).
// Arguments are validated by the Python API before they get here.
#pragma once
#include "common/interp_params.h"

namespace fae::cpu {

void attention_weights(const WeightsParams& p);
void topk_forward(const TopkParams& p);
void topk_backward(const TopkBwdParams& p);

}  // namespace fae::cpu
