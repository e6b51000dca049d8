// The CUDA runtime API of the emulator (see emu_runtime.hpp): the cudaXxx functions cuboid calls, with the names
// and signatures of cuda_runtime_api.h, on emulated devices whose memory is host memory and whose stream operations
// run to completion when issued. Emulated: devices (count from CUBOID_EMU_DEVICES, current device per host thread),
// properties of an H100-like sm_90 device, memory (bounds-checked copies and memsets), streams and events as
// validated handles, event timing from the host's steady clock, the per-thread last error, default memory pools with
// their attributes and usage statistics, the dynamic shared-memory opt-in of kernels.
// Not emulated: concurrency between streams, peer access, IPC, graphs, host-pinned memory; a call outside the set
// below does not link, and an unsupported flag or attribute returns cudaErrorNotSupported with a message.
#include "tests/cuda_emu/emu_runtime.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace cuboid::emu {

namespace {

constexpr int MAX_DEVICES = 64;
constexpr int DEFAULT_DEVICES = 1;
constexpr const char* DEVICES_ENV = "CUBOID_EMU_DEVICES";
constexpr std::size_t KIB = 1024;
constexpr std::size_t DEFAULT_DYNAMIC_SHARED_BYTES = 48 * KIB; // CUDA C++ Programming Guide, "Shared Memory"

using Clock = std::chrono::steady_clock;

struct Stream {
  int device = 0;
  unsigned flags = 0;
};

struct Event {
  unsigned flags = 0;
  bool recorded = false;
  Clock::time_point time{};
};

// The default memory pool of one device. The emulator reserves exactly what it hands out, so the reserved and used
// statistics are the same numbers: bytes of live cudaMallocAsync allocations of the device, and their high-water mark.
struct MemPool {
  std::uint64_t release_threshold = 0;
  int reuse_follow_event_dependencies = 1;
  int reuse_allow_opportunistic = 1;
  int reuse_allow_internal_dependencies = 1;
  std::uint64_t used_bytes = 0;
  std::uint64_t used_high_bytes = 0;
};

struct Allocation {
  int device = 0;
  std::size_t bytes = 0;
  bool from_pool = false; // cudaMallocAsync (counted by the device's pool) rather than cudaMalloc
};

// Process-wide state of the emulated devices, shared by all host threads (the NCCL tests drive one device per
// thread): every table is guarded by `mutex`.
struct Runtime {
  std::mutex mutex;
  std::map<const Stream*, std::unique_ptr<Stream>> streams;
  std::map<const Event*, std::unique_ptr<Event>> events;
  std::map<const void*, std::size_t> max_dynamic_shared_bytes; // per kernel, as raised by cudaFuncSetAttribute
  std::array<MemPool, MAX_DEVICES> pools{};
  std::unordered_map<const void*, Allocation> allocations;
};

Runtime& runtime() {
  static Runtime r; // NOLINT: the emulated devices are process-wide state, as a GPU's driver state is
  return r;
}

// As on a GPU, the last error and the current device belong to the calling host thread.
thread_local cudaError_t last_error = cudaSuccess; // NOLINT: per-thread state of the CUDA runtime API
thread_local int current_device = 0;               // NOLINT: per-thread state of the CUDA runtime API

// The error a failing call returns, after recording it as the thread's last error and printing why.
cudaError_t fail(cudaError_t error, const std::string& detail) {
  set_last_error(error, detail);
  return error;
}

// Errors that a GPU reports asynchronously, at the next synchronisation, after a kernel failed while running.
bool is_execution_error(cudaError_t error) {
  switch (error) {
  case cudaErrorIllegalAddress:
  case cudaErrorLaunchTimeout:
  case cudaErrorAssert:
  case cudaErrorHardwareStackError:
  case cudaErrorIllegalInstruction:
  case cudaErrorMisalignedAddress:
  case cudaErrorInvalidAddressSpace:
  case cudaErrorInvalidPc:
  case cudaErrorLaunchFailure:
    return true;
  default:
    return false;
  }
}

// What a synchronisation returns: the pending execution error of this thread (kept, as a GPU keeps it), or success.
// Every operation has completed already, so there is nothing to wait for.
cudaError_t synchronisation_status() { return is_execution_error(last_error) ? last_error : cudaSuccess; }

// The number of emulated devices: CUBOID_EMU_DEVICES (1..64), 1 when it is not set. Read at every call so that a
// test can change it; an invalid value is an error of every call that needs the device count.
cudaError_t device_count(int& count) {
  count = 0;
  const char* value = std::getenv(DEVICES_ENV);
  if (value == nullptr) {
    count = DEFAULT_DEVICES;
    return cudaSuccess;
  }
  const char* end = value + std::strlen(value);
  int parsed = 0;
  const auto [ptr, ec] = std::from_chars(value, end, parsed);
  if (ec != std::errc() || ptr != end || *value == '\0' || parsed < 1 || parsed > MAX_DEVICES) {
    return fail(cudaErrorInvalidValue,
                fmt::format("{}=\"{}\" is not a device count (expected an integer in 1..{}; unset means {})",
                            DEVICES_ENV, value, MAX_DEVICES, DEFAULT_DEVICES));
  }
  count = parsed;
  return cudaSuccess;
}

// Success when `device` is an emulated device; otherwise the error (recorded) that a call naming it returns.
cudaError_t check_device(int device, const char* function) {
  int count = 0;
  if (const cudaError_t status = device_count(count); status != cudaSuccess) {
    return status;
  }
  if (device < 0 || device >= count) {
    return fail(cudaErrorInvalidDevice,
                fmt::format("{}: device {} does not exist ({} emulated device(s), valid 0..{}; set {} for more)",
                            function, device, count, count - 1, DEVICES_ENV));
  }
  return cudaSuccess;
}

bool is_default_stream(cudaStream_t stream) {
  return stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread;
}

const Stream* as_stream(cudaStream_t stream) { return reinterpret_cast<const Stream*>(stream); }
const Event* as_event(cudaEvent_t event) { return reinterpret_cast<const Event*>(event); }

cudaError_t check_stream(cudaStream_t stream, const char* function) {
  if (is_valid_stream(stream)) {
    return cudaSuccess;
  }
  return fail(cudaErrorInvalidResourceHandle,
              fmt::format("{}: stream {} was not created by cudaStreamCreate* or was destroyed", function,
                          static_cast<const void*>(stream)));
}

// The device that work on `stream` runs on: its creator's, or the current one for the default streams.
int device_of(cudaStream_t stream) {
  if (is_default_stream(stream)) {
    return current_device;
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  const auto it = r.streams.find(as_stream(stream));
  return it != r.streams.end() ? it->second->device : current_device;
}

cudaError_t invalid_event(cudaEvent_t event, const char* function) {
  return fail(cudaErrorInvalidResourceHandle,
              fmt::format("{}: event {} was not created by cudaEventCreate* or was destroyed", function,
                          static_cast<const void*>(event)));
}

// Checks a device range, turning the registry's std::out_of_range into cudaErrorInvalidValue with its message.
cudaError_t check_range(const void* ptr, std::size_t bytes, const char* what) {
  try {
    check_device_range(ptr, bytes, what);
  } catch (const std::out_of_range& e) {
    return fail(cudaErrorInvalidValue, e.what());
  }
  return cudaSuccess;
}

// True when `ptr` lies in a live device allocation (how cudaMemcpyDefault tells device pointers from host ones).
bool is_device_pointer(const void* ptr) {
  try {
    check_device_range(ptr, 1, "cudaMemcpyDefault");
  } catch (const std::out_of_range&) {
    return false;
  }
  return true;
}

cudaError_t allocate(void** ptr, std::size_t bytes, int device, bool from_pool, const char* function) {
  if (ptr == nullptr) {
    return fail(cudaErrorInvalidValue, fmt::format("{}: devPtr is null", function));
  }
  *ptr = nullptr;
  if (bytes == 0) {
    return cudaSuccess; // as cudaMalloc: a null pointer for an empty allocation
  }
  void* mem = allocate_device(bytes);
  if (mem == nullptr) {
    return fail(cudaErrorMemoryAllocation, fmt::format("{}: the host could not allocate {} bytes", function, bytes));
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  r.allocations[mem] = Allocation{device, bytes, from_pool};
  if (from_pool) {
    MemPool& pool = r.pools[static_cast<std::size_t>(device)];
    pool.used_bytes += bytes;
    pool.used_high_bytes = std::max(pool.used_high_bytes, pool.used_bytes);
  }
  *ptr = mem;
  return cudaSuccess;
}

cudaError_t release(void* ptr, const char* function) {
  if (ptr == nullptr) {
    return cudaSuccess;
  }
  {
    Runtime& r = runtime();
    const std::lock_guard lock(r.mutex);
    if (const auto it = r.allocations.find(ptr); it != r.allocations.end()) {
      if (it->second.from_pool) {
        r.pools[static_cast<std::size_t>(it->second.device)].used_bytes -= it->second.bytes;
      }
      r.allocations.erase(it);
    }
  }
  if (!free_device(ptr)) {
    return fail(cudaErrorInvalidValue,
                fmt::format("{}: {} is not the start of a live device allocation (double free, or not from "
                            "cudaMalloc*)",
                            function, ptr));
  }
  return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind, const char* function) {
  if (count == 0) {
    return cudaSuccess;
  }
  if (dst == nullptr || src == nullptr) {
    return fail(cudaErrorInvalidValue, fmt::format("{}: null {} pointer for {} bytes", function,
                                                   dst == nullptr ? "destination" : "source", count));
  }
  bool dst_on_device = false;
  bool src_on_device = false;
  switch (kind) {
  case cudaMemcpyHostToHost:
    break;
  case cudaMemcpyHostToDevice:
    dst_on_device = true;
    break;
  case cudaMemcpyDeviceToHost:
    src_on_device = true;
    break;
  case cudaMemcpyDeviceToDevice:
    dst_on_device = true;
    src_on_device = true;
    break;
  case cudaMemcpyDefault: // unified addressing: the pointers say where they are
    dst_on_device = is_device_pointer(dst);
    src_on_device = is_device_pointer(src);
    break;
  default:
    return fail(cudaErrorInvalidMemcpyDirection,
                fmt::format("{}: kind {} is not a cudaMemcpyKind (0..4)", function, static_cast<int>(kind)));
  }
  const std::string dst_what = fmt::format("{} destination", function);
  const std::string src_what = fmt::format("{} source", function);
  if (dst_on_device) {
    if (const cudaError_t status = check_range(dst, count, dst_what.c_str()); status != cudaSuccess) {
      return status;
    }
  }
  if (src_on_device) {
    if (const cudaError_t status = check_range(src, count, src_what.c_str()); status != cudaSuccess) {
      return status;
    }
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t fill(void* ptr, int value, std::size_t count, const char* function) {
  if (const cudaError_t status = check_range(ptr, count, function); status != cudaSuccess) {
    return status;
  }
  if (count > 0) {
    std::memset(ptr, static_cast<unsigned char>(value), count);
  }
  return cudaSuccess;
}

// The pool behind a cudaMemPool_t handle of cudaDeviceGetDefaultMemPool, or nullptr.
MemPool* as_pool(cudaMemPool_t handle) {
  Runtime& r = runtime();
  for (MemPool& pool : r.pools) {
    if (reinterpret_cast<cudaMemPool_t>(&pool) == handle) {
      return &pool;
    }
  }
  return nullptr;
}

cudaDeviceProp make_properties() {
  cudaDeviceProp prop{};
  std::snprintf(prop.name, sizeof(prop.name), "%s", "cuboid CUDA emulator (CPU)");
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_bytes = ::sysconf(_SC_PAGE_SIZE);
  prop.totalGlobalMem = pages > 0 && page_bytes > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(
                                                                                              page_bytes)
                                                    : std::size_t{1} << 34;
  // Compute capability 9.0 limits: CUDA C++ Programming Guide, "Features and Technical Specifications", table
  // "Technical Specifications per Compute Capability" (column 9.0).
  prop.major = 9;
  prop.minor = 0;
  prop.warpSize = 32;
  prop.maxThreadsPerBlock = 1024;
  prop.maxThreadsDim[0] = 1024;
  prop.maxThreadsDim[1] = 1024;
  prop.maxThreadsDim[2] = 64;
  prop.maxGridSize[0] = 2147483647; // 2^31 - 1
  prop.maxGridSize[1] = 65535;
  prop.maxGridSize[2] = 65535;
  prop.sharedMemPerBlock = DEFAULT_DYNAMIC_SHARED_BYTES;
  prop.sharedMemPerBlockOptin = 227 * KIB;
  prop.sharedMemPerMultiprocessor = 228 * KIB;
  prop.reservedSharedMemPerBlock = 1 * KIB;
  prop.regsPerBlock = 65536;
  prop.regsPerMultiprocessor = 65536;
  prop.maxThreadsPerMultiProcessor = 2048;
  prop.maxBlocksPerMultiProcessor = 32;
  prop.totalConstMem = 64 * KIB;
  // H100 SXM5: 132 SMs, 50 MB L2, 5120-bit HBM3 interface (NVIDIA H100 Tensor Core GPU Architecture whitepaper).
  prop.multiProcessorCount = 132;
  prop.l2CacheSize = 50 * 1024 * 1024;
  prop.memoryBusWidth = 5120;
  prop.memPitch = 2147483647;
  prop.textureAlignment = 512;
  prop.texturePitchAlignment = 32;
  prop.concurrentKernels = 1;
  prop.asyncEngineCount = 2;
  prop.unifiedAddressing = 1;
  prop.memoryPoolsSupported = 1;
  prop.computePreemptionSupported = 1;
  prop.cooperativeLaunch = 0; // cudaLaunchCooperativeKernel is not emulated
  return prop;
}

struct ErrorText {
  cudaError_t code;
  const char* name;
  const char* text;
};

// The names and descriptions cudaGetErrorName / cudaGetErrorString give for the codes a program commonly sees.
#define CUBOID_ERROR_TEXT(code, text) ErrorText{code, #code, text}
constexpr std::array ERROR_TEXTS{
    CUBOID_ERROR_TEXT(cudaSuccess, "no error"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidValue, "invalid argument"),
    CUBOID_ERROR_TEXT(cudaErrorMemoryAllocation, "out of memory"),
    CUBOID_ERROR_TEXT(cudaErrorInitializationError, "initialization error"),
    CUBOID_ERROR_TEXT(cudaErrorCudartUnloading, "driver shutting down"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidConfiguration, "invalid configuration argument"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidPitchValue, "invalid pitch argument"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidSymbol, "invalid device symbol"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidHostPointer, "invalid host pointer"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidDevicePointer, "invalid device pointer"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy"),
    CUBOID_ERROR_TEXT(cudaErrorMissingConfiguration, "__global__ function call is not configured"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidDeviceFunction, "invalid device function"),
    CUBOID_ERROR_TEXT(cudaErrorNoDevice, "no CUDA-capable device is detected"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidDevice, "invalid device ordinal"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidKernelImage, "device kernel image is invalid"),
    CUBOID_ERROR_TEXT(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidResourceHandle, "invalid resource handle"),
    CUBOID_ERROR_TEXT(cudaErrorNotReady, "device not ready"),
    CUBOID_ERROR_TEXT(cudaErrorIllegalAddress, "an illegal memory access was encountered"),
    CUBOID_ERROR_TEXT(cudaErrorLaunchOutOfResources, "too many resources requested for launch"),
    CUBOID_ERROR_TEXT(cudaErrorLaunchTimeout, "the launch timed out and was terminated"),
    CUBOID_ERROR_TEXT(cudaErrorAssert, "device-side assert triggered"),
    CUBOID_ERROR_TEXT(cudaErrorHardwareStackError, "an illegal stack access was encountered"),
    CUBOID_ERROR_TEXT(cudaErrorIllegalInstruction, "an illegal instruction was encountered"),
    CUBOID_ERROR_TEXT(cudaErrorMisalignedAddress, "misaligned address"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidAddressSpace, "operation not supported on global/shared address space"),
    CUBOID_ERROR_TEXT(cudaErrorInvalidPc, "invalid program counter"),
    CUBOID_ERROR_TEXT(cudaErrorLaunchFailure, "unspecified launch failure"),
    CUBOID_ERROR_TEXT(cudaErrorCooperativeLaunchTooLarge, "too many blocks in cooperative launch"),
    CUBOID_ERROR_TEXT(cudaErrorNotPermitted, "operation not permitted"),
    CUBOID_ERROR_TEXT(cudaErrorNotSupported, "operation not supported"),
    CUBOID_ERROR_TEXT(cudaErrorTimeout, "wait operation timed out"),
    CUBOID_ERROR_TEXT(cudaErrorUnknown, "unknown error"),
};
#undef CUBOID_ERROR_TEXT

const ErrorText* find_error_text(cudaError_t error) {
  for (const ErrorText& entry : ERROR_TEXTS) {
    if (entry.code == error) {
      return &entry;
    }
  }
  return nullptr;
}

constexpr const char* UNRECOGNIZED_ERROR = "unrecognized error code";

} // namespace

void set_last_error(cudaError_t error, const std::string& detail) {
  last_error = error;
  if (!detail.empty()) {
    const ErrorText* text = find_error_text(error);
    // One write per message, so that lines of concurrent host threads do not interleave.
    const std::string line = fmt::format("cuboid CUDA emulator: {}: {}\n", text != nullptr ? text->name : "error",
                                         detail);
    std::fputs(line.c_str(), stderr);
  }
}

std::size_t max_dynamic_shared_bytes(const void* kernel) {
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  const auto it = r.max_dynamic_shared_bytes.find(kernel);
  return it != r.max_dynamic_shared_bytes.end() ? it->second : DEFAULT_DYNAMIC_SHARED_BYTES;
}

bool is_valid_stream(cudaStream_t stream) {
  if (is_default_stream(stream)) {
    return true;
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  return r.streams.count(as_stream(stream)) != 0;
}

const cudaDeviceProp& device_properties() {
  static const cudaDeviceProp prop = make_properties(); // NOLINT: immutable after initialisation
  return prop;
}

} // namespace cuboid::emu

// ---- The CUDA runtime API (declared by cuda_runtime_api.h, which gives these definitions C linkage).
using namespace cuboid::emu; // NOLINT: the definitions below are the emulator's global C API

// ---- errors
cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  const ErrorText* text = find_error_text(error);
  return text != nullptr ? text->name : UNRECOGNIZED_ERROR;
}

const char* cudaGetErrorString(cudaError_t error) {
  const ErrorText* text = find_error_text(error);
  return text != nullptr ? text->text : UNRECOGNIZED_ERROR;
}

// ---- devices
cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: count is null");
  }
  return device_count(*count);
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t status = check_device(device, "cudaSetDevice"); status != cudaSuccess) {
    return status;
  }
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaGetDevice: device is null");
  }
  *device = current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: prop is null");
  }
  if (const cudaError_t status = check_device(device, "cudaGetDeviceProperties"); status != cudaSuccess) {
    return status;
  }
  *prop = device_properties();
  prop->pciBusID = device; // distinct devices, as on a multi-GPU node
  prop->pciDeviceID = 0;
  prop->pciDomainID = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return synchronisation_status(); }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaMemGetInfo: free or total is null");
  }
  *total_bytes = device_properties().totalGlobalMem;
  const std::size_t used = device_bytes_in_use();
  *free_bytes = used < *total_bytes ? *total_bytes - used : 0;
  return cudaSuccess;
}

