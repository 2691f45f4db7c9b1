// Fused anti-aliased SnakeBeta on the GPU: one block per tile of 1024 outputs of one row.
//
//   A. the tile's window of the replicate-padded input -> shared memory (coalesced loads)
//   B. up-sample + SnakeBeta for every activated sample the tile reads -> shared memory
//   C. replicate the row's first/last activated sample where the tile reaches past the row
//   D. down-sample -> shared memory, then coalesced stores
//
// Nothing but x and y touches global memory, all arithmetic is fp32. With 12-tap filters each
// thread handles 16 consecutive activated samples and 8 consecutive outputs from registers; other
// tap counts take a simple per-sample path (also used for the tile's tail in B).
//
// On an H100 the kernel's time follows the element count, not the bytes moved (bf16 and fp32 take
// the same time): it is bound by instruction issue, shared memory and latency, not bandwidth. What
// measurably helped there (vocoder shapes, 2026-11): A issues all of a thread's loads before the
// first use and stores the window spaced like the activations (B's register loads had 8-way bank
// conflicts), 1.3x together; for 16-bit outputs sin comes from the special-function unit (__sinf)
// instead of the ~15-instruction polynomial that fp32 outputs keep, 5 % more. 16 outputs per
// thread was slower. __sinf's error is under 2^-21.4 on [-π, π] and grows by about |x|·2^-24
// beyond (its argument is scaled by 1/2π in fp32), so up to |x| = 64 it stays far under a 16-bit
// output's rounding; larger |x| take the polynomial.
#include <algorithm>
#include <type_traits>

#include "../snake_math.h"
#include "cuda_common.cuh"

namespace deepsound::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kOutputsPerThread = 8;
constexpr int kActivatedPerThread = 2 * kOutputsPerThread;
constexpr int kTileOutputs = kThreads * kOutputsPerThread;
constexpr int kActCapacity = 2 * kTileOutputs + kMaxFilterTaps;
constexpr int kActShared = kActCapacity + kActCapacity / 32 + 1;
constexpr int kWindowCapacity = kTileOutputs + kMaxFilterTaps + 8;  // padded-input samples a tile reads
constexpr int kWindowShared = kWindowCapacity + kWindowCapacity / 32 + 1;

// One padding word per 32: a warp whose threads each own 8 or 16 consecutive samples then hits 32
// different banks with every access.
__device__ __forceinline__ int spaced(int e) { return e + (e >> 5); }

// Up to where __sinf is accurate enough for 16-bit outputs (absolute error about 4e-6 at 64).
constexpr float kFastSinMaxArgument = 64.0f;

// sin² for arguments beyond the inline paths: rare, and one out-of-line copy keeps the unrolled
// loops (16 activations each) small.
__device__ __noinline__ float sin_squared_wide(float argument) {
  if (fabsf(argument) <= kSinSquaredMaxArgument) return sin_squared(argument);
  const float s = sinf(argument);
  return s * s;
}

template <bool kFastSin>
__device__ __forceinline__ float snake(float v, float alpha, float inv_beta) {
  const float argument = alpha * v;
  float s2;
  if (kFastSin && fabsf(argument) <= kFastSinMaxArgument) {
    const float s = __sinf(argument);
    s2 = s * s;
  } else if (!kFastSin && fabsf(argument) <= kSinSquaredMaxArgument) {
    s2 = sin_squared(argument);
  } else {
    s2 = sin_squared_wide(argument);
  }
  return v + inv_beta * s2;
}

// 16 activated samples from registers; kParity = parity of (j + up_crop) at the first of them.
template <int kPhaseTaps, int kParity, bool kFastSin>
__device__ __forceinline__ void activate_block(const float* xr, const float (&taps)[2][kPhaseTaps], float* act,
                                               int e_first, float alpha, float inv_beta) {
#pragma unroll
  for (int d = 0; d < kActivatedPerThread; ++d) {
    const int phase = (kParity + d) & 1;
    const int newest = kPhaseTaps - 1 + ((kParity + d) >> 1);
    float u = 0.0f;
#pragma unroll
    for (int r = 0; r < kPhaseTaps; ++r) u += taps[phase][r] * xr[newest - r];
    act[spaced(e_first + d)] = snake<kFastSin>(u, alpha, inv_beta);
  }
}

