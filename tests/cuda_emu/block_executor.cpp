// Runs an emulated kernel launch (cuda_emu.hpp): every CUDA thread of a block is a fiber with its own stack. A
// scheduler on the launching host thread runs each fiber until it reaches a barrier (__syncthreads, __syncwarp, a
// shuffle) or finishes the block, and releases a barrier once every live thread of its scope (warp or block) waits at
// it; at a warp barrier a lane hands over to the next lane of its warp directly. Blocks run one after another, in
// blockIdx order (x fastest), and launches of all host threads are serialised by one mutex, because __shared__
// arrays are `static` in the rewritten kernels.
// What is reported (the launch fails with cudaErrorLaunchFailure, the reason printed, as a GPU's hang or garbage):
//  - a barrier that can never be released (threads of one block waiting at different barriers, or a warp barrier
//    some lanes of the warp never reach while others wait at __syncthreads);
//  - a shuffle reading a lane that exited before it offered a value, or a lane outside the mask;
//  - an exception thrown inside the kernel (e.g. by the wmma emulation).
#include "tests/cuda_emu/cuda_emu.hpp"
#include "tests/cuda_emu/emu_runtime.hpp"

#include <fmt/format.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuboid::emu {

namespace {

constexpr int WARP = 32;
constexpr std::size_t SHARED_ALIGNMENT = 256; // the dynamic shared memory window starts here
constexpr std::size_t STACK_BYTES = 256u << 10; // kernels keep small per-thread arrays; fragments are 1 KiB

// ---- fiber contexts. On x86-64 a switch saves the callee-saved registers (System V ABI) on the old stack and
// restores them from the new one: no system call, unlike swapcontext, which also saves the signal mask (a kernel
// test switches ~10^7 times). Elsewhere ucontext.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void cuboid_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl cuboid_emu_switch
  .type cuboid_emu_switch, @function
cuboid_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuboid_emu_switch, .-cuboid_emu_switch
  .section .note.GNU-stack, "", @progbits
)");
void switch_context(Context& from, Context& to) { cuboid_emu_switch(&from.sp, to.sp); }
// A context that starts `entry` (which never returns) on [stack, stack + bytes).
void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<std::uintptr_t*>(top);
  *--slot = 0;                                     // entry's return address: none (rsp = 8 mod 16 at its start)
  *--slot = reinterpret_cast<std::uintptr_t>(entry); // popped by the first switch's `ret`
  for (int reg = 0; reg < 6; ++reg) {
    *--slot = 0; // rbp, rbx, r12-r15
  }
  c.sp = slot;
}
#else
struct Context {
  ucontext_t uc{};
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

enum class State : std::uint8_t { Runnable, AtBlockBarrier, AtWarpBarrier, BlockDone, Failed };

// Kept small: a warp barrier or shuffle reads the fibers of all 32 lanes.
struct Fiber {
  Context context;
  int linear = 0; // thread index in the block (x fastest)
  State state = State::Runnable;
  std::uint32_t shuffles = 0; // shuffles done in this block (selects the slot set)
};

struct GridRun {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<ThreadCoordinates> coords; // per thread, for threadIdx / blockIdx / blockDim / gridDim
  Context scheduler;
  std::vector<std::uint64_t> exchange; // two shuffle slots per thread (see shuffle)
  std::vector<unsigned char> shared;   // dynamic shared memory of the running block, from SHARED_ALIGNMENT on
  std::vector<std::vector<std::max_align_t>> warp_scratch; // per warp (see cuda_emu.hpp warp_scratch)
  std::string error;
};

GridRun* g_run = nullptr;     // NOLINT: the running launch (launches are serialised by launch_mutex)
Fiber* g_fiber = nullptr;     // NOLINT: the running CUDA thread
std::mutex launch_mutex;      // NOLINT

Fiber& current() {
  if (g_fiber == nullptr) {
    throw std::logic_error("a CUDA device function was called outside a kernel launch");
  }
  return *g_fiber;
}

// Releases the warp barrier of the lanes [first, last) when every live lane of the warp waits at it (and at least
// one does); returns the first lane released, or nullptr when the barrier cannot be released.
Fiber* release_warp(GridRun& run, std::size_t first, std::size_t last) {
  for (std::size_t t = first; t < last; ++t) {
    const State st = run.fibers[t].state;
    if (st != State::AtWarpBarrier && st != State::BlockDone) {
      return nullptr;
    }
  }
  Fiber* resume = nullptr;
  for (std::size_t t = first; t < last; ++t) {
    Fiber& f = run.fibers[t];
    if (f.state == State::AtWarpBarrier) {
      f.state = State::Runnable;
      resume = resume == nullptr ? &f : resume;
    }
  }
  return resume;
}

// The lane of `self`'s warp to run next when `self` waits at a warp barrier: another runnable lane (the warp runs on
// lane by lane, from the lane after `self`), or, when `self` was the last to arrive, the first lane after releasing
// the barrier (possibly `self`); nullptr when the warp cannot go on (a lane waits at __syncthreads): then the
// scheduler decides. Handing over directly saves the round trip through the scheduler at every shuffle.
Fiber* warp_successor(Fiber& self) {
  GridRun& run = *g_run;
  const auto first = static_cast<std::size_t>(self.linear / WARP * WARP);
  const std::size_t lanes = std::min(first + WARP, run.fibers.size()) - first;
  const auto me = static_cast<std::size_t>(self.linear) - first;
  // The lanes after `self`, wrapping round to those before it (a subtraction, not a modulo: this runs at every
  // shuffle of every lane).
  for (std::size_t step = 1; step < lanes; ++step) {
    std::size_t t = me + step;
    if (t >= lanes) {
      t -= lanes;
    }
    if (run.fibers[first + t].state == State::Runnable) {
      return &run.fibers[first + t];
    }
  }
  return release_warp(run, first, first + lanes);
}

// Leaves `self` in `state` and runs the next fiber; returns when `self` is resumed.
void yield(State state) {
  Fiber& self = current();
  self.state = state;
  Fiber* next = state == State::AtWarpBarrier ? warp_successor(self) : nullptr;
  if (next == &self) {
    return; // the whole warp had arrived and self is its first lane
  }
  if (next != nullptr) {
    g_fiber = next;
    switch_context(self.context, next->context);
  } else {
    switch_context(self.context, g_run->scheduler);
  }
}

void fiber_main() {
  GridRun& run = *g_run;
  while (true) {
    std::string failure; // the fiber leaves the catch block before it switches back (exception state is per thread)
    try {
      (*run.body)();
    } catch (const std::exception& e) {
      const ThreadCoordinates& c = run.coords[static_cast<std::size_t>(g_fiber->linear)];
      failure = fmt::format("thread ({}, {}, {}) of block ({}, {}, {}): {}", c.thread_idx.x, c.thread_idx.y,
                            c.thread_idx.z, c.block_idx.x, c.block_idx.y, c.block_idx.z, e.what());
    }
    if (failure.empty()) {
      yield(State::BlockDone);
    } else {
      run.error = failure;
      yield(State::Failed); // never resumed
    }
  }
}

const char* state_name(State s) {
  switch (s) {
  case State::Runnable: return "runnable";
  case State::AtBlockBarrier: return "__syncthreads";
  case State::AtWarpBarrier: return "a warp barrier (__syncwarp / shuffle)";
  case State::BlockDone: return "done";
  case State::Failed: return "failed";
  }
  return "?";
}

// Releases the barriers that every live thread of their scope has reached; false when none can be released.
bool release_barriers(GridRun& run) {
  bool released = false;
  for (std::size_t first = 0; first < run.fibers.size(); first += WARP) {
    released = release_warp(run, first, std::min(first + WARP, run.fibers.size())) != nullptr || released;
  }
  if (released) {
    return true;
  }
  const bool block_barrier = std::all_of(run.fibers.begin(), run.fibers.end(), [](const Fiber& f) {
    return f.state == State::AtBlockBarrier || f.state == State::BlockDone;
  });
  const bool any_waiting = std::any_of(run.fibers.begin(), run.fibers.end(),
                                       [](const Fiber& f) { return f.state == State::AtBlockBarrier; });
  if (block_barrier && any_waiting) {
    for (Fiber& f : run.fibers) {
      if (f.state == State::AtBlockBarrier) {
        f.state = State::Runnable;
      }
    }
    return true;
  }
  return false;
}

std::string describe_hang(const GridRun& run) {
  std::string out = "no barrier can be released (divergent barriers; a GPU would hang or compute garbage):";
  for (const State s : {State::AtBlockBarrier, State::AtWarpBarrier, State::BlockDone}) {
    int count = 0;
    int first = -1;
    for (const Fiber& f : run.fibers) {
      if (f.state == s) {
        first = count++ == 0 ? f.linear : first;
      }
    }
    if (count > 0) {
      out += fmt::format(" {} thread(s) {} (the first is thread {});", count,
                         s == State::BlockDone ? "have finished the block" : fmt::format("wait at {}", state_name(s)),
                         first);
    }
  }
  return out;
}

// Runs one block to completion; false (with run.error set) when it fails.
bool run_block(GridRun& run, const uint3& block_idx) {
  std::fill(run.shared.begin(), run.shared.end(), static_cast<unsigned char>(0xff));
  for (ThreadCoordinates& c : run.coords) {
    c.block_idx = block_idx;
  }
  for (Fiber& f : run.fibers) {
    f.state = State::Runnable;
    f.shuffles = 0;
  }
  while (true) {
    for (Fiber& f : run.fibers) {
      if (f.state == State::Runnable) {
        g_fiber = &f;
        switch_context(run.scheduler, f.context); // returns when a fiber (f, or one f handed over to) yields to us
        g_fiber = nullptr;
        if (!run.error.empty()) {
          return false;
        }
      }
    }
    if (std::all_of(run.fibers.begin(), run.fibers.end(), [](const Fiber& f) { return f.state == State::BlockDone; })) {
      return true;
    }
    if (!release_barriers(run)) {
      run.error = fmt::format("block ({}, {}, {}): {}", block_idx.x, block_idx.y, block_idx.z, describe_hang(run));
      return false;
    }
  }
}

// Checks the configuration as cudaLaunchKernel does; the error and why, or cudaSuccess.
std::pair<cudaError_t, std::string> check_config(const void* kernel, dim3 grid, dim3 block, std::size_t shared,
                                                 cudaStream_t stream) {
  const cudaDeviceProp& prop = device_properties();
  const std::uint64_t threads = static_cast<std::uint64_t>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
    return {cudaErrorInvalidConfiguration, "a grid or block dimension is 0"};
  }
  if (grid.x > static_cast<unsigned>(prop.maxGridSize[0]) || grid.y > static_cast<unsigned>(prop.maxGridSize[1]) ||
      grid.z > static_cast<unsigned>(prop.maxGridSize[2])) {
    return {cudaErrorInvalidConfiguration,
            fmt::format("grid ({}, {}, {}) exceeds the maximum ({}, {}, {})", grid.x, grid.y, grid.z,
                        prop.maxGridSize[0], prop.maxGridSize[1], prop.maxGridSize[2])};
  }
  if (threads > static_cast<std::uint64_t>(prop.maxThreadsPerBlock) ||
      block.x > static_cast<unsigned>(prop.maxThreadsDim[0]) ||
      block.y > static_cast<unsigned>(prop.maxThreadsDim[1]) ||
      block.z > static_cast<unsigned>(prop.maxThreadsDim[2])) {
    return {cudaErrorInvalidConfiguration,
            fmt::format("block ({}, {}, {}) exceeds {} threads or the per-dimension maximum", block.x, block.y,
                        block.z, prop.maxThreadsPerBlock)};
  }
  if (shared > max_dynamic_shared_bytes(kernel)) {
    return {cudaErrorInvalidValue,
            fmt::format("{} bytes of dynamic shared memory requested, the kernel allows {} (raise it with "
                        "cudaFuncSetAttribute(..., cudaFuncAttributeMaxDynamicSharedMemorySize, n), at most {})",
                        shared, max_dynamic_shared_bytes(kernel), prop.sharedMemPerBlockOptin)};
  }
  if (!is_valid_stream(stream)) {
    return {cudaErrorInvalidResourceHandle, "the stream is not a live stream"};
  }
  return {cudaSuccess, {}};
}

} // namespace

