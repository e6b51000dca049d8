// [gpu] Each CUDA kernel (kernels/) and the cuBLASLt / NCCL wrappers (exec/cuda) against the CPU backend's op
// (exec/cpu), the reference, with tolerances scaled by the element type's epsilon (karpathy/llm.c dev/cuda/common.h
// validate_result): inputs are rounded to T first, so both sides see identical inputs and the difference is only
// the kernel's own rounding (fp32 summation order; bf16 rounding of outputs). Skipped without a GPU (gpu_test_runner.cpp).
#include "bf16_host.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/adamw.hpp"
#include "exec/cpu/attention.hpp"
#include "exec/cpu/cross_entropy.hpp"
#include "exec/cpu/embedding.hpp"
#include "exec/cpu/linear.hpp"
#include "exec/cpu/norm.hpp"
#include "exec/cpu/rope.hpp"
#include "exec/cuda/event_timeline.hpp"
#include "exec/cuda/gemm.hpp"
#include "exec/cuda/nccl_communicator.hpp"
#include "exec/local_communicator.hpp"
#include "kernels/activation.cuh"
#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/attention_tc.cuh"
#include "kernels/cast.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/embedding.cuh"
#include "kernels/layernorm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <thread>

namespace k = cuboid::kernels;
namespace cpu = cuboid::exec::cpu;
using k::test::DeviceArray;

namespace {

template <typename T> constexpr double EPS = std::is_same_v<T, float> ? 1.19e-7 : 7.81e-3; // 2^-23, 2^-7

std::vector<float> random_vec(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> out(n);
  for (float& v : out) {
    v = dist(gen);
  }
  return out;
}

// Rounds to what T can hold, so the CPU reference sees the kernel's exact inputs.
template <typename T> std::vector<float> quantize(std::vector<float> v) {
  if constexpr (!std::is_same_v<T, float>) {
    for (float& x : v) {
      x = k::test::round_bf16(x);
    }
  }
  return v;
}

cpu::Mat to_mat(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  return cpu::ConstMatMap(v.data(), rows, cols);
}
std::vector<float> to_vec(const cpu::Mat& m) { return {m.data(), m.data() + m.size()}; }
template <typename V> std::vector<float> to_vec_any(const V& m) {
  std::vector<float> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index idx = 0; idx < m.size(); ++idx) {
    out[static_cast<std::size_t>(idx)] = m(idx);
  }
  return out;
}

// |got - ref| <= rtol |ref| + atol everywhere; reports the worst element.
void require_close(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol,
                   const std::string& what) {
  REQUIRE(got.size() == ref.size());
  double worst = 0.0;
  std::size_t worst_idx = 0;
  for (std::size_t idx = 0; idx < got.size(); ++idx) {
    const auto g = static_cast<double>(got[idx]);
    const auto r = static_cast<double>(ref[idx]);
    const double err = std::abs(g - r) - rtol * std::abs(r) - atol;
    if (err > worst || std::isnan(got[idx])) {
      worst = std::isnan(got[idx]) ? 1e30 : err;
      worst_idx = idx;
    }
  }
  INFO(what << ": worst element " << worst_idx << ": got " << got[worst_idx] << ", reference " << ref[worst_idx]
            << " (rtol " << rtol << ", atol " << atol << ")");
  CHECK(worst <= 0.0);
}

double max_abs(const std::vector<float>& v) {
  double out = 0.0;
  for (const float x : v) {
    out = std::max(out, std::abs(static_cast<double>(x)));
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double out = 0.0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    out = std::max(out, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return out;
}

std::vector<std::int32_t> random_tokens(std::size_t n, std::int32_t max_token, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int32_t> dist(0, max_token - 1);
  std::vector<std::int32_t> out(n);
  for (auto& t : out) {
    t = dist(gen);
  }
  return out;
}

class DeviceTokens {
public:
  explicit DeviceTokens(const std::vector<std::int32_t>& host) {
    k::test::check(cudaMalloc(reinterpret_cast<void**>(&ptr_), host.size() * sizeof(std::int32_t)), "cudaMalloc");
    k::test::check(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice), "copy");
  }
  ~DeviceTokens() { cudaFree(ptr_); }
  DeviceTokens(const DeviceTokens&) = delete;
  DeviceTokens& operator=(const DeviceTokens&) = delete;
  [[nodiscard]] const std::int32_t* get() const { return ptr_; }

private:
  std::int32_t* ptr_ = nullptr;
};

} // namespace

TEMPLATE_TEST_CASE("kernels::embedding vs exec::cpu embedding ops", "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  const std::int64_t rows = 12, vocab_rows = 10, cols = 33, vocab_start = 5;
  const auto tokens = random_tokens(static_cast<std::size_t>(rows), 20, 1); // about half outside [5, 15)
  const DeviceTokens d_tokens(tokens);
  const auto table = quantize<T>(random_vec(static_cast<std::size_t>(vocab_rows * cols), 2));
  SECTION("forward: an exact gather") {
    cpu::Mat ref(rows, cols);
    cpu::embedding_forward(tokens, to_mat(table, vocab_rows, cols), vocab_start, ref);
    DeviceArray<T> d_table(table), d_out(static_cast<std::size_t>(rows * cols));
    k::embedding::forward<T>({d_out.get(), d_tokens.get(), d_table.get(), rows, vocab_rows, cols, vocab_start}, nullptr);
    require_close(d_out.download(), to_vec(ref), 0.0, 0.0, "embedding forward");
  }
  SECTION("backward: fp32 scatter-add") {
    const auto dout = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 3));
    cpu::Mat ref = cpu::Mat::Zero(vocab_rows, cols);
    cpu::embedding_backward(tokens, to_mat(dout, rows, cols), vocab_start, ref);
    DeviceArray<T> d_dout(dout);
    DeviceArray<float> d_dtable(static_cast<std::size_t>(vocab_rows * cols));
    k::embedding::backward<T>({d_dtable.get(), d_tokens.get(), d_dout.get(), rows, vocab_rows, cols, vocab_start},
                              nullptr);
    require_close(d_dtable.download(), to_vec(ref), 1e-6, 1e-6, "embedding backward");
  }
  SECTION("position embedding forward and backward (sequence-parallel offset)") {
    const std::int64_t positions = 6, n = 8, first_row = 4, batch = 2;
    const auto pos = quantize<T>(random_vec(static_cast<std::size_t>(positions * cols), 4));
    const auto x = quantize<T>(random_vec(static_cast<std::size_t>(n * cols), 5));
    cpu::Mat ref = to_mat(x, n, cols);
    cpu::position_embedding_forward(to_mat(pos, positions, cols), first_row, batch, ref);
    DeviceArray<T> d_x(x), d_pos(pos);
    k::embedding::position_forward<T>({d_x.get(), d_pos.get(), n, cols, positions, first_row, batch}, nullptr);
    require_close(d_x.download(), to_vec(ref), EPS<T>, 0.0, "position forward");
    cpu::Mat dref = cpu::Mat::Zero(positions, cols);
    cpu::position_embedding_backward(to_mat(x, n, cols), first_row, batch, dref);
    DeviceArray<T> d_dx(x);
    DeviceArray<float> d_dpos(static_cast<std::size_t>(positions * cols));
    k::embedding::position_backward<T>({d_dpos.get(), d_dx.get(), n, cols, positions, first_row, batch}, nullptr);
    require_close(d_dpos.download(), to_vec(dref), 1e-6, 1e-6, "position backward");
  }
}

TEST_CASE("kernels::embedding: bf16 tables into fp32 rows (the distributed optimizer's forward)", "[gpu][kernels]") {
  const std::int64_t rows = 12, vocab_rows = 10, cols = 33, vocab_start = 5;
  const auto tokens = random_tokens(static_cast<std::size_t>(rows), 20, 6);
  const DeviceTokens d_tokens(tokens);
  const auto table = random_vec(static_cast<std::size_t>(vocab_rows * cols), 7);
  const auto table_bf16 = quantize<k::bf16>(table); // the values the bf16 copy holds, as floats
  cpu::Mat ref(rows, cols);
  cpu::embedding_forward(tokens, to_mat(table_bf16, vocab_rows, cols), vocab_start, ref);
  DeviceArray<k::bf16> d_table(table);
  DeviceArray<float> d_out(static_cast<std::size_t>(rows * cols));
  k::embedding::forward<float, k::bf16>(
      {d_out.get(), d_tokens.get(), d_table.get(), rows, vocab_rows, cols, vocab_start}, nullptr);
  require_close(d_out.download(), to_vec(ref), 0.0, 0.0, "embedding forward, bf16 table"); // widening is exact
  const std::int64_t positions = 6, n = 8, first_row = 2, batch = 2;
  const auto pos = random_vec(static_cast<std::size_t>(positions * cols), 8);
  const auto x = random_vec(static_cast<std::size_t>(n * cols), 9);
  cpu::Mat xref = to_mat(x, n, cols);
  cpu::position_embedding_forward(to_mat(quantize<k::bf16>(pos), positions, cols), first_row, batch, xref);
  DeviceArray<float> d_x(x);
  DeviceArray<k::bf16> d_pos(pos);
  k::embedding::position_forward<float, k::bf16>({d_x.get(), d_pos.get(), n, cols, positions, first_row, batch},
                                                 nullptr);
  require_close(d_x.download(), to_vec(xref), 1e-6, 1e-6, "position forward, bf16 table");
}

