// Spectral front ends on the CPU: frames are transformed 2·kLanes at a time by LaneFft, and each
// group goes from waveform to its final values (magnitude, mel, log) without leaving the cache.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu_kernels.h"
#include "lane_fft.h"

namespace deepsound::cpu {
namespace {

constexpr int kGroupFrames = 2 * kLanes;
constexpr float kMagnitudeEps = 1e-9f;
constexpr float kMelLogFloor = 1e-5f;
constexpr float kInverseLn10 = 0.434294481903251828f;
// torch.istft refuses windows whose overlap-added square falls below this anywhere in the output.
constexpr float kEnvelopeMin = 1e-11f;

// torch's reflect padding (the edge sample is not repeated); callers ensure pad < length.
inline std::int64_t reflect(std::int64_t i, std::int64_t length) {
  if (i < 0) return -i;
  if (i >= length) return 2 * (length - 1) - i;
  return i;
}

// Natural log of a positive normal float (Cephes logf, ~1 ulp), branch-free so that loops over it
// vectorise; infinities and NaNs pass through.
inline float log_positive(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  float exponent = static_cast<float>(static_cast<int>(bits >> 23) - 126);
  const std::uint32_t mantissa_bits = (bits & 0x007FFFFFu) | 0x3F000000u;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mantissa_bits, sizeof m);
  const bool below_sqrt_half = m < 0.707106781186547524f;
  exponent = below_sqrt_half ? exponent - 1.0f : exponent;
  const float f = below_sqrt_half ? m + m - 1.0f : m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * exponent;
  y += -0.5f * z;
  const float result = f + y + 0.693359375f * exponent;
  return x < INFINITY ? result : x;
}

// values[i] = scale · ln(max(values[i], floor)); scale 1/ln 10 gives log10. Not inlined: GCC does
// not vectorise the inlined copy whose scale is a run-time choice.
__attribute__((noinline)) void floored_log(float* values, int count, float floor, float scale) {
#pragma omp simd
  for (int i = 0; i < count; ++i) values[i] = log_positive(std::max(values[i], floor)) * scale;
}

void require_fft_size(int n_fft) {
  if (n_fft < 2 || (n_fft & (n_fft - 1)) != 0) throw std::invalid_argument("n_fft must be a power of two");
}

// out[m][lane] = Σ_k bank[m][k] · spectrum[k][lane] over row m's non-zero span.
void apply_filterbank(const float* bank, int rows, int cols, const FilterSpan* spans, const float* spectrum,
                      float* out) {
  for (int m = 0; m < rows; ++m) {
    float acc[kLanes] = {};
    const float* row = bank + static_cast<std::int64_t>(m) * cols;
    for (int k = spans[m].first; k < spans[m].end; ++k) {
      const float weight = row[k];
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) acc[l] += weight * spectrum[k * kLanes + l];
    }
    std::copy(acc, acc + kLanes, out + m * kLanes);
  }
}

// Lane buffers are visited in blocks of this many samples or bins, so that all lanes of a block
// stay in L1 while the group's frames are written or read one after another.
constexpr int kBlock = 64;

// Frame i of a group lives in lane i / 2, in the real part for even i and the imaginary part for
// odd i. Fills the buffers with sample(i, t) for the group's `count` frames and zeros elsewhere.
template <typename Sample>
void load_frames(LaneBuffers& buffers, int n, int count, Sample sample) {
  for (int t0 = 0; t0 < n; t0 += kBlock) {
    const int t1 = std::min(n, t0 + kBlock);
    for (int i = 0; i < kGroupFrames; ++i) {
      float* target = (i % 2 ? buffers.im : buffers.re).data() + i / 2;
      if (i < count) {
        for (int t = t0; t < t1; ++t) target[t * kLanes] = sample(i, t);
      } else {
        for (int t = t0; t < t1; ++t) target[t * kLanes] = 0.0f;
      }
    }
  }
}

// Where a frame starts in its signal (may be negative) and, when it needs no reflect padding, a
// direct pointer to its first sample.
struct FrameSource {
  const float* signal;
  std::int64_t start;
  const float* direct;
};

inline FrameSource frame_source(const float* signal, std::int64_t length, std::int64_t start, int n) {
  return {signal, start, (start >= 0 && start + n <= length) ? signal + start : nullptr};
}