// ---- memory
cudaError_t cudaMalloc(void** devPtr, size_t size) {
  return allocate(devPtr, size, current_device, false, "cudaMalloc");
}

cudaError_t cudaFree(void* devPtr) { return release(devPtr, "cudaFree"); }

cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t hStream) {
  if (const cudaError_t status = check_stream(hStream, "cudaMallocAsync"); status != cudaSuccess) {
    return status;
  }
  return allocate(devPtr, size, device_of(hStream), true, "cudaMallocAsync");
}

cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t hStream) {
  if (const cudaError_t status = check_stream(hStream, "cudaFreeAsync"); status != cudaSuccess) {
    return status;
  }
  return release(devPtr, "cudaFreeAsync");
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return copy(dst, src, count, kind, "cudaMemcpy");
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaMemcpyAsync"); status != cudaSuccess) {
    return status;
  }
  return copy(dst, src, count, kind, "cudaMemcpyAsync");
}

// A pitched copy: `height` rows of `width` bytes, `spitch` / `dpitch` bytes apart; each row checked as one copy.
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaMemcpy2DAsync"); status != cudaSuccess) {
    return status;
  }
  if (width > dpitch || width > spitch) {
    return fail(cudaErrorInvalidPitchValue, fmt::format("cudaMemcpy2DAsync: width {} bytes exceeds pitch (dst {}, "
                                                        "src {})",
                                                        width, dpitch, spitch));
  }
  for (size_t row = 0; row < height; ++row) {
    const cudaError_t status = copy(static_cast<char*>(dst) + row * dpitch,
                                    static_cast<const char*>(src) + row * spitch, width, kind, "cudaMemcpy2DAsync");
    if (status != cudaSuccess) {
      return status;
    }
  }
  return cudaSuccess;
}

