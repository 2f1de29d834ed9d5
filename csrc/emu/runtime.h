// Host-side control of the SIMT emulator: launching a grid, configuration, and the error type
// every checker raises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "api.h"

namespace fae::emu {

// A kernel bug found by the emulator (or undefined behaviour, docs/emulator.md). The message names the
// kernel, block, thread, address and the rule broken.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A global buffer [lo, hi) passed to a launch (a fae::gptr argument).
struct Buffer {
  const void* lo;
  const void* hi;
};

// Adds a buffer to those of the next launch from this thread.
void announce_buffer(const Buffer& b);

// Runs `body` as every thread of every block of the grid (blocks in parallel on worker OS
// threads, the threads of a block as cooperatively scheduled fibers). Throws Error on the first
// kernel bug (of the lowest-numbered failing block). The kernel may access `buffers` and those
// announced since the previous launch (checked for races between blocks).
void launch(const char* kernel_name, dim3 grid, dim3 block, std::size_t smem_bytes, const std::function<void()>& body,
            std::vector<Buffer> buffers);

struct Config {
  int threads = 2;                      // worker OS threads running blocks in parallel
  bool shuffle = false;                 // false: deterministic thread order; true: seeded shuffle
  uint64_t seed = 0;                    // seed of the shuffled order (combined with the block index)
  std::size_t stack_bytes = 256 * 1024; // per-fiber stack
  std::size_t smem_limit = 99 * 1024;   // largest dynamic shared memory of the shipped archs (sm_86/89)
  bool stats = false;                   // profiler counters (memory_stats) for the following launches
  // Hardware numerics mode: mma sums truncated in a seeded order, ex2 within its 2 ulp (README).
  // Initially set from the environment variable FAE_EMU_HW_NUMERICS=<seed>.
  bool hw_numerics = false;
  uint64_t hw_seed = 0;
};
Config get_config();  // throws std::invalid_argument when FAE_EMU_HW_NUMERICS is not a seed
void set_config(const Config& c);

// Profiler counters of one memory operation at one call site (kernel source line) of a launch,
// summed over its blocks. A request is one warp-level execution of the instruction.
//   shared ops: wavefronts served by the 32 banks of 4 bytes (4-byte words of a phase in the same
//   bank take one wavefront each), and the fewest wavefronts the data needs (ideal_wavefronts);
//   wavefronts - ideal_wavefronts is the bank-conflict cost.
//   global ops: 32-byte sectors touched per request, against the bytes the lanes requested.
struct SiteStats {
  std::string file;          // kernel source file, from csrc/ on
  int line;
  std::string op;            // "shared load", "shared store", "cp.async shared", "ldmatrix", "stmatrix",
                             // "global load", "global store", "cp.async global", "global atomic"
  int bytes_per_access;      // per lane (ldmatrix/stmatrix: per row, 16)
  uint64_t requests, accesses, bytes, sectors, wavefronts, ideal_wavefronts;
};
struct LaunchStats {
  std::string kernel;
  dim3 grid, block;
  std::vector<SiteStats> sites;
};
// The counters of the launches made with Config::stats set, oldest first; reset_stats forgets them.
std::vector<LaunchStats> memory_stats();
void reset_stats();

}  // namespace fae::emu
