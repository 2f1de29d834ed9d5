// CPU backend entry points. Arguments are validated by the Python API before they get here.
#pragma once
#include <string>
#include "common/params.h"

namespace fae::cpu {

void attention_forward(const FwdParams& p);
void attention_backward(const BwdParams& p);

// Name of the instruction set the kernels run with ("scalar", "avx2", "avx512", ...).
std::string active_isa();

}  // namespace fae::cpu