cudaError_t cudaMemset(void* devPtr, int value, size_t count) { return fill(devPtr, value, count, "cudaMemset"); }

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaMemsetAsync"); status != cudaSuccess) {
    return status;
  }
  return fill(devPtr, value, count, "cudaMemsetAsync");
}

// ---- memory pools
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* memPool, int device) {
  if (memPool == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaDeviceGetDefaultMemPool: memPool is null");
  }
  if (const cudaError_t status = check_device(device, "cudaDeviceGetDefaultMemPool"); status != cudaSuccess) {
    return status;
  }
  *memPool = reinterpret_cast<cudaMemPool_t>(&runtime().pools[static_cast<std::size_t>(device)]);
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, cudaMemPoolAttr attr, void* value) {
  MemPool* pool = as_pool(memPool);
  if (pool == nullptr || value == nullptr) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaMemPoolSetAttribute: {}", pool == nullptr ? "memPool is not a pool of "
                                                                             "cudaDeviceGetDefaultMemPool"
                                                                           : "value is null"));
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  switch (attr) {
  case cudaMemPoolAttrReleaseThreshold:
    pool->release_threshold = *static_cast<const std::uint64_t*>(value);
    return cudaSuccess;
  case cudaMemPoolReuseFollowEventDependencies:
    pool->reuse_follow_event_dependencies = *static_cast<const int*>(value);
    return cudaSuccess;
  case cudaMemPoolReuseAllowOpportunistic:
    pool->reuse_allow_opportunistic = *static_cast<const int*>(value);
    return cudaSuccess;
  case cudaMemPoolReuseAllowInternalDependencies:
    pool->reuse_allow_internal_dependencies = *static_cast<const int*>(value);
    return cudaSuccess;
  case cudaMemPoolAttrReservedMemHigh:
  case cudaMemPoolAttrUsedMemHigh:
    // As on a GPU, a high-water mark can only be reset (to the current usage) by setting it to 0.
    if (*static_cast<const std::uint64_t*>(value) != 0) {
      return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: a high-water mark can only be set to 0");
    }
    pool->used_high_bytes = pool->used_bytes;
    return cudaSuccess;
  default:
    return fail(cudaErrorInvalidValue, fmt::format("cudaMemPoolSetAttribute: attribute {} cannot be set",
                                                   static_cast<int>(attr)));
  }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, cudaMemPoolAttr attr, void* value) {
  MemPool* pool = as_pool(memPool);
  if (pool == nullptr || value == nullptr) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaMemPoolGetAttribute: {}", pool == nullptr ? "memPool is not a pool of "
                                                                             "cudaDeviceGetDefaultMemPool"
                                                                           : "value is null"));
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  switch (attr) {
  case cudaMemPoolAttrReleaseThreshold:
    *static_cast<std::uint64_t*>(value) = pool->release_threshold;
    return cudaSuccess;
  case cudaMemPoolReuseFollowEventDependencies:
    *static_cast<int*>(value) = pool->reuse_follow_event_dependencies;
    return cudaSuccess;
  case cudaMemPoolReuseAllowOpportunistic:
    *static_cast<int*>(value) = pool->reuse_allow_opportunistic;
    return cudaSuccess;
  case cudaMemPoolReuseAllowInternalDependencies:
    *static_cast<int*>(value) = pool->reuse_allow_internal_dependencies;
    return cudaSuccess;
  case cudaMemPoolAttrReservedMemCurrent:
  case cudaMemPoolAttrUsedMemCurrent:
    *static_cast<std::uint64_t*>(value) = pool->used_bytes;
    return cudaSuccess;
  case cudaMemPoolAttrReservedMemHigh:
  case cudaMemPoolAttrUsedMemHigh:
    *static_cast<std::uint64_t*>(value) = pool->used_high_bytes;
    return cudaSuccess;
  default:
    return fail(cudaErrorNotSupported, fmt::format("cudaMemPoolGetAttribute: attribute {} is not emulated",
                                                   static_cast<int>(attr)));
  }
}

