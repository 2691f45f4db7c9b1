// Spectral front ends on the GPU with our own FFT: one block transforms two real frames at once
// (one in the real, one in the imaginary part) with a radix-2 FFT in shared memory, then finishes
// them (magnitude, mel, log) before anything goes back to global memory.
//
// Own FFT rather than cuFFT: sizes are 512-2048, a block-level FFT fuses with the windowing and the
// mel product (no intermediate spectrum in global memory), and the build needs no cuFFT headers or
// libraries, which are not present on every machine that has nvcc.
#include <algorithm>

#include "cuda_common.cuh"

namespace deepsound::cuda {
namespace {

constexpr float kMagnitudeEps = 1e-9f;
constexpr float kMelLogFloor = 1e-5f;
constexpr int kMaxFftSize = 4096;
constexpr int kMaxThreads = 1024;  // n/2 butterflies per stage, one per thread up to this
constexpr int kMaxSharedBytes = 48 * 1024;

int log2_of_power_of_two(int n, const char* what) {
  if (n < 2 || n > kMaxFftSize || (n & (n - 1)) != 0) {
    throw std::invalid_argument(std::string(what) + " must be a power of two in [2, 4096]");
  }
  int bits = 0;
  while ((1 << bits) < n) ++bits;
  return bits;
}

int fft_threads(int n) { return std::clamp(n / 2, 32, kMaxThreads); }

void check_shared(size_t bytes) {
  if (bytes > kMaxSharedBytes) throw std::invalid_argument("transform too large for one block's shared memory");
}

unsigned group_blocks(long long frames_total) {
  const long long blocks = (frames_total + 1) / 2;
  if (blocks < 1 || blocks > 0x7FFFFFFFLL) throw std::invalid_argument("frame count out of range");
  return static_cast<unsigned>(blocks);
}

__device__ __forceinline__ int bit_reversed(int t, int log2n) { return static_cast<int>(__brev(t) >> (32 - log2n)); }

// torch's reflect padding (the edge sample is not repeated); the host ensures pad < length.
__device__ __forceinline__ long long reflect(long long i, long long length) {
  if (i < 0) return -i;
  if (i >= length) return 2 * (length - 1) - i;
  return i;
}

// clamp that keeps NaN, as torch.clamp does.
__device__ __forceinline__ float clamp_keep_nan(float v, float low, float high) {
  return v < low ? low : (v > high ? high : v);
}

// In-place radix-2 decimation-in-time FFT of re/im (bit-reversed order in, natural order out) by
// the whole block; twiddles exp(∓iπ·j/half) from sincospif, accurate to ~1 ulp.
__device__ void block_fft(float* re, float* im, int n, bool inverse) {
  for (int half = 1; half < n; half *= 2) {
    for (int b = threadIdx.x; b < n / 2; b += blockDim.x) {
      const int j = b & (half - 1);
      const int i0 = ((b - j) << 1) + j;
      const int i1 = i0 + half;
      float s, c;
      sincospif(static_cast<float>(j) / static_cast<float>(half), &s, &c);
      const float wi = inverse ? s : -s;
      const float tr = re[i1] * c - im[i1] * wi;
      const float ti = re[i1] * wi + im[i1] * c;
      re[i1] = re[i0] - tr;
      im[i1] = im[i0] - ti;
      re[i0] += tr;
      im[i0] += ti;
    }
    __syncthreads();
  }
}

// The two real frames' bins from Z = FFT(a + i·b): A[k] = (Z[k] + conj Z[n-k]) / 2,
// B[k] = (Z[k] - conj Z[n-k]) / 2i.
__device__ __forceinline__ float4 split_pair(const float* re, const float* im, int n, int k) {
  const int mirror = (n - k) & (n - 1);
  return make_float4(0.5f * (re[k] + re[mirror]), 0.5f * (im[k] - im[mirror]), 0.5f * (im[k] + im[mirror]),
                     0.5f * (re[mirror] - re[k]));
}

// The block's frames `first` and, when it exists, `first + 1`: their signal, index and first sample.
struct FramePair {
  const float* signal[2];
  long long signal_index[2];
  long long frame[2];  // within its signal
  long long start[2];
  int count;
};

__device__ __forceinline__ FramePair frame_pair(const float* data, long long first, long long total,
                                                long long frames, long long length, int hop, int pad) {
  FramePair pair;
  pair.count = first + 1 < total ? 2 : 1;
  for (int part = 0; part < 2; ++part) {
    const long long global = min(first + part, total - 1);
    pair.signal_index[part] = global / frames;
    pair.frame[part] = global % frames;
    pair.signal[part] = data + pair.signal_index[part] * length;
    pair.start[part] = pair.frame[part] * hop - pad;
  }
  return pair;
}

__device__ float span_sum(const float* row, int2 span, const float* spectrum) {
  float acc = 0.0f;
  for (int k = span.x; k < span.y; ++k) acc += row[k] * spectrum[k];
  return acc;
}

__global__ void __launch_bounds__(kMaxThreads)
    mel_kernel(const float* __restrict__ wave, long long length, long long frames, long long total,
        const float* __restrict__ basis, const int2* __restrict__ spans, int num_mels,
        const float* __restrict__ window, int n_fft, int log2n, int hop, bool log10, float* __restrict__ mel,
        float* __restrict__ magnitude) {
  extern __shared__ float shared[];
  const int bins = n_fft / 2 + 1;
  float* re = shared;
  float* im = re + n_fft;
  float* spectrum = im + n_fft;  // [2][bins]
  const long long first = 2LL * blockIdx.x;
  const FramePair pair = frame_pair(wave, first, total, frames, length, hop, (n_fft - hop) / 2);
  for (int t = threadIdx.x; t < n_fft; t += blockDim.x) {
    float value[2] = {0.0f, 0.0f};
    for (int part = 0; part < pair.count; ++part) {
      const float sample = pair.signal[part][reflect(pair.start[part] + t, length)];
      value[part] = clamp_keep_nan(sample, -1.0f, 1.0f) * window[t];
    }
    const int slot = bit_reversed(t, log2n);
    re[slot] = value[0];
    im[slot] = value[1];
  }
  __syncthreads();
  block_fft(re, im, n_fft, false);
  for (int k = threadIdx.x; k < bins; k += blockDim.x) {
    const float4 z = split_pair(re, im, n_fft, k);
    spectrum[k] = sqrtf(z.x * z.x + z.y * z.y + kMagnitudeEps);
    spectrum[bins + k] = sqrtf(z.z * z.z + z.w * z.w + kMagnitudeEps);
  }
  __syncthreads();
  if (magnitude != nullptr) {
    for (int i = threadIdx.x; i < pair.count * bins; i += blockDim.x) {
      const int part = i / bins;
      magnitude[(pair.signal_index[part] * bins + i % bins) * frames + pair.frame[part]] = spectrum[i];
    }
  }
  for (int i = threadIdx.x; i < pair.count * num_mels; i += blockDim.x) {
    const int part = i / num_mels;
    const int m = i % num_mels;
    const float energy = span_sum(basis + static_cast<long long>(m) * bins, spans[m], spectrum + part * bins);
    const float floored = energy < kMelLogFloor ? kMelLogFloor : energy;
    mel[(pair.signal_index[part] * num_mels + m) * frames + pair.frame[part]] = log10 ? log10f(floored) : logf(floored);
  }
}

// Sums of a and b over the block (all threads get them); `scratch` holds 2 floats per warp.
__device__ float2 block_sum2(float a, float b, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_down_sync(0xFFFFFFFFu, a, offset);
    b += __shfl_down_sync(0xFFFFFFFFu, b, offset);
  }
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  if (threadIdx.x % 32 == 0) {
    scratch[2 * warp] = a;
    scratch[2 * warp + 1] = b;
  }
  __syncthreads();
  float2 total = make_float2(0.0f, 0.0f);
  for (int w = 0; w < warps; ++w) {
    total.x += scratch[2 * w];
    total.y += scratch[2 * w + 1];
  }
  return total;
}

__global__ void __launch_bounds__(kMaxThreads)
    fbank_kernel(const float* __restrict__ wave, long long length, long long frames, long long total,
        const float* __restrict__ banks, const int2* __restrict__ spans, int num_mels, int num_bank_bins,
        const float* __restrict__ window, int frame_length, int frame_shift, int padded_length, int log2n,
        float preemphasis, float scale, float log_floor, float* __restrict__ out) {
  extern __shared__ float shared[];
  float* re = shared;
  float* im = re + padded_length;
  float* reduce = im + padded_length;  // 64 floats
  float* scratch = reduce + 64;       // raw frames [2][frame_length], later power [2][num_bank_bins]
  const long long first = 2LL * blockIdx.x;
  const FramePair pair = frame_pair(wave, first, total, frames, length, frame_shift, 0);
  const bool has_second = pair.count == 2;

  float sum[2] = {0.0f, 0.0f};
  for (int t = threadIdx.x; t < frame_length; t += blockDim.x) {
    for (int part = 0; part < 2; ++part) {
      const float raw = part < pair.count ? pair.signal[part][pair.start[part] + t] * scale : 0.0f;
      scratch[part * frame_length + t] = raw;
      sum[part] += raw;
    }
  }
  const float2 sums = block_sum2(sum[0], sum[1], reduce);
  const float mean[2] = {sums.x / frame_length, sums.y / frame_length};
  for (int t = threadIdx.x; t < padded_length; t += blockDim.x) {
    float value[2] = {0.0f, 0.0f};
    if (t < frame_length) {
      for (int part = 0; part < 2; ++part) {
        const float* raw = scratch + part * frame_length;
        const float centred = raw[t] - mean[part];
        const float previous = raw[t > 0 ? t - 1 : 0] - mean[part];  // Kaldi repeats the first sample
        value[part] = (centred - preemphasis * previous) * window[t];
      }
    }
    const int slot = bit_reversed(t, log2n);
    re[slot] = value[0];
    im[slot] = has_second ? value[1] : 0.0f;
  }
  __syncthreads();
  block_fft(re, im, padded_length, false);
  for (int k = threadIdx.x; k < num_bank_bins; k += blockDim.x) {
    const float4 z = split_pair(re, im, padded_length, k);
    scratch[k] = z.x * z.x + z.y * z.y;
    scratch[num_bank_bins + k] = z.z * z.z + z.w * z.w;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < pair.count * num_mels; i += blockDim.x) {
    const int part = i / num_mels;
    const int m = i % num_mels;
    const long long frame = first + part;
    const float energy = span_sum(banks + static_cast<long long>(m) * num_bank_bins, spans[m],
                                  scratch + part * num_bank_bins);
    out[frame * num_mels + m] = logf(energy < log_floor ? log_floor : energy);
  }
}

// Spectra are written as (signal, frame, bin): consecutive threads store consecutive bins.
__global__ void __launch_bounds__(kMaxThreads)
    stft_kernel(const float* __restrict__ x, long long length, long long frames, long long total,
        const float* __restrict__ window, int n_fft, int log2n, int hop, float2* __restrict__ out) {
  extern __shared__ float shared[];
  float* re = shared;
  float* im = re + n_fft;
  const int bins = n_fft / 2 + 1;
  const long long first = 2LL * blockIdx.x;
  const FramePair pair = frame_pair(x, first, total, frames, length, hop, n_fft / 2);
  bool nonzero[2] = {false, false};
  for (int t = threadIdx.x; t < n_fft; t += blockDim.x) {
    float value[2] = {0.0f, 0.0f};
    for (int part = 0; part < pair.count; ++part) {
      value[part] = pair.signal[part][reflect(pair.start[part] + t, length)] * window[t];
      nonzero[part] |= value[part] != 0.0f;
    }
    const int slot = bit_reversed(t, log2n);
    re[slot] = value[0];
    im[slot] = value[1];
  }
  // A silent frame must give exact zeros, as torch.stft does: the paired transform would leak its
  // partner's rounding into it, and the separator's RMSNorm blows any non-zero up to unit norm.
  const bool audible[2] = {__syncthreads_or(nonzero[0]) != 0, __syncthreads_or(nonzero[1]) != 0};
  block_fft(re, im, n_fft, false);
  for (int i = threadIdx.x; i < pair.count * bins; i += blockDim.x) {
    const int part = i / bins;
    const int k = i % bins;
    const long long frame = first + part;
    const float4 z = split_pair(re, im, n_fft, k);
    const float2 value = part ? make_float2(z.z, z.w) : make_float2(z.x, z.y);
    out[frame * bins + k] = audible[part] ? value : make_float2(0.0f, 0.0f);
  }
}

// Inverse transforms of two frames, windowed, into workspace[frame][t].
__global__ void __launch_bounds__(kMaxThreads)
    istft_frames_kernel(const float2* __restrict__ spec, long long total, const float* __restrict__ window, int n_fft,
        int log2n, float* __restrict__ workspace) {
  extern __shared__ float shared[];
  float* re = shared;
  float* im = re + n_fft;
  const int bins = n_fft / 2 + 1;
  const long long first = 2LL * blockIdx.x;
  const bool has_second = first + 1 < total;
  // Z = A + i·B over the whole circle (Hermitian halves); the imaginary parts of the DC and Nyquist
  // bins are dropped, as a complex-to-real FFT does.
  for (int k = threadIdx.x; k < bins; k += blockDim.x) {
    const bool edge = k == 0 || k == bins - 1;
    float2 a = spec[first * bins + k];
    float2 b = has_second ? spec[(first + 1) * bins + k] : make_float2(0.0f, 0.0f);
    if (edge) {
      a.y = 0.0f;
      b.y = 0.0f;
    }
    const int slot = bit_reversed(k, log2n);
    re[slot] = a.x - b.y;
    im[slot] = a.y + b.x;
    if (!edge) {
      const int mirror = bit_reversed(n_fft - k, log2n);
      re[mirror] = a.x + b.y;
      im[mirror] = b.x - a.y;
    }
  }
  __syncthreads();
  block_fft(re, im, n_fft, true);
  const float inverse_n = 1.0f / n_fft;
  for (int t = threadIdx.x; t < n_fft; t += blockDim.x) {
    workspace[first * n_fft + t] = re[t] * inverse_n * window[t];
    if (has_second) workspace[(first + 1) * n_fft + t] = im[t] * inverse_n * window[t];
  }
}

// Overlap-add as a gather, divided by the overlap-added squared window; zero past the frames.
__global__ void istft_overlap_kernel(const float* __restrict__ workspace, long long signals, long long frames,
                                     const float* __restrict__ window, int n_fft, int hop, long long length,
                                     float* __restrict__ out) {
  const long long index = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (index >= signals * length) return;
  const long long s = index / length;
  const long long padded = index % length + n_fft / 2;
  const long long covered = n_fft + hop * (frames - 1);
  if (padded >= covered) {
    out[index] = 0.0f;
    return;
  }
  const long long f_first = max(0LL, (padded - n_fft + hop) / hop);
  const long long f_last = min(frames - 1, padded / hop);
  float sum = 0.0f, envelope = 0.0f;
  for (long long f = f_first; f <= f_last; ++f) {
    const long long offset = padded - f * hop;
    const float w = window[offset];
    sum += workspace[(s * frames + f) * n_fft + offset];
    envelope += w * w;
  }
  out[index] = sum / envelope;
}

}  // namespace

