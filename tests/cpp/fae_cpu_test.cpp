// fae_cpu_test: checks the CPU kernels (fae::cpu::attention_forward / attention_backward) against
// a naive float64 reference written here, without Python. Registered with ctest.
//
// Cases: odd shapes (1, 17, 97, 257 ...), Sq != Sk, causal in both alignments, sliding windows,
// rows that see no key, GQA/MQA, non-contiguous strides (BHSD permutation, padded rows), the
// optional lse gradient, dtypes float32/float64/bfloat16/float16.
// Tolerance rule (docs/semantics.md section 7): for 16-bit dtypes the error against the float64 oracle
// must be at most 2x the error of a naive implementation computed in the input dtype plus a small
// slack; float32 and float64 get absolute tolerances (scaled by the magnitude of the result).
// Also checked: empty rows give out = 0, lse = -inf, zero gradient and no NaN; NaN in an input
// propagates; results are bitwise identical for different thread counts; the vector type's
// in-register transpose and boolean bias against their definitions.
//
// Every CPU instruction set compiled in and supported here is tested in turn.
// Usage: fae_cpu_test [-v] [--isa NAME]...   exit status 0 when every check passes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/online_softmax.h"
#include "common/params.h"
#include "cpu/backend.h"
#if FAE_TEST_EMU
#include <stdexcept>
#include "cuda/flash/api.h"
#include "emu/runtime.h"
#endif

namespace {

using fae::DType;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kNone = -1;  // unbounded window side in a Case
bool g_verbose = false;

// ---- 16-bit storage formats (independent of the library's own conversions) ----
uint16_t to_bf16_bits(double x) {
  const float f = float(x);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  const uint32_t lsb = (u >> 16) & 1u;
  return uint16_t((u + 0x7fffu + lsb) >> 16);
}
double from_bf16_bits(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// IEEE binary16, round to nearest even, via exact double arithmetic.
uint16_t to_f16_bits(double x) {
  if (std::isnan(x)) return 0x7e00u;
  const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  const double a = std::fabs(x);
  if (a == 0.0) return sign;
  if (a >= 65520.0) return sign | 0x7c00u;
  int e;
  std::frexp(a, &e);                    // a = m * 2^e, m in [0.5, 1)
  const int exp = std::max(e - 1, -14);  // unbiased exponent, subnormals share -14
  const double q = std::nearbyint(std::ldexp(a, 10 - exp));  // units of 2^(exp-10)
  const uint32_t mant = uint32_t(q);
  if (exp == -14 && mant < 1024) return sign | uint16_t(mant);  // subnormal (or zero)
  uint32_t bexp = uint32_t(exp + 15), m = mant;
  if (m >= 2048) { m >>= 1; ++bexp; }  // rounding carried into the next binade
  if (bexp >= 31) return sign | 0x7c00u;
  return sign | uint16_t((bexp << 10) | (m - 1024));
}
double from_f16_bits(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000u) ? -1.0 : 1.0;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : s * kInf;
  if (e == 0) return s * std::ldexp(double(m), -24);
  return s * std::ldexp(double(m + 1024), e - 25);
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}
size_t item_size(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
bool is16(DType t) { return t == DType::f16 || t == DType::bf16; }

// Rounds a double to the storage dtype (and back).
double round_to(DType t, double x) {
  switch (t) {
    case DType::f64: return x;
    case DType::f32: return double(float(x));
    case DType::bf16: return from_bf16_bits(to_bf16_bits(x));
    case DType::f16: return from_f16_bits(to_f16_bits(x));
  }
  return x;
}

// ---- strided 4-d tensors (B, S, H, D), last dimension contiguous ----
enum class Layout { bshd, bhsd, padded };
const char* layout_name(Layout l) { return l == Layout::bshd ? "bshd" : l == Layout::bhsd ? "bhsd" : "padded"; }

struct Tensor {
  DType dtype = DType::f32;
  int64_t B = 0, S = 0, H = 0, D = 0;
  int64_t sb = 0, ss = 0, sh = 0;  // element strides
  std::vector<unsigned char> mem;

  Tensor() = default;
  Tensor(DType t, int64_t b, int64_t s, int64_t h, int64_t d, Layout l) : dtype(t), B(b), S(s), H(h), D(d) {
    if (l == Layout::bshd) { sh = D; ss = H * D; sb = S * H * D; }
    if (l == Layout::bhsd) { ss = D; sh = S * D; sb = H * S * D; }
    if (l == Layout::padded) { sh = D + 3; ss = H * sh + 5; sb = S * ss + 7; }  // odd gaps: misaligned rows
    mem.assign(size_t(B * sb + 1) * item_size(t), 0xff);  // 0xff bytes: NaN in the gaps
  }
  size_t off(int64_t b, int64_t s, int64_t h, int64_t d) const { return size_t(b * sb + s * ss + h * sh + d); }
  double get(int64_t b, int64_t s, int64_t h, int64_t d) const {
    const unsigned char* p = mem.data() + off(b, s, h, d) * item_size(dtype);
    switch (dtype) {
      case DType::f64: { double x; std::memcpy(&x, p, 8); return x; }
      case DType::f32: { float x; std::memcpy(&x, p, 4); return x; }
      case DType::bf16: { uint16_t x; std::memcpy(&x, p, 2); return from_bf16_bits(x); }
      case DType::f16: { uint16_t x; std::memcpy(&x, p, 2); return from_f16_bits(x); }
    }
    return 0;
  }
  void set(int64_t b, int64_t s, int64_t h, int64_t d, double v) {
    unsigned char* p = mem.data() + off(b, s, h, d) * item_size(dtype);
    switch (dtype) {
      case DType::f64: std::memcpy(p, &v, 8); break;
      case DType::f32: { const float x = float(v); std::memcpy(p, &x, 4); break; }
      case DType::bf16: { const uint16_t x = to_bf16_bits(v); std::memcpy(p, &x, 2); break; }
      case DType::f16: { const uint16_t x = to_f16_bits(v); std::memcpy(p, &x, 2); break; }
    }
  }
  void* data() { return mem.data(); }
  const void* data() const { return mem.data(); }
  // Dense double copy (B, S, H, D) of the stored values.
  std::vector<double> dense() const {
    std::vector<double> out(size_t(B * S * H * D));
    size_t i = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d) out[i++] = get(b, s, h, d);
    return out;
  }
  // True when the payload bytes (not the gaps) of two tensors are identical.
  bool same_bits(const Tensor& o) const {
    const size_t n = item_size(dtype);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t h = 0; h < H; ++h)
          if (std::memcmp(mem.data() + off(b, s, h, 0) * n, o.mem.data() + o.off(b, s, h, 0) * n, size_t(D) * n)) return false;
    return true;
  }
};