TEMPLATE_TEST_CASE("kernels::layernorm and rmsnorm vs exec::cpu norms", "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  const std::int64_t rows = 7;
  const std::int64_t cols = GENERATE(200, 1000);
  const auto x = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 10, 2.0f));
  const auto dy = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 11));
  const auto dx0 = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 12)); // backward accumulates
  std::vector<float> w = random_vec(static_cast<std::size_t>(cols), 13, 0.2f);
  for (float& v : w) {
    v += 1.0f;
  }
  const auto b = random_vec(static_cast<std::size_t>(cols), 14, 0.1f);
  const cpu::RowVec w_row = Eigen::Map<const cpu::RowVec>(w.data(), cols);
  const cpu::RowVec b_row = Eigen::Map<const cpu::RowVec>(b.data(), cols);
  DeviceArray<T> d_x(x), d_dy(dy), d_y(static_cast<std::size_t>(rows * cols)), d_dx(dx0);
  DeviceArray<float> d_w(w), d_b(b), d_mean(static_cast<std::size_t>(rows)), d_rstd(static_cast<std::size_t>(rows));
  DeviceArray<float> d_dw(static_cast<std::size_t>(cols)), d_db(static_cast<std::size_t>(cols));
  const double out_tol = 2.0 * EPS<T> + 1e-5;
  SECTION("layer norm") {
    cpu::Mat y(rows, cols);
    cpu::ColVec mean, rstd;
    cpu::layer_norm_forward(to_mat(x, rows, cols), w_row, b_row, y, mean, rstd);
    k::layernorm::forward<T>({d_y.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(), d_b.get(), rows, cols},
                             nullptr);
    require_close(d_y.download(), to_vec(y), out_tol, out_tol, "layernorm y");
    require_close(d_mean.download(), to_vec_any(mean), 1e-5, 1e-6, "layernorm mean");
    require_close(d_rstd.download(), to_vec_any(rstd), 1e-5, 1e-6, "layernorm rstd");
    cpu::Mat dx = to_mat(dx0, rows, cols);
    cpu::RowVec dw = cpu::RowVec::Zero(cols), db = cpu::RowVec::Zero(cols);
    cpu::layer_norm_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), w_row, mean, rstd, dx, dw, db);
    k::layernorm::backward<T>({d_dx.get(), d_dw.get(), d_db.get(), d_dy.get(), d_x.get(), d_w.get(), d_mean.get(),
                               d_rstd.get(), rows, cols},
                              nullptr);
    require_close(d_dx.download(), to_vec(dx), out_tol, out_tol, "layernorm dx");
    require_close(d_dw.download(), to_vec_any(dw), 1e-4, 1e-5, "layernorm dw");
    require_close(d_db.download(), to_vec_any(db), 1e-4, 1e-5, "layernorm db");
  }
  SECTION("RMSNorm") {
    cpu::Mat y(rows, cols);
    cpu::ColVec rstd;
    cpu::rms_norm_forward(to_mat(x, rows, cols), w_row, y, rstd);
    k::rmsnorm::forward<T>({d_y.get(), d_rstd.get(), d_x.get(), d_w.get(), rows, cols}, nullptr);
    require_close(d_y.download(), to_vec(y), out_tol, out_tol, "rmsnorm y");
    require_close(d_rstd.download(), to_vec_any(rstd), 1e-5, 1e-6, "rmsnorm rstd");
    cpu::Mat dx = to_mat(dx0, rows, cols);
    cpu::RowVec dw = cpu::RowVec::Zero(cols);
    cpu::rms_norm_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), w_row, rstd, dx, dw);
    k::rmsnorm::backward<T>({d_dx.get(), d_dw.get(), d_dy.get(), d_x.get(), d_w.get(), d_rstd.get(), rows, cols},
                            nullptr);
    require_close(d_dx.download(), to_vec(dx), out_tol, out_tol, "rmsnorm dx");
    require_close(d_dw.download(), to_vec_any(dw), 1e-4, 1e-5, "rmsnorm dw");
  }
}

TEMPLATE_TEST_CASE("kernels::activation vs exec::cpu activations", "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  const std::int64_t rows = 10, cols = 129, n = rows * cols;
  const auto x = quantize<T>(random_vec(static_cast<std::size_t>(n), 20, 4.0f));
  const auto up = quantize<T>(random_vec(static_cast<std::size_t>(n), 21, 2.0f));
  const auto dy = quantize<T>(random_vec(static_cast<std::size_t>(n), 22));
  const double tol = 2.0 * EPS<T> + 1e-6;
  DeviceArray<T> d_x(x), d_up(up), d_dy(dy), d_y(static_cast<std::size_t>(n)), d_dx(static_cast<std::size_t>(n)),
      d_dup(static_cast<std::size_t>(n));
  SECTION("GeLU") {
    cpu::Mat y(rows, cols), dx(rows, cols);
    cpu::gelu_forward(to_mat(x, rows, cols), y);
    cpu::gelu_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), dx);
    k::activation::gelu_forward<T>({d_y.get(), d_x.get(), n}, nullptr);
    k::activation::gelu_backward<T>({d_dx.get(), d_dy.get(), d_x.get(), n}, nullptr);
    require_close(d_y.download(), to_vec(y), tol, tol, "gelu y");
    require_close(d_dx.download(), to_vec(dx), tol, tol, "gelu dx");
  }
  SECTION("SwiGLU") {
    cpu::Mat y(rows, cols), dgate(rows, cols), dup(rows, cols);
    cpu::swiglu_forward(to_mat(x, rows, cols), to_mat(up, rows, cols), y);
    cpu::swiglu_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), to_mat(up, rows, cols), dgate, dup);
    k::activation::swiglu_forward<T>({d_y.get(), d_x.get(), d_up.get(), n}, nullptr);
    k::activation::swiglu_backward<T>({d_dx.get(), d_dup.get(), d_dy.get(), d_x.get(), d_up.get(), n}, nullptr);
    require_close(d_y.download(), to_vec(y), tol, tol, "swiglu y");
    require_close(d_dx.download(), to_vec(dgate), tol, tol, "swiglu dgate");
    require_close(d_dup.download(), to_vec(dup), tol, tol, "swiglu dup");
  }
}

namespace {
// The largest |got - ref| - rtol |ref| - atol (<= 0: within tolerance), as require_close measures it.
double worst_excess(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol) {
  double worst = -1e30;
  for (std::size_t idx = 0; idx < got.size(); ++idx) {
    const auto r = static_cast<double>(ref[idx]);
    worst = std::max(worst, std::abs(static_cast<double>(got[idx]) - r) - rtol * std::abs(r) - atol);
  }
  return worst;
}
} // namespace

TEMPLATE_TEST_CASE("kernels::activation GeLU with a fused bias vs exec::cpu gelu of (x + bias)", "[gpu][kernels]",
                   float, k::bf16) {
  using T = TestType;
  // cols 3 and 129 divide neither the 256-thread block nor a warp; 1000 x 16800 = 16.8 M elements is more than the
  // capped grid (65536 blocks x 256 threads = 16,777,216), so the last threads take a second grid stride and
  // their column wraps (16,777,216 mod 1000 = 216).
  const auto [rows, cols] = GENERATE(std::make_tuple(std::int64_t{10}, std::int64_t{3}),
                                     std::make_tuple(std::int64_t{10}, std::int64_t{129}),
                                     std::make_tuple(std::int64_t{16800}, std::int64_t{1000}));
  const std::int64_t n = rows * cols;
  const auto x = quantize<T>(random_vec(static_cast<std::size_t>(n), 23, 4.0f));
  const auto dy = quantize<T>(random_vec(static_cast<std::size_t>(n), 24));
  const auto bias = random_vec(static_cast<std::size_t>(cols), 25, 1.0f); // fp32, not rounded to T
  std::vector<float> xb(x);
  for (std::size_t idx = 0; idx < xb.size(); ++idx) {
    xb[idx] += bias[idx % static_cast<std::size_t>(cols)];
  }
  cpu::Mat y(rows, cols), dx(rows, cols);
  cpu::gelu_forward(to_mat(xb, rows, cols), y);
  cpu::gelu_backward(to_mat(dy, rows, cols), to_mat(xb, rows, cols), dx);
  DeviceArray<T> d_x(x), d_dy(dy), d_y(static_cast<std::size_t>(n)), d_dx(static_cast<std::size_t>(n));
  DeviceArray<float> d_bias(bias);
  k::activation::gelu_forward<T>({d_y.get(), d_x.get(), n, d_bias.get(), cols}, nullptr);
  k::activation::gelu_backward<T>({d_dx.get(), d_dy.get(), d_x.get(), n, d_bias.get(), cols}, nullptr);
  const double tol = 2.0 * EPS<T> + 1e-6;
  INFO("rows " << rows << ", cols " << cols);
  const auto got_y = d_y.download();
  require_close(got_y, to_vec(y), tol, tol, "gelu(x + bias) y");
  require_close(d_dx.download(), to_vec(dx), tol, tol, "gelu(x + bias) dx");
  // The bias matters at this tolerance: gelu(x) without it is far from the reference.
  cpu::Mat y_plain(rows, cols);
  cpu::gelu_forward(to_mat(x, rows, cols), y_plain);
  CHECK(worst_excess(got_y, to_vec(y_plain), tol, tol) > 0.0);
}

TEST_CASE("kernels::layernorm and rmsnorm backward with fp32 dy and bf16 x vs exec::cpu norms", "[gpu][kernels]") {
  using T = k::bf16;
  const std::int64_t rows = 7;
  const std::int64_t cols = GENERATE(200, 1000);
  const auto x = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 40, 2.0f));
  const auto dy = random_vec(static_cast<std::size_t>(rows * cols), 41); // fp32, as a data-gradient GEMM writes it
  const auto dy_bf16 = quantize<T>(dy);
  const auto dx0 = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 42));
  std::vector<float> w = random_vec(static_cast<std::size_t>(cols), 43, 0.2f);
  for (float& v : w) {
    v += 1.0f;
  }
  const auto b = random_vec(static_cast<std::size_t>(cols), 44, 0.1f);
  const cpu::RowVec w_row = Eigen::Map<const cpu::RowVec>(w.data(), cols);
  const cpu::RowVec b_row = Eigen::Map<const cpu::RowVec>(b.data(), cols);
  DeviceArray<T> d_x(x), d_dx(dx0);
  DeviceArray<float> d_dy(dy), d_w(w), d_mean(static_cast<std::size_t>(rows)), d_rstd(static_cast<std::size_t>(rows));
  DeviceArray<float> d_dw(static_cast<std::size_t>(cols)), d_db(static_cast<std::size_t>(cols));
  const double out_tol = 2.0 * EPS<T> + 1e-5; // dx is bf16
  // dw, db are fp32 sums of fp32 dy: this tolerance is sharper than the effect of rounding dy to bf16 (checked below),
  // so a kernel that rounded dy first would fail it.
  const double grad_rtol = 1e-4, grad_atol = 1e-5;
  SECTION("layer norm") {
    cpu::Mat y(rows, cols);
    cpu::ColVec mean, rstd;
    cpu::layer_norm_forward(to_mat(x, rows, cols), w_row, b_row, y, mean, rstd);
    d_mean.upload(to_vec_any(mean));
    d_rstd.upload(to_vec_any(rstd));
    cpu::Mat dx = to_mat(dx0, rows, cols);
    cpu::RowVec dw = cpu::RowVec::Zero(cols), db = cpu::RowVec::Zero(cols);
    cpu::layer_norm_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), w_row, mean, rstd, dx, dw, db);
    const k::layernorm::BackwardArgs<T, float> args{d_dx.get(), d_dw.get(), d_db.get(), d_dy.get(), d_x.get(),
                                                    d_w.get(),  d_mean.get(), d_rstd.get(), rows, cols};
    k::layernorm::backward(args, nullptr);
    require_close(d_dx.download(), to_vec(dx), out_tol, out_tol, "layernorm dx (fp32 dy)");
    require_close(d_dw.download(), to_vec_any(dw), grad_rtol, grad_atol, "layernorm dw (fp32 dy)");
    require_close(d_db.download(), to_vec_any(db), grad_rtol, grad_atol, "layernorm db (fp32 dy)");
    cpu::Mat dx_r = to_mat(dx0, rows, cols);
    cpu::RowVec dw_r = cpu::RowVec::Zero(cols), db_r = cpu::RowVec::Zero(cols);
    cpu::layer_norm_backward(to_mat(dy_bf16, rows, cols), to_mat(x, rows, cols), w_row, mean, rstd, dx_r, dw_r, db_r);
    CHECK(worst_excess(to_vec_any(dw_r), to_vec_any(dw), grad_rtol, grad_atol) > 0.0);
    CHECK(worst_excess(to_vec_any(db_r), to_vec_any(db), grad_rtol, grad_atol) > 0.0);
  }
  SECTION("RMSNorm") {
    cpu::Mat y(rows, cols);
    cpu::ColVec rstd;
    cpu::rms_norm_forward(to_mat(x, rows, cols), w_row, y, rstd);
    d_rstd.upload(to_vec_any(rstd));
    cpu::Mat dx = to_mat(dx0, rows, cols);
    cpu::RowVec dw = cpu::RowVec::Zero(cols);
    cpu::rms_norm_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), w_row, rstd, dx, dw);
    const k::rmsnorm::BackwardArgs<T, float> args{d_dx.get(), d_dw.get(), d_dy.get(), d_x.get(),
                                                  d_w.get(),  d_rstd.get(), rows, cols};
    k::rmsnorm::backward(args, nullptr);
    require_close(d_dx.download(), to_vec(dx), out_tol, out_tol, "rmsnorm dx (fp32 dy)");
    require_close(d_dw.download(), to_vec_any(dw), grad_rtol, grad_atol, "rmsnorm dw (fp32 dy)");
    cpu::Mat dx_r = to_mat(dx0, rows, cols);
    cpu::RowVec dw_r = cpu::RowVec::Zero(cols);
    cpu::rms_norm_backward(to_mat(dy_bf16, rows, cols), to_mat(x, rows, cols), w_row, rstd, dx_r, dw_r);
    CHECK(worst_excess(to_vec_any(dw_r), to_vec_any(dw), grad_rtol, grad_atol) > 0.0);
  }
}

