// pybind11 module flashattn_ext._C: turns raw pointers, sizes and strides from the Python API
// into the params structs and runs the backend with the GIL released. No torch or numpy types
// cross this boundary; arguments were validated in Python.
#include "bindings/bind_attention.h"
#include "bindings/bind_interp.h"
#include "cpu/backend.h"
#include "cpu/interp_backend.h"
#include "cpu/thread_pool.h"
#if FAE_WITH_CUDA
#include "bindings/cuda_runtime_info.h"
#include "cuda/flash/api.h"
#include "cuda/flash/interp_api.h"
#endif

namespace py = pybind11;
using namespace fae::bindings;

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashattn_ext compiled core (CPU backend; CUDA backend when built with it)";

  def_forward(m, "forward", [](const fae::FwdParams& p, uintptr_t, int) { fae::cpu::attention_forward(p); },
              "Forward attention on the CPU kernels.");
  def_backward(m, "backward",
               [](const fae::BwdParams& p, float*, float*, uintptr_t, int) { fae::cpu::attention_backward(p); },
               "Backward attention on the CPU kernels (no workspace, no stream).");
  def_append(m, "kvcache_append", [](const fae::AppendParams& p, uintptr_t, int) { fae::cpu::kvcache_append(p); },
             "KV-cache append with rotary embedding on the CPU (in place into k_cache, v_cache; q_rot).");
  def_weights(m, "attention_weights", [](const fae::WeightsParams& p, uintptr_t) { fae::cpu::attention_weights(p); },
              "Attention probabilities of selected heads and rows on the CPU kernels.");
  def_topk_forward(m, "topk_forward", [](const fae::TopkParams& p, uintptr_t) { fae::cpu::topk_forward(p); },
                   "Top-k attention forward on the CPU kernels (k_top = 1: hard attention).");
  def_topk_backward(m, "topk_backward", [](const fae::TopkBwdParams& p, uintptr_t) { fae::cpu::topk_backward(p); },
                    "Top-k attention backward on the CPU kernels; dk, dv: zeroed accumulators.");
#if FAE_WITH_CUDA
  def_weights(m, "cuda_attention_weights",
              [](const fae::WeightsParams& p, uintptr_t s) { fae::cuda::attention_weights(p, reinterpret_cast<fae::cuda::Stream>(s)); },
              "Attention probabilities on the GPU (heads, rows: device int64 arrays).");
  def_topk_forward(m, "cuda_topk_forward",
                   [](const fae::TopkParams& p, uintptr_t s) { fae::cuda::topk_forward(p, reinterpret_cast<fae::cuda::Stream>(s)); },
                   "Top-k attention forward on the GPU.");
  def_topk_backward(m, "cuda_topk_backward",
                    [](const fae::TopkBwdParams& p, uintptr_t s) { fae::cuda::topk_backward(p, reinterpret_cast<fae::cuda::Stream>(s)); },
                    "Top-k attention backward on the GPU; dk, dv: zeroed float32 accumulators.");
  m.attr("cuda_max_top_k") = fae::cuda::kMaxTopK;
  def_forward(m, "cuda_forward",
              [](const fae::FwdParams& p, uintptr_t stream, int device) {
                fae::cuda::attention_forward(p, reinterpret_cast<fae::cuda::Stream>(stream), device);
              },
              "Forward attention on GPU `device`, launched on `stream` (float16/bfloat16 device pointers).");
  def_backward(m, "cuda_backward",
               [](const fae::BwdParams& p, float* stats, float* dq_accum, uintptr_t stream, int device) {
                 fae::cuda::attention_backward(p, stats, dq_accum, reinterpret_cast<fae::cuda::Stream>(stream), device);
               },
               "Backward on GPU `device`, launched on `stream`; stats and dq_accum are float32 device workspace "
               "of cuda_bwd_workspace elements.");
  def_backward_workspace(m, "cuda_bwd_workspace", fae::cuda::backward_workspace);
  def_append(m, "cuda_kvcache_append",
             [](const fae::AppendParams& p, uintptr_t stream, int device) {
               fae::cuda::kvcache_append(p, reinterpret_cast<fae::cuda::Stream>(stream), device);
             },
             "KV-cache append with rotary embedding on GPU `device`, launched on `stream` (float16/bfloat16).");
  m.attr("cuda_head_dims") = head_dim_list(fae::cuda::kHeadDims);
  m.attr("cuda_bwd_head_dims") = head_dim_list(fae::cuda::kBwdHeadDims);
