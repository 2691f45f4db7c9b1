// fp16 / bf16 values travel as uint16 bit patterns (numpy has no bfloat16); all arithmetic is fp32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace deepsound::cpu {

enum class Storage { kFloat32, kFloat16, kBFloat16 };

inline float bf16_to_float(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

// Round to nearest even, NaN kept quiet: the rounding torch's .to(torch.bfloat16) uses.
inline std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

inline float fp16_to_float(std::uint16_t bits) {
  _Float16 half;
  std::memcpy(&half, &bits, sizeof half);
  return static_cast<float>(half);
}

inline std::uint16_t float_to_fp16(float value) {
  const _Float16 half = static_cast<_Float16>(value);  // IEEE round to nearest even
  std::uint16_t bits;
  std::memcpy(&bits, &half, sizeof bits);
  return bits;
}

template <Storage S>
struct StorageTraits;

template <>
struct StorageTraits<Storage::kFloat32> {
  using Element = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};

template <>
struct StorageTraits<Storage::kFloat16> {
  using Element = std::uint16_t;
  static float load(std::uint16_t v) { return fp16_to_float(v); }
  static std::uint16_t store(float v) { return float_to_fp16(v); }
};

template <>
struct StorageTraits<Storage::kBFloat16> {
  using Element = std::uint16_t;
  static float load(std::uint16_t v) { return bf16_to_float(v); }
  static std::uint16_t store(float v) { return float_to_bf16(v); }
};

}  // namespace deepsound::cpu