TEMPLATE_TEST_CASE("kernels::rope vs exec::cpu rope (forward, and backward undoes it)", "[gpu][kernels]", float,
                   k::bf16) {
  using T = TestType;
  const std::int64_t seq = 300, batch = 2, heads = 3, head_dim = 64, rows = seq * batch, cols = heads * head_dim;
  const auto x = quantize<T>(random_vec(static_cast<std::size_t>(rows * cols), 25));
  cpu::Mat ref = to_mat(x, rows, cols);
  cpu::rope_forward(ref, batch, head_dim);
  DeviceArray<T> d_x(x);
  const k::rope::Args<T> args{d_x.get(), rows, heads, head_dim, batch};
  k::rope::forward<T>(args, nullptr);
  // Angles up to 299 rad: sinf/cosf and std::sin/std::cos may differ by an ulp of the result.
  const double tol = 2.0 * EPS<T> + 2e-6;
  require_close(d_x.download(), to_vec(ref), tol, tol, "rope forward");
  cpu::rope_backward(ref, batch, head_dim);
  k::rope::backward<T>(args, nullptr);
  require_close(d_x.download(), to_vec(ref), 2.0 * tol, 2.0 * tol, "rope backward");
}

TEST_CASE("kernels::rope with first_row (a context-parallel chunk) vs exec::cpu rope at that offset", "[gpu][kernels]") {
  const std::int64_t batch = 2, heads = 2, head_dim = 16, rows = 24 * batch, cols = heads * head_dim;
  const std::int64_t first_row = 40 * batch; // the chunk starts at position 40
  const auto x = random_vec(static_cast<std::size_t>(rows * cols), 26);
  cpu::Mat ref = to_mat(x, rows, cols);
  cpu::rope_forward(ref, batch, head_dim, first_row);
  DeviceArray<float> d_x(x);
  k::rope::Args<float> args{d_x.get(), rows, heads, head_dim, batch};
  args.first_row = first_row;
  k::rope::forward<float>(args, nullptr);
  require_close(d_x.download(), to_vec(ref), 4e-6, 4e-6, "rope forward at an offset");
  // Not the rotation of position 0: the offset is applied.
  cpu::Mat at_zero = to_mat(x, rows, cols);
  cpu::rope_forward(at_zero, batch, head_dim);
  REQUIRE(max_abs_diff(d_x.download(), to_vec(at_zero)) > 0.1);
}

TEMPLATE_TEST_CASE("kernels::attention vs exec::cpu attention (causal, GQA)", "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  const std::int64_t head_dim = GENERATE(32, 80, 128);
  // 70 rows: not a multiple of the 16-row query tile, the 8-row key block or the 32-key tile.
  const cpu::AttentionShape s{70, 2, 4, 2, head_dim};
  const k::attention::Shape ks{s.seq, s.batch, s.q_heads, s.kv_heads, s.head_dim};
  const std::int64_t rows = s.seq * s.batch, qw = s.q_heads * head_dim, kw = s.kv_heads * head_dim;
  const auto q = quantize<T>(random_vec(static_cast<std::size_t>(rows * qw), 30, 2.0f));
  const auto kk = quantize<T>(random_vec(static_cast<std::size_t>(rows * kw), 31, 2.0f));
  const auto v = quantize<T>(random_vec(static_cast<std::size_t>(rows * kw), 32));
  const auto dout = quantize<T>(random_vec(static_cast<std::size_t>(rows * qw), 33));
  cpu::Mat out(rows, qw);
  cpu::attention_forward(s, to_mat(q, rows, qw), to_mat(kk, rows, kw), to_mat(v, rows, kw), out, nullptr);
  DeviceArray<T> d_q(q), d_k(kk), d_v(v), d_out(static_cast<std::size_t>(rows * qw)), d_dout(dout);
  DeviceArray<float> d_lse(static_cast<std::size_t>(s.batch * s.q_heads * s.seq));
  k::attention::forward<T>({d_out.get(), d_lse.get(), d_q.get(), d_k.get(), d_v.get(), ks}, nullptr);
  const double fwd_tol = std::is_same_v<T, float> ? 2e-5 : 2.0 * EPS<T>;
  require_close(d_out.download(), to_vec(out), fwd_tol, fwd_tol, "attention out");

  cpu::Mat dq(rows, qw), dk(rows, kw), dv(rows, kw);
  cpu::attention_backward(s, to_mat(dout, rows, qw), to_mat(q, rows, qw), to_mat(kk, rows, kw), to_mat(v, rows, kw),
                          nullptr, dq, dk, dv);
  DeviceArray<T> d_dq(static_cast<std::size_t>(rows * qw)), d_dk(static_cast<std::size_t>(rows * kw)),
      d_dv(static_cast<std::size_t>(rows * kw));
  DeviceArray<float> ws(k::attention::backward_workspace_bytes(ks) / sizeof(float));
  k::attention::backward<T>({d_dq.get(), d_dk.get(), d_dv.get(), ws.get(), d_dout.get(), d_q.get(), d_k.get(),
                             d_v.get(), d_out.get(), d_lse.get(), ks},
                            nullptr);
  // bf16: the kernel's delta uses the bf16-rounded forward output, so allow a few output ulps more.
  // The absolute part scales with the largest gradient (cancellation in dP - delta makes small entries noisy).
  const double bwd_tol = std::is_same_v<T, float> ? 1e-4 : 6.0 * EPS<T>;
  for (const auto& [name, got, ref] : {std::tuple{"attention dq", d_dq.download(), to_vec(dq)},
                                       std::tuple{"attention dk", d_dk.download(), to_vec(dk)},
                                       std::tuple{"attention dv", d_dv.download(), to_vec(dv)}}) {
    require_close(got, ref, bwd_tol, bwd_tol * std::max(1e-3, max_abs(ref)), name);
  }
}

// Tensor-core attention (bf16 WMMA): P and dS are rounded to bf16 before their GEMMs (as FlashAttention-2), so the
// tolerances are a few bf16 ulps wider than the scalar kernel's: 4 ulps forward, 12 ulps (of the largest gradient
// for the absolute part) backward.
TEST_CASE("kernels::attention_tc vs exec::cpu attention (causal, GQA)", "[gpu][kernels]") {
  using T = k::bf16;
  const std::int64_t head_dim = GENERATE(48, 64, 128); // 48: three 16-column tiles, the unrolled loops' bound
  const cpu::AttentionShape s{128, 2, 4, 2, head_dim}; // two 64-row tiles: diagonal and off-diagonal blocks
  const k::attention::Shape ks{s.seq, s.batch, s.q_heads, s.kv_heads, s.head_dim};
  REQUIRE(k::attention_tc::supported(ks));
  const std::int64_t rows = s.seq * s.batch, qw = s.q_heads * head_dim, kw = s.kv_heads * head_dim;
  const auto q = quantize<T>(random_vec(static_cast<std::size_t>(rows * qw), 40, 2.0f));
  const auto kk = quantize<T>(random_vec(static_cast<std::size_t>(rows * kw), 41, 2.0f));
  const auto v = quantize<T>(random_vec(static_cast<std::size_t>(rows * kw), 42));
  const auto dout = quantize<T>(random_vec(static_cast<std::size_t>(rows * qw), 43));
  cpu::Mat out(rows, qw);
  cpu::attention_forward(s, to_mat(q, rows, qw), to_mat(kk, rows, kw), to_mat(v, rows, kw), out, nullptr);
  DeviceArray<T> d_q(q), d_k(kk), d_v(v), d_out(static_cast<std::size_t>(rows * qw)), d_dout(dout);
  DeviceArray<float> d_lse(static_cast<std::size_t>(s.batch * s.q_heads * s.seq));
  k::attention_tc::forward({d_out.get(), d_lse.get(), d_q.get(), d_k.get(), d_v.get(), ks}, nullptr);
  require_close(d_out.download(), to_vec(out), 4.0 * EPS<T>, 4.0 * EPS<T>, "attention_tc out");
  // Same LSE as the scalar kernel (so either backward can follow either forward).
  DeviceArray<T> d_out_ref(static_cast<std::size_t>(rows * qw));
  DeviceArray<float> d_lse_ref(static_cast<std::size_t>(s.batch * s.q_heads * s.seq));
  k::attention::forward<T>({d_out_ref.get(), d_lse_ref.get(), d_q.get(), d_k.get(), d_v.get(), ks}, nullptr);
  require_close(d_lse.download(), d_lse_ref.download(), 1e-3, 1e-3, "attention_tc lse");

  cpu::Mat dq(rows, qw), dk(rows, kw), dv(rows, kw);
  cpu::attention_backward(s, to_mat(dout, rows, qw), to_mat(q, rows, qw), to_mat(kk, rows, kw), to_mat(v, rows, kw),
                          nullptr, dq, dk, dv);
  DeviceArray<T> d_dq(static_cast<std::size_t>(rows * qw)), d_dk(static_cast<std::size_t>(rows * kw)),
      d_dv(static_cast<std::size_t>(rows * kw));
  DeviceArray<float> ws(k::attention::backward_workspace_bytes(ks) / sizeof(float));
  k::attention_tc::backward({d_dq.get(), d_dk.get(), d_dv.get(), ws.get(), d_dout.get(), d_q.get(), d_k.get(),
                             d_v.get(), d_out.get(), d_lse.get(), ks},
                            nullptr);
  const double bwd_tol = 12.0 * EPS<T>;
  for (const auto& [name, got, ref] : {std::tuple{"attention_tc dq", d_dq.download(), to_vec(dq)},
                                       std::tuple{"attention_tc dk", d_dk.download(), to_vec(dk)},
                                       std::tuple{"attention_tc dv", d_dv.download(), to_vec(dv)}}) {
    require_close(got, ref, bwd_tol, bwd_tol * std::max(1e-3, max_abs(ref)), name);
  }
}

