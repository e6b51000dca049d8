// Host-side logic of the CUDA kernels, run without a GPU: launch-precondition checks (LaunchError messages name the
// kernel, the argument and the value), grid / shared-memory sizes of the tiled kernels, and the argument types of
// the fused variants (GeLU's bias; the norms' fp32 dy).
#include "kernels/activation.cuh"
#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/attention_tc.cuh"
#include "kernels/embedding.cuh"
#include "kernels/layernorm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"

#include <catch2/catch.hpp>

#include <type_traits>

namespace k = cuboid::kernels;

namespace {
float dummy[4];
// Largest opt-in dynamic shared memory per block on sm_90 (CUDA C++ Programming Guide, table "Technical
// Specifications per Compute Capability": 227 KB for 9.0).
constexpr std::size_t SM90_MAX_SMEM_BYTES = 227 * 1024;
} // namespace

TEST_CASE("kernels: grid_stride_grid and ceil_div", "[kernels]") {
  CHECK(k::ceil_div(10, 4) == 3);
  CHECK(k::ceil_div(8, 4) == 2);
  CHECK(k::grid_stride_grid(1, 256, 1024).x == 1);
  CHECK(k::grid_stride_grid(257, 256, 1024).x == 2);
  CHECK(k::grid_stride_grid(std::int64_t{1} << 40, 256, 1024).x == 1024);
}

TEST_CASE("kernels::embedding: preconditions", "[kernels]") {
  k::embedding::ForwardArgs<float> args{dummy, reinterpret_cast<const std::int32_t*>(dummy), dummy, 6, 10, 4, 0};
  CHECK_NOTHROW(args.validate());
  CHECK(args.grid().x == 6);
  args.rows = 0;
  REQUIRE_THROWS_AS(args.validate(), k::LaunchError);
  REQUIRE_THROWS_WITH(args.validate(), "embedding::forward: rows must be in [1, 2^31) (got 0)");
  args.rows = 6;
  args.table = nullptr;
  REQUIRE_THROWS_WITH(args.validate(), "embedding::forward: table is null");
  k::embedding::PositionForwardArgs<float> pos{dummy, dummy, 8, 4, 3, 2, 2}; // rows 2..9 -> positions 1..4
  REQUIRE_THROWS_WITH(pos.validate(), Catch::Contains("last row's position must be < positions (got 4)"));
  pos.positions = 5;
  CHECK_NOTHROW(pos.validate());
}

TEST_CASE("kernels::layernorm / rmsnorm: backward grid and shared memory", "[kernels]") {
  k::layernorm::BackwardArgs<float> ln{dummy, dummy, dummy, dummy, dummy, dummy, dummy, dummy, 100, 1024};
  CHECK(ln.grid().x == 100);
  ln.rows = 100000;
  CHECK(ln.grid().x == static_cast<unsigned>(k::layernorm::Config::MAX_BACKWARD_BLOCKS));
  CHECK(ln.smem_bytes() == 2 * 1024 * sizeof(float));
  ln.cols = k::layernorm::Config::MAX_COLS;
  CHECK(ln.smem_bytes() <= SM90_MAX_SMEM_BYTES);
  ln.cols = k::layernorm::Config::MAX_COLS + 1;
  REQUIRE_THROWS_WITH(ln.validate(), Catch::Contains("cols must be in [1, 16384]"));
  k::rmsnorm::BackwardArgs<float> rms{dummy, dummy, dummy, dummy, dummy, dummy, 10, k::rmsnorm::Config::MAX_COLS};
  CHECK_NOTHROW(rms.validate());
  CHECK(rms.smem_bytes() <= SM90_MAX_SMEM_BYTES);
}

