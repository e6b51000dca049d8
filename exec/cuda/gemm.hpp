// cuBLASLt GEMM wrapper in the layout of the CPU backend (row-major, exec/cpu/linear.hpp): C (m, n) = alpha op(A)
// op(B) + beta C with bf16 (or fp32) inputs and fp32 accumulation (CUBLAS_COMPUTE_32F). Interface after
// NVIDIA/cutlass gemm_universal_adapter.h: can_implement(args), workspace_bytes(args), run(args, workspace, stream).
// cuBLASLt is column-major; to_column_major() states the mapping (row-major C = A B is column-major C^T = B^T A^T)
// and is tested on the CPU against a naive column-major GEMM.
// The linear layer maps onto it as: forward Y = X W (no transposes), data gradient dX = dY W^T (trans_b), weight
// gradient dW += X^T dY (trans_a, beta = 1, fp32 C so that micro-batches accumulate in fp32).
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
};

[[nodiscard]] ColumnMajorProblem to_column_major(const GemmArgs& args);

/// Empty when the wrapper can run `args`; otherwise why not (sizes, null pointers, unsupported dtype combination).
/// Supported: bf16 x bf16 -> bf16 or fp32, fp32 x fp32 -> fp32.
[[nodiscard]] std::string can_implement(const GemmArgs& args);

/// cuBLASLt workspace the wrapper asks for: 32 MiB, NVIDIA's recommendation for Hopper (cuBLAS documentation,
/// "cublasSetWorkspace()": 32 MiB for Hopper, 4 MiB for other architectures). Counted by the memory model as workspace.
[[nodiscard]] std::size_t workspace_bytes(const GemmArgs& args);

/// Owns a cuBLASLt handle and caches the matmul descriptors and the heuristic's algorithm per shape. Not thread-safe;
/// one per device and stream set. Requires a current CUDA device.
class GemmRunner {
public:
  GemmRunner();
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  /// Enqueues the GEMM on `stream` (no host synchronisation). Throws DeviceError if can_implement(args) is not
  /// empty or cuBLASLt finds no algorithm. `workspace` is device memory of `workspace_size` bytes.
  void run(const GemmArgs& args, void* workspace, std::size_t workspace_size, cudaStream_t stream);

private:
  struct Plan;
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool, int, int, int, bool, std::size_t>;
  void* handle_ = nullptr; // cublasLtHandle_t (kept opaque so this header does not need cublasLt.h)
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

} // namespace cuboid::exec::cuda
