// cuBLASLt of the CUDA emulator (see emu_runtime.hpp): the entry points cuboid calls (those exec/cuda/lazy_libs.cpp
// forwards), with the names and signatures of cublasLt.h, computing on the CPU what cublasLtMatmul computes on a GPU:
// column-major D (m, n) = alpha op(A) op(B) + beta C, for bf16 x bf16 -> bf16 or fp32 and fp32 x fp32 -> fp32 with
// CUBLAS_COMPUTE_32F and fp32 host-side alpha / beta. Products are accumulated in fp32 in order of k (a GPU's tensor
// cores accumulate in fp32 too, in another order), bf16 results are rounded to nearest even; C is not read when
// beta == 0 (as cuBLAS does); C and D may be different matrices. Every operand's extent is checked against the
// emulated device memory. CUBLASLT_EPILOGUE_BIAS with a CUDA_R_16BF bias (one value per row of D, added in fp32 to
// alpha op(A) op(B) + beta C before the conversion to D's type, as the cuBLASLt documentation of
// cublasLtEpilogue_t says) is emulated. The heuristic returns up to EMULATED_ALGOS distinct algorithms (all compute
// the same), so that callers that time several candidates run here too. With CUBOID_EMU_CUBLASLT_NO_EPILOGUE=1 it
// finds no algorithm for any epilogue but the default (as a cuBLASLt build without that epilogue), to test callers'
// fallbacks. Not emulated: other epilogues (GELU, ReLU, gradients), other bias types, batched and strided layouts,
// row-major or tiled orders, device pointer mode, fp8 / fp16 / tf32 / complex types; they return
// CUBLAS_STATUS_NOT_SUPPORTED with a message on stderr.
#include "tests/cuda_emu/emu_runtime.hpp"

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuboid::emu {

namespace {

struct Context {
  int device = 0;
};

struct MatmulDesc {
  cublasComputeType_t compute_type = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale_type = CUDA_R_32F;
  cublasOperation_t trans_a = CUBLAS_OP_N;
  cublasOperation_t trans_b = CUBLAS_OP_N;
  std::uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT; // DEFAULT or BIAS
  std::int32_t bias_type = -1;                          // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE; -1: D's type
  const void* bias = nullptr;                           // CUBLASLT_MATMUL_DESC_BIAS_POINTER (device memory)
};

struct MatrixLayout {
  cudaDataType_t type = CUDA_R_32F;
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::int64_t ld = 0;
};

struct Preference {
  std::uint64_t max_workspace_bytes = 0;
};

// Marks an algorithm descriptor filled by cublasLtMatmulAlgoGetHeuristic (data[0]); data[1] is the algorithm's index
// below EMULATED_ALGOS. The emulated algorithms differ only by that index: they compute the same.
constexpr std::uint64_t ALGO_TAG = 0x637562'6f69'64'4c74; // "cuboidLt"
constexpr int EMULATED_ALGOS = 3;

// The test switch of the header comment: CUBOID_EMU_CUBLASLT_NO_EPILOGUE unset, "" or "0": off; "1": on.
constexpr const char* NO_EPILOGUE_ENV = "CUBOID_EMU_CUBLASLT_NO_EPILOGUE";

// The live objects of every kind, so that a stale or foreign handle is refused instead of dereferenced. Several
// host threads (one per device) may use cuBLASLt at once: the tables are guarded by `mutex`.
struct Objects {
  std::mutex mutex;
  std::map<const Context*, std::unique_ptr<Context>> contexts;
  std::map<const MatmulDesc*, std::unique_ptr<MatmulDesc>> descs;
  std::map<const MatrixLayout*, std::unique_ptr<MatrixLayout>> layouts;
  std::map<const Preference*, std::unique_ptr<Preference>> preferences;
};

Objects& objects() {
  static Objects o; // NOLINT: library state is process-wide, as the real library's is
  return o;
}

struct StatusText {
  cublasStatus_t status;
  const char* name;
  const char* text; // what the real cublasLtGetStatusString returns for it
};

#define CUBOID_STATUS_TEXT(status, text) StatusText{status, #status, text}
constexpr std::array STATUS_TEXTS{
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_SUCCESS, "success"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_NOT_INITIALIZED, "the library was not initialized"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_ALLOC_FAILED, "the resource allocation failed"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_INVALID_VALUE, "an unsupported value or parameter was passed to the function"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_ARCH_MISMATCH,
                       "the function requires an architectural feature absent from the device"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_MAPPING_ERROR, "an access to GPU memory space failed"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_EXECUTION_FAILED, "the function failed to launch on the GPU"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_INTERNAL_ERROR, "an internal operation failed"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_NOT_SUPPORTED, "the requested functionality is not supported"),
    CUBOID_STATUS_TEXT(CUBLAS_STATUS_LICENSE_ERROR, "the license check failed"),
};
#undef CUBOID_STATUS_TEXT

const StatusText* find_status_text(cublasStatus_t status) {
  for (const StatusText& entry : STATUS_TEXTS) {
    if (entry.status == status) {
      return &entry;
    }
  }
  return nullptr;
}

// The status a failing call returns, after printing why (a status alone does not say which operand was wrong).
cublasStatus_t fail(cublasStatus_t status, const std::string& detail) {
  const StatusText* text = find_status_text(status);
  const std::string line =
      fmt::format("cuboid cuBLASLt emulator: {}: {}\n", text != nullptr ? text->name : "error", detail);
  std::fputs(line.c_str(), stderr); // one write, so that lines of concurrent threads do not interleave
  return status;
}

// Creates an object of type T in `table` and returns its handle through `out`.
template <typename Handle, typename T>
cublasStatus_t create(Handle* out, std::map<const T*, std::unique_ptr<T>>& table, T value, const char* function) {
  if (out == nullptr) {
    return fail(CUBLAS_STATUS_INVALID_VALUE, fmt::format("{}: the output handle pointer is null", function));
  }
  auto object = std::make_unique<T>(value);
  const std::lock_guard lock(objects().mutex);
  *out = reinterpret_cast<Handle>(object.get());
  table.emplace(object.get(), std::move(object));
  return CUBLAS_STATUS_SUCCESS;
}

template <typename Handle, typename T>
cublasStatus_t destroy(Handle handle, std::map<const T*, std::unique_ptr<T>>& table, const char* function) {
  const std::lock_guard lock(objects().mutex);
  if (table.erase(reinterpret_cast<const T*>(handle)) == 0) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: {} is not a live handle", function, static_cast<const void*>(handle)));
  }
  return CUBLAS_STATUS_SUCCESS;
}

