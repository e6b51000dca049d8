// The emulator's CUDA runtime API (cudart_emu.cpp): the errors a GPU reports (last error, bad device, invalid
// stream or event, out-of-range copies, shared-memory opt-in limit) are reported the same way, and events, memory
// pools and the device count behave as the CUDA runtime documents them.
#include "tests/cuda_emu/emu_runtime.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace emu = cuboid::emu;

namespace {

// A function whose address stands for a kernel in cudaFuncSetAttribute.
void dummy_kernel() {}

// Every test starts with no pending error on this thread.
void clear_last_error() { static_cast<void>(cudaGetLastError()); }

} // namespace

TEST_CASE("emu::cudart: the last error is sticky until cudaGetLastError", "[emu]") {
  clear_last_error();
  REQUIRE(cudaSetDevice(99) == cudaErrorInvalidDevice);
  int device = -1;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess); // a successful call does not clear it
  CHECK(cudaPeekAtLastError() == cudaErrorInvalidDevice);
  CHECK(cudaPeekAtLastError() == cudaErrorInvalidDevice); // peeking does not clear it
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice);
  CHECK(cudaGetLastError() == cudaSuccess);
  SECTION("the last error belongs to the calling thread") {
    REQUIRE(cudaSetDevice(-1) == cudaErrorInvalidDevice);
    cudaError_t other = cudaErrorUnknown;
    std::thread([&] { other = cudaPeekAtLastError(); }).join();
    CHECK(other == cudaSuccess);
    CHECK(cudaGetLastError() == cudaErrorInvalidDevice);
  }
  SECTION("a synchronisation reports a pending kernel execution error, a launch error it does not") {
    emu::set_last_error(cudaErrorIllegalAddress, "");
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    CHECK(cudaStreamSynchronize(nullptr) == cudaErrorIllegalAddress);
    CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    emu::set_last_error(cudaErrorInvalidConfiguration, "");
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  }
}

TEST_CASE("emu::cudart: error names and strings", "[emu]") {
  CHECK(std::string(cudaGetErrorName(cudaSuccess)) == "cudaSuccess");
  CHECK(std::string(cudaGetErrorString(cudaSuccess)) == "no error");
  CHECK(std::string(cudaGetErrorName(cudaErrorInvalidValue)) == "cudaErrorInvalidValue");
  CHECK(std::string(cudaGetErrorString(cudaErrorInvalidValue)) == "invalid argument");
  CHECK(std::string(cudaGetErrorString(cudaErrorMemoryAllocation)) == "out of memory");
  CHECK(std::string(cudaGetErrorName(cudaErrorInvalidResourceHandle)) == "cudaErrorInvalidResourceHandle");
  CHECK(std::string(cudaGetErrorString(cudaErrorIllegalAddress)) == "an illegal memory access was encountered");
  const auto unknown = static_cast<cudaError_t>(12345);
  CHECK(std::string(cudaGetErrorName(unknown)) == "unrecognized error code");
  CHECK(std::string(cudaGetErrorString(unknown)) == "unrecognized error code");
}