inline float frame_sample(const FrameSource& f, std::int64_t length, int t) {
  return f.direct ? f.direct[t] : f.signal[reflect(f.start + t, length)];
}

// out[signal][row][frame] = value(row, index in group) for the group's frames, written in runs of
// consecutive frames of one signal so that the stores go to consecutive addresses.
template <typename Value>
void store_columns(float* out, std::int64_t first, int count, std::int64_t frames, int rows, Value value) {
  for (int index = 0; index < count;) {
    const std::int64_t signal = (first + index) / frames;
    const std::int64_t frame = (first + index) % frames;
    const int run = static_cast<int>(std::min<std::int64_t>(count - index, frames - frame));
    float* base = out + (signal * rows) * frames + frame;
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < run; ++i) base[r * frames + i] = value(r, index + i);
    }
    index += run;
  }
}

}  // namespace

std::int64_t mel_frames(std::int64_t length, int n_fft, int hop) {
  const int pad = (n_fft - hop) / 2;
  return 1 + (length + 2 * pad - n_fft) / hop;
}

void mel_spectrogram(const float* wave, std::int64_t batch, std::int64_t length, const float* mel_basis,
                     const FilterSpan* spans, int num_mels, const float* window, int n_fft, int hop, LogKind log,
                     float* mel, float* magnitude) {
  require_fft_size(n_fft);
  if (hop < 1 || hop > n_fft) throw std::invalid_argument("hop must be in [1, n_fft]");
  const int pad = (n_fft - hop) / 2;
  if (length <= pad) throw std::invalid_argument("waveform too short for the reflect padding");
  if (length + 2 * pad < n_fft) throw std::invalid_argument("waveform shorter than one frame");
  const int bins = n_fft / 2 + 1;
  const std::int64_t frames = mel_frames(length, n_fft, hop);
  const float log_scale = log == LogKind::kBase10 ? kInverseLn10 : 1.0f;  // log10 x = ln x / ln 10
  const LaneFft fft(n_fft);
  const std::int64_t total = batch * frames;
  const std::int64_t groups = (total + kGroupFrames - 1) / kGroupFrames;

#pragma omp parallel
  {
    LaneBuffers buffers(n_fft);
    std::vector<float> spectrum[2] = {std::vector<float>(bins * kLanes), std::vector<float>(bins * kLanes)};
    std::vector<float> energies[2] = {std::vector<float>(num_mels * kLanes), std::vector<float>(num_mels * kLanes)};
#pragma omp for schedule(static)
    for (std::int64_t group = 0; group < groups; ++group) {
      const std::int64_t first = group * kGroupFrames;
      const int count = static_cast<int>(std::min<std::int64_t>(kGroupFrames, total - first));
      FrameSource sources[kGroupFrames];
      for (int i = 0; i < count; ++i) {
        const std::int64_t frame = (first + i) % frames;
        sources[i] = frame_source(wave + (first + i) / frames * length, length, frame * hop - pad, n_fft);
      }
      load_frames(buffers, n_fft, count, [&](int i, int t) {
        return std::clamp(frame_sample(sources[i], length, t), -1.0f, 1.0f) * window[t];
      });
      fft.forward(buffers.re.data(), buffers.im.data());
      for (int k = 0; k < bins; ++k) {
        for (int l = 0; l < kLanes; ++l) {
          const FramePairBin z = split_pair(fft, buffers.re.data(), buffers.im.data(), k, l);
          spectrum[0][k * kLanes + l] = std::sqrt(z.a_re * z.a_re + z.a_im * z.a_im + kMagnitudeEps);
          spectrum[1][k * kLanes + l] = std::sqrt(z.b_re * z.b_re + z.b_im * z.b_im + kMagnitudeEps);
        }
      }
      for (int part = 0; part < 2; ++part) {
        float* e = energies[part].data();
        apply_filterbank(mel_basis, num_mels, bins, spans, spectrum[part].data(), e);
        floored_log(e, num_mels * kLanes, kMelLogFloor, log_scale);
      }
      // Frame i of the group is lane i / 2, part i % 2.
      store_columns(mel, first, count, frames, num_mels,
                    [&](int m, int i) { return energies[i % 2][m * kLanes + i / 2]; });
      if (magnitude != nullptr) {
        store_columns(magnitude, first, count, frames, bins,
                      [&](int k, int i) { return spectrum[i % 2][k * kLanes + i / 2]; });
      }
    }
  }
}

