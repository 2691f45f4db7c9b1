// Geometry and arithmetic of the anti-aliased SnakeBeta shared by the CPU and CUDA kernels, so both
// index the padded signals and evaluate sin² in exactly the same way.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DS_HOST_DEVICE inline
#endif

namespace deepsound {

// SnakeBeta divides by (b + eps), as BigVGAN does, so that b = 0 stays finite.
constexpr float kSnakeEps = 1e-9f;
// |argument| up to which sin_squared's range reduction is exact enough (n·π/2 split in three parts
// with n < 2^13); larger arguments go through the library sinf.
constexpr float kSinSquaredMaxArgument = 8192.0f;
constexpr int kMaxFilterTaps = 64;

DS_HOST_DEVICE int floor_div2(int value) { return value >> 1; }  // arithmetic shift: floor for negatives

// Index arithmetic of BigVGAN's UpSample1d(2, K) + DownSample1d(2, K) on a row of T samples.
//
// Up-sampling replicate-pads x by `up_pad`, runs a stride-2 transposed conv (gain 2) and crops
// `up_crop` samples from its start, so with the padded input xp[m] (m in [0, T + 2·up_pad)):
//     u[j] = 2 · Σ_{k : (j + up_crop - k) even} f_up[k] · xp[(j + up_crop - k) / 2],   j in [0, 2T).
// Down-sampling replicate-pads the *activated* signal a = act(u) by `down_pad_left` and takes a
// stride-2 conv:  y[i] = Σ_k f_down[k] · a[clamp(2i + k - down_pad_left, 0, 2T - 1)].
struct SnakeGeometry {
  int up_taps;
  int down_taps;
  int up_pad;
  int up_crop;
  int down_pad_left;

  DS_HOST_DEVICE static SnakeGeometry make(int up_taps, int down_taps) {
    SnakeGeometry g;
    g.up_taps = up_taps;
    g.down_taps = down_taps;
    g.up_pad = up_taps / 2 - 1;
    g.up_crop = g.up_pad * 2 + (up_taps - 2) / 2;
    g.down_pad_left = down_taps / 2 - (down_taps % 2 == 0 ? 1 : 0);
    return g;
  }

  // xp[m]: replicate padding inside [0, T + 2·up_pad), zero outside (the transposed conv's support),
  // expressed as the source index into x, or -1 for a zero.
  DS_HOST_DEVICE int padded_source(int m, int length) const {
    if (m < 0 || m >= length + 2 * up_pad) return -1;
    const int i = m - up_pad;
    return i < 0 ? 0 : (i >= length ? length - 1 : i);
  }

  // Range of xp indices that the up-sampled samples j in [j_first, j_last] read.
  DS_HOST_DEVICE int first_padded_index(int j_first) const { return floor_div2(j_first + up_crop - (up_taps - 1)); }
  DS_HOST_DEVICE int last_padded_index(int j_last) const { return floor_div2(j_last + up_crop); }
};

// sin²(x) without a branch for |x| <= kSinSquaredMaxArgument: x = n·π/2 + r, |r| <= π/4 (Cody-Waite
// with a three-part π/2), then sin² x = sin² r for even n and 1 - sin² r for odd n; sin r is Cephes'
// single-precision polynomial. Agrees with sinf(x)² to a few 1e-8 absolute.
DS_HOST_DEVICE float sin_squared(float x) {
  const float two_over_pi = 0.636619772367581343f;
  const float round_magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
  const float shifted = x * two_over_pi + round_magic;
  std::uint32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  const float n = shifted - round_magic;
  float r = x - n * 1.5703125f;
  r = r - n * 4.837512969970703125e-4f;
  r = r - n * 7.54978995489188216e-8f;
  const float z = r * r;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float s2 = s * s;
  return (bits & 1u) ? 1.0f - s2 : s2;
}

// Per-channel SnakeBeta constants as BigVGAN computes them in float32: a = e^alpha, 1 / (e^beta + eps).
struct SnakeChannel {
  float alpha;
  float inv_beta;
};

}  // namespace deepsound
