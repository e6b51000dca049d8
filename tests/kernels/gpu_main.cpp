// Main of the [gpu] kernel tests: without a usable CUDA device it prints why and exits with 77, which ctest reports
// as "Skipped" (SKIP_RETURN_CODE 77); otherwise it runs the Catch2 session.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime_api.h>

#include <cstdio>

namespace {
constexpr int SKIP_CODE = 77;
}

int main(int argc, char* argv[]) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no usable CUDA device (cudaGetDeviceCount: %s, %d device(s)); the [gpu] tests need one\n",
                status == cudaSuccess ? "ok" : cudaGetErrorString(status), devices);
    return SKIP_CODE;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("running the [gpu] tests on %s (sm_%d%d), %d device(s)\n", prop.name, prop.major, prop.minor, devices);
  return Catch::Session().run(argc, argv);
}