std::int64_t fbank_frames(std::int64_t length, int frame_length, int frame_shift) {
  return length < frame_length ? 0 : 1 + (length - frame_length) / frame_shift;
}

void kaldi_fbank(const float* wave, std::int64_t batch, std::int64_t length, const float* mel_banks,
                 const FilterSpan* spans, int num_mels, int num_bank_bins, const float* window, int frame_length,
                 int frame_shift, int padded_length, float preemphasis, float scale, float log_floor, float* out) {
  require_fft_size(padded_length);
  if (frame_length < 1 || frame_length > padded_length) throw std::invalid_argument("bad frame length");
  if (frame_shift < 1) throw std::invalid_argument("frame shift must be positive");
  if (num_bank_bins > padded_length / 2 + 1) throw std::invalid_argument("mel banks wider than the spectrum");
  if (length < frame_length) throw std::invalid_argument("waveform shorter than one frame");
  const std::int64_t frames = fbank_frames(length, frame_length, frame_shift);
  const LaneFft fft(padded_length);
  const std::int64_t total = batch * frames;
  const std::int64_t groups = (total + kGroupFrames - 1) / kGroupFrames;

#pragma omp parallel
  {
    LaneBuffers buffers(padded_length);
    std::vector<float> centred(frame_length);
    std::vector<float> prepared(kGroupFrames * frame_length);  // pre-emphasised, windowed frames
    std::vector<float> power[2] = {std::vector<float>(num_bank_bins * kLanes),
                                   std::vector<float>(num_bank_bins * kLanes)};
    std::vector<float> energies[2] = {std::vector<float>(num_mels * kLanes), std::vector<float>(num_mels * kLanes)};
#pragma omp for schedule(static)
    for (std::int64_t group = 0; group < groups; ++group) {
      const std::int64_t first = group * kGroupFrames;
      const int count = static_cast<int>(std::min<std::int64_t>(kGroupFrames, total - first));
      for (int i = 0; i < count; ++i) {
        const std::int64_t frame = (first + i) % frames;
        const float* samples = wave + (first + i) / frames * length + frame * frame_shift;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int t = 0; t < frame_length; ++t) {
          centred[t] = samples[t] * scale;
          sum += centred[t];
        }
        const float mean = static_cast<float>(sum / frame_length);
        for (int t = 0; t < frame_length; ++t) centred[t] -= mean;
        float* emphasised = prepared.data() + i * frame_length;
        emphasised[0] = (centred[0] - preemphasis * centred[0]) * window[0];  // Kaldi repeats the first sample
        for (int t = 1; t < frame_length; ++t) {
          emphasised[t] = (centred[t] - preemphasis * centred[t - 1]) * window[t];
        }
      }
      load_frames(buffers, padded_length, count, [&](int i, int t) {
        return t < frame_length ? prepared[i * frame_length + t] : 0.0f;
      });
      fft.forward(buffers.re.data(), buffers.im.data());
      for (int k = 0; k < num_bank_bins; ++k) {
        for (int l = 0; l < kLanes; ++l) {
          const FramePairBin z = split_pair(fft, buffers.re.data(), buffers.im.data(), k, l);
          power[0][k * kLanes + l] = z.a_re * z.a_re + z.a_im * z.a_im;
          power[1][k * kLanes + l] = z.b_re * z.b_re + z.b_im * z.b_im;
        }
      }
      for (int part = 0; part < 2; ++part) {
        float* e = energies[part].data();
        apply_filterbank(mel_banks, num_mels, num_bank_bins, spans, power[part].data(), e);
        floored_log(e, num_mels * kLanes, log_floor, 1.0f);
      }
      for (int i = 0; i < count; ++i) {
        float* row = out + (first + i) * num_mels;
        for (int m = 0; m < num_mels; ++m) row[m] = energies[i % 2][m * kLanes + i / 2];
      }
    }
  }
}

std::int64_t stft_frames(std::int64_t length, int hop) { return 1 + length / hop; }