void fill_random(Tensor& t, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int64_t b = 0; b < t.B; ++b)
    for (int64_t s = 0; s < t.S; ++s)
      for (int64_t h = 0; h < t.H; ++h)
        for (int64_t d = 0; d < t.D; ++d) t.set(b, s, h, d, nd(rng));
}

// ---- test cases ----
struct Case {
  int64_t B, Sq, Sk, Hq, Hkv, D;
  bool bottom_right;  // mask alignment: off = Sk - Sq (true) or 0 (false)
  int64_t left, right;  // window sides, kNone = unbounded; causal = {kNone, 0}
  DType dtype;
  Layout layout;
  bool with_dlse;
  double scale;  // 0: 1/sqrt(D)

  std::string name() const {
    char buf[256];
    auto w = [](int64_t x) { return x == kNone ? std::string("inf") : std::to_string(x); };
    std::snprintf(buf, sizeof buf, "%s B=%lld Sq=%lld Sk=%lld Hq=%lld Hkv=%lld D=%lld %s window=(%s,%s) %s%s",
                  dtype_name(dtype), (long long)B, (long long)Sq, (long long)Sk, (long long)Hq, (long long)Hkv,
                  (long long)D, bottom_right ? "bottom-right" : "top-left", w(left).c_str(), w(right).c_str(),
                  layout_name(layout), with_dlse ? " dlse" : "");
    return buf;
  }
  int64_t offset() const { return bottom_right ? Sk - Sq : 0; }
  double softmax_scale() const { return scale != 0 ? scale : 1.0 / std::sqrt(double(D)); }
  // The mask rule of docs/semantics.md section 2, written out independently of csrc/common/mask.h.
  bool visible(int64_t i, int64_t j) const {
    const int64_t c = i + offset();
    return (left == kNone || j >= c - left) && (right == kNone || j <= c + right);
  }
};

// Dense (B, S, H, D) index helpers.
struct Dims {
  int64_t S, H, D;
  size_t at(int64_t b, int64_t s, int64_t h, int64_t d) const { return size_t(((b * S + s) * H + h) * D + d); }
};

// Naive attention: explicit scores, mask, softmax. Every intermediate goes through `rnd` (the
// identity for the float64 oracle, rounding to the input dtype for the "naive in dtype" baseline;
// sums accumulate in double, as a float32-accumulating matmul of 16-bit data does to within far
// less than the 16-bit rounding). dq/dk/dv are the float64 gradients of that computation.
struct Ref {
  std::vector<double> out, lse, dq, dk, dv;  // lse: (B, Hq, Sq)
};

