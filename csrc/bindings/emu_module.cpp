// flashattn_ext._emu: the SIMT emulator exposed to the Python test suite. Runs the probe kernels
// (register layouts, shuffles, conversions, cp.async, atomics, scheduling order), the planted-bug
// kernels of every checker, the test matmul, and a timing kernel. Kernel bugs raise
// flashattn_ext._emu.EmulatorError (a RuntimeError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "emu/runtime.h"
#include "planted_bugs.cuh"  // tests/emu/kernels: the emulator's test kernels
#include "probes.cuh"
#include "test_matmul.cuh"

namespace py = pybind11;
namespace ex = fae::emu_test;
using fae::bf16_t;
using fae::half_t;

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
T* data(carray<T>& a, py::ssize_t expected, const char* what) {
  if (a.size() != expected)
    throw std::invalid_argument(std::string(what) + " must have " + std::to_string(expected) + " elements");
  return a.mutable_data();
}

bool is_bf16(const std::string& dtype) {
  if (dtype != "float16" && dtype != "bfloat16") throw std::invalid_argument("dtype must be 'float16' or 'bfloat16'");
  return dtype == "bfloat16";
}

// The same mma issued `repeats` times by every warp of every block: d[block][warp][repeat][lane][4].
py::array_t<float> mma(carray<uint32_t> a, carray<uint32_t> b, carray<float> c, const std::string& dtype, int k,
                       int blocks, int warps, int repeats) {
  const uint32_t* pa = data(a, 128, "a");
  const uint32_t* pb = data(b, 64, "b");
  const float* pc = data(c, 128, "c");
  const bool bf = is_bf16(dtype);
  if (k != 8 && k != 16) throw std::invalid_argument("k must be 8 or 16");
  if (blocks < 1 || blocks > 64 || warps < 1 || warps > 32 || repeats < 1 || repeats > 64)
    throw std::invalid_argument("blocks (1..64), warps (1..32) and repeats (1..64) out of range");
  py::array_t<float> d({py::ssize_t(blocks), py::ssize_t(warps), py::ssize_t(repeats), py::ssize_t(32), py::ssize_t(4)});
  float* pd = d.mutable_data();
  py::gil_scoped_release nogil;
  if (k == 16)
    bf ? ex::probe_mma<bf16_t, 16>(pa, pb, pc, pd, blocks, warps, repeats)
       : ex::probe_mma<half_t, 16>(pa, pb, pc, pd, blocks, warps, repeats);
  else
    bf ? ex::probe_mma<bf16_t, 8>(pa, pb, pc, pd, blocks, warps, repeats)
       : ex::probe_mma<half_t, 8>(pa, pb, pc, pd, blocks, warps, repeats);
  return d;
}

void matrix_op(bool store, uint16_t* image, int n, const int* offs, uint32_t* regs, int num, bool trans) {
  py::gil_scoped_release nogil;
  const int code = num * 2 + (trans ? 1 : 0);
  switch (code) {
    case 2: return ex::probe_matrix<1, false>(store, image, n, offs, regs);
    case 3: return ex::probe_matrix<1, true>(store, image, n, offs, regs);
    case 4: return ex::probe_matrix<2, false>(store, image, n, offs, regs);
    case 5: return ex::probe_matrix<2, true>(store, image, n, offs, regs);
    case 8: return ex::probe_matrix<4, false>(store, image, n, offs, regs);
    case 9: return ex::probe_matrix<4, true>(store, image, n, offs, regs);
    default: throw std::invalid_argument("num must be 1, 2 or 4");
  }
}

py::array_t<uint32_t> ldmatrix(carray<uint16_t> image, carray<int> offsets, int num, bool trans) {
  py::array_t<uint32_t> regs({32, 4});
  std::memset(regs.mutable_data(), 0, 128 * 4);
  matrix_op(false, image.mutable_data(), int(image.size()), data(offsets, 32, "offsets"), regs.mutable_data(), num,
            trans);
  return regs;
}

py::array_t<uint16_t> stmatrix(carray<uint32_t> regs, carray<int> offsets, int num, bool trans, int n) {
  py::array_t<uint16_t> image(n);
  matrix_op(true, image.mutable_data(), n, data(offsets, 32, "offsets"), data(regs, 128, "regs"), num, trans);
  return image;
}