// A copy of the object behind `handle`, or nullptr-like failure: false when the handle is not live.
template <typename Handle, typename T>
bool lookup(Handle handle, const std::map<const T*, std::unique_ptr<T>>& table, T& out) {
  const std::lock_guard lock(objects().mutex);
  const auto it = table.find(reinterpret_cast<const T*>(handle));
  if (it == table.end()) {
    return false;
  }
  out = *it->second;
  return true;
}

// Writes `value` back to the object behind `handle` (after a set-attribute call changed a copy of it); fails when the
// handle was destroyed in between.
template <typename Handle, typename T>
cublasStatus_t store(Handle handle, std::map<const T*, std::unique_ptr<T>>& table, const T& value,
                     const char* function) {
  const std::lock_guard lock(objects().mutex);
  const auto it = table.find(reinterpret_cast<const T*>(handle));
  if (it == table.end()) {
    return fail(CUBLAS_STATUS_INVALID_VALUE, fmt::format("{}: {} destroyed meanwhile", function,
                                                         static_cast<const void*>(handle)));
  }
  *it->second = value;
  return CUBLAS_STATUS_SUCCESS;
}

// The int32 / uint32 / uint64 value of an attribute buffer, refusing a buffer of another size.
template <typename V> cublasStatus_t read_attribute(const void* buf, std::size_t size, V& value, const char* what) {
  if (buf == nullptr || size != sizeof(V)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: buffer {} of {} bytes (expected {} bytes)", what, buf, size, sizeof(V)));
  }
  std::memcpy(&value, buf, sizeof(V));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t read_operation(const void* buf, std::size_t size, cublasOperation_t& op, const char* what) {
  std::int32_t value = 0;
  if (const cublasStatus_t status = read_attribute(buf, size, value, what); status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  if (value != CUBLAS_OP_N && value != CUBLAS_OP_T && value != CUBLAS_OP_C) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: {} is not a cublasOperation_t (N, T, C)", what, value));
  }
  // For real types the conjugate transpose is the transpose.
  op = value == CUBLAS_OP_N ? CUBLAS_OP_N : CUBLAS_OP_T;
  return CUBLAS_STATUS_SUCCESS;
}

std::size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_16BF ? 2 : 4; }