Ref naive(const Case& c, const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
          const std::vector<double>& dout, const std::vector<double>* dlse, const std::function<double(double)>& rnd) {
  const Dims dq_{c.Sq, c.Hq, c.D}, dk_{c.Sk, c.Hkv, c.D};
  const int64_t group = c.Hq / c.Hkv;
  const double scale = c.softmax_scale();
  Ref r;
  r.out.assign(q.size(), 0.0);
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(k.size(), 0.0);
  r.dv.assign(v.size(), 0.0);
  r.lse.assign(size_t(c.B * c.Hq * c.Sq), -kInf);
  std::vector<double> s(size_t(c.Sk)), p(size_t(c.Sk)), dp(size_t(c.Sk));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t hk = h / group;
      for (int64_t i = 0; i < c.Sq; ++i) {
        double mx = -kInf;
        for (int64_t j = 0; j < c.Sk; ++j) {
          if (!c.visible(i, j)) { s[j] = -kInf; continue; }
          double acc = 0;
          for (int64_t d = 0; d < c.D; ++d) acc += q[dq_.at(b, i, h, d)] * k[dk_.at(b, j, hk, d)];
          s[j] = rnd(rnd(acc) * scale);
          mx = std::max(mx, s[j]);
        }
        if (mx == -kInf) continue;  // the row sees no key: out = 0, lse = -inf, no gradient
        double sum = 0;
        for (int64_t j = 0; j < c.Sk; ++j) sum += (p[j] = s[j] == -kInf ? 0.0 : std::exp(s[j] - mx));
        for (int64_t j = 0; j < c.Sk; ++j) p[j] = rnd(p[j] / sum);
        r.lse[size_t((b * c.Hq + h) * c.Sq + i)] = mx + std::log(sum);
        for (int64_t d = 0; d < c.D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < c.Sk; ++j) acc += p[j] * v[dk_.at(b, j, hk, d)];
          r.out[dq_.at(b, i, h, d)] = rnd(acc);
        }
        // Backward of the same row: dV += P^T dO, dP = dO V^T, dS = P (dP - delta), delta =
        // rowsum(dO * O) - dlse, dQ = dS K scale, dK += dS^T Q scale.
        double delta = 0;
        for (int64_t d = 0; d < c.D; ++d) delta += dout[dq_.at(b, i, h, d)] * r.out[dq_.at(b, i, h, d)];
        if (dlse) delta -= (*dlse)[size_t((b * c.Hq + h) * c.Sq + i)];
        delta = rnd(delta);
        for (int64_t j = 0; j < c.Sk; ++j) {
          if (s[j] == -kInf) continue;
          double acc = 0;
          for (int64_t d = 0; d < c.D; ++d) acc += dout[dq_.at(b, i, h, d)] * v[dk_.at(b, j, hk, d)];
          dp[j] = rnd(acc);
          const double ds = rnd(p[j] * (dp[j] - delta)) * scale;
          for (int64_t d = 0; d < c.D; ++d) {
            r.dv[dk_.at(b, j, hk, d)] += p[j] * dout[dq_.at(b, i, h, d)];
            r.dk[dk_.at(b, j, hk, d)] += ds * q[dq_.at(b, i, h, d)];
            r.dq[dq_.at(b, i, h, d)] += ds * k[dk_.at(b, j, hk, d)];
          }
        }
      }
    }
  for (auto* g : {&r.dq, &r.dk, &r.dv})
    for (double& x : *g) x = rnd(x);
  return r;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}
// Largest |a - b|, where -inf == -inf counts as 0 and any NaN (or inf against finite) as inf.
double max_err(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    const double e = std::fabs(a[i] - b[i]);
    m = std::max(m, std::isnan(e) ? kInf : e);
  }
  return m;
}

int g_failures = 0, g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("  FAIL %s\n", what.c_str());
  } else if (g_verbose) {
    std::printf("  ok   %s\n", what.c_str());
  }
}