// A warp probe over a table of cases (`width` ints each) and 32 lane values per case: one block
// per case, [ncases][32] results.
template <class Probe>
py::array_t<int> lane_cases(carray<int> cases, int width, carray<int> vals, const char* vals_name, Probe probe) {
  const int ncases = int(cases.size() / width);
  py::array_t<int> out({ncases, 32});
  const int* pc = data(cases, ncases * width, "cases");
  const int* pv = data(vals, ncases * 32, vals_name);
  int* po = out.mutable_data();
  py::gil_scoped_release nogil;
  probe(pc, pv, po, ncases);
  return out;
}

py::array_t<int> shfl(carray<int> cases, carray<int> vals) {
  return lane_cases(cases, 4, vals, "vals", ex::probe_shfl);
}

py::array_t<int> vote(carray<int> cases, carray<int> preds) {
  return lane_cases(cases, 2, preds, "preds", ex::probe_vote);
}

py::array_t<double> shfl64(carray<double> vals, int lane_mask) {
  py::array_t<double> out(32);
  const double* pv = data(vals, 32, "vals");
  double* po = out.mutable_data();
  py::gil_scoped_release nogil;
  ex::probe_shfl64(pv, po, lane_mask);
  return out;
}

py::dict convert(carray<float> x) {
  const int n = int(x.size());
  py::array_t<uint16_t> f16(n), bf16(n);
  py::array_t<float> f16_back(n), bf16_back(n), ex2(n);
  py::array_t<uint32_t> pack_f16(n), pack_bf16(n);
  {
    const float* px = x.data();
    auto a = f16.mutable_data();
    auto b = bf16.mutable_data();
    auto c = f16_back.mutable_data();
    auto d = bf16_back.mutable_data();
    auto e = ex2.mutable_data();
    auto f = pack_f16.mutable_data();
    auto g = pack_bf16.mutable_data();
    py::gil_scoped_release nogil;
    ex::probe_convert(px, n, a, b, c, d, e, f, g);
  }
  py::dict r;
  r["f16"] = f16;
  r["bf16"] = bf16;
  r["f16_back"] = f16_back;
  r["bf16_back"] = bf16_back;
  r["exp2"] = ex2;
  r["pack_f16"] = pack_f16;
  r["pack_bf16"] = pack_bf16;
  return r;
}

py::array_t<uint8_t> zfill(carray<uint8_t> src) {
  py::array_t<uint8_t> out(896);
  const uint8_t* ps = data(src, 512, "src");
  uint8_t* po = out.mutable_data();
  py::gil_scoped_release nogil;
  ex::probe_zfill(ps, po);
  return out;
}

py::array_t<float> atomic(int nslots, int nblocks) {
  py::array_t<float> acc(nslots);
  float* p = acc.mutable_data();
  std::fill(p, p + nslots, 0.0f);
  py::gil_scoped_release nogil;
  ex::probe_atomic(p, nslots, nblocks);
  return acc;
}

py::array_t<int> order(int nthreads) {
  py::array_t<int> log(nthreads + 1);
  int* p = log.mutable_data();
  std::fill(p, p + nthreads + 1, 0);
  py::gil_scoped_release nogil;
  ex::probe_order(p, nthreads);
  return log;
}

py::array_t<int> indices(std::tuple<unsigned, unsigned, unsigned> grid, std::tuple<unsigned, unsigned, unsigned> block,
                       int oob_from) {
  const dim3 g(std::get<0>(grid), std::get<1>(grid), std::get<2>(grid));
  const dim3 b(std::get<0>(block), std::get<1>(block), std::get<2>(block));
  const py::ssize_t nb = py::ssize_t(g.x) * g.y * g.z, nt = py::ssize_t(b.x) * b.y * b.z;
  py::array_t<int> out({nb, nt, py::ssize_t(8)});
  int* p = out.mutable_data();
  std::fill(p, p + nb * nt * 8, -1);
  py::gil_scoped_release nogil;
  ex::probe_index(p, g, b, oob_from);
  return out;
}

py::tuple attention_tile(carray<uint16_t> q, carray<uint16_t> k, carray<uint16_t> v, const std::string& dtype) {
  py::array_t<float> s({16, 32}), o({16, 16});
  const uint16_t* pq = data(q, 256, "q");
  const uint16_t* pk = data(k, 512, "k");
  const uint16_t* pv = data(v, 512, "v");
  float* ps = s.mutable_data();
  float* po = o.mutable_data();
  const bool bf = is_bf16(dtype);
  {
    py::gil_scoped_release nogil;
    if (bf)
      ex::probe_attention_tile(reinterpret_cast<const bf16_t*>(pq), reinterpret_cast<const bf16_t*>(pk),
                               reinterpret_cast<const bf16_t*>(pv), ps, po);
    else
      ex::probe_attention_tile(reinterpret_cast<const half_t*>(pq), reinterpret_cast<const half_t*>(pk),
                               reinterpret_cast<const half_t*>(pv), ps, po);
  }
  return py::make_tuple(s, o);
}

