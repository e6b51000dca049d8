// Host-side bf16 helpers for the kernel tests: round-to-nearest-even float -> bf16 bits (what __float2bfloat16_rn
// does; NaN kept quiet), bits -> float, and a RAII device array that uploads / downloads float data as T.
#pragma once

#include "kernels/common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuboid::kernels::test {

inline std::uint16_t float_to_bf16_bits(float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u); // quiet NaN
  }
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u); // ties to even
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

inline float bf16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float out = 0.0f;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

inline float round_bf16(float value) { return bf16_bits_to_float(float_to_bf16_bits(value)); }

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
  }
}

/// n elements of T on the device; upload / download convert from / to float on the host.
template <typename T> class DeviceArray {
public:
  explicit DeviceArray(std::size_t n) : n_(n) {
    check(cudaMalloc(&ptr_, std::max<std::size_t>(n, 1) * sizeof(T)), "cudaMalloc");
    check(cudaMemset(ptr_, 0, std::max<std::size_t>(n, 1) * sizeof(T)), "cudaMemset");
  }
  explicit DeviceArray(const std::vector<float>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void upload(const std::vector<float>& host) {
    if constexpr (std::is_same_v<T, float>) {
      check(cudaMemcpy(ptr_, host.data(), n_ * sizeof(float), cudaMemcpyHostToDevice), "upload");
    } else {
      std::vector<std::uint16_t> bits(n_);
      for (std::size_t idx = 0; idx < n_; ++idx) {
        bits[idx] = float_to_bf16_bits(host[idx]);
      }
      check(cudaMemcpy(ptr_, bits.data(), n_ * sizeof(std::uint16_t), cudaMemcpyHostToDevice), "upload");
    }
  }
  [[nodiscard]] std::vector<float> download() const {
    check(cudaDeviceSynchronize(), "kernel");
    std::vector<float> out(n_);
    if constexpr (std::is_same_v<T, float>) {
      check(cudaMemcpy(out.data(), ptr_, n_ * sizeof(float), cudaMemcpyDeviceToHost), "download");
    } else {
      std::vector<std::uint16_t> bits(n_);
      check(cudaMemcpy(bits.data(), ptr_, n_ * sizeof(std::uint16_t), cudaMemcpyDeviceToHost), "download");
      for (std::size_t idx = 0; idx < n_; ++idx) {
        out[idx] = bf16_bits_to_float(bits[idx]);
      }
    }
    return out;
  }
  [[nodiscard]] T* get() const { return static_cast<T*>(ptr_); }
  [[nodiscard]] std::size_t size() const { return n_; }

private:
  void* ptr_ = nullptr;
  std::size_t n_;
};

} // namespace cuboid::kernels::test
