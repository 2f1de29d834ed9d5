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

// A kernel bug found by the emulator (or UB per docs/ptx-emulation-spec.md). The message names the
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
};
Config get_config();
void set_config(const Config& c);

}  // namespace fae::emu