TEST_CASE("kernels::layernorm / rmsnorm: backward dy element type", "[kernels]") {
  // DY defaults to T (today's callers), and fp32 dy beside bf16 x keeps the bf16 launch shape.
  STATIC_REQUIRE(std::is_same_v<decltype(k::layernorm::BackwardArgs<k::bf16>::dy), const k::bf16*>);
  STATIC_REQUIRE(std::is_same_v<decltype(k::layernorm::BackwardArgs<k::bf16, float>::dy), const float*>);
  STATIC_REQUIRE(std::is_same_v<decltype(k::layernorm::BackwardArgs<k::bf16, float>::x), const k::bf16*>);
  STATIC_REQUIRE(std::is_same_v<decltype(k::rmsnorm::BackwardArgs<k::bf16>::dy), const k::bf16*>);
  STATIC_REQUIRE(std::is_same_v<decltype(k::rmsnorm::BackwardArgs<k::bf16, float>::dy), const float*>);
  k::bf16 dummy_bf16[4];
  k::layernorm::BackwardArgs<k::bf16, float> ln{dummy_bf16, dummy, dummy, dummy, dummy_bf16, dummy, dummy, dummy,
                                                100, 1024};
  CHECK_NOTHROW(ln.validate());
  CHECK(ln.smem_bytes() == 2 * 1024 * sizeof(float));
  ln.dy = nullptr;
  REQUIRE_THROWS_WITH(ln.validate(), "layernorm::backward: dy is null");
  k::rmsnorm::BackwardArgs<k::bf16, float> rms{dummy_bf16, dummy, dummy, dummy_bf16, dummy, dummy, 10, 0};
  REQUIRE_THROWS_WITH(rms.validate(), "rmsnorm::backward: cols must be in [1, 32768] (got 0)");
}

TEST_CASE("kernels::activation: GeLU bias preconditions", "[kernels]") {
  SECTION("forward") {
    k::activation::GeluForwardArgs<float> args{dummy, dummy, 4};
    CHECK_NOTHROW(args.validate()); // no bias: cols 0 is ignored
    args.bias = dummy;
    REQUIRE_THROWS_AS(args.validate(), k::LaunchError);
    REQUIRE_THROWS_WITH(args.validate(), "activation::gelu_forward: cols must be positive when bias is set (got 0)");
    args.cols = -2;
    REQUIRE_THROWS_WITH(args.validate(), Catch::Contains("cols must be positive when bias is set (got -2)"));
    args.cols = 3;
    REQUIRE_THROWS_WITH(args.validate(),
                        "activation::gelu_forward: cols must divide n (4) when bias is set (got 3)");
    args.cols = 2;
    CHECK_NOTHROW(args.validate());
    args.cols = 4;
    CHECK_NOTHROW(args.validate());
    args.bias = nullptr;
    args.cols = 3; // ignored without a bias
    CHECK_NOTHROW(args.validate());
  }
  SECTION("backward") {
    k::activation::GeluBackwardArgs<k::bf16> args{reinterpret_cast<k::bf16*>(dummy),
                                                  reinterpret_cast<const k::bf16*>(dummy),
                                                  reinterpret_cast<const k::bf16*>(dummy), 6};
    CHECK_NOTHROW(args.validate());
    args.bias = dummy;
    REQUIRE_THROWS_WITH(args.validate(), "activation::gelu_backward: cols must be positive when bias is set (got 0)");
    args.cols = 4;
    REQUIRE_THROWS_WITH(args.validate(),
                        "activation::gelu_backward: cols must divide n (6) when bias is set (got 4)");
    args.cols = 3;
    CHECK_NOTHROW(args.validate());
    args.dy = nullptr;
    REQUIRE_THROWS_WITH(args.validate(), "activation::gelu_backward: dy is null");
  }
}

TEST_CASE("kernels::attention: shapes, grids and shared memory", "[kernels]") {
  k::attention::Shape s{100, 2, 8, 2, 64};
  CHECK_NOTHROW(s.validate("test"));
  // 100 query rows in tiles of 16 -> 7 tiles; key blocks of 8 -> 13; one grid row per (batch, head).
  CHECK(k::attention::query_grid(s).x == 7);
  CHECK(k::attention::query_grid(s).y == 16);
  CHECK(k::attention::key_grid(s).x == 13);
  CHECK(k::attention::key_grid(s).y == 4);
  CHECK(k::attention::backward_workspace_bytes(s) == 2 * 8 * 100 * sizeof(float));
  s.head_dim = k::attention::Config::MAX_HEAD_DIM;
  CHECK(k::attention::forward_smem_bytes(s) <= SM90_MAX_SMEM_BYTES);
  CHECK(k::attention::dq_smem_bytes(s) <= SM90_MAX_SMEM_BYTES);
  CHECK(k::attention::dkdv_smem_bytes(s) <= SM90_MAX_SMEM_BYTES);
  // The key tile is scored one key per lane.
  STATIC_REQUIRE(k::attention::Config::KEY_TILE == 32);
  STATIC_REQUIRE(k::attention::Config::THREADS == 32 * k::attention::Config::WARPS);
  SECTION("bad shapes") {
    s.head_dim = 129;
    REQUIRE_THROWS_WITH(s.validate("attention::forward"),
                        "attention::forward: head_dim must be in [1, 128] (got 129)");
    s.head_dim = 64;
    s.kv_heads = 3;
    REQUIRE_THROWS_WITH(s.validate("attention::forward"), Catch::Contains("kv_heads must be positive and divide"));
    s.kv_heads = 2;
    s.batch = 20000;
    REQUIRE_THROWS_WITH(s.validate("attention::forward"), Catch::Contains("batch * q_heads must be <= 65535"));
  }
}