// A (M×K) and B (K×N): uint16 arrays holding f16/bf16 bits, unit column stride, any row stride.
py::array_t<float> matmul(py::array a, py::array b, const std::string& dtype) {
  for (py::array* m : {&a, &b})
    if (m->ndim() != 2 || !m->dtype().is(py::dtype::of<uint16_t>()) || m->strides(1) != 2 || m->strides(0) % 2)
      throw std::invalid_argument("matmul operands must be 2-D uint16 arrays with unit column stride");
  const int M = int(a.shape(0)), K = int(a.shape(1)), N = int(b.shape(1));
  if (b.shape(0) != K) throw std::invalid_argument("matmul: A is MxK, B must be KxN");
  py::array_t<float> c({M, N});
  const void* pa = a.data();
  const void* pb = b.data();
  const int lda = int(a.strides(0) / 2), ldb = int(b.strides(0) / 2);
  float* pc = c.mutable_data();
  const bool bf = is_bf16(dtype);
  py::gil_scoped_release nogil;
  if (bf)
    ex::matmul(static_cast<const bf16_t*>(pa), lda, static_cast<const bf16_t*>(pb), ldb, pc, N, M, N, K, nullptr);
  else
    ex::matmul(static_cast<const half_t*>(pa), lda, static_cast<const half_t*>(pb), ldb, pc, N, M, N, K, nullptr);
  return c;
}

py::array_t<float> planted(const std::string& name, bool bug) {
  py::array_t<float> in(ex::kPlantedThreads), out(ex::kPlantedOut);
  float* pi = in.mutable_data();
  float* po = out.mutable_data();
  for (int i = 0; i < ex::kPlantedThreads; ++i) pi[i] = float(i) * 0.5f + 1.0f;
  std::fill(po, po + ex::kPlantedOut, 0.0f);
  py::gil_scoped_release nogil;
  ex::run_planted(name, bug, pi, po);
  return out;
}

// Seconds taken by one launch of `warps` warps each running `iters` mma.m16n8k16.
double bench_mma(int warps, int iters) {
  std::vector<float> out(std::size_t(warps) * 128);
  py::gil_scoped_release nogil;
  const auto t0 = std::chrono::steady_clock::now();
  ex::bench_mma(out.data(), warps, iters);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void configure(std::optional<int> threads, std::optional<std::size_t> stack_kib,
               std::optional<std::size_t> smem_limit) {
  fae::emu::Config c = fae::emu::get_config();
  if (threads) c.threads = *threads;
  if (stack_kib) c.stack_bytes = *stack_kib * 1024;
  if (smem_limit) c.smem_limit = *smem_limit;
  fae::emu::set_config(c);
}

void set_seed(std::optional<uint64_t> seed) {
  fae::emu::Config c = fae::emu::get_config();
  c.shuffle = seed.has_value();
  c.seed = seed.value_or(0);
  fae::emu::set_config(c);
}

py::dict config() {
  const fae::emu::Config c = fae::emu::get_config();
  py::dict d;
  d["threads"] = c.threads;
  d["seed"] = c.shuffle ? py::object(py::int_(c.seed)) : py::object(py::none());
  d["stack_kib"] = c.stack_bytes / 1024;
  d["smem_limit"] = c.smem_limit;
  d["stats"] = c.stats;
  d["hw_numerics"] = c.hw_numerics ? py::object(py::int_(c.hw_seed)) : py::object(py::none());
  return d;
}

void set_hw_numerics(std::optional<uint64_t> seed) {
  fae::emu::Config c = fae::emu::get_config();
  c.hw_numerics = seed.has_value();
  c.hw_seed = seed.value_or(0);
  fae::emu::set_config(c);
}

void set_stats(bool enabled) {
  fae::emu::Config c = fae::emu::get_config();
  c.stats = enabled;
  fae::emu::set_config(c);
}

py::list stats() {
  py::list launches;
  for (const fae::emu::LaunchStats& l : fae::emu::memory_stats()) {
    py::list sites;
    for (const fae::emu::SiteStats& s : l.sites) {
      py::dict d;
      d["site"] = s.file + ":" + std::to_string(s.line);
      d["file"] = s.file;
      d["line"] = s.line;
      d["op"] = s.op;
      d["bytes_per_access"] = s.bytes_per_access;
      d["requests"] = s.requests;
      d["accesses"] = s.accesses;
      d["bytes"] = s.bytes;
      d["sectors"] = s.sectors;
      d["wavefronts"] = s.wavefronts;
      d["ideal_wavefronts"] = s.ideal_wavefronts;
      sites.append(d);
    }
    py::dict d;
    d["kernel"] = l.kernel;
    d["grid"] = py::make_tuple(l.grid.x, l.grid.y, l.grid.z);
    d["block"] = py::make_tuple(l.block.x, l.block.y, l.block.z);
    d["sites"] = sites;
    launches.append(d);
  }
  return launches;
}

}  // namespace