const char* type_name(cudaDataType_t type) {
  switch (type) {
  case CUDA_R_16BF:
    return "CUDA_R_16BF";
  case CUDA_R_32F:
    return "CUDA_R_32F";
  case CUDA_R_16F:
    return "CUDA_R_16F";
  default:
    return "another type";
  }
}

// A GEMM with its operands' layouts resolved and checked for consistency.
struct Problem {
  std::uint64_t m = 0;
  std::uint64_t n = 0;
  std::uint64_t k = 0;
  MatmulDesc desc;
  MatrixLayout a;
  MatrixLayout b;
  MatrixLayout c;
  MatrixLayout d;
};

// Resolves the handles of a heuristic query or a matmul and checks what cuBLASLt checks: live handles, operand
// shapes that agree, leading dimensions that hold a column, and a supported type combination.
cublasStatus_t resolve(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_desc,
                       cublasLtMatrixLayout_t b_desc, cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                       const char* function, Problem& p) {
  Objects& o = objects();
  Context context;
  if (!lookup(handle, o.contexts, context)) {
    return fail(CUBLAS_STATUS_NOT_INITIALIZED,
                fmt::format("{}: handle {} was not created by cublasLtCreate", function,
                            static_cast<const void*>(handle)));
  }
  if (!lookup(desc, o.descs, p.desc)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: matmul descriptor {} is not live", function, static_cast<const void*>(desc)));
  }
  const std::array<std::pair<cublasLtMatrixLayout_t, MatrixLayout*>, 4> layouts{
      {{a_desc, &p.a}, {b_desc, &p.b}, {c_desc, &p.c}, {d_desc, &p.d}}};
  const std::array<const char*, 4> names{"A", "B", "C", "D"};
  for (std::size_t idx = 0; idx < layouts.size(); ++idx) {
    if (!lookup(layouts[idx].first, o.layouts, *layouts[idx].second)) {
      return fail(CUBLAS_STATUS_INVALID_VALUE, fmt::format("{}: layout of {} ({}) is not live", function,
                                                           names[idx], static_cast<const void*>(layouts[idx].first)));
    }
    const MatrixLayout& l = *layouts[idx].second;
    if (l.ld < 1 || static_cast<std::uint64_t>(l.ld) < l.rows) {
      return fail(CUBLAS_STATUS_INVALID_VALUE,
                  fmt::format("{}: {} has ld {} < rows {} (column-major: ld >= max(1, rows))", function, names[idx],
                              l.ld, l.rows));
    }
  }
  p.m = p.d.rows;
  p.n = p.d.cols;
  const bool ta = p.desc.trans_a == CUBLAS_OP_T;
  const bool tb = p.desc.trans_b == CUBLAS_OP_T;
  p.k = ta ? p.a.rows : p.a.cols;
  const std::uint64_t a_m = ta ? p.a.cols : p.a.rows;
  const std::uint64_t b_k = tb ? p.b.cols : p.b.rows;
  const std::uint64_t b_n = tb ? p.b.rows : p.b.cols;
  if (a_m != p.m || b_k != p.k || b_n != p.n || p.c.rows != p.m || p.c.cols != p.n) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: shapes do not agree: op(A) {}x{}, op(B) {}x{}, C {}x{}, D {}x{}", function, a_m,
                            p.k, b_k, b_n, p.c.rows, p.c.cols, p.m, p.n));
  }
  if (p.desc.compute_type != CUBLAS_COMPUTE_32F || p.desc.scale_type != CUDA_R_32F) {
    return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                fmt::format("{}: compute type {} / scale type {} (emulated: CUBLAS_COMPUTE_32F with CUDA_R_32F)",
                            function, static_cast<int>(p.desc.compute_type), static_cast<int>(p.desc.scale_type)));
  }
  const bool bf16_inputs = p.a.type == CUDA_R_16BF && p.b.type == CUDA_R_16BF &&
                           (p.d.type == CUDA_R_16BF || p.d.type == CUDA_R_32F);
  const bool f32_inputs = p.a.type == CUDA_R_32F && p.b.type == CUDA_R_32F && p.d.type == CUDA_R_32F;
  if ((!bf16_inputs && !f32_inputs) || p.c.type != p.d.type) {
    return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                fmt::format("{}: types A {} B {} C {} D {} (emulated: bf16 x bf16 -> bf16 or fp32, fp32 x fp32 -> "
                            "fp32, C of D's type)",
                            function, type_name(p.a.type), type_name(p.b.type), type_name(p.c.type),
                            type_name(p.d.type)));
  }
  if (p.desc.epilogue == CUBLASLT_EPILOGUE_BIAS) {
    const cudaDataType_t bias_type =
        p.desc.bias_type == -1 ? p.d.type : static_cast<cudaDataType_t>(p.desc.bias_type);
    if (bias_type != CUDA_R_16BF) {
      return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                  fmt::format("{}: CUBLASLT_EPILOGUE_BIAS with a bias of type {} (emulated: CUDA_R_16BF; an unset "
                              "CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE means D's type)",
                              function, type_name(bias_type)));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

// Bytes a column-major matrix spans: (cols - 1) full columns of ld elements, then the rows of the last one.
std::size_t extent_bytes(const MatrixLayout& l) {
  if (l.rows == 0 || l.cols == 0) {
    return 0;
  }
  return ((l.cols - 1) * static_cast<std::uint64_t>(l.ld) + l.rows) * element_bytes(l.type);
}

float load(const void* base, cudaDataType_t type, std::size_t index) {
  if (type == CUDA_R_16BF) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  }
  return static_cast<const float*>(base)[index];
}