const ThreadCoordinates& this_thread() { return g_run->coords[static_cast<std::size_t>(current().linear)]; }

int lane_id() { return current().linear % WARP; }

void sync_block() { yield(State::AtBlockBarrier); }

// Every live lane of the warp takes part, whatever the mask (cuboid's kernels use full masks).
void sync_warp(unsigned /*mask*/) { yield(State::AtWarpBarrier); }

std::uint64_t shuffle(unsigned mask, std::uint64_t bits, int src_lane) {
  Fiber& self = current();
  GridRun& run = *g_run;
  const int warp_first = self.linear / WARP * WARP;
  // Two slot sets used by turns: a lane can be at most one shuffle ahead of a slower lane of its warp (it waits at
  // the next shuffle's barrier), so it never overwrites a slot that is still to be read.
  const std::size_t set = (self.shuffles++ % 2) * run.fibers.size();
  run.exchange[set + static_cast<std::size_t>(self.linear)] = bits;
  sync_warp(mask); // every live lane has offered its value
  if (src_lane < 0 || src_lane >= WARP || ((mask >> src_lane) & 1u) == 0) {
    throw std::runtime_error(fmt::format("shuffle from lane {} outside the mask {:#010x}", src_lane, mask));
  }
  const auto src = static_cast<std::size_t>(warp_first + src_lane);
  // The source lane must have offered a value to this shuffle (it may be one shuffle further already, or have
  // finished after offering): a lane that exited before it offered nothing.
  if (src >= run.fibers.size() || run.fibers[src].shuffles < self.shuffles) {
    throw std::runtime_error(
        fmt::format("shuffle from lane {}, which has exited (or does not exist): the value is undefined", src_lane));
  }
  return run.exchange[set + src];
}

