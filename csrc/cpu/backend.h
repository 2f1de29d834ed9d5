// CPU backend entry points. Arguments are validated by the Python API before they get here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "common/params.h"

namespace fae::cpu {

void attention_forward(const FwdParams& p);
void attention_backward(const BwdParams& p);

// KV-cache append with rotary embedding (AppendParams): writes the new keys and values into the
// cache in place, and the rotated queries into q_rot when rotary tables are given.
void kvcache_append(const AppendParams& p);

// Dropout's keep mask (common/philox.h) for p.dropout_p, dropout_seed, dropout_offset, by the active
// instruction set's generator: out[((b * heads_q + h) * rows + i) * cols + j] = 1 when element
// (b, h, i, j) is kept, else 0, for b < p.batch, h < p.heads_q.
void dropout_mask(const FwdParams& p, int64_t rows, int64_t cols, uint8_t* out);

// The active instruction set's in-register transpose (cpu/vec.h: transpose) of a W x W block of
// floats, row-major, in place, W its vector width; returns W.
int vec_transpose(float* block);
// The active instruction set's bool_bias (cpu/vec.h) of bytes[0 .. n), n <= W, into out[0 .. W);
// returns W.
int vec_bool_bias(const uint8_t* bytes, int n, float* out);
// The active instruction set's exp2 (cpu/vec.h) of x[0 .. W) into out[0 .. W); returns W.
int vec_exp2(const float* x, float* out);

// Name of the instruction set the kernels run with ("scalar", "avx2", "avx512", "avx512bf16",
// "neon"): the best one the CPU supports, or FLASHATTN_EXT_CPU_ISA when set, which may also name
// the test path "avx512bf16-emu" (never chosen automatically). An unknown or unsupported value
// throws std::invalid_argument naming the variable and the accepted values.
std::string active_isa();

// Instruction sets compiled in and supported by this CPU, worst first.
std::vector<std::string> available_isas();

// Measured peaks of the active instruction set on `threads` threads at once (cpu/peaks.h): the
// references the benchmarks report fractions of.
struct PeakProbes {
  int threads = 0;
  double fma_gflops = 0;        // float32 FMA, register loop
  double bf16_dot_gflops = 0;   // bfloat16 dot product (dot2), register loop; 0: the ISA has none
  bool bf16_dot_native = false; // false with a dot product: the AVX2 emulation (avx512bf16-emu)
  double amx_bf16_gflops = 0;   // bfloat16 AMX tile products (tdpbf16ps); 0: not this ISA / emulated
  double bandwidth_gbs = 0;     // streaming read of bandwidth_bytes, vector loads summed
  int64_t bandwidth_bytes = 0;
  float checksum = 0;           // depends on every loop, so that none is optimised away
};
PeakProbes peak_probes(int threads);  // threads <= 0: the default count

// Tile sizes: query rows (or columns) x keys per tile of the forward and of the backward. The
// kernels take the built-in ones (tiles.h) unless a tuned table names a candidate below for their
// (instruction set, dtype, head-dim class, direction); head-dim classes: <= 64, <= 128, larger.
struct TileShape {
  int64_t bq, bk;
};
constexpr TileShape kFwdTileCandidates[] = {{64, 128}, {64, 64}, {64, 256}, {128, 128}};
constexpr TileShape kBwdTileCandidates[] = {{48, 64}, {32, 64}, {48, 128}, {96, 64}};
struct TunedTile {
  DType dtype;
  int64_t head_dim;  // any head dim of its class
  bool backward;
  TileShape shape;
};
int head_dim_class(int64_t head_dim);  // 64, 128 or 256
// Replaces the table of instruction set `isa` (a value of FLASHATTN_EXT_CPU_ISA; empty `tiles`:
// built-in again); `source` names where it came from. Throws std::invalid_argument on a shape
// that is not a candidate.
void set_tuned_tiles(const std::string& isa, const std::vector<TunedTile>& tiles, const std::string& source);
std::string tuned_tiles_source(const std::string& isa);  // "built-in" or the table's source
// The tuned shape for a kernel of instruction set `isa`, if the table has one.
bool tuned_tile(const std::string& isa, DType dtype, int64_t head_dim, bool backward, TileShape& shape);

}  // namespace fae::cpu
