// Semantics of the warp-collective instructions, executed once all lanes have arrived: operands of
// every lane are gathered before any result is scattered (d and c of mma may alias).
//   mma.m16n8k16 / m16n8k8 .f32.{f16,bf16}: docs/emulator.md section 3.1; exact products, f64 sum, one RNE to f32
//   (hardware numerics mode: hw_numerics.cpp)
//   ldmatrix / stmatrix .x1/.x2/.x4 [.trans]: docs/emulator.md section 3.2 (and their bank wavefronts when counting)
//   shfl.sync idx/up/down/bfly: docs/emulator.md section 3.4 formula with the CUDA-header c operand
//   vote.sync all/any/ballot: docs/emulator.md section 3.4 (over the lanes of the membermask)
#include <cstring>

#include "common/fp16.h"
#include "internal.h"

namespace fae::emu {

const char* collective_name(Op op, int qual) {
  switch (op) {
    case Op::mma:
      switch (qual) {
        case 16:
          return "mma.m16n8k16.f32.f16";
        case 16 | 0x100:
          return "mma.m16n8k16.f32.bf16";
        case 8:
          return "mma.m16n8k8.f32.f16";
        default:
          return "mma.m16n8k8.f32.bf16";
      }
    case Op::ldmatrix:
    case Op::stmatrix: {
      static const char* names[2][2][5] = {
          {{"", "ldmatrix.x1", "ldmatrix.x2", "", "ldmatrix.x4"},
           {"", "ldmatrix.x1.trans", "ldmatrix.x2.trans", "", "ldmatrix.x4.trans"}},
          {{"", "stmatrix.x1", "stmatrix.x2", "", "stmatrix.x4"},
           {"", "stmatrix.x1.trans", "stmatrix.x2.trans", "", "stmatrix.x4.trans"}}};
      return names[op == Op::stmatrix][(qual >> 3) & 1][qual & 7];
    }
    case Op::shfl: {
      static const char* names[4] = {"shfl.sync.idx", "shfl.sync.up", "shfl.sync.down", "shfl.sync.bfly"};
      return names[qual & 3];
    }
    case Op::vote: {
      static const char* names[3] = {"vote.sync.all.pred", "vote.sync.any.pred", "vote.sync.ballot.b32"};
      return names[qual % 3];
    }
  }
  return "?";
}

namespace {

// Exact 16-bit -> double. f16: the exponent/mantissa bits shifted into an f32 pattern and scaled
// by 2^112 (exact, subnormals included); Inf/NaN patterns are mapped separately.
double decode(uint32_t reg, int half, bool bf16) {
  const auto h = static_cast<uint16_t>(reg >> (16 * half));
  if (bf16) return bf16_bits_to_f32(h);
  if ((h & 0x7C00u) == 0x7C00u) return f16_bits_to_f32(h);
  const double mag = double(bits_float(uint32_t(h & 0x7FFFu) << 13)) * 0x1p112;
  return (h & 0x8000u) ? -mag : mag;
}

void exec_mma(Runner& r, Thread* const lanes[32], int qual) {
  const bool bf16 = qual & 0x100;
  const int K = qual & 0xFF;
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const Arrival& a = *lanes[l]->arrival;
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < (K == 16 ? 8 : 4); ++i) {  // A fragment (docs/emulator.md section 3.1)
      const int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = decode(a.a[i >> 1], i & 1, bf16);
    }
    for (int i = 0; i < (K == 16 ? 4 : 2); ++i)  // B fragment
      B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = decode(a.b[i >> 1], i & 1, bf16);
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = a.c[i];
  }
  // Products of two 16-bit floats are exact in double, so the k-ordered sums below are the same
  // whether or not the compiler fuses multiply and add; vectorised over n.
  float D[16][8];
  const Config& cfg = r.launch->cfg;
  if (cfg.hw_numerics) {
    // One adder order per seed and instruction shape, as one fixed circuit serves every warp.
    mma_truncating(A, B, C, K, hw_key(cfg.hw_seed, uint64_t(K), bf16, 0x6D6D61), D);
  } else {
    for (int m = 0; m < 16; ++m) {
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < 8; ++n) acc[n] += A[m][k] * B[k][n];
      for (int n = 0; n < 8; ++n) D[m][n] = static_cast<float>(acc[n] + C[m][n]);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) lanes[l]->arrival->d[i] = D[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
  }
}

// Row r of matrix j is 16 bytes at the address supplied by lane 8j + r.
const unsigned char* row_address(Runner& r, Thread* const lanes[32], int lane, bool store) {
  Thread* src = lanes[lane];
  const auto* p = static_cast<const unsigned char*>(src->arrival->addr);
  const char* name = store ? "stmatrix" : "ldmatrix";
  if (reinterpret_cast<std::uintptr_t>(p) % 16)
    fail(r, src, p, std::string(name) + " row address not 16-byte aligned");
  if (p < r.smem || p + 16 > r.smem + r.smem_size)
    fail(r, src, p,
         std::string(name) + " row of 16 bytes outside the dynamic shared memory (" + std::to_string(r.smem_size) +
             " bytes allocated at launch)");
  r.smem_check(src, p, 16, store);
  return p;
}

