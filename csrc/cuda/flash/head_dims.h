// The head dims with a compiled CUDA kernel instance: the one list. instances.cmake reads these
// two lines to generate one translation unit per (dtype, head dim); dispatch.cu switches over
// them; the bindings export them (_C.cuda_head_dims, _emu.attention_head_dims) for the Python
// layer, which zero-pads other head dims up to the next one; bench/cuda_static.py reads them.
#pragma once

namespace fae::cuda {

constexpr int kHeadDims[] = {32, 64, 96, 128, 160, 192, 224, 256};  // forward
constexpr int kBwdHeadDims[] = {32, 64, 96, 128, 160, 192, 224, 256};  // backward

}  // namespace fae::cuda
