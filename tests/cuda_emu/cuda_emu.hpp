// Device side of the CUDA emulator (see emu_runtime.hpp): what a kernel file (kernels/*.cu, rewritten to C++ by
// cu_to_cpp.cpp) needs from nvcc and the device, for the host compiler. Included first in every rewritten kernel file.
//  - __global__ / __device__ / __host__ are empty; __shared__ is `static`: the blocks of a grid run one after another
//    and launches are serialised (block_executor.cpp), so one static array per kernel is one block's shared memory;
//  - threadIdx, blockIdx, blockDim, gridDim name the running CUDA thread (a fiber of block_executor.cpp);
//  - __syncthreads, __syncwarp and the shuffles are real barriers between the fibers of a block or warp: a divergent
//    barrier (some threads of a block at __syncthreads, others at __syncwarp or done) is reported as the hang it is
//    on a GPU; a shuffle that reads a lane that has exited is reported (its value is undefined on a GPU);
//  - wmma fragments hold the whole 16x16 tile in every lane (the lane-to-element mapping is unspecified by CUDA;
//    cuboid's kernels load, multiply-accumulate and store whole fragments, and where they touch elements x[i] they
//    learn each element's row and column from a fragment of an index tile, so any mapping, this one included, gives
//    the same result); a load is a warp barrier (the warp reads the tile at one point), mma_sync accumulates in fp32;
//  - `k<<<grid, block, smem, stream>>>(args)` is rewritten to `::cuboid::emu::Launch(grid, block, smem, stream)(k,
//    "k", __FILE__, __LINE__)(args)`, which checks the launch as the CUDA runtime does and runs the grid at once.
#pragma once

// Location qualifiers before the CUDA headers: host_defines.h keeps definitions made before it (host compilers only).
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cuboid::emu {

/// The running CUDA thread's coordinates (valid inside a kernel only).
struct ThreadCoordinates {
  uint3 thread_idx{};
  uint3 block_idx{};
  dim3 block_dim;
  dim3 grid_dim;
};

const ThreadCoordinates& this_thread();
void sync_block();
void sync_warp(unsigned mask);
/// Shuffle of up to 8 bytes: the value `bits` of this lane is offered, the value of lane `src_lane` (of this warp)
/// returned. Reports an exited or out-of-mask source lane.
std::uint64_t shuffle(unsigned mask, std::uint64_t bits, int src_lane);
/// A scratch buffer of at least `bytes` for the running thread's warp (contents kept while the launch runs).
void* warp_scratch(std::size_t bytes);
/// The running block's dynamic shared memory (the launch's smem bytes, filled with 0xff bytes at each block start).
void* dynamic_shared_base();

template <typename T> T* dynamic_shared() { return static_cast<T*>(dynamic_shared_base()); }

/// Reports a fault of the running CUDA thread (as a GPU's "misaligned address" etc.): the launch fails with it.
[[noreturn]] void device_fault(const char* function, const std::string& what);
std::string address_text(const void* ptr);

/// reinterpret_cast to a pointer to a CUDA vector type (uint4, float2, __nv_bfloat162, ...), as cu_to_cpp rewrites
/// it: a GPU faults (misaligned address) when the address is not a multiple of the vector's size.
template <typename P, typename Q> P vector_cast(Q* ptr) {
  using V = std::remove_cv_t<std::remove_pointer_t<P>>;
  if (reinterpret_cast<std::uintptr_t>(ptr) % alignof(V) != 0) {
    device_fault("vector access", "address " + address_text(ptr) + " is not a multiple of " +
                                      std::to_string(alignof(V)) + " bytes");
  }
  return reinterpret_cast<P>(ptr);
}

/// One kernel launch: checks the configuration (cudaGetLastError reports a bad one, as on a GPU) and runs every block.
class Launch {
public:
  Launch(dim3 grid, dim3 block, std::size_t shared_bytes = 0, cudaStream_t stream = nullptr)
      : grid_(grid), block_(block), shared_bytes_(shared_bytes), stream_(stream) {}

  template <typename... Params>
  auto operator()(void (*kernel)(Params...), const char* name, const char* file, int line) const {
    return [launch = *this, kernel, name, file, line](auto&&... args) {
      const std::tuple<std::decay_t<Params>...> params(std::forward<decltype(args)>(args)...);
      // Every CUDA thread gets its own copy of the parameters, as on a GPU.
      launch.run(reinterpret_cast<const void*>(kernel), name, file, line, [&params, kernel] {
        auto copy = params;
        std::apply(kernel, copy);
      });
    };
  }

private:
  void run(const void* kernel, const char* name, const char* file, int line, const std::function<void()>& body) const;

  dim3 grid_;
  dim3 block_;
  std::size_t shared_bytes_;
  cudaStream_t stream_;
};

template <typename T> std::uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <typename T> T from_bits(std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

int lane_id();

} // namespace cuboid::emu

// ---- built-in variables and intrinsics (CUDA C++ Programming Guide, "Built-in Variables", "Warp Shuffle Functions")

#define threadIdx (::cuboid::emu::this_thread().thread_idx)
#define blockIdx (::cuboid::emu::this_thread().block_idx)
#define blockDim (::cuboid::emu::this_thread().block_dim)
#define gridDim (::cuboid::emu::this_thread().grid_dim)

inline void __syncthreads() { ::cuboid::emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cuboid::emu::sync_warp(mask); }

template <typename T> T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  const int lane = ::cuboid::emu::lane_id();
  const int src = lane / width * width + src_lane % width;
  return ::cuboid::emu::from_bits<T>(::cuboid::emu::shuffle(mask, ::cuboid::emu::to_bits(var), src));
}
template <typename T> T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const int lane = ::cuboid::emu::lane_id();
  int src = lane ^ lane_mask;
  if (src / width > lane / width) { // a later group: the caller's own value (Programming Guide)
    src = lane;
  }
  return ::cuboid::emu::from_bits<T>(::cuboid::emu::shuffle(mask, ::cuboid::emu::to_bits(var), src));
}

