// The tuned tile table (backend.h): set from Python (flashattn_ext/_tiles.py, which reads the
// file `python -m flashattn_ext tune` writes), read by the kernels of every instruction set.
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "cpu/backend.h"

namespace fae::cpu {
namespace {

// (instruction set, dtype, head-dim class, backward) -> (bq, bk)
using Key = std::tuple<std::string, int, int, bool>;
struct Table {
  std::mutex m;
  std::map<Key, TileShape> entries;
  std::map<std::string, std::string> sources;  // instruction set -> file
};
Table& table() {
  static Table t;  // never destroyed before the kernels that read it (a function-local static)
  return t;
}

bool is_candidate(const TileShape& s, bool backward) {
  for (const TileShape& c : backward ? kBwdTileCandidates : kFwdTileCandidates)
    if (c.bq == s.bq && c.bk == s.bk) return true;
  return false;
}

// FLASHATTN_EXT_CPU_ISA's spelling to the kernels' namespace (avx512bf16-emu: avx512bf16_emu).
std::string unit(std::string isa) {
  for (char& c : isa) c = c == '-' ? '_' : c;
  return isa;
}

}  // namespace

int head_dim_class(int64_t head_dim) { return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256; }

void set_tuned_tiles(const std::string& isa_name, const std::vector<TunedTile>& tiles, const std::string& source) {
  for (const TunedTile& t : tiles)
    if (!is_candidate(t.shape, t.backward))
      throw std::invalid_argument("tile (bq " + std::to_string(t.shape.bq) + ", bk " + std::to_string(t.shape.bk) +
                                  ") is not a " + (t.backward ? "backward" : "forward") + " tile candidate");
  Table& tb = table();
  std::lock_guard<std::mutex> lk(tb.m);
  const std::string isa = unit(isa_name);
  for (auto it = tb.entries.begin(); it != tb.entries.end();)
    it = std::get<0>(it->first) == isa ? tb.entries.erase(it) : std::next(it);
  tb.sources.erase(isa);
  for (const TunedTile& t : tiles)
    tb.entries[{isa, int(t.dtype), head_dim_class(t.head_dim), t.backward}] = t.shape;
  if (!tiles.empty()) tb.sources[isa] = source;
}

std::string tuned_tiles_source(const std::string& isa) {
  Table& tb = table();
  std::lock_guard<std::mutex> lk(tb.m);
  const auto it = tb.sources.find(unit(isa));
  return it == tb.sources.end() ? "built-in" : it->second;
}

bool tuned_tile(const std::string& isa, DType dtype, int64_t head_dim, bool backward, TileShape& shape) {
  Table& tb = table();
  std::lock_guard<std::mutex> lk(tb.m);
  if (tb.entries.empty()) return false;
  const auto it = tb.entries.find({isa, int(dtype), head_dim_class(head_dim), backward});
  if (it == tb.entries.end()) return false;
  shape = it->second;
  return true;
}

}  // namespace fae::cpu