// kTaps: 12 for the register-blocked path (both filters), 0 for any tap counts.
template <typename T, int kTaps>
__global__ void __launch_bounds__(kThreads)
    snake_beta_kernel(const T* __restrict__ x, T* __restrict__ y, int channels, int length, int tiles_per_row,
                      const void* alpha, const void* beta, DType param_dtype, bool logscale, const void* up_filter,
                      const void* down_filter, SnakeGeometry g) {
  __shared__ float up_phase[2][kMaxFilterTaps / 2];  // 2·f_up[parity + 2r]: transposed-conv gain folded in
  __shared__ float down[kMaxFilterTaps];
  __shared__ float window[kWindowShared];  // padded input, later the tile's outputs
  __shared__ float act[kActShared];
  constexpr bool kFastSin = !std::is_same_v<T, float>;
  constexpr int kLoadsPerThread = (kWindowCapacity + kThreads - 1) / kThreads;

  const int tid = threadIdx.x;
  const long long row = blockIdx.x / tiles_per_row;
  const int tile = static_cast<int>(blockIdx.x % tiles_per_row);
  const int c = static_cast<int>(row % channels);

  // A. Activated samples j = ext_first + e, e in [0, ext_count), feed the tile's outputs; they read
  // the padded input xp[m_first + i], i in [0, m_count). All loads are in flight at once.
  const int out_first = tile * kTileOutputs;
  const int ext_first = 2 * out_first - g.down_pad_left;
  const int ext_count = 2 * kTileOutputs + g.down_taps - 2;
  const int m_first = g.first_padded_index(ext_first);
  const int m_count = g.last_padded_index(ext_first + ext_count - 1) - m_first + 1;
  const T* x_row = x + row * length;
  float loaded[kLoadsPerThread];
#pragma unroll
  for (int k = 0; k < kLoadsPerThread; ++k) {
    const int i = tid + k * kThreads;
    const int source = i < m_count ? g.padded_source(m_first + i, length) : -1;
    loaded[k] = source < 0 ? 0.0f : to_float(x_row[source]);
  }
  for (int k = tid; k < g.up_taps; k += kThreads) {
    up_phase[k & 1][k >> 1] = 2.0f * load_param(up_filter, param_dtype, k);
  }
  for (int k = tid; k < g.down_taps; k += kThreads) down[k] = load_param(down_filter, param_dtype, k);
  float a = load_param(alpha, param_dtype, c);
  float b = load_param(beta, param_dtype, c);
  if (logscale) {
    a = expf(a);
    b = expf(b);
  }
  const float inv_beta = 1.0f / (b + kSnakeEps);

#pragma unroll
  for (int k = 0; k < kLoadsPerThread; ++k) {
    const int i = tid + k * kThreads;
    if (i < m_count) window[spaced(i)] = loaded[k];
  }
  __syncthreads();

  // B. u[j] = Σ_r up_phase[p][r] · xp[newest - r] with p = (j + up_crop) & 1 and
  // newest = floor((j + up_crop) / 2). Samples outside [0, 2T) are computed too and replaced in C.
  const int crop_first = ext_first + g.up_crop;
  int e_simple = 0;
  if constexpr (kTaps > 0) {
    constexpr int kPhaseTaps = kTaps / 2;
    const int e_first = kActivatedPerThread * tid;
    const int oldest = floor_div2(crop_first + e_first) - m_first - (kPhaseTaps - 1);
    float xr[kPhaseTaps + kOutputsPerThread];
#pragma unroll
    for (int w = 0; w < kPhaseTaps + kOutputsPerThread; ++w) xr[w] = window[spaced(oldest + w)];
    float taps[2][kPhaseTaps];
#pragma unroll
    for (int r = 0; r < kPhaseTaps; ++r) {
      taps[0][r] = up_phase[0][r];
      taps[1][r] = up_phase[1][r];
    }
    if (((crop_first + e_first) & 1) == 0) {
      activate_block<kPhaseTaps, 0, kFastSin>(xr, taps, act, e_first, a, inv_beta);
    } else {
      activate_block<kPhaseTaps, 1, kFastSin>(xr, taps, act, e_first, a, inv_beta);
    }
    e_simple = kActivatedPerThread * kThreads;
  }
  for (int e = e_simple + tid; e < ext_count; e += kThreads) {
    const int shifted = crop_first + e;
    const int phase = shifted & 1;
    const int newest = floor_div2(shifted) - m_first;
    float u = 0.0f;
    for (int r = 0, k = phase; k < g.up_taps; ++r, k += 2) u += up_phase[phase][r] * window[spaced(newest - r)];
    act[spaced(e)] = snake<kFastSin>(u, a, inv_beta);
  }
  __syncthreads();

  // C. Replicate padding of the activated signal at the row's ends (block-uniform condition).
  const int e_low = -ext_first;                 // e of j = 0
  const int e_high = 2 * length - 1 - ext_first;  // e of j = 2T - 1
  if (e_low > 0 || e_high < ext_count - 1) {
    const float low = e_low > 0 ? act[spaced(e_low)] : 0.0f;
    const float high = e_high < ext_count - 1 ? act[spaced(e_high)] : 0.0f;
    for (int e = tid; e < ext_count; e += kThreads) {
      if (e < e_low) act[spaced(e)] = low;
      if (e > e_high) act[spaced(e)] = high;
    }
    __syncthreads();
  }

  // D. y[out_first + t] = Σ_k down[k] · act[2t + k], staged in `window` for coalesced stores.
  float* out = window;
  if constexpr (kTaps > 0) {
    constexpr int kReach = 2 * kOutputsPerThread + kTaps - 2;
    const int t_first = kOutputsPerThread * tid;
    float ar[kReach];
#pragma unroll
    for (int i = 0; i < kReach; ++i) ar[i] = act[spaced(2 * t_first + i)];
    float taps[kTaps];
#pragma unroll
    for (int k = 0; k < kTaps; ++k) taps[k] = down[k];
#pragma unroll
    for (int t = 0; t < kOutputsPerThread; ++t) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < kTaps; ++k) acc += taps[k] * ar[2 * t + k];
      out[spaced(t_first + t)] = acc;
    }
  } else {
    for (int t = tid; t < kTileOutputs; t += kThreads) {
      float acc = 0.0f;
      for (int k = 0; k < g.down_taps; ++k) acc += down[k] * act[spaced(2 * t + k)];
      out[spaced(t)] = acc;
    }
  }
  __syncthreads();
  T* y_row = y + row * length;
  const int valid = min(kTileOutputs, length - out_first);
  for (int t = tid; t < valid; t += kThreads) y_row[out_first + t] = from_float<T>(out[spaced(t)]);
}