TEST_CASE("emu::cudart: devices", "[emu]") {
  clear_last_error();
  SECTION("one device by default; out-of-range devices are refused and leave the current device") {
    ::unsetenv("CUBOID_EMU_DEVICES");
    int count = 0;
    REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
    CHECK(count == 1);
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice);
    CHECK(cudaSetDevice(-1) == cudaErrorInvalidDevice);
    int device = -1;
    REQUIRE(cudaGetDevice(&device) == cudaSuccess);
    CHECK(device == 0);
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 1) == cudaErrorInvalidDevice);
    cudaMemPool_t pool = nullptr;
    CHECK(cudaDeviceGetDefaultMemPool(&pool, 1) == cudaErrorInvalidDevice);
  }
  SECTION("CUBOID_EMU_DEVICES sets the count; the current device is per host thread") {
    ::setenv("CUBOID_EMU_DEVICES", "4", 1);
    int count = 0;
    REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
    CHECK(count == 4);
    REQUIRE(cudaSetDevice(3) == cudaSuccess);
    CHECK(cudaSetDevice(4) == cudaErrorInvalidDevice);
    int other_device = -1;
    std::thread([&] { static_cast<void>(cudaGetDevice(&other_device)); }).join();
    CHECK(other_device == 0); // a new thread starts on device 0, as with the CUDA runtime
    int device = -1;
    REQUIRE(cudaGetDevice(&device) == cudaSuccess);
    CHECK(device == 3);
    cudaMemPool_t pool0 = nullptr;
    cudaMemPool_t pool3 = nullptr;
    REQUIRE(cudaDeviceGetDefaultMemPool(&pool0, 0) == cudaSuccess);
    REQUIRE(cudaDeviceGetDefaultMemPool(&pool3, 3) == cudaSuccess);
    CHECK(pool0 != pool3);
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    ::unsetenv("CUBOID_EMU_DEVICES");
  }
  SECTION("an invalid CUBOID_EMU_DEVICES is an error, not a default") {
    const char* value = GENERATE("0", "65", "-2", "abc", "4x", "");
    ::setenv("CUBOID_EMU_DEVICES", value, 1);
    int count = -1;
    CHECK(cudaGetDeviceCount(&count) == cudaErrorInvalidValue);
    CHECK(count == 0);
    CHECK(cudaSetDevice(0) == cudaErrorInvalidValue);
    ::unsetenv("CUBOID_EMU_DEVICES");
  }
  SECTION("properties of an sm_90 device") {
    cudaDeviceProp prop{};
    REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
    CHECK(std::string(prop.name) == "cuboid CUDA emulator (CPU)");
    CHECK(prop.major == 9);
    CHECK(prop.minor == 0);
    CHECK(prop.warpSize == 32);
    CHECK(prop.maxThreadsPerBlock == 1024);
    CHECK(prop.sharedMemPerBlock == 48u * 1024u);
    CHECK(prop.sharedMemPerBlockOptin == 227u * 1024u);
    CHECK(prop.multiProcessorCount == 132);
    CHECK(prop.maxGridSize[0] == 2147483647);
    CHECK(prop.totalGlobalMem > 0);
    CHECK(prop.sharedMemPerBlockOptin == emu::device_properties().sharedMemPerBlockOptin);
    CHECK(cudaGetDeviceProperties(nullptr, 0) == cudaErrorInvalidValue);
  }
  CHECK(cudaGetLastError() != cudaSuccess); // every section made a call fail
}

