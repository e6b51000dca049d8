// DeviceBuffer: an owned, typed device allocation from CUDA's stream-ordered allocator (cudaMallocAsync /
// cudaFreeAsync on one stream, the runtime's compute stream). The device's default memory pool keeps freed blocks
// (release threshold raised by the runtime), so the per-micro-batch activations of a training step are recycled
// without device synchronisation, as PyTorch's caching allocator does. Contents are uninitialised unless zeroed.
#pragma once

#include "exec/cuda/cuda_check.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace cuboid::exec::cuda {

template <typename T> class DeviceBuffer {
public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t count, cudaStream_t stream) : count_(count), stream_(stream) {
    if (count_ > 0) {
      void* ptr = nullptr;
      CUDA_CHECK(cudaMallocAsync(&ptr, count_ * sizeof(T), stream_));
      ptr_ = static_cast<T*>(ptr);
    }
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)), stream_(other.stream_) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
      stream_ = other.stream_;
    }
    return *this;
  }

  /// (Re)allocates for `count` elements on `stream` unless it already holds exactly that many.
  void resize(std::size_t count, cudaStream_t stream) {
    if (count != count_ || ptr_ == nullptr) {
      *this = DeviceBuffer(count, stream);
    }
  }
  void zero(cudaStream_t stream) {
    if (ptr_ != nullptr) {
      CUDA_CHECK(cudaMemsetAsync(ptr_, 0, count_ * sizeof(T), stream));
    }
  }
  [[nodiscard]] T* get() const { return ptr_; }
  [[nodiscard]] std::size_t size() const { return count_; }
  [[nodiscard]] bool empty() const { return ptr_ == nullptr; }

private:
  void release() noexcept {
    if (ptr_ != nullptr) {
      cudaFreeAsync(ptr_, stream_); // destructors never throw; a failure here means the context is already gone
      ptr_ = nullptr;
      count_ = 0;
    }
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
  cudaStream_t stream_ = nullptr;
};

} // namespace cuboid::exec::cuda