void mel_spectrogram(int device, StreamHandle stream, DevicePtr wave, std::int64_t batch, std::int64_t length,
                     DevicePtr mel_basis, DevicePtr spans, int num_mels, DevicePtr window, int n_fft, int hop,
                     bool log10, DevicePtr mel, DevicePtr magnitude) {
  const int log2n = log2_of_power_of_two(n_fft, "n_fft");
  if (hop < 1 || hop > n_fft) throw std::invalid_argument("hop must be in [1, n_fft]");
  const int pad = (n_fft - hop) / 2;
  if (length <= pad) throw std::invalid_argument("waveform too short for the reflect padding");
  if (length + 2 * pad < n_fft) throw std::invalid_argument("waveform shorter than one frame");
  const long long frames = 1 + (length + 2 * pad - n_fft) / hop;
  const int bins = n_fft / 2 + 1;
  const size_t shared = (2 * n_fft + 2 * bins) * sizeof(float);
  check_shared(shared);
  DeviceScope scope(device);
  mel_kernel<<<group_blocks(batch * frames), fft_threads(n_fft), shared, as_stream(stream)>>>(
      reinterpret_cast<const float*>(wave), length, frames, batch * frames, reinterpret_cast<const float*>(mel_basis),
      reinterpret_cast<const int2*>(spans), num_mels, reinterpret_cast<const float*>(window), n_fft, log2n, hop,
      log10, reinterpret_cast<float*>(mel), reinterpret_cast<float*>(magnitude));
  check(cudaGetLastError(), "mel_spectrogram launch");
}

