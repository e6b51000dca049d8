// Runner of the [gpu] tests under ctest: `cuboid_gpu_test_runner <test binary> [args...]`. Without a usable CUDA
// device it prints why and exits 77, which ctest reports as "Skipped" (SKIP_RETURN_CODE 77); otherwise it replaces
// itself with the test binary (execv). A separate runner keeps the test binary on the shared Catch2 main.
#include <cuda_runtime_api.h>

#include <unistd.h>

#include <cstdio>

namespace {
constexpr int SKIP_CODE = 77;
constexpr int USAGE_CODE = 2;
} // namespace

int main(int argc, char* argv[]) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <gpu test binary> [arguments...]\n", argv[0]);
    return USAGE_CODE;
  }
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no usable CUDA device (cudaGetDeviceCount: %s, %d device(s)); the [gpu] tests need one\n",
                status == cudaSuccess ? "no error" : cudaGetErrorString(status), devices);
    return SKIP_CODE;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    std::printf("running the [gpu] tests on %s (sm_%d%d), %d device(s)\n", prop.name, prop.major, prop.minor, devices);
  }
  std::fflush(stdout);
  execv(argv[1], argv + 1);
  std::perror("execv");
  return 1;
}