void store(void* base, cudaDataType_t type, std::size_t index, float value) {
  if (type == CUDA_R_16BF) {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value);
  } else {
    static_cast<float*>(base)[index] = value;
  }
}

// Rows of op(A) per block and depth per block: a block of op(A) (DEPTH_BLOCK x ROW_BLOCK fp32, 128 KiB) stays in
// the L2 cache while every column of D passes over it.
constexpr std::size_t ROW_BLOCK = 256;
constexpr std::size_t DEPTH_BLOCK = 128;

// D = alpha op(A) op(B) + beta C (+ bias[row] of D when `bias` is not null, bf16) on host memory, operands already
// checked. op(A) is converted to an fp32 column-major
// (m, k) panel and op(B) to an fp32 (k, n) panel with the depth contiguous, so that the inner loop runs over rows of
// a column of D with unit stride (and vectorises); every element still sums its k products in order of k.
void multiply(const Problem& p, float alpha, const void* a, const void* b, float beta, const void* c,
              const void* bias, void* d) {
  const std::size_t m = p.m;
  const std::size_t n = p.n;
  const std::size_t k = p.k;
  const auto lda = static_cast<std::size_t>(p.a.ld);
  const auto ldb = static_cast<std::size_t>(p.b.ld);
  const auto ldc = static_cast<std::size_t>(p.c.ld);
  const auto ldd = static_cast<std::size_t>(p.d.ld);
  const bool ta = p.desc.trans_a == CUBLAS_OP_T;
  const bool tb = p.desc.trans_b == CUBLAS_OP_T;
  std::vector<float> a_panel(m * k); // (m, k) column-major: op(A)(row, depth) at depth * m + row
  for (std::size_t depth = 0; depth < k; ++depth) {
    for (std::size_t row = 0; row < m; ++row) {
      a_panel[depth * m + row] = load(a, p.a.type, ta ? depth + row * lda : row + depth * lda);
    }
  }
  std::vector<float> b_panel(k * n); // (k, n) column-major: op(B)(depth, col) at col * k + depth
  for (std::size_t col = 0; col < n; ++col) {
    for (std::size_t depth = 0; depth < k; ++depth) {
      b_panel[col * k + depth] = load(b, p.b.type, tb ? col + depth * ldb : depth + col * ldb);
    }
  }
  std::vector<float> acc(m * n, 0.0f); // (m, n) column-major
  for (std::size_t row0 = 0; row0 < m; row0 += ROW_BLOCK) {
    const std::size_t row1 = std::min(m, row0 + ROW_BLOCK);
    for (std::size_t depth0 = 0; depth0 < k; depth0 += DEPTH_BLOCK) {
      const std::size_t depth1 = std::min(k, depth0 + DEPTH_BLOCK);
      for (std::size_t col = 0; col < n; ++col) {
        float* out = acc.data() + col * m;
        for (std::size_t depth = depth0; depth < depth1; ++depth) {
          const float scale = b_panel[col * k + depth];
          const float* in = a_panel.data() + depth * m;
          for (std::size_t row = row0; row < row1; ++row) {
            out[row] += scale * in[row];
          }
        }
      }
    }
  }
  for (std::size_t col = 0; col < n; ++col) {
    for (std::size_t row = 0; row < m; ++row) {
      float value = alpha * acc[col * m + row];
      if (beta != 0.0f) { // cuBLAS does not read C when beta is 0 (so NaN in C does not propagate)
        value += beta * load(c, p.c.type, row + col * ldc);
      }
      if (bias != nullptr) { // the epilogue: in fp32, before the conversion to D's type
        value += load(bias, CUDA_R_16BF, row);
      }
      store(d, p.d.type, row + col * ldd, value);
    }
  }
}

} // namespace

} // namespace cuboid::emu

