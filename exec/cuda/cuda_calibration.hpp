// GPU calibration (`cuboid calibrate --backend cuda`): on the current CUDA device, times with CUDA events the bf16
// cuBLASLt GEMMs a model and plan run (forward, data-gradient and weight-gradient GEMMs of every linear layer and
// the output layer) plus a square (M = N = K) sweep, the fused attention kernels forward and backward (those the CUDA
// runtime uses: kernels/attention_tc.cuh where the shape allows, else kernels/attention.cuh), a memory-bound kernel
// (bf16 -> fp32 cast), the launch overhead of a tiny kernel, and,
// when `world` has more than one rank, NCCL all-reduce by message size. cuda_profile.hpp turns that into a profile.
#pragma once

#include "exec/calibration.hpp"
#include "exec/cuda/cuda_profile.hpp"
#include "exec/cuda/gemm.hpp"
#include "exec/cuda/nccl_communicator.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

namespace cuboid::exec::cuda {

struct CudaCalibrationOptions {
  CalibrationOptions base;        // peaks (required > 0: from the GPU catalog), min_time_s, all-reduce sizes, name
  std::string gpu;                // catalog name recorded in the profile ("h100-sxm")
  std::vector<std::int64_t> square_gemm_sizes = {512, 1024, 2048, 4096, 8192};
  std::int64_t elementwise_elements = 64 << 20; // bf16 -> fp32 cast over this many elements (384 MiB moved)
  // How the GEMMs pick their cuBLASLt algorithm: as the runtime does (RunOptions::cuda_gemm_autotune), so that the
  // profile measures the algorithms training will run. Autotune's tuning happens in the untimed warm-up call.
  GemmAlgoSelection gemm_algo = GemmAlgoSelection::Autotune;
};

/// Uses the current device (cudaSetDevice first). `world` may be null (one GPU, no collective sweep); otherwise the
/// all-reduce sweep is collective over it and every rank gets the same profile (slowest rank's times).
/// Throws InputError for missing peaks, DeviceError for CUDA / cuBLAS / NCCL failures.
CudaCalibrationResult calibrate_cuda(const model::ModelSpec& model, const model::Plan& plan,
                                     const CudaCalibrationOptions& options, NcclCommunicator* world);

/// Entry point for `cuboid calibrate --backend cuda` (one process, or one per GPU under torchrun / mpirun): reads
/// the launch environment (launch_env.hpp), selects GPU LOCAL_RANK, builds the NCCL world over the TCP rendezvous
/// when WORLD_SIZE > 1, and calls calibrate_cuda. Every rank returns the same profile; rank `result_rank` (0) saves
/// it. Throws DeviceError when no CUDA device is usable, InputError when LOCAL_RANK >= the number of devices.
CudaCalibrationResult calibrate_cuda_job(const model::ModelSpec& model, const model::Plan& plan,
                                         const CudaCalibrationOptions& options, double rendezvous_timeout_s = 300.0);

} // namespace cuboid::exec::cuda