// Context parallelism (cp = 2, load-balanced chunks): rank r's queries are chunks r and 3 - r of 4, each a call with
// q_offset = the chunk's first position against the gathered keys; dk / dv accumulate over the two calls. Reference:
// exec::cpu's positioned attention (what the CPU runtime's CP layer runs).
template <typename T>
void check_cp_attention(bool tensor_cores, std::int64_t seq, std::int64_t head_dim, double fwd_tol, double bwd_tol) {
  constexpr int CP = 2;
  const cpu::AttentionShape full{seq, 2, 4, 2, head_dim};
  const std::int64_t chunk = seq / (2 * CP), B = full.batch;
  const std::int64_t qw = full.q_heads * head_dim, kw = full.kv_heads * head_dim;
  const std::int64_t kv_rows = seq * B, q_rows = 2 * chunk * B;
  const auto kk = quantize<T>(random_vec(static_cast<std::size_t>(kv_rows * kw), 51, 2.0f));
  const auto v = quantize<T>(random_vec(static_cast<std::size_t>(kv_rows * kw), 52));
  DeviceArray<T> d_k(kk), d_v(v);
  for (int rank = 0; rank < CP; ++rank) {
    INFO("tensor cores " << tensor_cores << ", seq " << seq << ", head_dim " << head_dim << ", CP rank " << rank);
    const auto seed = static_cast<std::uint32_t>(rank);
    const auto q = quantize<T>(random_vec(static_cast<std::size_t>(q_rows * qw), 53u + seed, 2.0f));
    const auto dout = quantize<T>(random_vec(static_cast<std::size_t>(q_rows * qw), 55u + seed));
    const std::int64_t first[2] = {rank * chunk, (2 * CP - 1 - rank) * chunk};
    std::vector<std::int64_t> positions;
    for (const std::int64_t f : first) {
      for (std::int64_t t = 0; t < chunk; ++t) {
        positions.push_back(f + t);
      }
    }
    cpu::Mat out(q_rows, qw), dq(q_rows, qw), dk(kv_rows, kw), dv(kv_rows, kw);
    cpu::attention_forward_cp(full, positions, to_mat(q, q_rows, qw), to_mat(kk, kv_rows, kw),
                              to_mat(v, kv_rows, kw), out, nullptr);
    cpu::attention_backward_cp(full, positions, to_mat(dout, q_rows, qw), to_mat(q, q_rows, qw),
                               to_mat(kk, kv_rows, kw), to_mat(v, kv_rows, kw), nullptr, dq, dk, dv);
    DeviceArray<T> d_q(q), d_dout(dout), d_out(static_cast<std::size_t>(q_rows * qw));
    DeviceArray<T> d_dq(static_cast<std::size_t>(q_rows * qw)), d_dk(static_cast<std::size_t>(kv_rows * kw)),
        d_dv(static_cast<std::size_t>(kv_rows * kw));
    DeviceArray<float> d_lse(static_cast<std::size_t>(2 * B * full.q_heads * chunk));
    for (int c = 0; c < 2; ++c) {
      const k::attention::Shape ks{chunk, B, full.q_heads, full.kv_heads, head_dim, first[c]};
      const std::size_t q_at = static_cast<std::size_t>(c * chunk * B * qw);
      float* lse = d_lse.get() + c * B * full.q_heads * chunk;
      const k::attention::ForwardArgs<T> fwd{d_out.get() + q_at, lse, d_q.get() + q_at, d_k.get(), d_v.get(), ks};
      DeviceArray<float> ws(k::attention::backward_workspace_bytes(ks) / sizeof(float));
      const k::attention::BackwardArgs<T> bwd{d_dq.get() + q_at, d_dk.get(),  d_dv.get(),       ws.get(),
                                              d_dout.get() + q_at, d_q.get() + q_at, d_k.get(), d_v.get(),
                                              d_out.get() + q_at, lse, ks, true};
      if constexpr (std::is_same_v<T, k::bf16>) {
        if (tensor_cores) {
          REQUIRE(k::attention_tc::supported(ks));
          k::attention_tc::forward(fwd, nullptr);
          k::attention_tc::backward(bwd, nullptr);
          continue;
        }
      }
      k::attention::forward<T>(fwd, nullptr);
      k::attention::backward<T>(bwd, nullptr);
    }
    require_close(d_out.download(), to_vec(out), fwd_tol, fwd_tol, "cp attention out");
    for (const auto& [name, got, ref] : {std::tuple{"cp attention dq", d_dq.download(), to_vec(dq)},
                                         std::tuple{"cp attention dk", d_dk.download(), to_vec(dk)},
                                         std::tuple{"cp attention dv", d_dv.download(), to_vec(dv)}}) {
      require_close(got, ref, bwd_tol, bwd_tol * std::max(1e-3, max_abs(ref)), name);
    }
  }
}

TEMPLATE_TEST_CASE("kernels::attention with q_offset (context-parallel chunks) vs exec::cpu positioned attention",
                   "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  // 84 positions, chunks of 21: no tile boundary of the scalar kernels falls on a chunk boundary. bf16: the two
  // accumulated bf16 dk / dv contributions add one rounding.
  const double fwd_tol = std::is_same_v<T, float> ? 2e-5 : 2.0 * EPS<T>;
  const double bwd_tol = std::is_same_v<T, float> ? 1e-4 : 8.0 * EPS<T>;
  check_cp_attention<T>(false, 84, GENERATE(32, 80), fwd_tol, bwd_tol);
}

TEST_CASE("kernels::attention_tc with q_offset (context-parallel chunks) vs exec::cpu positioned attention",
          "[gpu][kernels]") {
  // 256 positions, chunks of 64 (the tensor-core tile): chunk 3 sees three off-diagonal key tiles and its diagonal.
  check_cp_attention<k::bf16>(true, 256, 64, 4.0 * EPS<k::bf16>, 14.0 * EPS<k::bf16>);
}

TEMPLATE_TEST_CASE("kernels::cross_entropy vs exec::cpu vocab-parallel cross-entropy", "[gpu][kernels]", float,
                   k::bf16) {
  using T = TestType;
  const std::int64_t rows = 9, vocab = 300;
  const auto logits = quantize<T>(random_vec(static_cast<std::size_t>(rows * vocab), 40, 3.0f));
  const auto targets = random_tokens(static_cast<std::size_t>(rows), static_cast<std::int32_t>(vocab), 41);
  cpu::Mat probs = to_mat(logits, rows, vocab);
  cpu::ColVec losses;
  cuboid::exec::LocalCommunicator tp;
  cpu::vocab_parallel_cross_entropy_forward(probs, targets, 0, tp, losses);
  const float scale = 1.0f / static_cast<float>(rows);
  cpu::Mat dlogits(rows, vocab);
  cpu::vocab_parallel_cross_entropy_backward(probs, targets, 0, scale, dlogits);

  const DeviceTokens d_targets(targets);
  DeviceArray<T> d_logits(logits);
  DeviceArray<float> d_max(static_cast<std::size_t>(rows)), d_sums(static_cast<std::size_t>(2 * rows)),
      d_losses(static_cast<std::size_t>(rows));
  k::cross_entropy::row_max<T>({d_max.get(), d_logits.get(), rows, vocab}, nullptr);
  k::cross_entropy::exp_sums<T>({d_logits.get(), d_sums.get(), d_max.get(), d_targets.get(), rows, vocab, 0}, nullptr);
  k::cross_entropy::loss_normalize<T>({d_losses.get(), d_logits.get(), d_sums.get(), rows, vocab}, nullptr);
  require_close(d_losses.download(), to_vec_any(losses), 1e-5, 1e-5, "cross-entropy losses");
  const double tol = 2.0 * EPS<T> + 1e-6;
  require_close(d_logits.download(), to_vec(probs), tol, 1e-7, "cross-entropy probs");
  k::cross_entropy::backward<T>({d_logits.get(), d_logits.get(), d_targets.get(), rows, vocab, 0, scale}, nullptr);
  require_close(d_logits.download(), to_vec(dlogits), tol, 1e-7, "cross-entropy dlogits (in place)");
}

TEST_CASE("kernels::cross_entropy: two vocabulary shards reduced on the host equal the unsharded loss",
          "[gpu][kernels]") {
  // The all-reduces of the TP group are done here on the host between the kernels (max, then sum), as NCCL would.
  const std::int64_t rows = 5, vocab = 64, half_vocab = vocab / 2;
  const auto logits = random_vec(static_cast<std::size_t>(rows * vocab), 42, 3.0f);
  const auto targets = random_tokens(static_cast<std::size_t>(rows), static_cast<std::int32_t>(vocab), 43);
  cpu::Mat probs = to_mat(logits, rows, vocab);
  cpu::ColVec losses;
  cuboid::exec::LocalCommunicator tp;
  cpu::vocab_parallel_cross_entropy_forward(probs, targets, 0, tp, losses);
  std::vector<std::unique_ptr<DeviceArray<float>>> shard_logits, shard_max, shard_sums;
  for (std::int64_t shard = 0; shard < 2; ++shard) {
    std::vector<float> part(static_cast<std::size_t>(rows * half_vocab));
    for (std::int64_t row = 0; row < rows; ++row) {
      for (std::int64_t col = 0; col < half_vocab; ++col) {
        part[static_cast<std::size_t>(row * half_vocab + col)] = logits[static_cast<std::size_t>(row * vocab + shard * half_vocab + col)];
      }
    }
    shard_logits.push_back(std::make_unique<DeviceArray<float>>(part));
    shard_max.push_back(std::make_unique<DeviceArray<float>>(static_cast<std::size_t>(rows)));
    shard_sums.push_back(std::make_unique<DeviceArray<float>>(static_cast<std::size_t>(2 * rows)));
    k::cross_entropy::row_max<float>({shard_max.back()->get(), shard_logits.back()->get(), rows, half_vocab}, nullptr);
  }
  auto m0 = shard_max[0]->download();
  const auto m1 = shard_max[1]->download();
  for (std::size_t idx = 0; idx < m0.size(); ++idx) {
    m0[idx] = std::max(m0[idx], m1[idx]);
  }
  const DeviceTokens d_targets(targets);
  for (std::int64_t shard = 0; shard < 2; ++shard) {
    shard_max[static_cast<std::size_t>(shard)]->upload(m0);
    k::cross_entropy::exp_sums<float>({shard_logits[static_cast<std::size_t>(shard)]->get(),
                                       shard_sums[static_cast<std::size_t>(shard)]->get(),
                                       shard_max[static_cast<std::size_t>(shard)]->get(), d_targets.get(), rows, half_vocab,
                                       shard * half_vocab},
                                      nullptr);
  }
  auto s0 = shard_sums[0]->download();
  const auto s1 = shard_sums[1]->download();
  for (std::size_t idx = 0; idx < s0.size(); ++idx) {
    s0[idx] += s1[idx];
  }
  shard_sums[0]->upload(s0);
  DeviceArray<float> d_losses(static_cast<std::size_t>(rows));
  k::cross_entropy::loss_normalize<float>({d_losses.get(), shard_logits[0]->get(), shard_sums[0]->get(), rows, half_vocab},
                                          nullptr);
  require_close(d_losses.download(), to_vec_any(losses), 1e-5, 1e-5, "sharded cross-entropy losses");
}