// ---- The cuBLASLt API (declared by cublasLt.h, which gives these definitions C linkage).
using namespace cuboid::emu; // NOLINT: the definitions below are the emulator's global C API

const char* cublasLtGetStatusString(cublasStatus_t status) {
  const StatusText* text = find_status_text(status);
  return text != nullptr ? text->text : "unrecognized status";
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtCreate: no current CUDA device");
  }
  return create(lightHandle, objects().contexts, Context{device}, "cublasLtCreate");
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
  return destroy(lightHandle, objects().contexts, "cublasLtDestroy");
}

// ---- matmul descriptors
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  MatmulDesc desc;
  desc.compute_type = computeType;
  desc.scale_type = scaleType;
  return create(matmulDesc, objects().descs, desc, "cublasLtMatmulDescCreate");
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  return destroy(matmulDesc, objects().descs, "cublasLtMatmulDescDestroy");
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t sizeInBytes) {
  constexpr const char* FUNCTION = "cublasLtMatmulDescSetAttribute";
  Objects& o = objects();
  MatmulDesc desc;
  if (!lookup(matmulDesc, o.descs, desc)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: matmul descriptor {} is not live", FUNCTION, static_cast<const void*>(matmulDesc)));
  }
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
  case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: {
    std::int32_t value = 0;
    status = read_attribute(buf, sizeInBytes, value, "CUBLASLT_MATMUL_DESC_COMPUTE_TYPE");
    desc.compute_type = static_cast<cublasComputeType_t>(value);
    break;
  }
  case CUBLASLT_MATMUL_DESC_SCALE_TYPE: {
    std::int32_t value = 0;
    status = read_attribute(buf, sizeInBytes, value, "CUBLASLT_MATMUL_DESC_SCALE_TYPE");
    desc.scale_type = static_cast<cudaDataType_t>(value);
    break;
  }
  case CUBLASLT_MATMUL_DESC_TRANSA:
    status = read_operation(buf, sizeInBytes, desc.trans_a, "CUBLASLT_MATMUL_DESC_TRANSA");
    break;
  case CUBLASLT_MATMUL_DESC_TRANSB:
    status = read_operation(buf, sizeInBytes, desc.trans_b, "CUBLASLT_MATMUL_DESC_TRANSB");
    break;
  case CUBLASLT_MATMUL_DESC_POINTER_MODE: {
    std::int32_t value = 0;
    status = read_attribute(buf, sizeInBytes, value, "CUBLASLT_MATMUL_DESC_POINTER_MODE");
    if (status == CUBLAS_STATUS_SUCCESS && value != CUBLASLT_POINTER_MODE_HOST) {
      status = fail(CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt::format("{}: pointer mode {} (emulated: CUBLASLT_POINTER_MODE_HOST)", FUNCTION, value));
    }
    break;
  }
  case CUBLASLT_MATMUL_DESC_EPILOGUE: {
    std::uint32_t value = 0;
    status = read_attribute(buf, sizeInBytes, value, "CUBLASLT_MATMUL_DESC_EPILOGUE");
    if (status == CUBLAS_STATUS_SUCCESS && value != CUBLASLT_EPILOGUE_DEFAULT && value != CUBLASLT_EPILOGUE_BIAS) {
      status = fail(CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt::format("{}: epilogue {} (emulated: CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS)",
                                FUNCTION, value));
    }
    desc.epilogue = value;
    break;
  }
  case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
    status = read_attribute(buf, sizeInBytes, desc.bias, "CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    break;
  case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: {
    std::int32_t value = 0;
    status = read_attribute(buf, sizeInBytes, value, "CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE");
    if (status == CUBLAS_STATUS_SUCCESS && value != -1 && value != CUDA_R_16BF) {
      status = fail(CUBLAS_STATUS_NOT_SUPPORTED,
                    fmt::format("{}: bias data type {} ({}) (emulated: CUDA_R_16BF, or -1 for D's type)", FUNCTION,
                                value, type_name(static_cast<cudaDataType_t>(value))));
    }
    desc.bias_type = value;
    break;
  }
  case CUBLASLT_MATMUL_DESC_TRANSC:
  case CUBLASLT_MATMUL_DESC_FILL_MODE:
  case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE:
  case CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE:
  case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET:
  case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
  case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
  case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER:
  case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER:
  case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER:
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER:
  case CUBLASLT_MATMUL_DESC_FAST_ACCUM:
    return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                fmt::format("{}: attribute {} is not emulated (emulated: COMPUTE_TYPE, SCALE_TYPE, TRANSA, TRANSB, "
                            "POINTER_MODE host, EPILOGUE default or bias, BIAS_POINTER, BIAS_DATA_TYPE bf16)",
                            FUNCTION, static_cast<int>(attr)));
  default: // as the real library, a value that names no attribute is an invalid value
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: {} is not a cublasLtMatmulDescAttributes_t this emulator knows", FUNCTION,
                            static_cast<int>(attr)));
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  return store(matmulDesc, o.descs, desc, FUNCTION);
}

