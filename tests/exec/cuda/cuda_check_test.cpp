// exec::cuda status checks: a failing CUDA / cuBLAS / NCCL status throws DeviceError naming the expression,
// file:line, the launcher rank and the host. Uses status codes only, so it runs without a GPU.
#include "exec/cuda/cuda_check.hpp"
#include "exec/device_error.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>

TEST_CASE("exec::cuda::CUDA_CHECK and friends", "[exec][cuda]") {
  SECTION("success passes") {
    CHECK_NOTHROW(CUDA_CHECK(cudaSuccess));
    CHECK_NOTHROW(CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS));
    CHECK_NOTHROW(NCCL_CHECK(ncclSuccess));
  }
  SECTION("CUDA error: expression, file:line, error name, host") {
    REQUIRE_THROWS_AS(CUDA_CHECK(cudaErrorMemoryAllocation), cuboid::exec::DeviceError);
    REQUIRE_THROWS_WITH(CUDA_CHECK(cudaErrorMemoryAllocation),
                        Catch::Contains("cudaErrorMemoryAllocation failed on rank") &&
                            Catch::Contains("cuda_check_test.cpp:") && Catch::Contains("(host " +
                                                                                       cuboid::exec::cuda::host_name()));
  }
  SECTION("cuBLAS and NCCL errors carry the library's status text") {
    REQUIRE_THROWS_WITH(CUBLAS_CHECK(CUBLAS_STATUS_NOT_SUPPORTED), Catch::Contains("CUBLAS_STATUS_NOT_SUPPORTED"));
    REQUIRE_THROWS_WITH(NCCL_CHECK(ncclInvalidArgument), Catch::Contains("ncclInvalidArgument failed"));
  }
  SECTION("the rank comes from the launcher's RANK") {
    ::setenv("RANK", "5", 1);
    REQUIRE_THROWS_WITH(CUDA_CHECK(cudaErrorInvalidValue), Catch::Contains("on rank 5 at"));
    ::unsetenv("RANK");
  }
}
