// AdamW kernel. The bias corrections are computed once on the host with std::pow in fp32, so the per-element math is
// the same sequence of fp32 operations as exec/cpu/adamw.cpp.
#include "kernels/adamw.cuh"
#include "kernels/device_utils.cuh"

#include <cmath>

namespace cuboid::kernels::adamw {

// ---- kernels

__global__ void __launch_bounds__(Config::THREADS)
    update_kernel(float* __restrict__ param, float* __restrict__ m, float* __restrict__ v, bf16* __restrict__ param_bf16,
                  const float* __restrict__ grad, std::int64_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, float correction1, float correction2) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const float g = grad[idx] * grad_scale;
    const float mi = beta1 * m[idx] + (1.0f - beta1) * g;
    const float vi = beta2 * v[idx] + (1.0f - beta2) * g * g;
    m[idx] = mi;
    v[idx] = vi;
    const float mhat = mi / correction1;
    const float vhat = vi / correction2;
    const float p = param[idx] - lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * param[idx]);
    param[idx] = p;
    if (param_bf16 != nullptr) {
      param_bf16[idx] = __float2bfloat16_rn(p);
    }
  }
}

// ---- launchers

void update(const Args& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  const float correction1 = 1.0f - std::pow(args.beta1, static_cast<float>(args.step));
  const float correction2 = 1.0f - std::pow(args.beta2, static_cast<float>(args.step));
  update_kernel<<<args.grid(), Config::THREADS, 0, stream>>>(args.param, args.m, args.v, args.param_bf16, args.grad,
                                                             args.n, args.lr, args.beta1, args.beta2, args.eps,
                                                             args.weight_decay, args.grad_scale, correction1,
                                                             correction2);
  CUDA_CHECK(cudaGetLastError());
}

} // namespace cuboid::kernels::adamw