// ---- matrix layouts
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  // As the real library, the leading dimension and the type are checked when the layout is used (heuristic, matmul).
  return create(matLayout, objects().layouts, MatrixLayout{type, rows, cols, ld}, "cublasLtMatrixLayoutCreate");
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  return destroy(matLayout, objects().layouts, "cublasLtMatrixLayoutDestroy");
}

// ---- preferences
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return create(pref, objects().preferences, Preference{}, "cublasLtMatmulPreferenceCreate");
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  return destroy(pref, objects().preferences, "cublasLtMatmulPreferenceDestroy");
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t sizeInBytes) {
  constexpr const char* FUNCTION = "cublasLtMatmulPreferenceSetAttribute";
  Objects& o = objects();
  Preference value;
  if (!lookup(pref, o.preferences, value)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: preference {} is not live", FUNCTION, static_cast<const void*>(pref)));
  }
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
  case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
    status = read_attribute(buf, sizeInBytes, value.max_workspace_bytes, "CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES");
    break;
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
    std::uint32_t alignment = 0; // the emulated algorithm has no alignment requirement, so any value is met
    status = read_attribute(buf, sizeInBytes, alignment, "CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES");
    break;
  }
  default:
    return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                fmt::format("{}: attribute {} is not emulated (emulated: MAX_WORKSPACE_BYTES, MIN_ALIGNMENT_*_BYTES)",
                            FUNCTION, static_cast<int>(attr)));
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  return store(pref, o.preferences, value, FUNCTION);
}