void kaldi_fbank(int device, StreamHandle stream, DevicePtr wave, std::int64_t batch, std::int64_t length,
                 DevicePtr mel_banks, DevicePtr spans, int num_mels, int num_bank_bins, DevicePtr window,
                 int frame_length, int frame_shift, int padded_length, float preemphasis, float scale,
                 float log_floor, DevicePtr out) {
  const int log2n = log2_of_power_of_two(padded_length, "padded frame length");
  if (frame_length < 1 || frame_length > padded_length) throw std::invalid_argument("bad frame length");
  if (frame_shift < 1) throw std::invalid_argument("frame shift must be positive");
  if (num_bank_bins > padded_length / 2 + 1) throw std::invalid_argument("mel banks wider than the spectrum");
  if (length < frame_length) throw std::invalid_argument("waveform shorter than one frame");
  const long long frames = 1 + (length - frame_length) / frame_shift;
  const size_t shared = (2 * padded_length + 64 + 2 * std::max(frame_length, num_bank_bins)) * sizeof(float);
  check_shared(shared);
  DeviceScope scope(device);
  fbank_kernel<<<group_blocks(batch * frames), fft_threads(padded_length), shared, as_stream(stream)>>>(
      reinterpret_cast<const float*>(wave), length, frames, batch * frames, reinterpret_cast<const float*>(mel_banks),
      reinterpret_cast<const int2*>(spans), num_mels, num_bank_bins, reinterpret_cast<const float*>(window),
      frame_length, frame_shift, padded_length, log2n, preemphasis, scale, log_floor, reinterpret_cast<float*>(out));
  check(cudaGetLastError(), "kaldi_fbank launch");
}

