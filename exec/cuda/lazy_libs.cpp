// Lazy NCCL and cuBLASLt: definitions of the NCCL and cuBLASLt entry points cuboid calls, each forwarding to the real
// library, which is opened with dlopen on the first call. cuboid therefore does not link against libnccl.so.2 or
// libcublasLt.so: `cuboid simulate`, `search`, `list` never load them. Loading libcublasLt alone (static
// initialisers and ~200 MB of touched pages) took ~0.09 s CPU per process, more than simulating GPT-3 175B.
// The libraries are found the usual way (LD_LIBRARY_PATH, the executable's RUNPATH, ld.so.cache), so a pip NCCL
// (python3 -c "import nvidia.nccl") works with LD_LIBRARY_PATH=<its lib folder>.
// When a library cannot be opened every call returns the library's error status (ncclSystemError /
// CUBLAS_STATUS_NOT_INITIALIZED), and ncclGetErrorString / cublasLtGetStatusString return the dlopen error, so the
// existing NCCL_CHECK / CUBLAS_CHECK messages say which library is missing and how to point cuboid at it.
// The signatures below are checked by the compiler against nccl.h and cublasLt.h (they declare the same names).
#include <cublasLt.h>
#include <nccl.h>

#include <dlfcn.h>

#include <string>

namespace {

struct Library {
  void* handle = nullptr;
  std::string error; // why it could not be opened (empty when open)
};

Library open_library(const std::string& env_hint, std::initializer_list<const char*> names) {
  Library lib;
  for (const char* name : names) {
    lib.handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib.handle != nullptr) {
      return lib;
    }
    const char* why = dlerror();
    lib.error += std::string(lib.error.empty() ? "" : "; ") + (why != nullptr ? why : name);
  }
  lib.error = "could not load " + lib.error + " (" + env_hint + ")";
  return lib;
}

#define CUBOID_STR2(x) #x
#define CUBOID_STR(x) CUBOID_STR2(x)

const Library& nccl_library() {
  static const Library lib = open_library(
      "put NCCL's lib folder on LD_LIBRARY_PATH, e.g. python3 -c \"import nvidia.nccl,os;"
      "print(os.path.dirname(nvidia.nccl.__file__))\"/lib",
      {"libnccl.so." CUBOID_STR(NCCL_MAJOR), "libnccl.so"});
  return lib;
}

const Library& cublaslt_library() {
  static const Library lib =
      open_library("put the CUDA toolkit's lib folder (with libcublasLt.so." CUBOID_STR(CUBLAS_VER_MAJOR)
                   ") on LD_LIBRARY_PATH",
                   {"libcublasLt.so." CUBOID_STR(CUBLAS_VER_MAJOR), "libcublasLt.so"});
  return lib;
}

// The address of `name` in `lib`, or nullptr when the library or the symbol is missing.
void* symbol(const Library& lib, const char* name) { return lib.handle != nullptr ? dlsym(lib.handle, name) : nullptr; }

template <typename Fn> Fn lookup(const Library& lib, const char* name) {
  return reinterpret_cast<Fn>(symbol(lib, name)); // NOLINT: dlsym returns object pointers to functions
}

} // namespace

