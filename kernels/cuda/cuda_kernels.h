// Host entry points of the CUDA kernels, free of CUDA types so that the pybind11 layer (compiled
// by the C++ compiler) can call them. Pointers are device addresses as integers (torch's
// data_ptr()), `stream` is a cudaStream_t as an integer, `device` the CUDA device index. Every call
// is asynchronous on `stream`; launch errors raise std::runtime_error.
#pragma once

#include <cstdint>

namespace deepsound::cuda {

using DevicePtr = std::uintptr_t;
using StreamHandle = std::uintptr_t;

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Number of CUDA devices the driver reports; 0 when there is no usable driver.
int device_count();

// x, y: (rows, length), row r in channel r % channels, dtype `dtype`; alpha, beta (channels,) and
// the filters in `param_dtype`.
void snake_beta_antialiased(int device, StreamHandle stream, DevicePtr x, DevicePtr y, DType dtype,
                            std::int64_t rows, int channels, std::int64_t length, DevicePtr alpha, DevicePtr beta,
                            DType param_dtype, bool logscale, DevicePtr up_filter, int up_taps,
                            DevicePtr down_filter, int down_taps);

// Same contract as deepsound::cpu::mel_spectrogram; spans are int32 (num_mels, 2) [first, end).
// magnitude may be 0 (not written).
void mel_spectrogram(int device, StreamHandle stream, DevicePtr wave, std::int64_t batch, std::int64_t length,
                     DevicePtr mel_basis, DevicePtr spans, int num_mels, DevicePtr window, int n_fft, int hop,
                     bool log10, DevicePtr mel, DevicePtr magnitude);

// Same contract as deepsound::cpu::kaldi_fbank.
void kaldi_fbank(int device, StreamHandle stream, DevicePtr wave, std::int64_t batch, std::int64_t length,
                 DevicePtr mel_banks, DevicePtr spans, int num_mels, int num_bank_bins, DevicePtr window,
                 int frame_length, int frame_shift, int padded_length, float preemphasis, float scale,
                 float log_floor, DevicePtr out);

// Same contracts (and (signals, frames, bins) spectrum layout) as deepsound::cpu::stft / istft;
// complex data are interleaved float pairs. istft needs a float workspace of signals * frames * n_fft.
void stft(int device, StreamHandle stream, DevicePtr x, std::int64_t signals, std::int64_t length, DevicePtr window,
          int n_fft, int hop, DevicePtr out);
void istft(int device, StreamHandle stream, DevicePtr spec, std::int64_t signals, std::int64_t frames,
           DevicePtr window, int n_fft, int hop, std::int64_t length, DevicePtr workspace, DevicePtr out);

}  // namespace deepsound::cuda