// Atomics: the fibers of a launch run on one host thread and launches are serialised, so a plain update is atomic.
template <typename T> T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// The C++ overload of cuda_runtime.h (declared there for nvcc only): a kernel's address as the C API's `const void*`.
template <typename T> cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// Device min and max of integer and floating arguments (CUDA Math API), in the usual arithmetic type of the two.
template <typename A, typename B> constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? std::common_type_t<A, B>(b) : std::common_type_t<A, B>(a);
}
template <typename A, typename B> constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? std::common_type_t<A, B>(b) : std::common_type_t<A, B>(a);
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// ---- wmma (CUDA C++ Programming Guide, "Warp Matrix Functions"): whole-tile fragments, fp32 accumulation.
namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
  static constexpr int ROWS = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int COLS = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = ROWS * COLS;
  T x[static_cast<std::size_t>(num_elements)]; // row-major tile, the same in every lane
};

namespace detail {
template <typename T> float to_f(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return static_cast<float>(v);
  }
}
// CUDA C++ Programming Guide, "Warp Matrix Functions": mptr "must be a 256-bit aligned pointer" and ldm "must be a
// multiple of 8 for __half element type or multiple of 4 for float element type" (16 bytes). A GPU fails such an
// access (misaligned address) or reads the wrong elements; the emulator reports it.
template <typename T> void check_fragment_address(const T* ptr, unsigned ldm, const char* function) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0 || (static_cast<std::size_t>(ldm) * sizeof(T)) % 16 != 0) {
    ::cuboid::emu::device_fault(function, "pointer " + ::cuboid::emu::address_text(ptr) + " must be 32-byte (256-bit) "
                                "aligned and ldm " + std::to_string(ldm) + " a multiple of 16 bytes");
  }
}
template <typename F, typename T> void load(F& frag, const T* ptr, unsigned ldm, bool col_major_memory) {
  check_fragment_address(ptr, ldm, "wmma::load_matrix_sync");
  for (int r = 0; r < F::ROWS; ++r) {
    for (int c = 0; c < F::COLS; ++c) {
      const std::size_t offset = col_major_memory ? static_cast<std::size_t>(c) * ldm + static_cast<std::size_t>(r)
                                                  : static_cast<std::size_t>(r) * ldm + static_cast<std::size_t>(c);
      frag.x[r * F::COLS + c] = ptr[offset];
    }
  }
  // A warp loads a fragment collectively: no lane goes on (e.g. to store over the tile it loaded) before every
  // lane has read it. Without this barrier a later lane would read what an earlier lane already stored.
  ::cuboid::emu::sync_warp(0xffffffffu);
}
} // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& frag, const T* ptr, unsigned ldm) {
  detail::load(frag, ptr, ldm, std::is_same_v<Layout, col_major>);
}
template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& frag, const T* ptr, unsigned ldm, layout_t layout) {
  detail::load(frag, ptr, ldm, layout == mem_col_major);
}
template <int M, int N, int K, typename T>
void store_matrix_sync(T* ptr, const fragment<accumulator, M, N, K, T>& frag, unsigned ldm, layout_t layout) {
  detail::check_fragment_address(ptr, ldm, "wmma::store_matrix_sync");
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) {
      const std::size_t offset = layout == mem_col_major
                                     ? static_cast<std::size_t>(c) * ldm + static_cast<std::size_t>(r)
                                     : static_cast<std::size_t>(r) * ldm + static_cast<std::size_t>(c);
      ptr[offset] = frag.x[r * N + c];
    }
  }
}
template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& frag, T value) {
  for (auto& v : frag.x) {
    v = value;
  }
}
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  // Every lane holds the same fragments, so the warp's first lane computes the product and the others find it in
  // the warp's memo (compared byte for byte: a lane whose operands differ computes its own).
  struct Memo {
    const void* kind;
    fragment<matrix_a, M, N, K, TA, LA> a;
    fragment<matrix_b, M, N, K, TB, LB> b;
    fragment<accumulator, M, N, K, TC> c;
    fragment<accumulator, M, N, K, TC> d;
  };
  static const char kind = 0; // one address per instantiation
  auto* memo = static_cast<Memo*>(::cuboid::emu::warp_scratch(sizeof(Memo)));
  if (memo->kind == &kind && std::memcmp(&memo->a, &a, sizeof(a)) == 0 && std::memcmp(&memo->b, &b, sizeof(b)) == 0 &&
      std::memcmp(&memo->c, &c, sizeof(c)) == 0) {
    d = memo->d;
    return;
  }
  float fa[static_cast<std::size_t>(M * K)];
  float fb[static_cast<std::size_t>(K * N)];
  float acc[static_cast<std::size_t>(M * N)];
  for (int idx = 0; idx < M * K; ++idx) {
    fa[idx] = detail::to_f(a.x[idx]);
  }
  for (int idx = 0; idx < K * N; ++idx) {
    fb[idx] = detail::to_f(b.x[idx]);
  }
  for (int idx = 0; idx < M * N; ++idx) {
    acc[idx] = detail::to_f(c.x[idx]);
  }
  for (int r = 0; r < M; ++r) {
    for (int kk = 0; kk < K; ++kk) {
      const float av = fa[r * K + kk];
      for (int col = 0; col < N; ++col) {
        acc[r * N + col] += av * fb[kk * N + col];
      }
    }
  }
  memo->kind = &kind;
  memo->a = a;
  memo->b = b;
  memo->c = c;
  for (int idx = 0; idx < M * N; ++idx) {
    memo->d.x[idx] = static_cast<TC>(acc[idx]);
  }
  d = memo->d;
}

} // namespace nvcuda::wmma