#endif

  m.def("set_num_threads", &fae::cpu::set_default_num_threads,
        "Threads the CPU kernels use by default (<= 0 restores the automatic choice).");
  m.def("get_num_threads", &fae::cpu::default_num_threads);
  m.def(
      "dropout_mask",
      [](uintptr_t out, std::array<int64_t, 4> sizes, double dropout_p, uint64_t seed, uint64_t offset) {
        fae::FwdParams p{};
        p.batch = sizes[0];
        p.heads_q = sizes[1];
        fae::bindings::set_dropout(p, dropout_p, seed, offset, 0);
        py::gil_scoped_release release;
        fae::cpu::dropout_mask(p, sizes[2], sizes[3], static_cast<uint8_t*>(fae::bindings::as_ptr(out)));
      },
      py::kw_only(), py::arg("out"), py::arg("sizes"), py::arg("dropout_p"), py::arg("seed"), py::arg("offset"),
      "Dropout's keep mask (1 = kept) of sizes (B, Hq, Sq, Sk) into the uint8 array at address `out`, "
      "by the active instruction set's generator.");
  m.def("available_isas", &fae::cpu::available_isas,
        "CPU instruction sets compiled in and supported here (values of FLASHATTN_EXT_CPU_ISA).");
  m.def("peak_probes", [](int threads) {
          fae::cpu::PeakProbes r;
          {
            py::gil_scoped_release release;
            r = fae::cpu::peak_probes(threads);
          }
          py::dict d;
          d["threads"] = r.threads;
          d["fma_gflops"] = r.fma_gflops;
          d["bf16_dot_gflops"] = r.bf16_dot_gflops > 0 ? py::cast(r.bf16_dot_gflops) : py::none();
          d["bf16_dot_native"] = r.bf16_dot_native;
          d["amx_bf16_gflops"] = r.amx_bf16_gflops > 0 ? py::cast(r.amx_bf16_gflops) : py::none();
          d["bandwidth_gbs"] = r.bandwidth_gbs;
          d["bandwidth_bytes"] = r.bandwidth_bytes;
          return d;
        }, py::arg("threads") = 0,
        "Peaks of the active CPU kernels on `threads` threads (0 = default): float32 FMA, bfloat16 "
        "dot-product and (avx512amx) bfloat16 tile-product GFLOP/s of register loops, streaming-read GB/s of a 256 MiB buffer.");

  m.def("cpu_tile_candidates", [] {
          py::dict d;
          for (const bool bwd : {false, true}) {
            py::list l;
            for (const auto& c : bwd ? fae::cpu::kBwdTileCandidates : fae::cpu::kFwdTileCandidates)
              l.append(py::make_tuple(c.bq, c.bk));
            d[bwd ? "bwd" : "fwd"] = l;
          }
          return d;
        }, "Tile shapes (bq, bk) the CPU kernels can run with, per direction; the first is built in.");
  m.def("set_cpu_tiles", [](const std::string& isa, const py::list& entries, const std::string& source) {
          std::vector<fae::cpu::TunedTile> tiles;
          for (const auto& e : entries) {
            const auto d = e.cast<py::dict>();
            const auto dtype = d["dtype"].cast<std::string>(), dir = d["direction"].cast<std::string>();
            if (dir != "fwd" && dir != "bwd") throw std::invalid_argument("direction must be 'fwd' or 'bwd', got '" + dir + "'");
            fae::DType dt;
            if (dtype == "float32") dt = fae::DType::f32;
            else if (dtype == "float16") dt = fae::DType::f16;
            else if (dtype == "bfloat16") dt = fae::DType::bf16;
            else throw std::invalid_argument("dtype must be float32, float16 or bfloat16, got '" + dtype + "'");
            tiles.push_back({dt, d["head_dim"].cast<int64_t>(), dir == "bwd",
                             {d["bq"].cast<int64_t>(), d["bk"].cast<int64_t>()}});
          }
          fae::cpu::set_tuned_tiles(isa, tiles, source);
        }, py::arg("isa"), py::arg("entries"), py::arg("source"),
        "Tuned CPU tiles of instruction set `isa`: dicts of dtype, head_dim, direction ('fwd' / 'bwd'), bq, "
        "bk (a candidate); an empty list restores the built-in tiles. `source` is what build_info reports.");

  m.def("build_info", [] {
    py::dict info;
    info["version"] = FAE_VERSION;
#if defined(__clang__)
    info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = "gcc " __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
    info["cpu_isa"] = fae::cpu::active_isa();
    info["cpu_tiles"] = fae::cpu::tuned_tiles_source(fae::cpu::active_isa());
    info["cuda_built"] = bool(FAE_WITH_CUDA);
    info["cuda_archs"] = std::string(FAE_CUDA_ARCHS);
    info["num_threads"] = fae::cpu::default_num_threads();
#if FAE_WITH_CUDA
    const fae::CudaRuntimeInfo rt = fae::cuda_runtime_info();
    info["cuda_runtime_version"] = rt.runtime_version;
    info["cuda_device_count"] = rt.device_count;
    info["cuda_status"] = rt.status;
#endif
    return info;
  });
}