TEST_CASE("kernels::adamw: preconditions", "[kernels]") {
  k::adamw::Args args;
  args.param = dummy;
  args.m = dummy;
  args.v = dummy;
  args.grad = dummy;
  args.n = 4;
  args.step = 0;
  REQUIRE_THROWS_WITH(args.validate(), "adamw::update: step must be >= 1 (got 0)");
  args.step = 1;
  args.beta2 = 1.0f;
  REQUIRE_THROWS_WITH(args.validate(), Catch::Contains("beta2 must be in [0, 1)"));
  args.beta2 = 0.95f;
  CHECK_NOTHROW(args.validate());
}

TEST_CASE("kernels::rope: one thread per rotated pair", "[kernels]") {
  k::rope::Args<float> args{dummy, 6, 2, 8, 3};
  CHECK(args.pairs() == 6 * 2 * 4);
  CHECK(args.grid().x == 1);
  args.head_dim = 7;
  REQUIRE_THROWS_WITH(args.validate(), "rope::rotate: head_dim must be positive and even (got 7)");
}

TEST_CASE("kernels::attention_tc: supported shapes and shared memory", "[kernels]") {
  namespace k = cuboid::kernels;
  CHECK(k::attention_tc::supported({2048, 4, 16, 16, 128}));
  CHECK(k::attention_tc::supported({128, 2, 8, 4, 64}));
  CHECK(k::attention_tc::supported({2048, 4, 32, 32, 80}));         // GPT-3 2.7B: 5 x 16
  CHECK_FALSE(k::attention_tc::supported({2048, 4, 16, 16, 72}));  // head_dim not a multiple of 16
  CHECK_FALSE(k::attention_tc::supported({2048, 4, 16, 16, 256})); // head_dim > 128
  CHECK_FALSE(k::attention_tc::supported({100, 4, 16, 16, 64}));   // seq not a multiple of 64
  CHECK_FALSE(k::attention_tc::supported({128, 4, 16, 5, 64}));    // kv_heads does not divide q_heads
  CHECK(k::attention_tc::unsupported_reason({100, 1, 1, 1, 64}).find("seq") != std::string::npos);
  // Within the 227 KiB of shared memory an H100 block may opt into (CUDA C++ Programming Guide, compute capability
  // 9.0 table) at the largest head dimension.
  const k::attention::Shape widest{2048, 1, 1, 1, 128};
  CHECK(k::attention_tc::forward_smem_bytes(widest) <= 227 * 1024);
  CHECK(k::attention_tc::dkdv_smem_bytes(widest) <= 227 * 1024);
  CHECK(k::attention_tc::dq_smem_bytes(widest) <= 227 * 1024);
  CHECK(k::attention_tc::forward_smem_bytes(widest) == 3 * 64 * 136 * 2 + 64 * 68 * 4 + 64 * 72 * 2 + 1024 + 256);
  // Shared memory leaves room for two blocks per SM at head_dim 128 (2 x (bytes + 1 KiB reserved per block) <= 228
  // KiB, the same table), four at head_dim 64 (registers may allow fewer).
  CHECK(2 * (k::attention_tc::dkdv_smem_bytes(widest) + 1024) <= 228 * 1024);
  CHECK(2 * (k::attention_tc::dq_smem_bytes(widest) + 1024) <= 228 * 1024);
  CHECK(2 * (k::attention_tc::forward_smem_bytes(widest) + 1024) <= 228 * 1024);
  const k::attention::Shape gpt3_125m{2048, 1, 1, 1, 64};
  CHECK(4 * (k::attention_tc::dkdv_smem_bytes(gpt3_125m) + 1024) <= 228 * 1024);
}