void device_fault(const char* function, const std::string& what) {
  throw std::runtime_error(fmt::format("{}: {}", function, what));
}

std::string address_text(const void* ptr) { return fmt::format("{}", ptr); }

void* dynamic_shared_base() {
  // Aligned as a GPU's shared memory window (the kernels ask for __align__(128)), so that the alignment checks of
  // wmma and vector accesses see the offsets a GPU would.
  const auto base = reinterpret_cast<std::uintptr_t>(g_run->shared.data());
  return g_run->shared.data() + ((SHARED_ALIGNMENT - base % SHARED_ALIGNMENT) % SHARED_ALIGNMENT);
}

void* warp_scratch(std::size_t bytes) {
  auto& buffer = g_run->warp_scratch[static_cast<std::size_t>(current().linear / WARP)];
  const std::size_t words = (bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
  if (buffer.size() < words) {
    buffer.assign(words, std::max_align_t{}); // zeroed: no memo is valid
  }
  return buffer.data();
}

void Launch::run(const void* kernel, const char* name, const char* file, int line,
                 const std::function<void()>& body) const {
  const auto [error, why] = check_config(kernel, grid_, block_, shared_bytes_, stream_);
  if (error != cudaSuccess) {
    set_last_error(error, fmt::format("launch of {} at {}:{}: {}", name, file, line, why));
    return;
  }
  const std::lock_guard lock(launch_mutex);
  static std::vector<std::unique_ptr<char[]>> stacks; // NOLINT: reused by every launch (under launch_mutex)
  GridRun run;
  run.body = &body;
  const unsigned threads = block_.x * block_.y * block_.z;
  run.fibers.resize(threads);
  run.coords.resize(threads);
  run.exchange.assign(2 * static_cast<std::size_t>(threads), 0);
  run.warp_scratch.resize((threads + WARP - 1) / WARP);
  run.shared.assign(shared_bytes_ + SHARED_ALIGNMENT, 0);
  while (stacks.size() < threads) {
    stacks.emplace_back(new char[STACK_BYTES]); // not zeroed: pages are touched only as deep as a thread's stack grows
  }
  GridRun* const outer = g_run;
  g_run = &run;
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = run.fibers[t];
    f.linear = static_cast<int>(t);
    ThreadCoordinates& c = run.coords[t];
    c.thread_idx = uint3{t % block_.x, t / block_.x % block_.y, t / (block_.x * block_.y)};
    c.block_dim = block_;
    c.grid_dim = grid_;
    make_context(f.context, stacks[t].get(), STACK_BYTES, fiber_main);
  }
  bool ok = true;
  for (unsigned z = 0; z < grid_.z && ok; ++z) {
    for (unsigned y = 0; y < grid_.y && ok; ++y) {
      for (unsigned x = 0; x < grid_.x && ok; ++x) {
        ok = run_block(run, uint3{x, y, z});
      }
    }
  }
  g_run = outer;
  if (!ok) {
    set_last_error(cudaErrorLaunchFailure, fmt::format("kernel {} launched at {}:{} with grid ({}, {}, {}), block ({}, "
                                                       "{}, {}), {} B shared: {}",
                                                       name, file, line, grid_.x, grid_.y, grid_.z, block_.x, block_.y,
                                                       block_.z, shared_bytes_, run.error));
  }
}

} // namespace cuboid::emu
