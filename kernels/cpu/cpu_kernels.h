// CPU kernels on raw contiguous buffers; the pybind11 layer validates shapes and owns the arrays.
// Errors in arguments are std::invalid_argument (ValueError in Python).
#pragma once

#include <complex>
#include <cstdint>

#include "float_bits.h"

namespace deepsound::cpu {

// BigVGAN's Activation1d(SnakeBeta) fused: x and y are (rows, length) with row r in channel
// r % channels; alpha/beta per channel (log-scale when `logscale`); any tap counts in [2, 64].
void snake_beta_antialiased(const void* x, void* y, Storage storage, std::int64_t rows, int channels,
                            std::int64_t length, const float* alpha, const float* beta, bool logscale,
                            const float* up_filter, int up_taps, const float* down_filter, int down_taps);

enum class LogKind { kNatural, kBase10 };

// Non-zero columns [first, end) of one filterbank row: the triangles are contiguous, and summing
// only that span gives the dense product's value (the skipped terms are exact zeros).
struct FilterSpan {
  std::int32_t first;
  std::int32_t end;
};

// MMAudio's MelConverter: clamp to [-1, 1], reflect-pad (n_fft - hop) / 2, STFT without centring
// (window of n_fft samples), sqrt(re² + im² + 1e-9), mel_basis @ magnitude, log(max(·, 1e-5)).
// wave (batch, length) -> mel (batch, num_mels, frames); magnitude (batch, n_fft/2 + 1, frames) is
// written too when not null.
std::int64_t mel_frames(std::int64_t length, int n_fft, int hop);
void mel_spectrogram(const float* wave, std::int64_t batch, std::int64_t length, const float* mel_basis,
                     const FilterSpan* spans, int num_mels, const float* window, int n_fft, int hop, LogKind log,
                     float* mel, float* magnitude);

// Kaldi fbank (snip_edges, remove DC, pre-emphasis, window, zero-pad to padded_length, power
// spectrum, mel banks over the first num_bank_bins bins, log(max(·, log_floor))) on wave·scale:
// wave (batch, length) -> (batch, frames, num_mels).
std::int64_t fbank_frames(std::int64_t length, int frame_length, int frame_shift);
void kaldi_fbank(const float* wave, std::int64_t batch, std::int64_t length, const float* mel_banks,
                 const FilterSpan* spans, int num_mels, int num_bank_bins, const float* window, int frame_length,
                 int frame_shift, int padded_length, float preemphasis, float scale, float log_floor, float* out);

// torch.stft(center=True, pad_mode="reflect", onesided, not normalised) with a window of n_fft:
// x (signals, length) -> (signals, frames, n_fft/2 + 1) complex, frames = 1 + length / hop, i.e.
// the memory layout of torch.stft's result, whose (bins, frames) shape is a transposed view.
std::int64_t stft_frames(std::int64_t length, int hop);
void stft(const float* x, std::int64_t signals, std::int64_t length, const float* window, int n_fft, int hop,
          std::complex<float>* out);

// torch.istft(center=True, onesided, length=length) of (signals, frames, n_fft/2 + 1) complex
// (the layout stft writes) -> (signals, length).
void istft(const std::complex<float>* spec, std::int64_t signals, std::int64_t frames, const float* window,
           int n_fft, int hop, std::int64_t length, float* out);

}  // namespace deepsound::cpu
