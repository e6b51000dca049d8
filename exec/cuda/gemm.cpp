// cuBLASLt GEMMs. Descriptors and the chosen algorithm are cached per (shape, transposes, dtypes, beta != 0, bias
// epilogue, workspace size), because creating them and running the heuristic costs tens of microseconds per call.
// The bias pointer is not part of the key (every layer has its own bias): it is set on the cached descriptor before
// every cublasLtMatmul.
#include "exec/cuda/gemm.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "exec/device_error.hpp"

#include <fmt/format.h>

#include <cublasLt.h>

#include <algorithm>
#include <vector>

namespace cuboid::exec::cuda {

namespace {
constexpr std::size_t WORKSPACE_BYTES = 32u << 20;
constexpr int AUTOTUNE_CANDIDATES = 8;     // heuristic results timed by Autotune
constexpr int AUTOTUNE_TIMED_LAUNCHES = 3; // per candidate, after one warm-up launch

cudaDataType_t to_cuda(GemmDType t) { return t == GemmDType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }
const char* dtype_name(GemmDType t) { return t == GemmDType::BF16 ? "bf16" : "fp32"; }
std::size_t element_bytes(GemmDType t) { return t == GemmDType::BF16 ? 2 : 4; }

// What can_implement checks apart from the pointers (so that has_algorithm can probe a shape before the buffers exist).
std::string shape_and_dtype_error(const GemmArgs& args) {
  if (args.m <= 0 || args.n <= 0 || args.k <= 0) {
    return fmt::format("m, n, k must be positive (got {}, {}, {})", args.m, args.n, args.k);
  }
  const bool bf16_in = args.a_type == GemmDType::BF16 && args.b_type == GemmDType::BF16;
  const bool f32_all =
      args.a_type == GemmDType::F32 && args.b_type == GemmDType::F32 && args.c_type == GemmDType::F32;
  if (!bf16_in && !f32_all) {
    return "unsupported dtypes (supported: bf16 x bf16 -> bf16 or fp32, fp32 x fp32 -> fp32)";
  }
  if (args.bias != nullptr && !(bf16_in && args.c_type == GemmDType::BF16)) {
    return fmt::format("a bias needs bf16 a, b and c (got a {}, b {}, c {}; without a bias every supported dtype "
                       "combination works)",
                       dtype_name(args.a_type), dtype_name(args.b_type), dtype_name(args.c_type));
  }
  return {};
}

// Destroys CUDA events on every exit path of the autotuning.
class EventPairs {
public:
  explicit EventPairs(std::size_t count) : events_(2 * count, nullptr) {
    for (cudaEvent_t& event : events_) {
      CUDA_CHECK(cudaEventCreate(&event));
    }
  }
  ~EventPairs() {
    for (cudaEvent_t event : events_) {
      if (event != nullptr) {
        cudaEventDestroy(event);
      }
    }
  }
  EventPairs(const EventPairs&) = delete;
  EventPairs& operator=(const EventPairs&) = delete;
  [[nodiscard]] cudaEvent_t start(std::size_t idx) const { return events_[2 * idx]; }
  [[nodiscard]] cudaEvent_t stop(std::size_t idx) const { return events_[2 * idx + 1]; }

private:
  std::vector<cudaEvent_t> events_;
};
} // namespace

ColumnMajorProblem to_column_major(const GemmArgs& args) {
  ColumnMajorProblem p;
  p.m = args.n;
  p.n = args.m;
  p.k = args.k;
  // Row-major B (k, n) is column-major B^T (n, k) with ld n; stored transposed (n, k) it is column-major (k, n), ld k.
  p.trans_first = args.trans_b;
  p.ld_first = args.trans_b ? args.k : args.n;
  p.first = args.b;
  p.first_type = args.b_type;
  // Row-major A (m, k) is column-major A^T (k, m) with ld k; stored transposed (k, m) it is column-major (m, k), ld m.
  p.trans_second = args.trans_a;
  p.ld_second = args.trans_a ? args.m : args.k;
  p.second = args.a;
  p.second_type = args.a_type;
  p.ld_c = args.n;
  // Per row-major column = per column-major row of D (see ColumnMajorProblem::bias).
  p.bias = args.bias;
  p.c_in = args.c_in != nullptr ? args.c_in : args.c;
  return p;
}

std::string can_implement(const GemmArgs& args) {
  if (std::string why = shape_and_dtype_error(args); !why.empty()) {
    return why;
  }
  if (args.a == nullptr || args.b == nullptr || args.c == nullptr) {
    return "a, b and c must be non-null";
  }
  return {};
}

std::size_t workspace_bytes(const GemmArgs& /*args*/) { return WORKSPACE_BYTES; }

struct GemmRunner::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t first = nullptr;
  cublasLtMatrixLayout_t second = nullptr;
  cublasLtMatrixLayout_t c = nullptr;
  bool has_bias = false;
  std::vector<cublasLtMatmulAlgo_t> algos; // the heuristic's, best first; front() is the one run() uses
  std::string no_algorithm;                // why algos is empty
  bool tuned = false;                      // Autotune has timed the candidates (or there was nothing to time)
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (second != nullptr) cublasLtMatrixLayoutDestroy(second);
    if (first != nullptr) cublasLtMatrixLayoutDestroy(first);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

GemmRunner::GemmRunner(GemmAlgoSelection selection) : selection_(selection) {
  cublasLtHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&handle));
  handle_ = handle;
}

