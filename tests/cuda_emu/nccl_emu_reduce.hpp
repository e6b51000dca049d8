// The collective algebra of the NCCL emulator (nccl_emu.cpp): element sizes of the NCCL datatypes and the
// reduction of one chunk over all ranks' inputs. Every rank reduces the same inputs in rank order, so all ranks get
// bit-identical results; bf16 is reduced in fp32 and rounded once to nearest even; integers wrap as on a GPU.
#pragma once

#include "tests/cuda_emu/nccl_emu_segment.hpp"

#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace cuboid::emu::nccl {

inline std::size_t dtype_bytes(ncclDataType_t dtype) {
  switch (dtype) {
  case ncclInt8:
  case ncclUint8:
  case ncclFloat8e4m3:
  case ncclFloat8e5m2: return 1;
  case ncclFloat16:
  case ncclBfloat16: return 2;
  case ncclInt32:
  case ncclUint32:
  case ncclFloat32: return 4;
  case ncclInt64:
  case ncclUint64:
  case ncclFloat64: return 8;
  default: return 0;
  }
}

inline float bf16_to_float(std::uint16_t bits) {
  const std::uint32_t wide = std::uint32_t{bits} << 16;
  float value = 0;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline std::uint16_t float_to_bf16(float value) { // round to nearest even; NaN stays a (quiet) NaN
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x40U);
  }
  bits += 0x7fffU + ((bits >> 16) & 1U);
  return static_cast<std::uint16_t>(bits >> 16);
}

template <typename Acc> Acc combine(Acc a, Acc b, ncclRedOp_t op) {
  switch (op) {
  case ncclProd: return static_cast<Acc>(a * b);
  case ncclMax: return std::max(a, b);
  case ncclMin: return std::min(a, b);
  default: return static_cast<Acc>(a + b); // sum, avg
  }
}

// Elem as stored, Acc as combined (unsigned for the integers, so that overflow wraps as on a GPU). NCCL has no
// 16-bit integer type, so <std::uint16_t, float> unambiguously means bf16 bits reduced in fp32.
template <typename Elem, typename Acc>
void reduce_typed(const std::vector<const std::byte*>& inputs, std::size_t len, ncclRedOp_t op, std::byte* out) {
  const auto load = [](const std::byte* base, std::size_t idx) {
    Elem value{};
    std::memcpy(&value, base + idx * sizeof(Elem), sizeof(Elem));
    if constexpr (std::is_same_v<Elem, std::uint16_t> && std::is_same_v<Acc, float>) {
      return bf16_to_float(value);
    } else {
      return static_cast<Acc>(value);
    }
  };
  for (std::size_t idx = 0; idx < len; ++idx) {
    Acc acc = load(inputs[0], idx);
    for (std::size_t rank = 1; rank < inputs.size(); ++rank) {
      acc = combine(acc, load(inputs[rank], idx), op);
    }
    Elem result{};
    if constexpr (std::is_same_v<Elem, std::uint16_t> && std::is_same_v<Acc, float>) {
      result = float_to_bf16(op == ncclAvg ? acc / static_cast<float>(inputs.size()) : acc);
    } else {
      result = static_cast<Elem>(acc); // integers: the wrapped sum, then the (truncating) division of avg
      if (op == ncclAvg) {
        result = static_cast<Elem>(result / static_cast<Elem>(inputs.size()));
      }
    }
    std::memcpy(out + idx * sizeof(Elem), &result, sizeof(Elem));
  }
}

// Signed integer types combine as signed for max/min and as unsigned (wrapping) for sum/prod/avg.
template <typename Signed, typename Unsigned>
void reduce_signed(const std::vector<const std::byte*>& inputs, std::size_t len, ncclRedOp_t op, std::byte* out) {
  if (op != ncclMax && op != ncclMin) {
    reduce_typed<Signed, Unsigned>(inputs, len, op, out);
  } else {
    reduce_typed<Signed, Signed>(inputs, len, op, out);
  }
}

inline bool can_reduce(ncclDataType_t dtype) {
  return dtype != ncclFloat16 && dtype != ncclFloat8e4m3 && dtype != ncclFloat8e5m2 && dtype_bytes(dtype) != 0;
}

inline void reduce(const std::vector<const std::byte*>& inputs, std::size_t len, ncclDataType_t dtype, ncclRedOp_t op,
                   std::byte* out) {
  switch (dtype) {
  case ncclInt8: reduce_signed<std::int8_t, std::uint8_t>(inputs, len, op, out); break;
  case ncclUint8: reduce_typed<std::uint8_t, std::uint8_t>(inputs, len, op, out); break;
  case ncclInt32: reduce_signed<std::int32_t, std::uint32_t>(inputs, len, op, out); break;
  case ncclUint32: reduce_typed<std::uint32_t, std::uint32_t>(inputs, len, op, out); break;
  case ncclInt64: reduce_signed<std::int64_t, std::uint64_t>(inputs, len, op, out); break;
  case ncclUint64: reduce_typed<std::uint64_t, std::uint64_t>(inputs, len, op, out); break;
  case ncclFloat32: reduce_typed<float, float>(inputs, len, op, out); break;
  case ncclFloat64: reduce_typed<double, double>(inputs, len, op, out); break;
  case ncclBfloat16: reduce_typed<std::uint16_t, float>(inputs, len, op, out); break;
  default: throw EmuError(ncclInternalError, "reduce of an unsupported datatype");
  }
}

} // namespace cuboid::emu::nccl