TEST_CASE("emu::cudart: memory", "[emu]") {
  clear_last_error();
  const std::size_t baseline = emu::device_bytes_in_use();
  constexpr std::size_t N = 100;
  void* dev = nullptr;
  REQUIRE(cudaMalloc(&dev, N * sizeof(float)) == cudaSuccess);
  REQUIRE(dev != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(dev) % 256 == 0);
  CHECK(emu::device_bytes_in_use() == baseline + N * sizeof(float));
  std::vector<float> host(N);
  for (std::size_t idx = 0; idx < N; ++idx) {
    host[idx] = static_cast<float>(idx) * 0.5f;
  }
  SECTION("copies round-trip for every kind") {
    REQUIRE(cudaMemcpy(dev, host.data(), N * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    void* dev2 = nullptr;
    REQUIRE(cudaMalloc(&dev2, N * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(dev2, dev, N * sizeof(float), cudaMemcpyDeviceToDevice, nullptr) == cudaSuccess);
    std::vector<float> back(N, -1.0f);
    REQUIRE(cudaMemcpy(back.data(), dev2, N * sizeof(float), cudaMemcpyDefault) == cudaSuccess);
    CHECK(back == host);
    std::vector<float> copy(N, -1.0f);
    REQUIRE(cudaMemcpy(copy.data(), back.data(), N * sizeof(float), cudaMemcpyHostToHost) == cudaSuccess);
    CHECK(copy == host);
    REQUIRE(cudaFree(dev2) == cudaSuccess);
  }
  SECTION("a memset fills bytes") {
    REQUIRE(cudaMemset(dev, 0, N * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemsetAsync(dev, 0x3f, 4, nullptr) == cudaSuccess);
    std::vector<std::uint8_t> bytes(N * sizeof(float), 1);
    REQUIRE(cudaMemcpy(bytes.data(), dev, bytes.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(bytes[0] == 0x3f);
    CHECK(bytes[3] == 0x3f);
    CHECK(bytes[4] == 0);
    CHECK(bytes.back() == 0);
  }
  SECTION("a pitched copy moves a column block (10 rows of 10 floats: columns 3..6 packed, then back)") {
    REQUIRE(cudaMemcpy(dev, host.data(), N * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    void* packed = nullptr;
    REQUIRE(cudaMalloc(&packed, 40 * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpy2DAsync(packed, 4 * sizeof(float), static_cast<float*>(dev) + 3, 10 * sizeof(float),
                              4 * sizeof(float), 10, cudaMemcpyDeviceToDevice, nullptr) == cudaSuccess);
    std::vector<float> block(40, -1.0f);
    REQUIRE(cudaMemcpy(block.data(), packed, block.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    for (std::size_t row = 0; row < 10; ++row) {
      for (std::size_t col = 0; col < 4; ++col) {
        CHECK(block[row * 4 + col] == host[row * 10 + 3 + col]);
      }
    }
    REQUIRE(cudaMemset(dev, 0, N * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpy2DAsync(static_cast<float*>(dev) + 3, 10 * sizeof(float), packed, 4 * sizeof(float),
                              4 * sizeof(float), 10, cudaMemcpyDeviceToDevice, nullptr) == cudaSuccess);
    std::vector<float> back(N, -1.0f);
    REQUIRE(cudaMemcpy(back.data(), dev, N * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(back[13] == host[13]);
    CHECK(back[12] == 0.0f);
    CHECK(back[97] == 0.0f);
    CHECK(back[96] == host[96]);
    // A row wider than its pitch, or one that runs past the allocation, is refused.
    CHECK(cudaMemcpy2DAsync(packed, 4, dev, 40, 8, 1, cudaMemcpyDeviceToDevice, nullptr) ==
          cudaErrorInvalidPitchValue);
    CHECK(cudaMemcpy2DAsync(packed, 16, dev, 40, 16, 11, cudaMemcpyDeviceToDevice, nullptr) == cudaErrorInvalidValue);
    clear_last_error();
    REQUIRE(cudaFree(packed) == cudaSuccess);
  }
  SECTION("out-of-range copies and memsets are refused and recorded") {
    std::vector<float> big(N + 1);
    CHECK(cudaMemcpy(dev, big.data(), (N + 1) * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(big.data(), static_cast<float*>(dev) + 1, N * sizeof(float), cudaMemcpyDeviceToHost) ==
          cudaErrorInvalidValue);
    CHECK(cudaMemcpy(big.data(), host.data(), sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemsetAsync(static_cast<float*>(dev) + N, 0, 1, nullptr) == cudaErrorInvalidValue);
    CHECK(cudaMemset(host.data(), 0, 4) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(dev, host.data(), 4, static_cast<cudaMemcpyKind>(7)) == cudaErrorInvalidMemcpyDirection);
    CHECK(cudaGetLastError() == cudaErrorInvalidMemcpyDirection);
  }
  SECTION("frees: null is fine, a double free or a host pointer is not") {
    CHECK(cudaFree(nullptr) == cudaSuccess);
    void* other = nullptr;
    REQUIRE(cudaMalloc(&other, 16) == cudaSuccess);
    REQUIRE(cudaFree(other) == cudaSuccess);
    CHECK(cudaFree(other) == cudaErrorInvalidValue);
    CHECK(cudaFree(host.data()) == cudaErrorInvalidValue);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    void* empty = &other;
    CHECK(cudaMalloc(&empty, 0) == cudaSuccess);
    CHECK(empty == nullptr);
  }
  REQUIRE(cudaFree(dev) == cudaSuccess);
  CHECK(emu::device_bytes_in_use() == baseline);
}

TEST_CASE("emu::cudart: streams are validated handles", "[emu]") {
  clear_last_error();
  CHECK(emu::is_valid_stream(nullptr));
  CHECK(emu::is_valid_stream(cudaStreamLegacy));
  CHECK(emu::is_valid_stream(cudaStreamPerThread));
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  CHECK(emu::is_valid_stream(stream));
  void* dev = nullptr;
  REQUIRE(cudaMallocAsync(&dev, 64, stream) == cudaSuccess);
  CHECK(cudaMemsetAsync(dev, 0, 64, stream) == cudaSuccess);
  CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK(cudaStreamQuery(stream) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
  CHECK_FALSE(emu::is_valid_stream(stream));
  CHECK(cudaMemsetAsync(dev, 0, 64, stream) == cudaErrorInvalidResourceHandle);
  CHECK(cudaStreamSynchronize(stream) == cudaErrorInvalidResourceHandle);
  CHECK(cudaStreamDestroy(stream) == cudaErrorInvalidResourceHandle);
  CHECK(cudaFreeAsync(dev, stream) == cudaErrorInvalidResourceHandle);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  CHECK(cudaFreeAsync(dev, nullptr) == cudaSuccess);
  CHECK(cudaStreamCreateWithFlags(&stream, 0x8) == cudaErrorInvalidValue);
  CHECK(cudaStreamDestroy(nullptr) == cudaErrorInvalidResourceHandle);
  clear_last_error();
}

TEST_CASE("emu::cudart: events", "[emu]") {
  clear_last_error();
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  cudaEvent_t start = nullptr;
  cudaEvent_t middle = nullptr;
  cudaEvent_t stop = nullptr;
  REQUIRE(cudaEventCreate(&start) == cudaSuccess);
  REQUIRE(cudaEventCreate(&middle) == cudaSuccess);
  REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
  SECTION("elapsed times are host wall time, monotonic in record order") {
    // A recorded event marks the host time when it is recorded, since every earlier operation has completed; the
    // sleep between the records is at least 2 ms, so the elapsed time is too.
    REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    REQUIRE(cudaEventRecord(middle, nullptr) == cudaSuccess);
    REQUIRE(cudaEventRecord(stop, stream) == cudaSuccess);
    REQUIRE(cudaEventSynchronize(stop) == cudaSuccess);
    float first_ms = -1.0f;
    float total_ms = -1.0f;
    REQUIRE(cudaEventElapsedTime(&first_ms, start, middle) == cudaSuccess);
    REQUIRE(cudaEventElapsedTime(&total_ms, start, stop) == cudaSuccess);
    CHECK(first_ms >= 2.0f);
    CHECK(total_ms >= first_ms);
    float backwards_ms = 1.0f;
    REQUIRE(cudaEventElapsedTime(&backwards_ms, stop, start) == cudaSuccess);
    CHECK(backwards_ms <= 0.0f);
    CHECK(cudaStreamWaitEvent(stream, stop, 0) == cudaSuccess);
  }
  SECTION("an event never recorded has no time") {
    REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaErrorInvalidResourceHandle);
    CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  }
  SECTION("events created with cudaEventDisableTiming are refused") {
    cudaEvent_t untimed = nullptr;
    REQUIRE(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
    REQUIRE(cudaEventRecord(untimed, stream) == cudaSuccess);
    CHECK(cudaStreamWaitEvent(stream, untimed, 0) == cudaSuccess);
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, untimed) == cudaErrorInvalidResourceHandle);
    REQUIRE(cudaEventDestroy(untimed) == cudaSuccess);
    CHECK(cudaEventRecord(untimed, stream) == cudaErrorInvalidResourceHandle);
    CHECK(cudaStreamWaitEvent(stream, untimed, 0) == cudaErrorInvalidResourceHandle);
    CHECK(cudaEventDestroy(untimed) == cudaErrorInvalidResourceHandle);
  }
  SECTION("bad flags") {
    cudaEvent_t event = nullptr;
    CHECK(cudaEventCreateWithFlags(&event, 0x40) == cudaErrorInvalidValue);
    CHECK(cudaEventCreateWithFlags(&event, cudaEventInterprocess | cudaEventDisableTiming) ==
          cudaErrorNotSupported);
    CHECK(cudaStreamWaitEvent(stream, start, 0x10) == cudaErrorInvalidValue);
  }
  REQUIRE(cudaEventDestroy(start) == cudaSuccess);
  REQUIRE(cudaEventDestroy(middle) == cudaSuccess);
  REQUIRE(cudaEventDestroy(stop) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
  clear_last_error();
}

TEST_CASE("emu::cudart: dynamic shared memory opt-in", "[emu]") {
  clear_last_error();
  const void* kernel = reinterpret_cast<const void*>(&dummy_kernel);
  CHECK(emu::max_dynamic_shared_bytes(kernel) == 48u * 1024u); // the default without opt-in
  REQUIRE(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess);
  CHECK(emu::max_dynamic_shared_bytes(kernel) == 100u * 1024u);
  const int optin = static_cast<int>(emu::device_properties().sharedMemPerBlockOptin);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin + 1) ==
        cudaErrorInvalidValue);
  CHECK(emu::max_dynamic_shared_bytes(kernel) == 100u * 1024u); // unchanged by the refused call
  REQUIRE(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin) == cudaSuccess);
  CHECK(emu::max_dynamic_shared_bytes(kernel) == static_cast<std::size_t>(optin));
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 50) == cudaErrorNotSupported);
  CHECK(cudaFuncSetAttribute(nullptr, cudaFuncAttributeMaxDynamicSharedMemorySize, 0) ==
        cudaErrorInvalidDeviceFunction);
  REQUIRE(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024) == cudaSuccess);
  clear_last_error();
}

TEST_CASE("emu::cudart: the default memory pool counts cudaMallocAsync bytes", "[emu]") {
  clear_last_error();
  cudaMemPool_t pool = nullptr;
  REQUIRE(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess);
  std::uint64_t keep = 12345;
  REQUIRE(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) == cudaSuccess);
  std::uint64_t value = 0;
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &value) == cudaSuccess);
  CHECK(value == 12345);
  std::uint64_t zero = 0;
  REQUIRE(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero) == cudaSuccess);
  std::uint64_t before = 0;
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &before) == cudaSuccess);
  void* first = nullptr;
  void* second = nullptr;
  REQUIRE(cudaMallocAsync(&first, 1000, nullptr) == cudaSuccess);
  REQUIRE(cudaMallocAsync(&second, 3000, nullptr) == cudaSuccess);
  void* plain = nullptr;
  REQUIRE(cudaMalloc(&plain, 5000) == cudaSuccess); // cudaMalloc does not allocate from the pool
  REQUIRE(cudaFreeAsync(second, nullptr) == cudaSuccess);
  std::uint64_t current = 0;
  std::uint64_t high = 0;
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &current) == cudaSuccess);
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &high) == cudaSuccess);
  CHECK(current == before + 1000);
  CHECK(high == before + 4000);
  CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &keep) == cudaErrorInvalidValue);
  REQUIRE(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero) == cudaSuccess);
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high) == cudaSuccess);
  CHECK(high == before + 1000);
  CHECK(cudaMemPoolGetAttribute(reinterpret_cast<cudaMemPool_t>(&value), cudaMemPoolAttrUsedMemHigh, &high) ==
        cudaErrorInvalidValue);
  REQUIRE(cudaFree(first) == cudaSuccess);
  REQUIRE(cudaFree(plain) == cudaSuccess);
  clear_last_error();
}

