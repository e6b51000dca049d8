// Emulated device memory: aligned host allocations and a registry of the live ones (see emu_runtime.hpp). Ranges
// are checked against the registry; an address that is in no allocation (a host pointer passed as a device one,
// a use after free, an overrun) is reported with the nearest allocation below it.
#include "tests/cuda_emu/emu_runtime.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>

namespace cuboid::emu {

namespace {

constexpr std::size_t ALIGNMENT = 256; // cudaMalloc's guarantee (CUDA C++ Programming Guide, "Device Memory Accesses")

struct Registry {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> live; // start address -> bytes
  std::size_t bytes = 0;
};

Registry& registry() {
  static Registry r; // NOLINT: the emulated device's memory is process-wide state, as a GPU's is
  return r;
}

} // namespace

void* allocate_device(std::size_t bytes) {
  if (bytes == 0) {
    return nullptr;
  }
  const std::size_t rounded = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
  void* ptr = std::aligned_alloc(ALIGNMENT, rounded);
  if (ptr == nullptr) {
    return nullptr;
  }
  std::memset(ptr, 0xff, rounded);
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  r.live[reinterpret_cast<std::uintptr_t>(ptr)] = bytes;
  r.bytes += bytes;
  return ptr;
}

bool free_device(void* ptr) {
  Registry& r = registry();
  {
    const std::lock_guard lock(r.mutex);
    const auto it = r.live.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == r.live.end()) {
      return false;
    }
    r.bytes -= it->second;
    r.live.erase(it);
  }
  std::free(ptr);
  return true;
}

void check_device_range(const void* ptr, std::size_t bytes, const char* what) {
  if (bytes == 0) {
    return;
  }
  const auto start = reinterpret_cast<std::uintptr_t>(ptr);
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  auto it = r.live.upper_bound(start);
  if (it == r.live.begin()) {
    throw std::out_of_range(fmt::format("{}: {} bytes at {:#x} are not device memory (no allocation at or below it)",
                                        what, bytes, start));
  }
  it = std::prev(it);
  const std::uintptr_t base = it->first;
  const std::size_t size = it->second;
  if (start + bytes > base + size) {
    throw std::out_of_range(fmt::format("{}: {} bytes at {:#x} overrun the allocation of {} bytes at {:#x} (offset "
                                        "{}, {} bytes past its end)",
                                        what, bytes, start, size, base, start - base, start + bytes - (base + size)));
  }
}

std::size_t device_bytes_in_use() {
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  return r.bytes;
}

} // namespace cuboid::emu
