// The block executor (block_executor.cpp) and the device side of the emulator (cuda_emu.hpp), through the ordinary
// CUDA kernels of executor_test_kernels.cu: barriers, shuffles, atomics, static and dynamic shared memory, wmma, and
// the launch failures a GPU would show as an error or a hang.
#include "tests/cuda_emu/executor_test_kernels.hpp"

#include <catch2/catch.hpp>

#include <array>

#include <cmath>
#include <vector>

namespace t = cuboid::emu::test;

TEST_CASE("emulated __syncthreads orders every warp's shared-memory writes before the reads, block by block",
          "[emu]") {
  const unsigned blocks = 3;
  const unsigned threads = GENERATE(32u, 96u, 1024u);
  std::vector<float> in(blocks * threads), out(in.size(), 0.0f);
  for (std::size_t idx = 0; idx < in.size(); ++idx) {
    in[idx] = static_cast<float>(idx);
  }
  REQUIRE(t::reverse_blocks(in.data(), out.data(), blocks, threads) == cudaSuccess);
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned th = 0; th < threads; ++th) {
      REQUIRE(out[b * threads + th] == in[b * threads + (threads - 1 - th)]);
    }
  }
}

TEST_CASE("emulated warp shuffles: butterfly sums and broadcasts per warp", "[emu]") {
  const unsigned blocks = 2;
  const unsigned threads = 128;
  std::vector<float> in(blocks * threads), out(blocks, 0.0f);
  for (std::size_t idx = 0; idx < in.size(); ++idx) {
    in[idx] = static_cast<float>(idx % 7); // small integers: the sums are exact
  }
  REQUIRE(t::warp_sums(in.data(), out.data(), blocks, threads) == cudaSuccess);
  for (unsigned b = 0; b < blocks; ++b) {
    float expected = 0.0f;
    for (unsigned th = 0; th < threads; ++th) {
      expected += in[b * threads + th];
    }
    CHECK(out[b] == expected);
  }
}

TEST_CASE("emulated launches fail as on a GPU: bad configuration, divergent barrier, shuffle of an exited lane",
          "[emu]") {
  std::vector<float> buf(2048, 0.0f);
  CHECK(t::reverse_blocks(buf.data(), buf.data(), 1, 2048) == cudaErrorInvalidConfiguration); // > 1024 threads
  CHECK(t::reverse_blocks(buf.data(), buf.data(), 0, 32) == cudaErrorInvalidConfiguration);
  CHECK(t::divergent_barrier(buf.data()) == cudaErrorLaunchFailure);
  CHECK(t::shuffle_from_exited_lane(buf.data()) == cudaErrorLaunchFailure);
  // Above 48 KiB of dynamic shared memory a kernel must opt in (cudaFuncSetAttribute), as on a GPU.
  CHECK(t::read_uninitialised_shared(buf.data(), 32, 64u << 10) == cudaErrorInvalidValue);
  // The error is cleared by cudaGetLastError: a good launch afterwards succeeds.
  CHECK(t::reverse_blocks(buf.data(), buf.data() + 1024, 1, 32) == cudaSuccess);
}

TEST_CASE("emulated dynamic shared memory starts as NaN in every block (uninitialised reads show)", "[emu]") {
  std::vector<float> out(64, 0.0f);
  REQUIRE(t::read_uninitialised_shared(out.data(), 64, 64 * sizeof(float)) == cudaSuccess);
  for (const float v : out) {
    CHECK(std::isnan(v));
  }
}

TEST_CASE("emulated misaligned accesses fail as on a GPU: wmma fragments, CUDA vector types", "[emu]") {
  alignas(64) std::array<__nv_bfloat16, 16 * 24 + 16> tile{};
  alignas(64) std::array<float, 16> in{1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  alignas(64) std::array<float, 64> out{};
  CHECK(t::wmma_load(tile.data(), 24, out.data()) == cudaSuccess);      // 32-byte aligned, ldm 48 bytes
  CHECK(t::wmma_load(tile.data() + 8, 24, out.data()) == cudaErrorLaunchFailure); // 16-byte aligned only
  CHECK(t::wmma_load(tile.data(), 20, out.data()) == cudaErrorLaunchFailure);     // ldm 40 bytes
  CHECK(t::vector_copy(in.data(), out.data()) == cudaSuccess);
  CHECK(out[3] == 4.0f);
  CHECK(t::vector_copy(in.data() + 1, out.data()) == cudaErrorLaunchFailure);     // 4-byte aligned source
  CHECK(t::vector_copy(in.data(), out.data() + 2) == cudaErrorLaunchFailure);     // 8-byte aligned destination
}

TEST_CASE("emulated wmma: a 16x16x16 bf16 tile product with fp32 accumulation", "[emu]") {
  alignas(32) std::array<__nv_bfloat16, 256> a{}, b{}; // wmma pointers are 32-byte aligned (checked)
  std::vector<float> af(256), bf(256);
  alignas(32) std::array<float, 256> c{};
  for (int idx = 0; idx < 256; ++idx) {
    af[static_cast<std::size_t>(idx)] = static_cast<float>(idx % 5) - 2.0f;
    bf[static_cast<std::size_t>(idx)] = static_cast<float>(idx % 3) * 0.5f;
    a[static_cast<std::size_t>(idx)] = __float2bfloat16_rn(af[static_cast<std::size_t>(idx)]);
    b[static_cast<std::size_t>(idx)] = __float2bfloat16_rn(bf[static_cast<std::size_t>(idx)]);
  }
  REQUIRE(t::wmma_16x16x16(a.data(), b.data(), c.data()) == cudaSuccess);
  for (int row = 0; row < 16; ++row) {
    for (int col = 0; col < 16; ++col) {
      float expected = 0.0f;
      for (int k = 0; k < 16; ++k) {
        // A row-major (row, k); B column-major: element (k, col) at col * 16 + k.
        expected += af[static_cast<std::size_t>(row * 16 + k)] * bf[static_cast<std::size_t>(col * 16 + k)];
      }
      REQUIRE(c[static_cast<std::size_t>(row * 16 + col)] == expected);
    }
  }
}