// ---- streams
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  if (pStream == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: pStream is null");
  }
  if ((flags & ~static_cast<unsigned>(cudaStreamNonBlocking)) != 0) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaStreamCreateWithFlags: flags {:#x} (valid: cudaStreamDefault, "
                            "cudaStreamNonBlocking)",
                            flags));
  }
  auto stream = std::make_unique<Stream>(Stream{current_device, flags});
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  *pStream = reinterpret_cast<cudaStream_t>(stream.get());
  r.streams.emplace(stream.get(), std::move(stream));
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* pStream) { return cudaStreamCreateWithFlags(pStream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  if (r.streams.erase(as_stream(stream)) == 0) {
    return fail(cudaErrorInvalidResourceHandle,
                fmt::format("cudaStreamDestroy: stream {} was not created by cudaStreamCreate* or was already "
                            "destroyed",
                            static_cast<const void*>(stream)));
  }
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaStreamSynchronize"); status != cudaSuccess) {
    return status;
  }
  return synchronisation_status();
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaStreamQuery"); status != cudaSuccess) {
    return status;
  }
  return synchronisation_status(); // all work has completed
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (const cudaError_t status = check_stream(stream, "cudaStreamWaitEvent"); status != cudaSuccess) {
    return status;
  }
  if (flags != cudaEventWaitDefault && flags != cudaEventWaitExternal) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaStreamWaitEvent: flags {:#x} (valid: cudaEventWaitDefault, cudaEventWaitExternal)",
                            flags));
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  if (r.events.count(as_event(event)) == 0) {
    return invalid_event(event, "cudaStreamWaitEvent");
  }
  return cudaSuccess; // the recorded work has completed already
}