// Profiler counters of one ldmatrix/stmatrix: the 8 rows of 16 bytes of each matrix are a phase.
void count_matrix_request(Runner& r, Thread* const lanes[32], int num, bool store) {
  if (!r.launch->stats) return;
  Counters c;
  c.requests = 1;
  c.accesses = uint64_t(8 * num);
  c.bytes = uint64_t(128 * num);
  std::vector<uintptr_t> words;
  for (int j = 0; j < num; ++j) {
    words.clear();
    for (int row = 0; row < 8; ++row) {
      const uintptr_t w = reinterpret_cast<uintptr_t>(lanes[8 * j + row]->arrival->addr) >> 2;
      for (uintptr_t i = 0; i < 4; ++i) words.push_back(w + i);
    }
    count_wavefronts(words, c);
  }
  const Site site = lanes[0]->arrival->site;
  r.stats.warp_request({site.file, site.line, store ? StatOp::stmatrix : StatOp::ldmatrix, 16}, c);
}

void exec_ldmatrix(Runner& r, Thread* const lanes[32], int num, bool trans) {
  uint16_t M[4][8][8];
  for (int j = 0; j < num; ++j)
    for (int row = 0; row < 8; ++row) std::memcpy(M[j][row], row_address(r, lanes, 8 * j + row, false), 16);
  count_matrix_request(r, lanes, num, false);
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int j = 0; j < num; ++j) {
      const uint16_t lo = trans ? M[j][2 * t][g] : M[j][g][2 * t];
      const uint16_t hi = trans ? M[j][2 * t + 1][g] : M[j][g][2 * t + 1];
      *lanes[l]->arrival->out[j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

void exec_stmatrix(Runner& r, Thread* const lanes[32], int num, bool trans) {
  uint16_t M[4][8][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int j = 0; j < num; ++j) {
      const uint32_t v = *lanes[l]->arrival->out[j];
      (trans ? M[j][2 * t][g] : M[j][g][2 * t]) = uint16_t(v);
      (trans ? M[j][2 * t + 1][g] : M[j][g][2 * t + 1]) = uint16_t(v >> 16);
    }
  }
  for (int j = 0; j < num; ++j)
    for (int row = 0; row < 8; ++row) {
      auto* p = const_cast<unsigned char*>(row_address(r, lanes, 8 * j + row, true));
      std::memcpy(p, M[j][row], 16);
    }
  count_matrix_request(r, lanes, num, true);
}

void exec_shfl(Runner& r, Thread* const lanes[32], unsigned mask, int mode) {
  uint32_t in[32], out[32];
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) {
      const Arrival& a = *lanes[l]->arrival;
      const int width = int(a.v[1]);
      if (width < 1 || width > 32 || (width & (width - 1)))
        fail(r, lanes[l], nullptr, "shuffle width " + std::to_string(width) + " is not a power of two <= 32");
      in[l] = a.v[0];
    }
  for (int l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    const Arrival& a = *lanes[l]->arrival;
    const int bval = a.sb & 31, cval = a.sc & 31, seg = (a.sc >> 8) & 31;
    const int max_lane = (l & seg) | (cval & ~seg), min_lane = l & seg;
    int j;
    bool p;
    switch (mode) {
      case shfl_up:
        j = l - bval;
        p = j >= max_lane;
        break;
      case shfl_down:
        j = l + bval;
        p = j <= max_lane;
        break;
      case shfl_bfly:
        j = l ^ bval;
        p = j <= max_lane;
        break;
      default:
        j = min_lane | (bval & ~seg);
        p = j <= max_lane;
    }
    if (p && !(mask & (1u << j)))
      fail(r, lanes[l], nullptr,
           "shuffle reads lane " + std::to_string(j) + ", which is not in the membermask (undefined value)");
    out[l] = p ? in[j] : in[l];
  }
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) lanes[l]->arrival->v[0] = out[l];
}

// Every lane of the membermask has arrived (warp_collective checks it): all / any of their
// predicates, or the ballot of them (bit l for lane l), to each of them.
void exec_vote(Thread* const lanes[32], int mode) {
  uint32_t ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (lanes[l] && lanes[l]->arrival->v[0] != 0) ballot |= 1u << l;
  uint32_t members = 0;
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) members |= 1u << l;
  const uint32_t out = mode == vote_ballot ? ballot : mode == vote_any ? uint32_t(ballot != 0) : uint32_t(ballot == members);
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) lanes[l]->arrival->v[0] = out;
}

}  // namespace

void execute_collective(Runner& r, Thread* const lanes[32], const PendingCollective& pc) {
  switch (pc.op) {
    case Op::mma:
      exec_mma(r, lanes, pc.qual);
      break;
    case Op::ldmatrix:
      exec_ldmatrix(r, lanes, pc.qual & 7, pc.qual & 8);
      break;
    case Op::stmatrix:
      exec_stmatrix(r, lanes, pc.qual & 7, pc.qual & 8);
      break;
    case Op::shfl:
      exec_shfl(r, lanes, pc.mask, pc.qual);
      break;
    case Op::vote:
      exec_vote(lanes, pc.qual);
      break;
  }
}

}  // namespace fae::emu