void stft(int device, StreamHandle stream, DevicePtr x, std::int64_t signals, std::int64_t length, DevicePtr window,
          int n_fft, int hop, DevicePtr out) {
  const int log2n = log2_of_power_of_two(n_fft, "n_fft");
  if (hop < 1) throw std::invalid_argument("hop must be positive");
  if (length <= n_fft / 2) throw std::invalid_argument("signal too short for the centred reflect padding");
  const long long frames = 1 + length / hop;
  const size_t shared = 2 * n_fft * sizeof(float);
  check_shared(shared);
  DeviceScope scope(device);
  stft_kernel<<<group_blocks(signals * frames), fft_threads(n_fft), shared, as_stream(stream)>>>(
      reinterpret_cast<const float*>(x), length, frames, signals * frames, reinterpret_cast<const float*>(window),
      n_fft, log2n, hop, reinterpret_cast<float2*>(out));
  check(cudaGetLastError(), "stft launch");
}

void istft(int device, StreamHandle stream, DevicePtr spec, std::int64_t signals, std::int64_t frames,
           DevicePtr window, int n_fft, int hop, std::int64_t length, DevicePtr workspace, DevicePtr out) {
  const int log2n = log2_of_power_of_two(n_fft, "n_fft");
  if (hop < 1 || frames < 1 || length < 1) throw std::invalid_argument("hop, frames and length must be positive");
  const size_t shared = 2 * n_fft * sizeof(float);
  check_shared(shared);
  DeviceScope scope(device);
  const cudaStream_t s = as_stream(stream);
  istft_frames_kernel<<<group_blocks(signals * frames), fft_threads(n_fft), shared, s>>>(
      reinterpret_cast<const float2*>(spec), signals * frames, reinterpret_cast<const float*>(window), n_fft,
      log2n, reinterpret_cast<float*>(workspace));
  check(cudaGetLastError(), "istft launch");
  constexpr int kThreads = 256;
  const long long outputs = signals * length;
  istft_overlap_kernel<<<static_cast<unsigned>((outputs + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      reinterpret_cast<const float*>(workspace), signals, frames, reinterpret_cast<const float*>(window), n_fft, hop,
      length, reinterpret_cast<float*>(out));
  check(cudaGetLastError(), "istft overlap-add launch");
}

}  // namespace deepsound::cuda