void fae_bind_emulated_attention(py::module_& m);  // csrc/bindings/emu_attention.cpp

PYBIND11_MODULE(_emu, m) {
  m.doc() = "SIMT emulator of the CUDA kernels (tests only): probes, planted bugs, test matmul";
  fae_bind_emulated_attention(m);
  py::register_exception<fae::emu::Error>(m, "EmulatorError", PyExc_RuntimeError);
  m.def("configure", &configure, py::arg("threads") = py::none(), py::arg("stack_kib") = py::none(),
        py::arg("smem_limit") = py::none(),
        "Set worker OS threads (blocks run in parallel), fiber stack KiB and the dynamic shared-memory "
        "limit in bytes; omitted arguments keep their value.");
  m.def("set_seed", &set_seed, py::arg("seed"),
        "None: deterministic thread order; an int: thread order shuffled inside each barrier interval.");
  m.def("config", &config);
  m.def("set_hw_numerics", &set_hw_numerics, py::arg("seed"),
        "None: exact numerics (mma sums rounded once, ex2 correctly rounded); an int: hardware numerics "
        "mode with that seed (mma partial sums truncated in an order fixed by the seed and the shape, ex2 "
        "within its 2 ulp). "
        "Initially from FAE_EMU_HW_NUMERICS.");
  m.def("set_stats", &set_stats, py::arg("enabled"),
        "Profiler counters for the following launches: per launch and kernel source line, shared-memory "
        "wavefronts (bank conflicts) and global 32-byte sectors of each warp-level request.");
  m.def("stats", &stats, "Counters of the launches made with set_stats(True), oldest first (csrc/emu/README.md).");
  m.def("reset_stats", &fae::emu::reset_stats, "Forgets the counters collected so far.");
  m.def(
      "mma",
      [](carray<uint32_t> a, carray<uint32_t> b, carray<float> c, const std::string& dtype, int k) {
        return mma(a, b, c, dtype, k, 1, 1, 1).reshape({32, 4});
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("dtype"), py::arg("k") = 16);
  m.def("mma_repeated", &mma, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("dtype"), py::arg("k") = 16,
        py::arg("blocks"), py::arg("warps"), py::arg("repeats"),
        "The same mma issued `repeats` times by every warp of every block: [blocks][warps][repeats][32][4].");
  m.def("ldmatrix", &ldmatrix, py::arg("image"), py::arg("offsets"), py::arg("num"), py::arg("trans"));
  m.def("stmatrix", &stmatrix, py::arg("regs"), py::arg("offsets"), py::arg("num"), py::arg("trans"), py::arg("n"));
  m.def("shfl", &shfl, py::arg("cases"), py::arg("vals"));
  m.def("vote", &vote, py::arg("cases"), py::arg("preds"),
        "Warp votes: case k = (mode 0 all / 1 any / 2 ballot, membermask) over preds[k][32]; -1 outside the mask.");
  m.def("shfl64", &shfl64, py::arg("vals"), py::arg("lane_mask"));
  m.def("convert", &convert, py::arg("x"));
  m.def("zfill", &zfill, py::arg("src"));
  m.def("atomic", &atomic, py::arg("nslots"), py::arg("nblocks"));
  m.def("order", &order, py::arg("nthreads"));
  m.def("index", &indices, py::arg("grid"), py::arg("block"), py::arg("oob_from") = 1 << 30);
  m.def("attention_tile", &attention_tile, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dtype"));
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("dtype"));
  m.def("planted", &planted, py::arg("name"), py::arg("bug"));
  m.def("bench_mma", &bench_mma, py::arg("warps") = 4, py::arg("iters") = 100);
}