TEST_CASE("emu::cudart: host threads may call concurrently", "[emu]") {
  // Each thread creates and destroys its own streams, events and allocations; the shared tables must stay
  // consistent, so every call succeeds and nothing leaks.
  clear_last_error();
  const std::size_t baseline = emu::device_bytes_in_use();
  constexpr int THREADS = 4;
  constexpr int ROUNDS = 200;
  std::vector<int> failures(THREADS, 0);
  std::vector<std::thread> threads;
  for (int thread_idx = 0; thread_idx < THREADS; ++thread_idx) {
    threads.emplace_back([&failures, thread_idx] {
      for (int round = 0; round < ROUNDS; ++round) {
        cudaStream_t stream = nullptr;
        cudaEvent_t event = nullptr;
        void* ptr = nullptr;
        bool ok = cudaStreamCreate(&stream) == cudaSuccess && cudaEventCreate(&event) == cudaSuccess &&
                  cudaMallocAsync(&ptr, 256, stream) == cudaSuccess &&
                  cudaMemsetAsync(ptr, thread_idx, 256, stream) == cudaSuccess &&
                  cudaEventRecord(event, stream) == cudaSuccess;
        ok = cudaFreeAsync(ptr, stream) == cudaSuccess && ok;
        ok = cudaEventDestroy(event) == cudaSuccess && ok;
        ok = cudaStreamDestroy(stream) == cudaSuccess && ok;
        failures[static_cast<std::size_t>(thread_idx)] += ok ? 0 : 1;
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  CHECK(failures == std::vector<int>(THREADS, 0));
  CHECK(emu::device_bytes_in_use() == baseline);
}