GemmRunner::~GemmRunner() {
  plans_.clear();
  if (handle_ != nullptr) {
    cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
  }
}

GemmRunner::Plan& GemmRunner::plan_for(const GemmArgs& args, std::size_t workspace_size) {
  const Key key{args.m,
                args.n,
                args.k,
                args.trans_a,
                args.trans_b,
                static_cast<int>(args.a_type),
                static_cast<int>(args.b_type),
                static_cast<int>(args.c_type),
                args.beta != 0.0f,
                args.bias != nullptr,
                workspace_size};
  auto& slot = plans_[key];
  if (slot) {
    return *slot;
  }
  const ColumnMajorProblem p = to_column_major(args);
  auto plan = std::make_unique<Plan>();
  plan->has_bias = args.bias != nullptr;
  // fp32 accumulation and fp32 alpha / beta for every supported dtype combination.
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = p.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = p.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  // Stored shapes (rows x cols, column-major) of the operands before their op.
  const auto rows_first = static_cast<std::uint64_t>(p.trans_first ? p.k : p.m);
  const auto cols_first = static_cast<std::uint64_t>(p.trans_first ? p.m : p.k);
  const auto rows_second = static_cast<std::uint64_t>(p.trans_second ? p.n : p.k);
  const auto cols_second = static_cast<std::uint64_t>(p.trans_second ? p.k : p.n);
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->first, to_cuda(p.first_type), rows_first, cols_first, p.ld_first));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->second, to_cuda(p.second_type), rows_second, cols_second, p.ld_second));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, to_cuda(args.c_type), static_cast<std::uint64_t>(p.m),
                                          static_cast<std::uint64_t>(p.n), p.ld_c));
  // The bias epilogue is where a cuBLASLt build may refuse (an older library, an unsupported combination): any
  // failure to set it up counts as "no algorithm", so that has_algorithm() lets the caller fall back.
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  const char* failed_call = "";
  if (plan->has_bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    status = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    failed_call = "cublasLtMatmulDescSetAttribute(CUBLASLT_MATMUL_DESC_EPILOGUE = CUBLASLT_EPILOGUE_BIAS)";
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                              sizeof(bias_type));
      failed_call = "cublasLtMatmulDescSetAttribute(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = CUDA_R_16BF)";
    }
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias));
      failed_call = "cublasLtMatmulDescSetAttribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER)";
    }
  }
  const int requested = selection_ == GemmAlgoSelection::Autotune ? AUTOTUNE_CANDIDATES : 1;
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<std::size_t>(requested));
  int found = 0;
  if (status == CUBLAS_STATUS_SUCCESS) {
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t max_ws = workspace_size;
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                                  sizeof(max_ws));
    failed_call = "cublasLtMatmulPreferenceSetAttribute(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES)";
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), plan->op, plan->first,
                                              plan->second, plan->c, plan->c, pref, requested, results.data(),
                                              &found);
      failed_call = "cublasLtMatmulAlgoGetHeuristic";
    }
    cublasLtMatmulPreferenceDestroy(pref);
  }
  // A plain GEMM that cuBLASLt refuses for another reason than "not supported" is a bug or a broken library: throw.
  if (!plan->has_bias && status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
    CUBLAS_CHECK(status);
  }
  for (int idx = 0; status == CUBLAS_STATUS_SUCCESS && idx < found; ++idx) {
    if (results[static_cast<std::size_t>(idx)].state == CUBLAS_STATUS_SUCCESS) {
      plan->algos.push_back(results[static_cast<std::size_t>(idx)].algo);
    }
  }
  if (plan->algos.empty()) {
    plan->no_algorithm = fmt::format(
        "no algorithm for m={} n={} k={} trans_a={} trans_b={} a={} b={} c={} beta!=0={} bias={} ({}: {})", args.m,
        args.n, args.k, args.trans_a, args.trans_b, dtype_name(args.a_type), dtype_name(args.b_type),
        dtype_name(args.c_type), args.beta != 0.0f, plan->has_bias, failed_call,
        status == CUBLAS_STATUS_SUCCESS ? "0 results" : cublasLtGetStatusString(status));
  }
  plan->tuned = plan->algos.size() <= 1; // nothing to choose between
  slot = std::move(plan);
  return *slot;
}

