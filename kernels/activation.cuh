// MLP activations, forward and backward; reference: exec/cpu/activation.hpp. GeLU is the tanh approximation
// (Hendrycks & Gimpel 2016, as GPT-2): y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); SwiGLU (Shazeer 2020,
// as Llama): y = silu(gate) * up. All tensors are contiguous (n elements) in T (float or bf16), computed in fp32.
// Backward outputs are OVERWRITTEN, like the CPU ops. Elementwise, grid-stride loops. Memory bound, so each kernel
// moves 16 bytes per access (8 bf16 or 4 fp32 as one uint4, for HBM bandwidth) when n is a multiple of that width
// (with a bias: cols too, so that no vector straddles a row) and every pointer (bias included) is 16-byte aligned;
// otherwise it runs elementwise. Both paths give bit-identical results. The vector path's grid covers n / width
// vectors instead of grid() (which stays the elementwise path's).
// Bias + GeLU (Megatron-LM's bias_gelu fusion, megatron/model/fused_bias_gelu.py): with `bias` set, the fc1 GEMM
// writes x without its bias and the GeLU adds it: y = gelu(x + bias[col]), x viewed as (n / cols, cols) row-major;
// the backward adds the same bias, so the runtime keeps fc1's output without it. That saves the separate bias-add
// pass over the (rows, ffn) fc1 output (a read and a write of it in HBM, and a launch) for the price of cols fp32
// reads that stay in L1/L2. The bias gradient (column sum of dx) is not computed here. Without a bias the launcher
// runs the plain kernels (a compile-time branch): the same code as before the fusion.
#pragma once

#include "kernels/common.cuh"

namespace cuboid::kernels::activation {

struct Config {
  static constexpr int THREADS = 256;
  static constexpr int MAX_BLOCKS = 65536; // grid-stride beyond this
};

template <typename T> struct GeluForwardArgs {
  T* y = nullptr;       // (n)
  const T* x = nullptr; // (n)
  std::int64_t n = 0;
  const float* bias = nullptr; // optional fp32 (cols): y = gelu(x + bias[col]) with x viewed as (n / cols, cols)
  std::int64_t cols = 0;       // required > 0 and dividing n when bias is set; ignored otherwise
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(y, "activation::gelu_forward", "y");
    require_ptr(x, "activation::gelu_forward", "x");
    require(n > 0, "activation::gelu_forward", "n must be positive", n);
    if (bias != nullptr) {
      require(cols > 0, "activation::gelu_forward", "cols must be positive when bias is set", cols);
      require(n % cols == 0, "activation::gelu_forward",
              "cols must divide n (" + std::to_string(n) + ") when bias is set", cols);
    }
  }
};

template <typename T> struct GeluBackwardArgs {
  T* dx = nullptr;       // (n), overwritten
  const T* dy = nullptr; // (n)
  const T* x = nullptr;  // (n)
  std::int64_t n = 0;
  const float* bias = nullptr; // optional fp32 (cols): dx = dy * gelu'(x + bias[col]), x viewed as (n / cols, cols)
  std::int64_t cols = 0;       // required > 0 and dividing n when bias is set; ignored otherwise
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(dx, "activation::gelu_backward", "dx");
    require_ptr(dy, "activation::gelu_backward", "dy");
    require_ptr(x, "activation::gelu_backward", "x");
    require(n > 0, "activation::gelu_backward", "n must be positive", n);
    if (bias != nullptr) {
      require(cols > 0, "activation::gelu_backward", "cols must be positive when bias is set", cols);
      require(n % cols == 0, "activation::gelu_backward",
              "cols must divide n (" + std::to_string(n) + ") when bias is set", cols);
    }
  }
};

template <typename T> struct SwigluForwardArgs {
  T* y = nullptr;          // (n)
  const T* gate = nullptr; // (n)
  const T* up = nullptr;   // (n)
  std::int64_t n = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(y, "activation::swiglu_forward", "y");
    require_ptr(gate, "activation::swiglu_forward", "gate");
    require_ptr(up, "activation::swiglu_forward", "up");
    require(n > 0, "activation::swiglu_forward", "n must be positive", n);
  }
};

template <typename T> struct SwigluBackwardArgs {
  T* dgate = nullptr;      // (n), overwritten
  T* dup = nullptr;        // (n), overwritten
  const T* dy = nullptr;   // (n)
  const T* gate = nullptr; // (n)
  const T* up = nullptr;   // (n)
  std::int64_t n = 0;
  [[nodiscard]] dim3 grid() const { return grid_stride_grid(n, Config::THREADS, Config::MAX_BLOCKS); }
  void validate() const {
    require_ptr(dgate, "activation::swiglu_backward", "dgate");
    require_ptr(dup, "activation::swiglu_backward", "dup");
    require_ptr(dy, "activation::swiglu_backward", "dy");
    require_ptr(gate, "activation::swiglu_backward", "gate");
    require_ptr(up, "activation::swiglu_backward", "up");
    require(n > 0, "activation::swiglu_backward", "n must be positive", n);
  }
};

template <typename T> void gelu_forward(const GeluForwardArgs<T>& args, cudaStream_t stream);
template <typename T> void gelu_backward(const GeluBackwardArgs<T>& args, cudaStream_t stream);
template <typename T> void swiglu_forward(const SwigluForwardArgs<T>& args, cudaStream_t stream);
template <typename T> void swiglu_backward(const SwigluBackwardArgs<T>& args, cudaStream_t stream);

} // namespace cuboid::kernels::activation