TEST_CASE("kernels::adamw vs exec::cpu::adamw_update over three steps", "[gpu][kernels]") {
  const std::size_t n = 1000;
  auto param = random_vec(n, 50);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  DeviceArray<float> d_param(param), d_m(n), d_v(n), d_grad(n);
  DeviceArray<k::bf16> d_param_bf16(n);
  const cpu::AdamWConfig config;
  for (int step = 1; step <= 3; ++step) {
    const auto grad = random_vec(n, 50 + static_cast<std::uint32_t>(step));
    cpu::adamw_update(param, grad, m, v, step, config, 0.1f, 0.5f);
    d_grad.upload(grad);
    k::adamw::Args args;
    args.param = d_param.get();
    args.m = d_m.get();
    args.v = d_v.get();
    args.param_bf16 = d_param_bf16.get();
    args.grad = d_grad.get();
    args.n = static_cast<std::int64_t>(n);
    args.step = step;
    args.lr = config.lr;
    args.beta1 = config.beta1;
    args.beta2 = config.beta2;
    args.eps = config.eps;
    args.weight_decay = 0.1f;
    args.grad_scale = 0.5f;
    k::adamw::update(args, nullptr);
  }
  const auto got = d_param.download();
  require_close(got, param, 1e-6, 1e-7, "adamw param");
  require_close(d_m.download(), m, 1e-6, 1e-9, "adamw m");
  require_close(d_v.download(), v, 1e-6, 1e-12, "adamw v");
  const auto copy = d_param_bf16.download();
  for (std::size_t idx = 0; idx < n; ++idx) {
    REQUIRE(copy[idx] == k::test::round_bf16(got[idx]));
  }
}

TEST_CASE("kernels::cast: fp32 -> bf16 rounds to nearest even; bf16 -> fp32 is exact", "[gpu][kernels]") {
  auto values = random_vec(4096, 60, 100.0f);
  values[0] = 1.00390625f; // 1 + 2^-8: a tie, rounds to even (1.0)
  values[1] = 1.01171875f; // 1 + 3 * 2^-8: a tie, rounds up to 1 + 2^-6
  DeviceArray<float> d_in(values), d_back(values.size());
  DeviceArray<k::bf16> d_bf16(values.size());
  const auto n = static_cast<std::int64_t>(values.size());
  k::cast::convert<k::bf16, float>({d_bf16.get(), d_in.get(), n}, nullptr);
  k::cast::convert<float, k::bf16>({d_back.get(), d_bf16.get(), n}, nullptr);
  const auto back = d_back.download();
  for (std::size_t idx = 0; idx < values.size(); ++idx) {
    REQUIRE(back[idx] == k::test::round_bf16(values[idx]));
  }
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == 1.015625f);
}

TEST_CASE("exec::cuda::GemmRunner (cuBLASLt bf16) vs exec::cpu::linear", "[gpu][exec]") {
  using cuboid::exec::cuda::GemmArgs;
  using cuboid::exec::cuda::GemmDType;
  const std::int64_t tokens = 64, in = 96, out = 80;
  const auto x = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * in), 70));
  const auto w = quantize<k::bf16>(random_vec(static_cast<std::size_t>(in * out), 71));
  const auto dy = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * out), 72));
  const auto dw0 = random_vec(static_cast<std::size_t>(in * out), 73);
  cpu::Mat y(tokens, out), dx(tokens, in);
  cpu::Mat dw = to_mat(dw0, in, out);
  cpu::linear_forward(to_mat(x, tokens, in), to_mat(w, in, out), nullptr, y);
  cpu::linear_backward(to_mat(dy, tokens, out), to_mat(x, tokens, in), to_mat(w, in, out), dx, dw, nullptr);
  DeviceArray<k::bf16> d_x(x), d_w(w), d_dy(dy), d_y(static_cast<std::size_t>(tokens * out)),
      d_dx(static_cast<std::size_t>(tokens * in));
  DeviceArray<float> d_dw(dw0);
  cuboid::exec::cuda::GemmRunner gemm;
  GemmArgs fwd;
  fwd.m = tokens;
  fwd.n = out;
  fwd.k = in;
  fwd.a = d_x.get();
  fwd.b = d_w.get();
  fwd.c = d_y.get();
  DeviceArray<std::uint8_t> ws(cuboid::exec::cuda::workspace_bytes(fwd));
  gemm.run(fwd, ws.get(), ws.size(), nullptr);
  GemmArgs dgrad = fwd; // dX (tokens, in) = dY (tokens, out) W^T
  dgrad.n = in;
  dgrad.k = out;
  dgrad.trans_b = true;
  dgrad.a = d_dy.get();
  dgrad.b = d_w.get();
  dgrad.c = d_dx.get();
  gemm.run(dgrad, ws.get(), ws.size(), nullptr);
  GemmArgs wgrad; // dW (in, out) += X^T dY, fp32 accumulation
  wgrad.m = in;
  wgrad.n = out;
  wgrad.k = tokens;
  wgrad.trans_a = true;
  wgrad.a = d_x.get();
  wgrad.b = d_dy.get();
  wgrad.c = d_dw.get();
  wgrad.c_type = GemmDType::F32;
  wgrad.beta = 1.0f;
  gemm.run(wgrad, ws.get(), ws.size(), nullptr);
  require_close(d_y.download(), to_vec(y), 2.0 * EPS<k::bf16>, 1e-3, "gemm forward");
  require_close(d_dx.download(), to_vec(dx), 2.0 * EPS<k::bf16>, 1e-3, "gemm dgrad");
  require_close(d_dw.download(), to_vec(dw), 1e-4, 1e-4, "gemm wgrad (fp32 accumulate)");
}

namespace {

// The linear layer's three GEMMs of the case above on `gemm`: Y = X W (+ bias), dX = dY W^T, dW += X^T dY (fp32).
struct LinearGemms {
  std::vector<float> y, dx, dw;
};

LinearGemms run_linear_gemms(cuboid::exec::cuda::GemmRunner& gemm, std::int64_t tokens, std::int64_t in,
                             std::int64_t out, const std::vector<float>& x, const std::vector<float>& w,
                             const std::vector<float>& dy, const std::vector<float>& dw0) {
  using cuboid::exec::cuda::GemmArgs;
  DeviceArray<k::bf16> d_x(x), d_w(w), d_dy(dy), d_y(static_cast<std::size_t>(tokens * out)),
      d_dx(static_cast<std::size_t>(tokens * in));
  DeviceArray<float> d_dw(dw0);
  GemmArgs fwd;
  fwd.m = tokens;
  fwd.n = out;
  fwd.k = in;
  fwd.a = d_x.get();
  fwd.b = d_w.get();
  fwd.c = d_y.get();
  DeviceArray<std::uint8_t> ws(cuboid::exec::cuda::workspace_bytes(fwd));
  gemm.run(fwd, ws.get(), ws.size(), nullptr);
  GemmArgs dgrad = fwd;
  dgrad.n = in;
  dgrad.k = out;
  dgrad.trans_b = true;
  dgrad.a = d_dy.get();
  dgrad.b = d_w.get();
  dgrad.c = d_dx.get();
  gemm.run(dgrad, ws.get(), ws.size(), nullptr);
  GemmArgs wgrad;
  wgrad.m = in;
  wgrad.n = out;
  wgrad.k = tokens;
  wgrad.trans_a = true;
  wgrad.a = d_x.get();
  wgrad.b = d_dy.get();
  wgrad.c = d_dw.get();
  wgrad.c_type = cuboid::exec::cuda::GemmDType::F32;
  wgrad.beta = 1.0f;
  gemm.run(wgrad, ws.get(), ws.size(), nullptr);
  return {d_y.download(), d_dx.download(), d_dw.download()};
}

} // namespace

TEST_CASE("exec::cuda::GemmRunner: bias epilogue (Y = X W + b, b per output column) vs exec::cpu::linear_forward",
          "[gpu][exec]") {
  // The bias is one value per row-major column (output feature); cuBLASLt adds it per row of the column-major D
  // (exec/cuda/gemm.hpp ColumnMajorProblem::bias). tokens != out, so a bias applied along the wrong axis fails.
  using cuboid::exec::cuda::GemmArgs;
  const std::int64_t tokens = 64, in = 96, out = 80;
  const bool trans_b = GENERATE(false, true); // W stored (in, out), or (out, in) and used transposed
  CAPTURE(trans_b);
  const auto x = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * in), 80));
  const auto w = quantize<k::bf16>(random_vec(static_cast<std::size_t>(in * out), 81));
  const auto bias = quantize<k::bf16>(random_vec(static_cast<std::size_t>(out), 82, 2.0f));
  std::vector<float> w_stored = w;
  if (trans_b) {
    for (std::int64_t row = 0; row < in; ++row) {
      for (std::int64_t col = 0; col < out; ++col) {
        w_stored[static_cast<std::size_t>(col * in + row)] = w[static_cast<std::size_t>(row * out + col)];
      }
    }
  }
  cpu::Mat y(tokens, out);
  cpu::linear_forward(to_mat(x, tokens, in), to_mat(w, in, out), bias.data(), y);
  DeviceArray<k::bf16> d_x(x), d_w(w_stored), d_bias(bias), d_y(static_cast<std::size_t>(tokens * out));
  cuboid::exec::cuda::GemmRunner gemm;
  GemmArgs fwd;
  fwd.m = tokens;
  fwd.n = out;
  fwd.k = in;
  fwd.trans_b = trans_b;
  fwd.a = d_x.get();
  fwd.b = d_w.get();
  fwd.c = d_y.get();
  fwd.bias = d_bias.get();
  DeviceArray<std::uint8_t> ws(cuboid::exec::cuda::workspace_bytes(fwd));
  REQUIRE(gemm.has_algorithm(fwd, ws.size()));
  gemm.run(fwd, ws.get(), ws.size(), nullptr);
  require_close(d_y.download(), to_vec(y), 2.0 * EPS<k::bf16>, 1e-3, "gemm forward + bias epilogue");
  CHECK(d_bias.download() == bias);
}