// ---- heuristic and matmul
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int* returnAlgoCount) {
  constexpr const char* FUNCTION = "cublasLtMatmulAlgoGetHeuristic";
  if (returnAlgoCount == nullptr || heuristicResultsArray == nullptr || requestedAlgoCount < 1) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: requestedAlgoCount {} (must be >= 1) or a null result pointer", FUNCTION,
                            requestedAlgoCount));
  }
  *returnAlgoCount = 0;
  Preference pref;
  if (!lookup(preference, objects().preferences, pref)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: preference {} is not live", FUNCTION, static_cast<const void*>(preference)));
  }
  Problem p;
  if (const cublasStatus_t status = resolve(lightHandle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, FUNCTION, p);
      status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  if (p.desc.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    const char* no_epilogue = std::getenv(NO_EPILOGUE_ENV);
    const std::string value = no_epilogue != nullptr ? no_epilogue : "";
    if (value != "" && value != "0" && value != "1") {
      return fail(CUBLAS_STATUS_INVALID_VALUE,
                  fmt::format("{}: {}=\"{}\" (valid: 1 = no algorithm for non-default epilogues; 0 or unset = off)",
                              FUNCTION, NO_EPILOGUE_ENV, value));
    }
    if (value == "1") {
      return fail(CUBLAS_STATUS_NOT_SUPPORTED,
                  fmt::format("{}: no algorithm for epilogue {} ({}=1)", FUNCTION, p.desc.epilogue, NO_EPILOGUE_ENV));
    }
  }
  const int count = std::min(requestedAlgoCount, EMULATED_ALGOS);
  for (int idx = 0; idx < count; ++idx) {
    cublasLtMatmulHeuristicResult_t& result = heuristicResultsArray[idx];
    result = cublasLtMatmulHeuristicResult_t{};
    result.algo.data[0] = ALGO_TAG;
    result.algo.data[1] = static_cast<std::uint64_t>(idx);
    result.workspaceSize = 0; // the emulated algorithms need no workspace, so they fit any max_workspace_bytes
    result.state = CUBLAS_STATUS_SUCCESS;
    result.wavesCount = 1.0f;
  }
  *returnAlgoCount = count;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream) {
  constexpr const char* FUNCTION = "cublasLtMatmul";
  Problem p;
  if (const cublasStatus_t status = resolve(lightHandle, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, FUNCTION, p);
      status != CUBLAS_STATUS_SUCCESS) {
    return status;
  }
  if (alpha == nullptr || beta == nullptr) {
    return fail(CUBLAS_STATUS_INVALID_VALUE, fmt::format("{}: alpha or beta is null", FUNCTION));
  }
  if (algo != nullptr && (algo->data[0] != ALGO_TAG || algo->data[1] >= static_cast<std::uint64_t>(EMULATED_ALGOS))) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                fmt::format("{}: algo was not filled by cublasLtMatmulAlgoGetHeuristic", FUNCTION));
  }
  if (!is_valid_stream(stream)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE, fmt::format("{}: stream {} is not a live CUDA stream", FUNCTION,
                                                         static_cast<const void*>(stream)));
  }
  float alpha_value = 0.0f;
  float beta_value = 0.0f;
  std::memcpy(&alpha_value, alpha, sizeof(float)); // host pointer mode: alpha and beta are host fp32 values
  std::memcpy(&beta_value, beta, sizeof(float));
  try {
    check_device_range(A, extent_bytes(p.a), "cublasLtMatmul A");
    check_device_range(B, extent_bytes(p.b), "cublasLtMatmul B");
    if (beta_value != 0.0f) {
      check_device_range(C, extent_bytes(p.c), "cublasLtMatmul C");
    }
    check_device_range(D, extent_bytes(p.d), "cublasLtMatmul D");
    if (p.desc.epilogue == CUBLASLT_EPILOGUE_BIAS) {
      if (p.desc.bias == nullptr) {
        return fail(CUBLAS_STATUS_INVALID_VALUE,
                    fmt::format("{}: CUBLASLT_EPILOGUE_BIAS without a CUBLASLT_MATMUL_DESC_BIAS_POINTER", FUNCTION));
      }
      check_device_range(p.desc.bias, p.m * element_bytes(CUDA_R_16BF), "cublasLtMatmul bias");
    }
    if (workspaceSizeInBytes > 0) {
      check_device_range(workspace, workspaceSizeInBytes, "cublasLtMatmul workspace");
    }
  } catch (const std::out_of_range& e) {
    return fail(CUBLAS_STATUS_INVALID_VALUE, e.what());
  }
  if (p.m == 0 || p.n == 0) {
    return CUBLAS_STATUS_SUCCESS;
  }
  const void* bias = p.desc.epilogue == CUBLASLT_EPILOGUE_BIAS ? p.desc.bias : nullptr;
  multiply(p, alpha_value, A, B, beta_value, C, bias, D);
  return CUBLAS_STATUS_SUCCESS;
}