bool GemmRunner::has_algorithm(const GemmArgs& args, std::size_t workspace_size) {
  if (!shape_and_dtype_error(args).empty()) {
    return false;
  }
  return !plan_for(args, workspace_size).algos.empty();
}

void GemmRunner::autotune(Plan& plan, const GemmArgs& args, void* workspace, std::size_t workspace_size,
                          cudaStream_t stream) {
  plan.tuned = true;
  const ColumnMajorProblem p = to_column_major(args);
  // The scratch D lives only while the candidates are timed: the logits GEMM's alone is rows x V fp32 (3.4 GB for
  // 16384 x 51200), which neither the runtime's memory pool nor the memory model counts. cudaFree synchronises, so
  // it also waits for every timing launch on an early exit.
  void* raw = nullptr;
  if (cudaMalloc(&raw, static_cast<std::size_t>(args.m * args.n) * element_bytes(args.c_type)) != cudaSuccess) {
    (void)cudaGetLastError(); // out of memory is not sticky: clear it, and keep the heuristic's first algorithm
    return;
  }
  const std::unique_ptr<void, cudaError_t (*)(void*)> scratch(raw, cudaFree);
  void* d = scratch.get();
  const auto lt = static_cast<cublasLtHandle_t>(handle_);
  const auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(lt, plan.op, &args.alpha, p.first, plan.first, p.second, plan.second, &args.beta, p.c_in,
                          plan.c, d, plan.c, &algo, workspace, workspace_size, stream);
  };
  // Every candidate's launches are enqueued first and waited for once, at the end.
  const std::size_t count = plan.algos.size();
  EventPairs events(count);
  std::vector<bool> launched(count, false);
  for (std::size_t idx = 0; idx < count; ++idx) {
    if (launch(plan.algos[idx]) != CUBLAS_STATUS_SUCCESS) { // warm-up
      continue;
    }
    CUDA_CHECK(cudaEventRecord(events.start(idx), stream));
    bool ok = true;
    for (int rep = 0; rep < AUTOTUNE_TIMED_LAUNCHES && ok; ++rep) {
      ok = launch(plan.algos[idx]) == CUBLAS_STATUS_SUCCESS;
    }
    if (ok) {
      CUDA_CHECK(cudaEventRecord(events.stop(idx), stream));
      launched[idx] = true;
    }
  }
  std::size_t best = 0;
  float best_ms = 0.0f;
  bool any = false;
  for (std::size_t idx = 0; idx < count; ++idx) {
    if (!launched[idx]) {
      continue;
    }
    CUDA_CHECK(cudaEventSynchronize(events.stop(idx)));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events.start(idx), events.stop(idx)));
    if (!any || ms < best_ms) { // equal launch counts: the smallest total is the smallest mean
      best = idx;
      best_ms = ms;
      any = true;
    }
  }
  std::swap(plan.algos[0], plan.algos[best]); // none launched: best == 0, the heuristic's first stays
}

void GemmRunner::run(const GemmArgs& args, void* workspace, std::size_t workspace_size, cudaStream_t stream) {
  if (const std::string why = can_implement(args); !why.empty()) {
    throw DeviceError(library_error_message("GemmRunner::run", __FILE__, __LINE__, why));
  }
  Plan& plan = plan_for(args, workspace_size);
  if (plan.algos.empty()) {
    throw DeviceError(library_error_message("GemmRunner::run", __FILE__, __LINE__, plan.no_algorithm));
  }
  const ColumnMajorProblem p = to_column_major(args);
  if (plan.has_bias) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
  }
  if (!plan.tuned) {
    autotune(plan, args, workspace, workspace_size, stream);
  }
  CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), plan.op, &args.alpha, p.first, plan.first,
                              p.second, plan.second, &args.beta, p.c_in, plan.c, args.c, plan.c, &plan.algos.front(),
                              workspace, workspace_size, stream));
}

} // namespace cuboid::exec::cuda