TEST_CASE("exec::cuda::GemmRunner: residual from c_in (D = X W + b + R, C != D) leaves R unchanged", "[gpu][exec]") {
  using cuboid::exec::cuda::GemmArgs;
  const std::int64_t tokens = 64, in = 96, out = 80;
  const bool use_bias = GENERATE(false, true);
  CAPTURE(use_bias);
  const auto x = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * in), 90));
  const auto w = quantize<k::bf16>(random_vec(static_cast<std::size_t>(in * out), 91));
  const auto bias = quantize<k::bf16>(random_vec(static_cast<std::size_t>(out), 92));
  const auto residual = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * out), 93, 4.0f));
  cpu::Mat y(tokens, out);
  cpu::linear_forward(to_mat(x, tokens, in), to_mat(w, in, out), use_bias ? bias.data() : nullptr, y);
  std::vector<float> ref = to_vec(y);
  for (std::size_t idx = 0; idx < ref.size(); ++idx) {
    ref[idx] += residual[idx];
  }
  DeviceArray<k::bf16> d_x(x), d_w(w), d_bias(bias), d_res(residual), d_out(static_cast<std::size_t>(tokens * out));
  d_out.upload(std::vector<float>(static_cast<std::size_t>(tokens * out), 1e4f)); // must be overwritten, not read
  cuboid::exec::cuda::GemmRunner gemm;
  GemmArgs fwd;
  fwd.m = tokens;
  fwd.n = out;
  fwd.k = in;
  fwd.a = d_x.get();
  fwd.b = d_w.get();
  fwd.c = d_out.get();
  fwd.c_in = d_res.get();
  fwd.beta = 1.0f;
  fwd.bias = use_bias ? d_bias.get() : nullptr;
  DeviceArray<std::uint8_t> ws(cuboid::exec::cuda::workspace_bytes(fwd));
  REQUIRE(gemm.has_algorithm(fwd, ws.size()));
  gemm.run(fwd, ws.get(), ws.size(), nullptr);
  require_close(d_out.download(), ref, 2.0 * EPS<k::bf16>, 1e-3, "gemm + residual from c_in");
  CHECK(d_res.download() == residual);
}

TEST_CASE("exec::cuda::GemmRunner: Autotune computes what Heuristic computes (linear layer's three GEMMs)",
          "[gpu][exec]") {
  // Autotune times its candidates into its own scratch D: the in-place weight-gradient accumulation (beta = 1)
  // would otherwise add X^T dY once per timing launch.
  using cuboid::exec::cuda::GemmAlgoSelection;
  const std::int64_t tokens = 64, in = 96, out = 80;
  const auto x = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * in), 100));
  const auto w = quantize<k::bf16>(random_vec(static_cast<std::size_t>(in * out), 101));
  const auto dy = quantize<k::bf16>(random_vec(static_cast<std::size_t>(tokens * out), 102));
  const auto dw0 = random_vec(static_cast<std::size_t>(in * out), 103);
  cpu::Mat y(tokens, out), dx(tokens, in);
  cpu::Mat dw = to_mat(dw0, in, out);
  cpu::linear_forward(to_mat(x, tokens, in), to_mat(w, in, out), nullptr, y);
  cpu::linear_backward(to_mat(dy, tokens, out), to_mat(x, tokens, in), to_mat(w, in, out), dx, dw, nullptr);
  cuboid::exec::cuda::GemmRunner heuristic(GemmAlgoSelection::Heuristic);
  cuboid::exec::cuda::GemmRunner autotune(GemmAlgoSelection::Autotune);
  const LinearGemms h = run_linear_gemms(heuristic, tokens, in, out, x, w, dy, dw0);
  const LinearGemms t = run_linear_gemms(autotune, tokens, in, out, x, w, dy, dw0);
  require_close(t.y, to_vec(y), 2.0 * EPS<k::bf16>, 1e-3, "autotuned forward");
  require_close(t.dx, to_vec(dx), 2.0 * EPS<k::bf16>, 1e-3, "autotuned dgrad");
  require_close(t.dw, to_vec(dw), 1e-4, 1e-4, "autotuned wgrad (fp32 accumulate, in place)");
  // Against each other: both are within bf16 rounding of the same values (other algorithms may sum in another
  // order, so equality is not required).
  require_close(t.y, h.y, 4.0 * EPS<k::bf16>, 1e-3, "autotuned vs heuristic forward");
  require_close(t.dx, h.dx, 4.0 * EPS<k::bf16>, 1e-3, "autotuned vs heuristic dgrad");
  require_close(t.dw, h.dw, 1e-4, 1e-4, "autotuned vs heuristic wgrad");
  // A second run of the tuned shapes reuses the plans (no re-tuning) and accumulates dW once more.
  const LinearGemms again = run_linear_gemms(autotune, tokens, in, out, x, w, dy, t.dw);
  cpu::Mat dw2 = to_mat(to_vec(dw), in, out);
  cpu::Mat dx2(tokens, in);
  cpu::linear_backward(to_mat(dy, tokens, out), to_mat(x, tokens, in), to_mat(w, in, out), dx2, dw2, nullptr);
  require_close(again.dw, to_vec(dw2), 1e-4, 1e-4, "autotuned wgrad, second accumulation");
}

TEST_CASE("exec::cuda::GemmRunner::has_algorithm and can_implement of the bias epilogue", "[gpu][exec]") {
  using cuboid::exec::cuda::GemmArgs;
  using cuboid::exec::cuda::GemmDType;
  cuboid::exec::cuda::GemmRunner gemm;
  alignas(256) std::uint8_t probe[256] = {}; // has_algorithm does not read the pointers
  GemmArgs args;
  args.m = 2048;
  args.n = 2048;
  args.k = 2048;
  args.a = args.b = args.c = probe;
  const std::size_t ws = cuboid::exec::cuda::workspace_bytes(args);
  CHECK(cuboid::exec::cuda::can_implement(args).empty());
  CHECK(gemm.has_algorithm(args, ws)); // a plain bf16 GEMM: cuBLASLt always has one
  args.c_type = GemmDType::F32;
  args.bias = probe;
  CHECK_THAT(cuboid::exec::cuda::can_implement(args), Catch::Contains("bias") && Catch::Contains("c fp32"));
  CHECK_FALSE(gemm.has_algorithm(args, ws)); // refused before cuBLASLt is asked
  args.c_type = GemmDType::BF16;
  CHECK(cuboid::exec::cuda::can_implement(args).empty());
}

TEST_CASE("exec::cuda::NcclCommunicator on every local GPU: exactly predictable reductions", "[gpu][exec]") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  std::vector<int> ids(static_cast<std::size_t>(devices));
  std::vector<cudaStream_t> streams(ids.size());
  for (int dev = 0; dev < devices; ++dev) {
    ids[static_cast<std::size_t>(dev)] = dev;
    REQUIRE(cudaSetDevice(dev) == cudaSuccess);
    REQUIRE(cudaStreamCreate(&streams[static_cast<std::size_t>(dev)]) == cudaSuccess);
  }
  auto comms = cuboid::exec::cuda::NcclCommunicator::init_all(ids, streams);
  const std::size_t count = 1024;
  const int n = devices;
  const std::size_t block = 64; // of the in-place reduce-scatter and all-gather
  const std::size_t inplace_count = block * static_cast<std::size_t>(n);
  REQUIRE(inplace_count <= count);
  std::vector<std::vector<float>> sum_results(ids.size()), max_results(ids.size()), gathered(ids.size());
  std::vector<std::vector<float>> scattered(ids.size()), regathered(ids.size());
  std::vector<int> split_sizes(ids.size()), split_ranks(ids.size());
  std::vector<std::thread> threads;
  // One thread per rank: NCCL calls of different ranks of one communicator must not be serialised on one thread.
  for (int rank = 0; rank < n; ++rank) {
    threads.emplace_back([&, rank] {
      const auto r = static_cast<std::size_t>(rank);
      cudaSetDevice(rank);
      std::vector<float> host(count);
      for (std::size_t idx = 0; idx < count; ++idx) {
        host[idx] = static_cast<float>(rank + static_cast<int>(idx % 13)); // small integers: sums are exact
      }
      DeviceArray<float> buf(host), mx(host), part(4),
          all(4 * static_cast<std::size_t>(n));
      auto req = comms[r]->all_reduce_async(std::span<float>(buf.get(), count));
      req->wait();
      comms[r]->all_reduce(std::span<float>(mx.get(), count), cuboid::exec::ReduceOp::Max);
      part.upload({static_cast<float>(rank), 1.0f, 2.0f, 3.0f});
      comms[r]->all_gather(std::span<const float>(part.get(), 4), std::span<float>(all.get(), all.size()));
      // The distributed optimizer's in-place pair: block `rank` of the reduce-scatter's buffer gets the sum of every
      // rank's block `rank`; the all-gather then copies each rank's block to all.
      const std::vector<float> blocks(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(inplace_count));
      DeviceArray<float> inplace(blocks);
      const std::span<float> whole(inplace.get(), inplace_count);
      auto scatter = comms[r]->reduce_scatter_in_place_async(whole);
      scatter->wait();
      cudaStreamSynchronize(streams[r]);
      scattered[r] = inplace.download();
      if (rank % 2 == 0) {
        comms[r]->all_gather_in_place(whole);
      } else { // the same collective, issued on the communication stream (--overlap-param-gather)
        comms[r]->all_gather_in_place_async(whole)->wait();
      }
      // Split by parity (as TP/DP groups are split from the world): ranks 0, 2, 4, ... and 1, 3, 5, ...
      const auto sub = comms[r]->split(rank % 2, rank);
      split_sizes[r] = sub->size();
      split_ranks[r] = sub->rank();
      cudaStreamSynchronize(streams[r]);
      sum_results[r] = buf.download();
      max_results[r] = mx.download();
      gathered[r] = all.download();
      regathered[r] = inplace.download();
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (int rank = 0; rank < n; ++rank) {
    const auto r = static_cast<std::size_t>(rank);
    for (std::size_t idx = 0; idx < count; ++idx) {
      const auto base = static_cast<float>(idx % 13);
      REQUIRE(sum_results[r][idx] == static_cast<float>(n) * base + static_cast<float>(n * (n - 1) / 2));
      REQUIRE(max_results[r][idx] == base + static_cast<float>(n - 1));
    }
    for (int peer = 0; peer < n; ++peer) {
      REQUIRE(gathered[r][static_cast<std::size_t>(4 * peer)] == static_cast<float>(peer));
    }
    for (std::size_t idx = 0; idx < inplace_count; ++idx) {
      const float sum = static_cast<float>(n) * static_cast<float>(idx % 13) + static_cast<float>(n * (n - 1) / 2);
      if (idx / block == r) {
        REQUIRE(scattered[r][idx] == sum);
      }
      REQUIRE(regathered[r][idx] == sum); // every block, on every rank
    }
    CHECK(split_sizes[r] == (rank % 2 == 0 ? (n + 1) / 2 : n / 2));
    CHECK(split_ranks[r] == rank / 2);
  }
  comms.clear();
  for (auto s : streams) {
    cudaStreamDestroy(s);
  }
}

TEST_CASE("exec::cuda::EventTimeline: task times in the measured-trace format", "[gpu][exec]") {
  // Two dependent casts of 64M elements on one stream: the second starts after the first ends, both after the step
  // start, and each takes more than zero time.
  const std::int64_t n = 64 << 20;
  DeviceArray<float> a(static_cast<std::size_t>(n));
  DeviceArray<k::bf16> b(static_cast<std::size_t>(n));
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  cuboid::exec::cuda::EventTimeline timeline(3);
  for (int step = 0; step < 2; ++step) { // the second step reuses the pooled events
    timeline.begin_step(stream);
    const auto first = timeline.start(11, cuboid::model::Stream::Compute, "cast.a", "compute", stream);
    k::cast::convert<k::bf16, float>({b.get(), a.get(), n}, stream);
    timeline.stop(first, stream);
    const auto second = timeline.start(12, cuboid::model::Stream::Compute, "cast.b", "compute", stream);
    k::cast::convert<float, k::bf16>({a.get(), b.get(), n}, stream);
    timeline.stop(second, stream);
    const auto events = timeline.collect();
    REQUIRE(events.size() == 2);
    CHECK(events[0].id == 11);
    CHECK(events[1].name == "cast.b");
    CHECK(events[0].rank == 3);
    CHECK(events[0].start_s >= 0.0);
    CHECK(events[0].end_s > events[0].start_s);
    CHECK(events[1].start_s >= events[0].end_s);
    CHECK(events[1].end_s > events[1].start_s);
  }
  cudaStreamDestroy(stream);
}

TEMPLATE_TEST_CASE("kernels::elementwise: column sums (chunked over rows), bias and residual adds vs the host",
                   "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  // (1000, 130): 3 column tiles (the last one partial) x 16 row chunks added atomically; (3, 2100): one chunk.
  for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1000, 130}, {3, 2100}}) {
    INFO("rows " << rows << ", cols " << cols);
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    const auto dy = quantize<T>(random_vec(n, 40));
    const auto partial = random_vec(n, 41);
    const auto bias = random_vec(static_cast<std::size_t>(cols), 42);
    const auto initial = random_vec(static_cast<std::size_t>(cols), 43);
    const k::elementwise::ColumnSumArgs<T> args{nullptr, nullptr, rows, cols};
    CHECK(args.row_chunks() == (rows == 1000 ? 16 : 1));
    DeviceArray<T> d_dy(dy), d_out(n);
    DeviceArray<float> d_sum(initial), d_partial(partial), d_bias(bias);
    k::elementwise::column_sum<T>({d_sum.get(), d_dy.get(), rows, cols}, nullptr);
    std::vector<float> ref_sum(initial);
    std::vector<float> ref_residual(n), ref_bias_add(n);
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        const auto idx = static_cast<std::size_t>(r * cols + c);
        ref_sum[static_cast<std::size_t>(c)] += dy[idx];
        ref_residual[idx] = dy[idx] + (partial[idx] + bias[static_cast<std::size_t>(c)]);
        ref_bias_add[idx] = dy[idx] + bias[static_cast<std::size_t>(c)];
      }
    }
    require_close(d_sum.download(), ref_sum, 1e-5, 1e-4, "column_sum");
    k::elementwise::residual_add<T>({d_out.get(), d_dy.get(), d_partial.get(), d_bias.get(), rows, cols}, nullptr);
    require_close(d_out.download(), quantize<T>(ref_residual), EPS<T>, 1e-6, "residual_add");
    k::elementwise::bias_add<T>({d_dy.get(), d_bias.get(), rows, cols}, nullptr);
    require_close(d_dy.download(), quantize<T>(ref_bias_add), EPS<T>, 1e-6, "bias_add");
  }
}