// ---- events
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (event == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags: event is null");
  }
  constexpr unsigned VALID = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if ((flags & ~VALID) != 0) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaEventCreateWithFlags: flags {:#x} (valid: cudaEventDefault, cudaEventBlockingSync, "
                            "cudaEventDisableTiming, cudaEventInterprocess)",
                            flags));
  }
  if ((flags & cudaEventInterprocess) != 0) {
    return fail(cudaErrorNotSupported, "cudaEventCreateWithFlags: cudaEventInterprocess (IPC) is not emulated");
  }
  auto created = std::make_unique<Event>(Event{flags, false, {}});
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  *event = reinterpret_cast<cudaEvent_t>(created.get());
  r.events.emplace(created.get(), std::move(created));
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  if (r.events.erase(as_event(event)) == 0) {
    return invalid_event(event, "cudaEventDestroy");
  }
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (const cudaError_t status = check_stream(stream, "cudaEventRecord"); status != cudaSuccess) {
    return status;
  }
  const Clock::time_point now = Clock::now(); // every earlier operation of the stream has completed
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  const auto it = r.events.find(as_event(event));
  if (it == r.events.end()) {
    return invalid_event(event, "cudaEventRecord");
  }
  it->second->recorded = true;
  it->second->time = now;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  {
    Runtime& r = runtime();
    const std::lock_guard lock(r.mutex);
    if (r.events.count(as_event(event)) == 0) {
      return invalid_event(event, "cudaEventSynchronize");
    }
  }
  return synchronisation_status();
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) {
    return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: ms is null");
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  const auto start_it = r.events.find(as_event(start));
  if (start_it == r.events.end()) {
    return invalid_event(start, "cudaEventElapsedTime (start)");
  }
  const auto end_it = r.events.find(as_event(end));
  if (end_it == r.events.end()) {
    return invalid_event(end, "cudaEventElapsedTime (end)");
  }
  const Event& first = *start_it->second;
  const Event& second = *end_it->second;
  if (((first.flags | second.flags) & cudaEventDisableTiming) != 0) {
    return fail(cudaErrorInvalidResourceHandle,
                "cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
  }
  if (!first.recorded || !second.recorded) {
    return fail(cudaErrorInvalidResourceHandle,
                fmt::format("cudaEventElapsedTime: the {} event was never recorded (cudaEventRecord)",
                            first.recorded ? "end" : "start"));
  }
  *ms = std::chrono::duration<float, std::milli>(second.time - first.time).count();
  return cudaSuccess;
}

// ---- kernels
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) {
    return fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: func is null");
  }
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    return fail(cudaErrorNotSupported,
                fmt::format("cudaFuncSetAttribute: attribute {} is not emulated (only "
                            "cudaFuncAttributeMaxDynamicSharedMemorySize)",
                            static_cast<int>(attr)));
  }
  const std::size_t optin = device_properties().sharedMemPerBlockOptin;
  if (value < 0 || static_cast<std::size_t>(value) > optin) {
    return fail(cudaErrorInvalidValue,
                fmt::format("cudaFuncSetAttribute: cudaFuncAttributeMaxDynamicSharedMemorySize {} bytes (valid "
                            "0..{}, sharedMemPerBlockOptin)",
                            value, optin));
  }
  Runtime& r = runtime();
  const std::lock_guard lock(r.mutex);
  r.max_dynamic_shared_bytes[func] = static_cast<std::size_t>(value);
  return cudaSuccess;
}