void stft(const float* x, std::int64_t signals, std::int64_t length, const float* window, int n_fft, int hop,
          std::complex<float>* out) {
  require_fft_size(n_fft);
  if (hop < 1) throw std::invalid_argument("hop must be positive");
  const int pad = n_fft / 2;
  if (length <= pad) throw std::invalid_argument("signal too short for the centred reflect padding");
  const int bins = n_fft / 2 + 1;
  const std::int64_t frames = stft_frames(length, hop);
  const LaneFft fft(n_fft);
  const std::int64_t total = signals * frames;
  const std::int64_t groups = (total + kGroupFrames - 1) / kGroupFrames;

#pragma omp parallel
  {
    LaneBuffers buffers(n_fft);
    std::complex<float> block[kGroupFrames][kBlock];  // a block of bins of every frame of the group
#pragma omp for schedule(static)
    for (std::int64_t group = 0; group < groups; ++group) {
      const std::int64_t first = group * kGroupFrames;
      const int count = static_cast<int>(std::min<std::int64_t>(kGroupFrames, total - first));
      FrameSource sources[kGroupFrames];
      bool audible[kGroupFrames] = {};
      for (int i = 0; i < count; ++i) {
        const std::int64_t frame = (first + i) % frames;
        sources[i] = frame_source(x + (first + i) / frames * length, length, frame * hop - pad, n_fft);
      }
      load_frames(buffers, n_fft, count, [&](int i, int t) {
        const float value = frame_sample(sources[i], length, t) * window[t];
        audible[i] |= value != 0.0f;
        return value;
      });
      fft.forward(buffers.re.data(), buffers.im.data());
      for (int k0 = 0; k0 < bins; k0 += kBlock) {
        const int k1 = std::min(bins, k0 + kBlock);
        for (int k = k0; k < k1; ++k) {
          for (int l = 0; l < kLanes; ++l) {
            const FramePairBin z = split_pair(fft, buffers.re.data(), buffers.im.data(), k, l);
            block[2 * l][k - k0] = {z.a_re, z.a_im};
            block[2 * l + 1][k - k0] = {z.b_re, z.b_im};
          }
        }
        // A silent frame must give exact zeros, as torch.stft does: the paired transform would leak its
        // partner's rounding into it, and the separator's RMSNorm blows any non-zero up to unit norm.
        for (int i = 0; i < count; ++i) {
          if (!audible[i]) std::fill(block[i], block[i] + (k1 - k0), std::complex<float>(0.0f, 0.0f));
          std::copy(block[i], block[i] + (k1 - k0), out + (first + i) * bins + k0);
        }
      }
    }
  }
}