// ---- 16-byte vector paths (activation, cast, bias / residual add)
// A launcher takes its vector path (one uint4 = 8 bf16 or 4 fp32 per access) only when the sizes split into whole
// vectors (with a per-column bias: no vector straddles a row) and every pointer is 16-byte aligned; else the scalar
// kernel. Both apply the same fp32 math per element, so their outputs must be equal bit for bit. The tests run each
// kernel on an aligned, vector-friendly shape and again with one buffer (in turn each buffer, then all of them)
// placed one element past a 16-byte boundary, which forces the scalar path; on the CUDA emulator a vector access at
// such a pointer fails the launch, so a launcher that forgot to check one pointer fails here too.

#include <cstring> // std::memcmp (kept with this section)
#include <limits>

namespace {
// n elements of T on the device, `shift` elements past the start of a cudaMalloc allocation (256-byte aligned):
// shift 0 is 16-byte aligned, shift 1 is not.
template <typename T> class ShiftedArray {
public:
  ShiftedArray(const std::vector<float>& host, std::size_t shift) : shift_(shift), array_(prefixed(host, shift)) {}
  ShiftedArray(std::size_t n, std::size_t shift) : shift_(shift), array_(n + shift) {}
  [[nodiscard]] T* get() const { return array_.get() + shift_; }
  [[nodiscard]] std::vector<float> download() const {
    const auto all = array_.download();
    return {all.begin() + static_cast<std::ptrdiff_t>(shift_), all.end()};
  }

private:
  static std::vector<float> prefixed(const std::vector<float>& host, std::size_t shift) {
    std::vector<float> out(shift, 0.0f);
    out.insert(out.end(), host.begin(), host.end());
    return out;
  }
  std::size_t shift_;
  DeviceArray<T> array_;
};

// Bit-for-bit equality (downloads are exact: bf16 widens to fp32 without rounding); reports the first difference.
void require_identical(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  REQUIRE(got.size() == want.size());
  const auto diff = std::mismatch(got.begin(), got.end(), want.begin(), [](float a, float b) {
    return std::memcmp(&a, &b, sizeof(float)) == 0;
  });
  INFO(what << ": first different element " << (diff.first - got.begin()) << " of " << got.size());
  CHECK(diff.first == got.end());
}

// Placements to try: bit b of a mask shifts buffer b by one element. 0 (all aligned) first, then each buffer alone,
// then all of them.
std::vector<unsigned> shift_masks(int buffers) {
  std::vector<unsigned> masks{0u};
  for (int b = 0; b < buffers; ++b) {
    masks.push_back(1u << b);
  }
  masks.push_back((1u << buffers) - 1u);
  return masks;
}
std::size_t shift_of(unsigned mask, int buffer) { return (mask >> buffer) & 1u; }
} // namespace

TEMPLATE_TEST_CASE("kernels::activation: the 16-byte vector path equals the scalar path bit for bit and exec::cpu",
                   "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  // (10, 128): n and cols multiples of 8, the vector path when aligned. (10, 132): n a multiple of 8 but cols not:
  // in bf16 the bias variants take the scalar path (a vector of 8 would straddle rows), the others the vector path;
  // in fp32 (vectors of 4) all take it. (10, 129): n odd, the scalar path everywhere.
  const auto [rows, cols] = GENERATE(std::make_tuple(std::int64_t{10}, std::int64_t{128}),
                                     std::make_tuple(std::int64_t{10}, std::int64_t{132}),
                                     std::make_tuple(std::int64_t{10}, std::int64_t{129}));
  const std::int64_t n = rows * cols;
  const auto un = static_cast<std::size_t>(n);
  const auto x = quantize<T>(random_vec(un, 70, 4.0f)); // also SwiGLU's gate
  const auto up = quantize<T>(random_vec(un, 71, 2.0f));
  const auto dy = quantize<T>(random_vec(un, 72));
  const auto bias = random_vec(static_cast<std::size_t>(cols), 73, 1.0f);
  std::vector<float> xb(x);
  for (std::size_t idx = 0; idx < un; ++idx) {
    xb[idx] += bias[idx % static_cast<std::size_t>(cols)];
  }
  // References, in the order run() returns its outputs.
  cpu::Mat gy(rows, cols), gdx(rows, cols), gby(rows, cols), gbdx(rows, cols), sy(rows, cols), sdg(rows, cols),
      sdu(rows, cols);
  cpu::gelu_forward(to_mat(x, rows, cols), gy);
  cpu::gelu_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), gdx);
  cpu::gelu_forward(to_mat(xb, rows, cols), gby);
  cpu::gelu_backward(to_mat(dy, rows, cols), to_mat(xb, rows, cols), gbdx);
  cpu::swiglu_forward(to_mat(x, rows, cols), to_mat(up, rows, cols), sy);
  cpu::swiglu_backward(to_mat(dy, rows, cols), to_mat(x, rows, cols), to_mat(up, rows, cols), sdg, sdu);
  const std::vector<std::vector<float>> refs{to_vec(gy), to_vec(gdx), to_vec(gby), to_vec(gbdx),
                                             to_vec(sy), to_vec(sdg), to_vec(sdu)};
  const std::vector<std::string> names{"gelu y",         "gelu dx",      "gelu(x + bias) y", "gelu(x + bias) dx",
                                       "swiglu y",       "swiglu dgate", "swiglu dup"};
  // Buffers: 0 x (gate), 1 up, 2 dy, 3 bias, 4 first output, 5 second output (SwiGLU's dup).
  constexpr int BUFFERS = 6;
  const auto run = [&](unsigned mask) {
    const ShiftedArray<T> d_x(x, shift_of(mask, 0)), d_up(up, shift_of(mask, 1)), d_dy(dy, shift_of(mask, 2));
    const ShiftedArray<float> d_bias(bias, shift_of(mask, 3));
    const ShiftedArray<T> d_out(un, shift_of(mask, 4)), d_out2(un, shift_of(mask, 5));
    std::vector<std::vector<float>> out;
    k::activation::gelu_forward<T>({d_out.get(), d_x.get(), n}, nullptr);
    out.push_back(d_out.download());
    k::activation::gelu_backward<T>({d_out.get(), d_dy.get(), d_x.get(), n}, nullptr);
    out.push_back(d_out.download());
    k::activation::gelu_forward<T>({d_out.get(), d_x.get(), n, d_bias.get(), cols}, nullptr);
    out.push_back(d_out.download());
    k::activation::gelu_backward<T>({d_out.get(), d_dy.get(), d_x.get(), n, d_bias.get(), cols}, nullptr);
    out.push_back(d_out.download());
    k::activation::swiglu_forward<T>({d_out.get(), d_x.get(), d_up.get(), n}, nullptr);
    out.push_back(d_out.download());
    k::activation::swiglu_backward<T>({d_out.get(), d_out2.get(), d_dy.get(), d_x.get(), d_up.get(), n}, nullptr);
    out.push_back(d_out.download());
    out.push_back(d_out2.download());
    return out;
  };
  const double tol = 2.0 * EPS<T> + 1e-6;
  const auto aligned = run(0u);
  for (const unsigned mask : shift_masks(BUFFERS)) {
    INFO("rows " << rows << ", cols " << cols << ", buffers shifted by one element: mask " << mask);
    const auto got = mask == 0u ? aligned : run(mask);
    for (std::size_t op = 0; op < refs.size(); ++op) {
      require_close(got[op], refs[op], tol, tol, names[op]);
      require_identical(got[op], aligned[op], names[op] + " vs the aligned run");
    }
  }
}