template <typename T>
void launch(cudaStream_t stream, DevicePtr x, DevicePtr y, long long blocks, int channels, int length,
            int tiles_per_row, DevicePtr alpha, DevicePtr beta, DType param_dtype, bool logscale, DevicePtr up_filter,
            DevicePtr down_filter, const SnakeGeometry& g) {
  const bool fast = g.up_taps == 12 && g.down_taps == 12;
  auto kernel = fast ? snake_beta_kernel<T, 12> : snake_beta_kernel<T, 0>;
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      reinterpret_cast<const T*>(x), reinterpret_cast<T*>(y), channels, length, tiles_per_row,
      reinterpret_cast<const void*>(alpha), reinterpret_cast<const void*>(beta), param_dtype, logscale,
      reinterpret_cast<const void*>(up_filter), reinterpret_cast<const void*>(down_filter), g);
}

}  // namespace

void snake_beta_antialiased(int device, StreamHandle stream, DevicePtr x, DevicePtr y, DType dtype, std::int64_t rows,
                            int channels, std::int64_t length, DevicePtr alpha, DevicePtr beta, DType param_dtype,
                            bool logscale, DevicePtr up_filter, int up_taps, DevicePtr down_filter, int down_taps) {
  if (up_taps < 2 || up_taps > kMaxFilterTaps || down_taps < 2 || down_taps > kMaxFilterTaps) {
    throw std::invalid_argument("filter tap counts must be in [2, 64]");
  }
  if (length < 1 || length > (1 << 29)) throw std::invalid_argument("length must be in [1, 2^29]");
  if (channels < 1 || rows < 1 || rows % channels != 0) {
    throw std::invalid_argument("rows must be a positive multiple of channels");
  }
  const int n = static_cast<int>(length);
  const int tiles_per_row = (n + kTileOutputs - 1) / kTileOutputs;
  const long long blocks = rows * tiles_per_row;
  if (blocks > 0x7FFFFFFFLL) throw std::invalid_argument("tensor too large for one launch");
  const SnakeGeometry g = SnakeGeometry::make(up_taps, down_taps);
  DeviceScope scope(device);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case DType::kFloat32:
      launch<float>(s, x, y, blocks, channels, n, tiles_per_row, alpha, beta, param_dtype, logscale, up_filter,
                    down_filter, g);
      break;
    case DType::kFloat16:
      launch<__half>(s, x, y, blocks, channels, n, tiles_per_row, alpha, beta, param_dtype, logscale, up_filter,
                     down_filter, g);
      break;
    case DType::kBFloat16:
      launch<__nv_bfloat16>(s, x, y, blocks, channels, n, tiles_per_row, alpha, beta, param_dtype, logscale,
                            up_filter, down_filter, g);
      break;
  }
  check(cudaGetLastError(), "snake_beta_antialiased launch");
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

}  // namespace deepsound::cuda