void istft(const std::complex<float>* spec, std::int64_t signals, std::int64_t frames, const float* window,
           int n_fft, int hop, std::int64_t length, float* out) {
  require_fft_size(n_fft);
  if (hop < 1 || frames < 1) throw std::invalid_argument("hop and frame count must be positive");
  const int bins = n_fft / 2 + 1;
  const int centre = n_fft / 2;
  const std::int64_t covered = n_fft + hop * (frames - 1);  // samples the frames span, before trimming
  const LaneFft fft(n_fft);
  const float inverse_n = 1.0f / n_fft;
  // Windowed frames in the time domain, every element written before it is read.
  const std::unique_ptr<float[]> time(new float[static_cast<std::size_t>(signals * frames) * n_fft]);
  const std::int64_t total = signals * frames;
  const std::int64_t groups = (total + kGroupFrames - 1) / kGroupFrames;

#pragma omp parallel
  {
    LaneBuffers buffers(n_fft);
    std::complex<float> block[kGroupFrames][kBlock];
#pragma omp for schedule(static)
    for (std::int64_t group = 0; group < groups; ++group) {
      const std::int64_t first = group * kGroupFrames;
      const int count = static_cast<int>(std::min<std::int64_t>(kGroupFrames, total - first));
      // Z = A + i·B over the full circle from the one-sided halves (Hermitian symmetry); the
      // imaginary parts of the DC and Nyquist bins are dropped, as a complex-to-real FFT does.
      // Every slot is written once: bins 0..n/2 and their mirrors n-k.
      for (int k0 = 0; k0 < bins; k0 += kBlock) {
        const int k1 = std::min(bins, k0 + kBlock);
        for (int i = 0; i < kGroupFrames; ++i) {
          if (i < count) {
            std::copy(spec + (first + i) * bins + k0, spec + (first + i) * bins + k1, block[i]);
          } else {
            std::fill(block[i], block[i] + (k1 - k0), std::complex<float>());
          }
        }
        for (int k = k0; k < k1; ++k) {
          const bool edge = k == 0 || k == bins - 1;
          float* re_at = buffers.re.data() + fft.slot(k) * kLanes;
          float* im_at = buffers.im.data() + fft.slot(k) * kLanes;
          float* re_mirror = buffers.re.data() + fft.slot((n_fft - k) & (n_fft - 1)) * kLanes;
          float* im_mirror = buffers.im.data() + fft.slot((n_fft - k) & (n_fft - 1)) * kLanes;
          for (int l = 0; l < kLanes; ++l) {
            const std::complex<float> a = block[2 * l][k - k0], b = block[2 * l + 1][k - k0];
            const float a_im = edge ? 0.0f : a.imag(), b_im = edge ? 0.0f : b.imag();
            re_at[l] = a.real() - b_im;
            im_at[l] = a_im + b.real();
            if (!edge) {
              re_mirror[l] = a.real() + b_im;
              im_mirror[l] = b.real() - a_im;
            }
          }
        }
      }
      fft.inverse(buffers.re.data(), buffers.im.data());
      for (int t0 = 0; t0 < n_fft; t0 += kBlock) {
        const int t1 = std::min(n_fft, t0 + kBlock);
        for (int i = 0; i < count; ++i) {
          const float* source = (i % 2 ? buffers.im : buffers.re).data() + i / 2;
          float* frame = time.get() + (first + i) * n_fft;
          for (int t = t0; t < t1; ++t) frame[t] = source[t * kLanes] * inverse_n * window[t];
        }
      }
    }
  }

  // Overlap-add per chunk of output samples (chunks are independent, the adds are contiguous), then
  // division by the overlap-added squared window; samples past the frames' span are zero, as torch
  // pads them.
  constexpr std::int64_t kChunk = 4096;
  const std::int64_t chunks = (length + kChunk - 1) / kChunk;
  // Adds rows (frame f: row(f)[0..n_fft)) starting at padded position f·hop into out[0, count) that
  // covers padded positions [begin, begin + count).
  auto overlap_add = [&](float* acc, std::int64_t begin, std::int64_t count, auto row) {
    std::fill(acc, acc + count, 0.0f);
    const std::int64_t end = std::min(begin + count, covered);
    if (end <= begin) return;
    const std::int64_t f_first = std::max<std::int64_t>(0, (begin - n_fft + hop) / hop);
    const std::int64_t f_last = std::min<std::int64_t>(frames - 1, (end - 1) / hop);
    for (std::int64_t f = f_first; f <= f_last; ++f) {
      const std::int64_t lo = std::max(begin, f * hop), hi = std::min(end, f * hop + n_fft);
      const float* source = row(f) + (lo - f * hop);
      float* target = acc + (lo - begin);
#pragma omp simd
      for (std::int64_t t = 0; t < hi - lo; ++t) target[t] += source[t];
    }
  };

  std::vector<float> window_squared(n_fft);
  for (int t = 0; t < n_fft; ++t) window_squared[t] = window[t] * window[t];
  std::vector<float> envelope(length);
  bool envelope_too_small = false;
#pragma omp parallel for schedule(static) reduction(|| : envelope_too_small)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t first = c * kChunk, count = std::min(kChunk, length - first);
    overlap_add(envelope.data() + first, first + centre, count, [&](std::int64_t) { return window_squared.data(); });
    for (std::int64_t t = first; t < first + count && t + centre < covered; ++t) {
      envelope_too_small = envelope_too_small || std::fabs(envelope[t]) < kEnvelopeMin;
    }
  }
  if (envelope_too_small) throw std::invalid_argument("istft: window overlap-add falls below 1e-11");

#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t s = 0; s < signals; ++s) {
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t first = c * kChunk, count = std::min(kChunk, length - first);
      float* y = out + s * length + first;
      const float* frames_of_signal = time.get() + s * frames * n_fft;
      overlap_add(y, first + centre, count, [&](std::int64_t f) { return frames_of_signal + f * n_fft; });
      const std::int64_t valid = std::clamp<std::int64_t>(covered - centre - first, 0, count);
#pragma omp simd
      for (std::int64_t t = 0; t < valid; ++t) y[t] /= envelope[first + t];
    }
  }
}

}  // namespace deepsound::cpu