// 134,400 x 1000 bf16 elements = 16,800,000 vectors of 8: more than the capped grid (65536 blocks x 256 threads =
// 16,777,216 threads), so the first threads take a second grid stride, and their vector column wraps (16,777,216 mod
// 125 vectors per row = 91). The kernels with a per-column bias, whose column bookkeeping that exercises: GeLU
// forward, the residual add and the bias add (GeLU backward repeats the forward's bookkeeping; its tanh costs the
// emulator ~15 s more at this size). Checked in row chunks against exec::cpu and the host sums (the device holds
// 2 x 269 MB of bf16 and 538 MB of fp32).
TEST_CASE("kernels: bias kernels on the vector path over more than one grid stride", "[gpu][kernels]") {
  using k::test::bf16_bits_to_float;
  using k::test::float_to_bf16_bits;
  const std::int64_t rows = 134400, cols = 1000, n = rows * cols;
  const std::int64_t chunk_rows = 4200; // 32 chunks
  const auto chunk = static_cast<std::size_t>(chunk_rows * cols);
  const auto ucols = static_cast<std::size_t>(cols);
  const auto value = [](std::int64_t idx, std::uint64_t salt) { // a cheap deterministic pattern in [-4, 4)
    const std::uint64_t h = (static_cast<std::uint64_t>(idx) + salt) * 0x9e3779b97f4a7c15ull;
    return static_cast<float>(h >> 40) / 2097152.0f - 4.0f; // 24 bits / 2^21
  };
  const auto bias = random_vec(ucols, 74, 1.0f);
  const DeviceArray<float> d_bias(bias), d_partial(static_cast<std::size_t>(n));
  const DeviceArray<k::bf16> d_x(static_cast<std::size_t>(n)), d_y(static_cast<std::size_t>(n));
  std::vector<std::uint16_t> bits(chunk);
  std::vector<float> host(chunk);
  for (std::int64_t begin = 0; begin < n; begin += chunk_rows * cols) {
    for (std::size_t idx = 0; idx < chunk; ++idx) {
      bits[idx] = float_to_bf16_bits(value(begin + static_cast<std::int64_t>(idx), 1));
      host[idx] = value(begin + static_cast<std::int64_t>(idx), 2);
    }
    k::test::check(cudaMemcpy(d_x.get() + begin, bits.data(), chunk * sizeof(std::uint16_t), cudaMemcpyHostToDevice),
                   "upload");
    k::test::check(cudaMemcpy(d_partial.get() + begin, host.data(), chunk * sizeof(float), cudaMemcpyHostToDevice),
                   "upload");
  }
  const auto download = [&](const DeviceArray<k::bf16>& d, std::int64_t begin) {
    k::test::check(cudaMemcpy(bits.data(), d.get() + begin, chunk * sizeof(std::uint16_t), cudaMemcpyDeviceToHost),
                   "download");
    std::vector<float> out(chunk);
    std::transform(bits.begin(), bits.end(), out.begin(), bf16_bits_to_float);
    return out;
  };
  // check(d, ref): ref(x, partial, bias) per element, or (with gelu) exec::cpu::gelu_forward of x + bias.
  const auto check_all = [&](const DeviceArray<k::bf16>& d, bool gelu, const auto& ref, double rtol, double atol,
                             const std::string& what) {
    k::test::check(cudaDeviceSynchronize(), "kernel");
    std::vector<float> want(chunk);
    for (std::int64_t begin = 0; begin < n; begin += chunk_rows * cols) {
      INFO(what << ": rows " << begin / cols << " to " << begin / cols + chunk_rows);
      for (std::size_t idx = 0; idx < chunk; ++idx) {
        const auto at = begin + static_cast<std::int64_t>(idx);
        want[idx] = ref(k::test::round_bf16(value(at, 1)), value(at, 2), bias[idx % ucols]);
      }
      if (gelu) {
        cpu::Mat y(chunk_rows, cols);
        cpu::gelu_forward(to_mat(want, chunk_rows, cols), y);
        want = to_vec(y);
      }
      require_close(download(d, begin), want, rtol, atol, what);
    }
  };
  const double gelu_tol = 2.0 * EPS<k::bf16> + 1e-6;
  k::activation::gelu_forward<k::bf16>({d_y.get(), d_x.get(), n, d_bias.get(), cols}, nullptr);
  check_all(d_y, true, [](float x, float, float b) { return x + b; }, gelu_tol, gelu_tol, "gelu(x + bias)");
  k::elementwise::residual_add<k::bf16>({d_y.get(), d_x.get(), d_partial.get(), d_bias.get(), rows, cols}, nullptr);
  check_all(d_y, false, [](float x, float p, float b) { return k::test::round_bf16(x + (p + b)); }, EPS<k::bf16>,
            1e-6, "residual_add");
  k::elementwise::bias_add<k::bf16>({d_x.get(), d_bias.get(), rows, cols}, nullptr);
  check_all(d_x, false, [](float x, float, float b) { return k::test::round_bf16(x + b); }, EPS<k::bf16>, 1e-6,
            "bias_add");
}

TEST_CASE("kernels::cast: the 16-byte vector path equals the scalar path and the host rounding bit for bit",
          "[gpu][kernels]") {
  // 4096: the vector path (groups of 8) when aligned; 4093: the scalar path.
  const std::size_t n = GENERATE(std::size_t{4096}, std::size_t{4093});
  auto values = random_vec(n, 75, 100.0f);
  values[0] = 1.00390625f; // 1 + 2^-8: a tie, rounds to even (1.0)
  values[1] = 1.01171875f; // 1 + 3 * 2^-8: a tie, rounds up to 1 + 2^-6
  values[2] = -0.0f;
  values[3] = std::numeric_limits<float>::infinity();
  values[4] = std::numeric_limits<float>::max(); // rounds to inf
  values[5] = std::numeric_limits<float>::denorm_min() * 3.0f;
  values[9] = 1.00390625f; // ties again in the second group of 8
  std::vector<float> rounded(values);
  std::transform(rounded.begin(), rounded.end(), rounded.begin(), k::test::round_bf16);
  const auto count = static_cast<std::int64_t>(n);
  for (const unsigned mask : shift_masks(2)) { // buffers: 0 input, 1 output
    INFO("n " << n << ", buffers shifted by one element: mask " << mask);
    const ShiftedArray<float> d_in(values, shift_of(mask, 0));
    const ShiftedArray<k::bf16> d_bf16(n, shift_of(mask, 1));
    k::cast::convert<k::bf16, float>({d_bf16.get(), d_in.get(), count}, nullptr);
    require_identical(d_bf16.download(), rounded, "fp32 -> bf16");
    const ShiftedArray<k::bf16> d_back_in(rounded, shift_of(mask, 0));
    const ShiftedArray<float> d_back(n, shift_of(mask, 1));
    k::cast::convert<float, k::bf16>({d_back.get(), d_back_in.get(), count}, nullptr);
    require_identical(d_back.download(), rounded, "bf16 -> fp32");
  }
}

TEMPLATE_TEST_CASE("kernels::elementwise: bias and residual adds on the 16-byte vector path equal the scalar path",
                   "[gpu][kernels]", float, k::bf16) {
  using T = TestType;
  // As the activation test: (10, 128) vector; (10, 132) bf16 scalar with a bias (rows would be straddled), vector
  // for the residual add without one; (10, 129) scalar.
  const auto [rows, cols] = GENERATE(std::make_tuple(std::int64_t{10}, std::int64_t{128}),
                                     std::make_tuple(std::int64_t{10}, std::int64_t{132}),
                                     std::make_tuple(std::int64_t{10}, std::int64_t{129}));
  const auto un = static_cast<std::size_t>(rows * cols);
  const auto x = quantize<T>(random_vec(un, 76));
  const auto partial = random_vec(un, 77);
  const auto bias = random_vec(static_cast<std::size_t>(cols), 78);
  std::vector<float> ref_bias_add(un), ref_residual(un), ref_residual_plain(un);
  for (std::size_t idx = 0; idx < un; ++idx) {
    const float b = bias[idx % static_cast<std::size_t>(cols)];
    ref_bias_add[idx] = x[idx] + b;
    ref_residual[idx] = x[idx] + (partial[idx] + b);
    ref_residual_plain[idx] = x[idx] + (partial[idx] + 0.0f);
  }
  const std::vector<std::vector<float>> refs{quantize<T>(ref_bias_add), quantize<T>(ref_residual),
                                             quantize<T>(ref_residual_plain), quantize<T>(ref_residual)};
  const std::vector<std::string> names{"bias_add", "residual_add", "residual_add without bias",
                                       "residual_add in place"};
  // Buffers: 0 x (bias_add's y), 1 partial, 2 bias, 3 out.
  constexpr int BUFFERS = 4;
  const auto run = [&](unsigned mask) {
    std::vector<std::vector<float>> out;
    const ShiftedArray<float> d_partial(partial, shift_of(mask, 1)), d_bias(bias, shift_of(mask, 2));
    {
      const ShiftedArray<T> d_y(x, shift_of(mask, 0));
      k::elementwise::bias_add<T>({d_y.get(), d_bias.get(), rows, cols}, nullptr);
      out.push_back(d_y.download());
    }
    const ShiftedArray<T> d_x(x, shift_of(mask, 0)), d_out(un, shift_of(mask, 3));
    k::elementwise::residual_add<T>({d_out.get(), d_x.get(), d_partial.get(), d_bias.get(), rows, cols}, nullptr);
    out.push_back(d_out.download());
    k::elementwise::residual_add<T>({d_out.get(), d_x.get(), d_partial.get(), nullptr, rows, cols}, nullptr);
    out.push_back(d_out.download());
    k::elementwise::residual_add<T>({d_x.get(), d_x.get(), d_partial.get(), d_bias.get(), rows, cols}, nullptr);
    out.push_back(d_x.download());
    return out;
  };
  const auto aligned = run(0u);
  for (const unsigned mask : shift_masks(BUFFERS)) {
    INFO("rows " << rows << ", cols " << cols << ", buffers shifted by one element: mask " << mask);
    const auto got = mask == 0u ? aligned : run(mask);
    for (std::size_t op = 0; op < refs.size(); ++op) {
      require_close(got[op], refs[op], EPS<T>, 1e-6, names[op]);
      require_identical(got[op], aligned[op], names[op] + " vs the aligned run");
    }
  }
}
