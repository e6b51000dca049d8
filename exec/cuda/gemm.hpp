// cuBLASLt GEMM wrapper in the layout of the CPU backend (row-major, exec/cpu/linear.hpp): C (m, n) = alpha op(A)
// op(B) + beta C with bf16 (or fp32) inputs and fp32 accumulation (CUBLAS_COMPUTE_32F). Interface after
// NVIDIA/cutlass gemm_universal_adapter.h: can_implement(args), workspace_bytes(args), run(args, workspace, stream).
// cuBLASLt is column-major; to_column_major() states the mapping (row-major C = A B is column-major C^T = B^T A^T)
// and is tested on the CPU against a naive column-major GEMM.
// The linear layer maps onto it as: forward Y = X W (no transposes), data gradient dX = dY W^T (trans_b), weight
// gradient dW += X^T dY (trans_a, beta = 1, fp32 C so that micro-batches accumulate in fp32). Fusions that save HBM
// traffic: a bias added in the epilogue (no separate bias kernel re-reading Y) and C != D (a residual read from c_in
// while the sum is written to c, so no copy of the residual first).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include <cuda_runtime_api.h>

namespace cuboid::exec::cuda {

enum class GemmDType { BF16, F32 };

/// How GemmRunner picks a cuBLASLt algorithm for a new shape: the heuristic's first (Heuristic), or the fastest of
/// the heuristic's first 8, timed on the GPU on the first run of the shape (Autotune; see GemmRunner).
enum class GemmAlgoSelection { Heuristic, Autotune };

struct GemmArgs {
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  bool trans_a = false; // A stored (k, m) and used transposed; else stored (m, k)
  bool trans_b = false; // B stored (n, k) and used transposed; else stored (k, n)
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr; // (m, n), packed row-major
  GemmDType a_type = GemmDType::BF16;
  GemmDType b_type = GemmDType::BF16;
  GemmDType c_type = GemmDType::BF16;
  float alpha = 1.0f;
  float beta = 0.0f;
  // Optional bias: a bf16 vector of n elements added to every row of the row-major (m, n) result before it is
  // stored (cuBLASLt CUBLASLT_EPILOGUE_BIAS, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = CUDA_R_16BF). Requires bf16 a, b
  // and c_type BF16 (can_implement says so otherwise).
  const void* bias = nullptr; // (n), bf16
  // Optional, only meaningful with beta != 0: the C operand is read from c_in (same shape, dtype and layout as c)
  // and the result D is written to c (cuBLASLt C != D). nullptr = in place (C = D = c), as today.
  const void* c_in = nullptr; // (m, n), packed row-major, c_type
};

/// The cuBLASLt (column-major) problem equivalent to a row-major GemmArgs: D (m, n) = op_first(first) op_second(second)
/// with first = B and second = A of the row-major problem.
struct ColumnMajorProblem {
  std::int64_t m = 0; // = args.n
  std::int64_t n = 0; // = args.m
  std::int64_t k = 0;
  bool trans_first = false;
  bool trans_second = false;
  std::int64_t ld_first = 0;
  std::int64_t ld_second = 0;
  std::int64_t ld_c = 0;
  const void* first = nullptr;
  const void* second = nullptr;
  GemmDType first_type = GemmDType::BF16;
  GemmDType second_type = GemmDType::BF16;
  // The row-major bias is one value per column n of C; row-major C (m, n) is column-major D (n, m), so that is one
  // value per row of D (length m here = args.n), which is what CUBLASLT_EPILOGUE_BIAS adds ("bias vector length must
  // match matrix D rows"): D(row, col) = alpha (first second)(row, col) + beta C(row, col) + bias[row].
  const void* bias = nullptr;
  const void* c_in = nullptr; // C operand: args.c_in, or args.c when that is null (in place)
};

[[nodiscard]] ColumnMajorProblem to_column_major(const GemmArgs& args);

/// Empty when the wrapper can run `args`; otherwise why not (sizes, null pointers, unsupported dtype combination).
/// Supported: bf16 x bf16 -> bf16 or fp32, fp32 x fp32 -> fp32; a bias only with bf16 x bf16 -> bf16.
[[nodiscard]] std::string can_implement(const GemmArgs& args);

/// cuBLASLt workspace the wrapper asks for: 32 MiB, NVIDIA's recommendation for Hopper (cuBLAS documentation,
/// "cublasSetWorkspace()": 32 MiB for Hopper, 4 MiB for other architectures). Counted by the memory model as workspace.
[[nodiscard]] std::size_t workspace_bytes(const GemmArgs& args);

/// Owns a cuBLASLt handle and caches the matmul descriptors and the chosen algorithm per shape (m, n, k, transposes,
/// dtypes, beta != 0, bias epilogue, workspace size). Not thread-safe; one per device and stream set. Requires a
/// current CUDA device.
/// Heuristic: the heuristic's first algorithm; run() never synchronises the host.
/// Autotune: the first run() of a shape asks the heuristic for up to 8 algorithms and times each on `stream` with CUDA
/// events (1 warm-up + 3 timed launches; the smallest mean wins), writing into a scratch D buffer (cudaMalloc'd for
/// the timing and freed again before the real call; C is read from c_in or c as in the real call), so the caller's
/// output is untouched; then it runs the winner for real. That first run() therefore synchronises the host with
/// `stream` and calls cudaMalloc / cudaFree: once per new shape only, later runs of the shape are asynchronous.
/// Candidates that fail to launch are skipped; if all fail (or the scratch cannot be allocated), the heuristic's
/// first is kept.
class GemmRunner {
public:
  explicit GemmRunner(GemmAlgoSelection selection = GemmAlgoSelection::Heuristic);
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  /// Runs (and caches) the heuristic for args' shape / epilogue: false when cuBLASLt finds no algorithm (a caller
  /// then falls back, e.g. to a GEMM without bias plus a bias kernel), or when can_implement's shape and dtype rules
  /// refuse args. Never throws for "no algorithm"; throws DeviceError for other cuBLASLt failures. The data pointers
  /// are not read: a probe before the buffers exist may pass any 256-byte-aligned non-null value for a, b, c and
  /// bias (bias != nullptr selects the bias epilogue). No host synchronisation, also under Autotune.
  [[nodiscard]] bool has_algorithm(const GemmArgs& args, std::size_t workspace_size);

  /// Enqueues the GEMM on `stream` (no host synchronisation, except Autotune's first run of a shape, see above).
  /// Throws DeviceError if can_implement(args) is not empty or cuBLASLt finds no algorithm. `workspace` is device
  /// memory of `workspace_size` bytes.
  void run(const GemmArgs& args, void* workspace, std::size_t workspace_size, cudaStream_t stream);

private:
  struct Plan;
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool, int, int, int, bool, bool, std::size_t>;
  Plan& plan_for(const GemmArgs& args, std::size_t workspace_size);
  void autotune(Plan& plan, const GemmArgs& args, void* workspace, std::size_t workspace_size, cudaStream_t stream);

  GemmAlgoSelection selection_;
  void* handle_ = nullptr; // cublasLtHandle_t (kept opaque so this header does not need cublasLt.h)
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

} // namespace cuboid::exec::cuda