// Compares one result against the oracle with the tolerance rule.
void compare(const Case& c, const char* what, const std::vector<double>& got, const std::vector<double>& oracle,
             const std::vector<double>& lowp) {
  const double err = max_err(got, oracle), mag = std::max(1.0, max_abs(oracle));
  double tol;
  if (is16(c.dtype)) {
    tol = 2.0 * max_err(lowp, oracle) + 1e-3 * mag;
  } else if (c.dtype == DType::f32) {
    tol = 2e-5 * mag * std::sqrt(double(std::max(c.Sk, c.Sq)) / 16.0 + 1.0);
  } else {
    tol = 1e-11 * mag * std::sqrt(double(std::max(c.Sk, c.Sq)) / 16.0 + 1.0);
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%-4s max err %.3g (tolerance %.3g)", what, err, tol);
  check(std::isfinite(tol) && err <= tol, buf);
}

struct Run {
  Tensor out, dq, dk, dv;
  std::vector<double> lse;  // (B, Hq, Sq)
  std::vector<unsigned char> lse_bytes;
};

using ForwardFn = std::function<void(const fae::FwdParams&)>;

// Runs the forward through `forward` (the CPU backend unless given); p receives the parameters.
Run run_forward(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v, int threads,
                fae::FwdParams& p, const ForwardFn& forward = fae::cpu::attention_forward) {
  Run r;
  r.out = Tensor(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
  const bool lse64 = c.dtype == DType::f64;
  const size_t nlse = size_t(c.B * c.Hq * c.Sq);
  r.lse_bytes.assign(nlse * (lse64 ? 8 : 4), 0);
  p = fae::FwdParams{};
  p.q = q.data(); p.k = k.data(); p.v = v.data(); p.out = r.out.data(); p.lse = r.lse_bytes.data();
  p.q_batch_stride = q.sb; p.q_row_stride = q.ss; p.q_head_stride = q.sh;
  p.k_batch_stride = k.sb; p.k_row_stride = k.ss; p.k_head_stride = k.sh;
  p.v_batch_stride = v.sb; p.v_row_stride = v.ss; p.v_head_stride = v.sh;
  p.o_batch_stride = r.out.sb; p.o_row_stride = r.out.ss; p.o_head_stride = r.out.sh;
  p.lse_batch_stride = c.Hq * c.Sq; p.lse_head_stride = c.Sq;
  p.batch = c.B; p.seqlen_q = c.Sq; p.seqlen_k = c.Sk; p.heads_q = c.Hq; p.heads_kv = c.Hkv; p.head_dim = c.D;
  p.align_offset = c.offset();
  p.window_left = c.left == kNone ? fae::kNoWindow : c.left;
  p.window_right = c.right == kNone ? fae::kNoWindow : c.right;
  const double scale = c.softmax_scale();
  p.scale = float(scale);
  p.scale_log2 = float(scale * fae::kLog2e);
  p.scale_f64 = scale;
  p.dtype = c.dtype;
  p.num_threads = threads;
  forward(p);
  r.lse.resize(nlse);
  for (size_t i = 0; i < nlse; ++i) {
    if (lse64) std::memcpy(&r.lse[i], &r.lse_bytes[i * 8], 8);
    else { float f; std::memcpy(&f, &r.lse_bytes[i * 4], 4); r.lse[i] = f; }
  }
  return r;
}

// Runs forward and backward through the CPU backend with the given thread count.
Run run_cpu(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
            const std::vector<double>* dlse, int threads) {
  fae::FwdParams p;
  Run r = run_forward(c, q, k, v, threads, p);
  const bool lse64 = c.dtype == DType::f64;
  const size_t nlse = r.lse.size();
  std::vector<unsigned char> dlse_bytes;
  if (dlse) {
    dlse_bytes.resize(r.lse_bytes.size());
    for (size_t i = 0; i < nlse; ++i) {
      if (lse64) std::memcpy(&dlse_bytes[i * 8], &(*dlse)[i], 8);
      else { const float f = float((*dlse)[i]); std::memcpy(&dlse_bytes[i * 4], &f, 4); }
    }
  }

  r.dq = Tensor(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
  r.dk = Tensor(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout);
  r.dv = Tensor(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout);
  fae::BwdParams bp{};
  bp.fwd = p;
  bp.dout = dout.data();
  bp.dlse = dlse ? dlse_bytes.data() : nullptr;
  bp.dq = r.dq.data(); bp.dk = r.dk.data(); bp.dv = r.dv.data();
  bp.do_batch_stride = dout.sb; bp.do_row_stride = dout.ss; bp.do_head_stride = dout.sh;
  bp.dq_batch_stride = r.dq.sb; bp.dq_row_stride = r.dq.ss; bp.dq_head_stride = r.dq.sh;
  bp.dk_batch_stride = r.dk.sb; bp.dk_row_stride = r.dk.ss; bp.dk_head_stride = r.dk.sh;
  bp.dv_batch_stride = r.dv.sb; bp.dv_row_stride = r.dv.ss; bp.dv_head_stride = r.dv.sh;
  fae::cpu::attention_backward(bp);
  return r;
}

// lse is float32 (float64 for float64 inputs), computed from the exact stored inputs.
void check_lse(const Case& c, const std::vector<double>& got, const std::vector<double>& oracle) {
  const double err = max_err(got, oracle), mag = std::max(1.0, max_abs(oracle));
  const double tol = (c.dtype == DType::f64 ? 1e-12 : 2e-6) * mag * std::sqrt(double(c.D));
  char buf[160];
  std::snprintf(buf, sizeof buf, "lse  max err %.3g (tolerance %.3g)", err, tol);
  check(std::isfinite(tol) && err <= tol, buf);
}

// Rows that see no key: out = 0 (and dq = 0 when the backward ran) exactly, lse = -inf.
void check_empty_rows(const Case& c, const Run& r, bool with_backward) {
  int64_t empty = 0;
  bool ok = true;
  const std::vector<double> od = r.out.dense(), dqd = with_backward ? r.dq.dense() : std::vector<double>();
  const Dims dims{c.Sq, c.Hq, c.D};
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < c.Sq; ++i) {
        bool any = false;
        for (int64_t j = 0; j < c.Sk && !any; ++j) any = c.visible(i, j);
        if (any) continue;
        ++empty;
        ok &= r.lse[size_t((b * c.Hq + h) * c.Sq + i)] == -kInf;
        for (int64_t d = 0; d < c.D; ++d)
          ok &= od[dims.at(b, i, h, d)] == 0.0 && (!with_backward || dqd[dims.at(b, i, h, d)] == 0.0);
      }
  if (empty) check(ok, std::to_string(empty) + " rows that see no key: out = 0" + (with_backward ? ", dq = 0" : "") + ", lse = -inf");
}

void run_case(const Case& c, uint64_t seed) {
  std::printf("case %s\n", c.name().c_str());
  std::mt19937_64 rng(seed);
  Tensor q(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout), k(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout),
      v(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout), dout(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
  for (Tensor* t : {&q, &k, &v, &dout}) fill_random(*t, rng);
  std::vector<double> dlse;
  if (c.with_dlse) {
    std::normal_distribution<double> nd(0.0, 1.0);
    dlse.resize(size_t(c.B * c.Hq * c.Sq));
    for (double& x : dlse) x = round_to(c.dtype == DType::f64 ? DType::f64 : DType::f32, nd(rng));
  }
  const std::vector<double>* dl = c.with_dlse ? &dlse : nullptr;

  const std::vector<double> qd = q.dense(), kd = k.dense(), vd = v.dense(), dod = dout.dense();
  const Ref oracle = naive(c, qd, kd, vd, dod, dl, [](double x) { return x; });
  Ref lowp;
  if (is16(c.dtype)) lowp = naive(c, qd, kd, vd, dod, dl, [&](double x) { return round_to(c.dtype, x); });

  const Run r = run_cpu(c, q, k, v, dout, dl, 2);
  compare(c, "out", r.out.dense(), oracle.out, lowp.out);
  check_lse(c, r.lse, oracle.lse);
  compare(c, "dq", r.dq.dense(), oracle.dq, lowp.dq);
  compare(c, "dk", r.dk.dense(), oracle.dk, lowp.dk);
  compare(c, "dv", r.dv.dense(), oracle.dv, lowp.dv);

  check_empty_rows(c, r, true);

  // Determinism: one thread gives bitwise the same results as two (and as three).
  for (int threads : {1, 3}) {
    const Run r2 = run_cpu(c, q, k, v, dout, dl, threads);
    check(r2.out.same_bits(r.out) && r2.lse_bytes == r.lse_bytes && r2.dq.same_bits(r.dq) &&
              r2.dk.same_bits(r.dk) && r2.dv.same_bits(r.dv),
          "bitwise identical with " + std::to_string(threads) + " thread(s)");
  }
}

// NaN in one query row makes that row's output NaN and leaves every other output finite.
void nan_case() {
  const Case c{1, 9, 13, 2, 1, 16, true, kNone, kNone, DType::f32, Layout::bshd, false, 0};
  std::printf("case NaN propagation: %s\n", c.name().c_str());
  std::mt19937_64 rng(7);
  Tensor q(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout), k(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout),
      v(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout), dout(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
  for (Tensor* t : {&q, &k, &v, &dout}) fill_random(*t, rng);
  q.set(0, 4, 1, 5, std::numeric_limits<double>::quiet_NaN());
  const Run r = run_cpu(c, q, k, v, dout, nullptr, 2);
  bool row_nan = true, others_finite = true;
  for (int64_t s = 0; s < c.Sq; ++s)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t d = 0; d < c.D; ++d) {
        const double x = r.out.get(0, s, h, d);
        if (s == 4 && h == 1) row_nan &= std::isnan(x);
        else others_finite &= std::isfinite(x);
      }
  check(row_nan, "NaN in q row 4, head 1 makes that output row NaN");
  check(others_finite, "every other output row stays finite");
}

// The active instruction set's in-register transpose (cpu/vec.h) of a W x W block of distinct
// random floats against its definition: element (j, w) of the result is element (w, j).
void transpose_case(std::mt19937_64& rng) {
  std::vector<float> in(16 * 16), out;
  std::uniform_real_distribution<float> u(-8.f, 8.f);
  for (float& x : in) x = u(rng);
  out = in;
  const int W = fae::cpu::vec_transpose(out.data());
  int64_t bad = 0;
  for (int j = 0; j < W; ++j)
    for (int w = 0; w < W; ++w) bad += out[j * W + w] != in[w * W + j];
  check(W >= 1 && W <= 16 && bad == 0,
        "vec transpose " + std::to_string(W) + " x " + std::to_string(W) + ": " + std::to_string(bad) + " wrong");
}

// The active instruction set's bool_bias (cpu/vec.h) of n random bytes (0, 1 or 7, held in a
// buffer of exactly n bytes, so that a read past it shows under AddressSanitizer), every n <= W.
void bool_bias_case(std::mt19937_64& rng) {
  const uint8_t values[3] = {0, 1, 7};
  float out[16];
  const uint8_t none = 0;
  const int W = fae::cpu::vec_bool_bias(&none, 0, out);  // n = 0 reads nothing
  int64_t bad = 0;
  for (int i = 0; i < W; ++i) bad += out[i] != 0.f;
  for (int n = 1; n <= W; ++n) {
    std::vector<uint8_t> bytes(n);
    for (uint8_t& b : bytes) b = values[std::uniform_int_distribution<int>(0, 2)(rng)];
    fae::cpu::vec_bool_bias(bytes.data(), n, out);
    for (int i = 0; i < W; ++i) bad += out[i] != (i < n && bytes[i] == 0 ? -INFINITY : 0.f);
  }
  check(bad == 0, "vec bool_bias, " + std::to_string(W) + " lanes: " + std::to_string(bad) + " wrong");
}

// The active instruction set's exp2 (cpu/vec.h) against its definition: relative error at most
// 2e-7 against the double exp2 for x in [-125, 0] (random, and the ends), exactly 0 below -125
// (-inf included; no result is subnormal), NaN stays NaN.
void exp2_case(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-140.f, 0.f);
  float x[16], out[16];
  int64_t bad = 0;
  std::string first;
  for (int rep = 0; rep < 4096; ++rep) {
    for (float& v : x) v = u(rng);
    if (rep == 0) {
      const float ends[8] = {0.f, -125.f, std::nextafter(-125.f, 0.f), std::nextafter(-125.f, -200.f), -126.f,
                             -149.5f, -INFINITY, std::nanf("")};
      std::copy(ends, ends + 8, x);
    }
    const int W = fae::cpu::vec_exp2(x, out);
    for (int i = 0; i < W; ++i) {
      bool ok;
      if (std::isnan(x[i])) ok = std::isnan(out[i]);
      else if (x[i] < -125.f) ok = out[i] == 0.f;
      else ok = std::abs(double(out[i]) - std::exp2(double(x[i]))) <= 2e-7 * std::exp2(double(x[i])) &&
                std::fpclassify(out[i]) == FP_NORMAL;
      if (!ok && bad++ == 0) first = "exp2(" + std::to_string(x[i]) + ") = " + std::to_string(out[i]);
    }
  }
  check(bad == 0, "vec exp2: " + std::to_string(bad) + " wrong, first " + first);
}

std::vector<Case> cases() {
  const int64_t N = kNone;
  using L = Layout;
  return {
      // B  Sq   Sk  Hq Hkv  D   b-r    left right dtype        layout     dlse  scale
      {1, 1, 1, 1, 1, 1, true, N, N, DType::f32, L::bshd, false, 0},
      {2, 17, 97, 4, 4, 40, true, N, N, DType::f32, L::bshd, false, 0},
      {1, 97, 17, 3, 3, 24, true, N, 0, DType::f32, L::bhsd, false, 0},   // causal bottom-right, empty rows
      {1, 97, 17, 3, 3, 24, false, N, 0, DType::f32, L::padded, true, 0},  // causal top-left
      {2, 257, 257, 6, 2, 64, true, N, 0, DType::bf16, L::bshd, false, 0},  // GQA, causal
      {1, 65, 129, 3, 1, 128, false, N, 0, DType::bf16, L::padded, true, 0},  // MQA, causal top-left
      {1, 200, 33, 2, 1, 72, true, N, 0, DType::bf16, L::bhsd, false, 0},  // most rows see no key
      {1, 130, 100, 4, 2, 48, false, 16, 8, DType::f64, L::padded, true, 0},  // sliding window
      {2, 33, 47, 2, 2, 256, true, N, N, DType::f64, L::bhsd, false, 0.3},
      {1, 50, 50, 2, 1, 24, true, 0, 0, DType::f16, L::bshd, false, 0},  // diagonal only
      {1, 31, 300, 2, 1, 256, true, 50, N, DType::f32, L::bshd, false, 0},  // left window, long keys
      {1, 77, 61, 4, 2, 96, false, 7, N, DType::f16, L::padded, true, 0},
      {3, 19, 23, 2, 1, 8, true, 3, 2, DType::bf16, L::bshd, false, 0},
      // odd head dim and odd key count: the bfloat16 pairs' last element is padding
      {1, 70, 131, 2, 1, 17, true, N, 0, DType::bf16, L::padded, false, 0},
      // decoding: kv heads walked in lockstep (forward.h, plan_tasks), rows prefetched past the end
      {2, 1, 300, 8, 4, 64, true, N, N, DType::bf16, L::bshd, false, 0},
      {1, 2, 77, 6, 3, 40, true, N, 0, DType::f32, L::bhsd, false, 0},
      // narrow tiles of 5 columns, a head dim of 5 NEON / 2.5 AVX2 vectors (scores reduced in blocks of keys)
      {1, 1, 45, 5, 1, 20, false, N, N, DType::f16, L::bshd, false, 0},
  };
}

}  // namespace

#if FAE_TEST_EMU
// The CUDA kernels (csrc/cuda/flash), compiled by the host compiler and run on the SIMT emulator:
// out and lse, and dq, dk, dv for the head dims with a backward kernel, against the same oracle
// and rule. The kernels take float16/bfloat16, the head dims of fae::cuda::kHeadDims and rows
// aligned to 16 bytes.
void emu_case(const Case& c, uint64_t seed) {
  std::printf("emu case %s\n", c.name().c_str());
  std::mt19937_64 rng(seed);
  Tensor q(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout), k(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout),
      v(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout);
  for (Tensor* t : {&q, &k, &v}) fill_random(*t, rng);
  const std::vector<double> qd = q.dense(), kd = k.dense(), vd = v.dense(), dod(qd.size(), 0.0);
  const Ref oracle = naive(c, qd, kd, vd, dod, nullptr, [](double x) { return x; });
  const Ref lowp = naive(c, qd, kd, vd, dod, nullptr, [&](double x) { return round_to(c.dtype, x); });
  fae::FwdParams p;
  Run r;
  try {
    r = run_forward(c, q, k, v, 0, p, [](const fae::FwdParams& pp) { fae::cuda::attention_forward(pp, nullptr); });
  } catch (const std::exception& e) {
    check(false, std::string("emulated forward threw: ") + e.what());
    return;
  }
  compare(c, "out", r.out.dense(), oracle.out, lowp.out);
  check_lse(c, r.lse, oracle.lse);
  const bool backward = c.D <= fae::cuda::kBwdHeadDims[std::size(fae::cuda::kBwdHeadDims) - 1];
  if (backward) {  // dq, dk, dv from the kernel's own out and lse, as the API runs it
    Tensor dout(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
    fill_random(dout, rng);
    const std::vector<double> dod2 = dout.dense();
    const Ref oracle2 = naive(c, qd, kd, vd, dod2, nullptr, [](double x) { return x; });
    const Ref lowp2 = naive(c, qd, kd, vd, dod2, nullptr, [&](double x) { return round_to(c.dtype, x); });
    r.dq = Tensor(c.dtype, c.B, c.Sq, c.Hq, c.D, c.layout);
    r.dk = Tensor(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout);
    r.dv = Tensor(c.dtype, c.B, c.Sk, c.Hkv, c.D, c.layout);
    fae::BwdParams bp{};
    bp.fwd = p;
    bp.dout = dout.data();
    bp.dq = r.dq.data(); bp.dk = r.dk.data(); bp.dv = r.dv.data();
    bp.do_batch_stride = dout.sb; bp.do_row_stride = dout.ss; bp.do_head_stride = dout.sh;
    bp.dq_batch_stride = r.dq.sb; bp.dq_row_stride = r.dq.ss; bp.dq_head_stride = r.dq.sh;
    bp.dk_batch_stride = r.dk.sb; bp.dk_row_stride = r.dk.ss; bp.dk_head_stride = r.dk.sh;
    bp.dv_batch_stride = r.dv.sb; bp.dv_row_stride = r.dv.ss; bp.dv_head_stride = r.dv.sh;
    // Each shared-memory tier (the emulator's default 99 KiB limit, then sm_80's 163 KiB), in
    // atomic and in deterministic mode; deterministic runs are bitwise identical under another
    // thread order.
    const fae::emu::Config config = fae::emu::get_config();
    const auto backward_run = [&](std::size_t smem_limit, bool deterministic, uint64_t order) {
      fae::emu::Config cfg = config;
      cfg.smem_limit = smem_limit;
      if (order) cfg.shuffle = true, cfg.seed = config.seed + order;
      fae::emu::set_config(cfg);
      bp.deterministic = deterministic;
      const fae::cuda::BwdWorkspace ws = fae::cuda::backward_workspace(bp);
      std::vector<float> stats(ws.stats), dq_accum(ws.dq_accum);
      fae::cuda::attention_backward(bp, stats.data(), dq_accum.data(), nullptr);
      fae::emu::set_config(config);
      return std::vector<std::vector<double>>{r.dq.dense(), r.dk.dense(), r.dv.dense()};
    };
    for (std::size_t limit : {config.smem_limit, std::size_t(163 * 1024)})
      for (bool deterministic : {false, true}) {
        const std::string mode = std::string(deterministic ? "deterministic, " : "") + std::to_string(limit / 1024) +
                                 " KiB";
        try {
          const auto g = backward_run(limit, deterministic, 0);
          compare(c, ("dq (" + mode + ")").c_str(), g[0], oracle2.dq, lowp2.dq);
          compare(c, ("dk (" + mode + ")").c_str(), g[1], oracle2.dk, lowp2.dk);
          compare(c, ("dv (" + mode + ")").c_str(), g[2], oracle2.dv, lowp2.dv);
          if (deterministic)
            check(g == backward_run(limit, true, 1000), c.name() + " (" + mode + "): bitwise identical in another thread order");
        } catch (const std::exception& e) {
          fae::emu::set_config(config);
          check(false, "emulated backward (" + mode + ") threw: " + e.what());
        }
      }
  }
  check_empty_rows(c, r, backward);
}

std::vector<Case> emu_cases() {
  const int64_t N = kNone;
  using L = Layout;
  return {
      // B  Sq  Sk  Hq Hkv  D   b-r    left right dtype        layout    dlse  scale
      {1, 17, 97, 2, 1, 64, true, N, 0, DType::bf16, L::bshd, false, 0},   // causal, GQA
      {1, 97, 17, 2, 2, 32, true, N, 0, DType::f16, L::bhsd, false, 0},    // rows that see no key
      {1, 65, 65, 2, 1, 128, false, 16, 8, DType::bf16, L::bshd, false, 0},  // sliding window
      {2, 33, 40, 2, 2, 96, true, N, N, DType::f16, L::bshd, false, 0},
      {1, 20, 31, 1, 1, 256, false, N, 0, DType::bf16, L::bhsd, false, 0},  // causal top-left
      {2, 45, 70, 4, 2, 96, true, N, N, DType::bf16, L::bhsd, false, 0},  // GQA: heads 0,1 -> kv 0; 2,3 -> kv 1
      {1, 33, 257, 2, 2, 64, true, N, 0, DType::f16, L::bshd, false, 0},  // causal, keys span 5 tiles
      // head dims 160-224: 16-row warps, three-part tile copies (224 = 128 + 64 + 32 columns)
      {1, 70, 83, 2, 1, 160, true, N, 0, DType::f16, L::bhsd, false, 0},
      {1, 65, 130, 1, 1, 192, false, 20, 5, DType::bf16, L::bshd, false, 0},
      {2, 49, 100, 2, 2, 224, true, N, N, DType::bf16, L::bhsd, false, 0},
      // two key tiles seen whole by the whole block between masked ones; a negative scale
      {1, 130, 400, 2, 1, 128, true, 300, 10, DType::bf16, L::bshd, false, -0.3},
      {1, 140, 400, 1, 1, 64, false, N, N, DType::f16, L::bshd, false, 0},
  };
}

// Usage: fae_emu_test [-v] [--seed N]: with a seed the emulator shuffles the order of each block's
// threads (a missing barrier or a race then changes or breaks the results).
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v") g_verbose = true;
    else if (a == "--seed" && i + 1 < argc) {
      fae::emu::Config cfg = fae::emu::get_config();
      cfg.shuffle = true;
      cfg.seed = std::strtoull(argv[++i], nullptr, 10);
      fae::emu::set_config(cfg);
    } else { std::fprintf(stderr, "usage: fae_emu_test [-v] [--seed N]\n"); return 2; }
  }
  std::printf("== fae_emu_test: CUDA kernels on the SIMT emulator against a naive float64 reference\n");
  uint64_t seed = 4321;
  for (const Case& c : emu_cases()) emu_case(c, seed++);
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
#else
int main(int argc, char** argv) {
  // Every instruction set compiled in and supported by this CPU, each forced in turn through
  // FLASHATTN_EXT_CPU_ISA (read on every call), or only the ones named by --isa NAME.
  std::vector<std::string> isas;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v") g_verbose = true;
    else if (a == "--isa" && i + 1 < argc) isas.push_back(argv[++i]);
    else { std::fprintf(stderr, "usage: fae_cpu_test [-v] [--isa NAME]...\n"); return 2; }
  }
  if (isas.empty()) isas = fae::cpu::available_isas();
  for (const std::string& isa : isas) {
    setenv("FLASHATTN_EXT_CPU_ISA", isa.c_str(), 1);
    std::printf("== fae_cpu_test: CPU kernels (ISA %s) against a naive float64 reference\n",
                fae::cpu::active_isa().c_str());
    uint64_t seed = 1234;
    std::mt19937_64 rng(seed);
    transpose_case(rng);
    bool_bias_case(rng);
    exp2_case(rng);
    for (const Case& c : cases()) run_case(c, seed++);
    nan_case();
  }
  unsetenv("FLASHATTN_EXT_CPU_ISA");
  const int passed = g_checks - g_failures;
  std::printf("%d passed, %d failed\n", passed, g_failures);
  return g_failures == 0 ? 0 : 1;
}
#endif  // FAE_TEST_EMU