// One forwarding definition per entry point: resolve once (thread-safe static), return `failure` when missing.
#define CUBOID_FORWARD(LIBRARY, RET, FAILURE, NAME, PARAMS, ARGS)                                                      \
  extern "C" RET NAME PARAMS {                                                                                         \
    static const auto real = lookup<decltype(&NAME)>(LIBRARY(), #NAME);                                                \
    if (real == nullptr) {                                                                                             \
      return FAILURE;                                                                                                  \
    }                                                                                                                  \
    return real ARGS;                                                                                                  \
  }

#define CUBOID_NCCL(NAME, PARAMS, ARGS) CUBOID_FORWARD(nccl_library, ncclResult_t, ncclSystemError, NAME, PARAMS, ARGS)
#define CUBOID_CUBLASLT(NAME, PARAMS, ARGS)                                                                            \
  CUBOID_FORWARD(cublaslt_library, cublasStatus_t, CUBLAS_STATUS_NOT_INITIALIZED, NAME, PARAMS, ARGS)

// ---- NCCL (nccl.h) ----
extern "C" const char* ncclGetErrorString(ncclResult_t result) {
  static const auto real = lookup<decltype(&ncclGetErrorString)>(nccl_library(), "ncclGetErrorString");
  return real != nullptr ? real(result) : nccl_library().error.c_str();
}
CUBOID_NCCL(ncclGetUniqueId, (ncclUniqueId * unique_id), (unique_id))
CUBOID_NCCL(ncclCommInitRank, (ncclComm_t * comm, int nranks, ncclUniqueId comm_id, int rank),
            (comm, nranks, comm_id, rank))
CUBOID_NCCL(ncclCommInitAll, (ncclComm_t * comm, int ndev, const int* devlist), (comm, ndev, devlist))
CUBOID_NCCL(ncclCommSplit, (ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config),
            (comm, color, key, newcomm, config))
CUBOID_NCCL(ncclCommDestroy, (ncclComm_t comm), (comm))
CUBOID_NCCL(ncclCommAbort, (ncclComm_t comm), (comm))
CUBOID_NCCL(ncclCommCount, (const ncclComm_t comm, int* count), (comm, count))
CUBOID_NCCL(ncclCommUserRank, (const ncclComm_t comm, int* rank), (comm, rank))
CUBOID_NCCL(ncclCommGetAsyncError, (ncclComm_t comm, ncclResult_t* async_error), (comm, async_error))
CUBOID_NCCL(ncclAllReduce,
            (const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
             ncclComm_t comm, cudaStream_t stream),
            (sendbuff, recvbuff, count, datatype, op, comm, stream))
CUBOID_NCCL(ncclReduceScatter,
            (const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype, ncclRedOp_t op,
             ncclComm_t comm, cudaStream_t stream),
            (sendbuff, recvbuff, recvcount, datatype, op, comm, stream))
CUBOID_NCCL(ncclAllGather,
            (const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm,
             cudaStream_t stream),
            (sendbuff, recvbuff, sendcount, datatype, comm, stream))
CUBOID_NCCL(ncclBroadcast,
            (const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
             cudaStream_t stream),
            (sendbuff, recvbuff, count, datatype, root, comm, stream))
CUBOID_NCCL(ncclSend,
            (const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
             cudaStream_t stream),
            (sendbuff, count, datatype, peer, comm, stream))
CUBOID_NCCL(ncclRecv,
            (void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream),
            (recvbuff, count, datatype, peer, comm, stream))
CUBOID_NCCL(ncclGroupStart, (), ())
CUBOID_NCCL(ncclGroupEnd, (), ())

// ---- cuBLASLt (cublasLt.h) ----
extern "C" const char* cublasLtGetStatusString(cublasStatus_t status) {
  static const auto real = lookup<decltype(&cublasLtGetStatusString)>(cublaslt_library(), "cublasLtGetStatusString");
  return real != nullptr ? real(status) : cublaslt_library().error.c_str();
}
CUBOID_CUBLASLT(cublasLtCreate, (cublasLtHandle_t * handle), (handle))
CUBOID_CUBLASLT(cublasLtDestroy, (cublasLtHandle_t handle), (handle))
CUBOID_CUBLASLT(cublasLtMatmulDescCreate,
                (cublasLtMatmulDesc_t * desc, cublasComputeType_t compute_type, cudaDataType_t scale_type),
                (desc, compute_type, scale_type))
CUBOID_CUBLASLT(cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
CUBOID_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* buf, size_t size),
                (desc, attr, buf, size))
CUBOID_CUBLASLT(cublasLtMatrixLayoutCreate,
                (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld),
                (layout, type, rows, cols, ld))
CUBOID_CUBLASLT(cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), (layout))
CUBOID_CUBLASLT(cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref), (pref))
CUBOID_CUBLASLT(cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), (pref))
CUBOID_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                 size_t size),
                (pref, attr, buf, size))
CUBOID_CUBLASLT(cublasLtMatmulAlgoGetHeuristic,
                (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_desc,
                 cublasLtMatrixLayout_t b_desc, cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                 cublasLtMatmulPreference_t pref, int requested, cublasLtMatmulHeuristicResult_t results[],
                 int* returned),
                (handle, desc, a_desc, b_desc, c_desc, d_desc, pref, requested, results, returned))
CUBOID_CUBLASLT(cublasLtMatmul,
                (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                 cublasLtMatrixLayout_t a_desc, const void* b, cublasLtMatrixLayout_t b_desc, const void* beta,
                 const void* c, cublasLtMatrixLayout_t c_desc, void* d, cublasLtMatrixLayout_t d_desc,
                 const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes, cudaStream_t stream),
                (handle, desc, alpha, a, a_desc, b, b_desc, beta, c, c_desc, d, d_desc, algo, workspace,
                 workspace_bytes, stream))
