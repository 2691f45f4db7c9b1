// deepsound_rt._kernels: CPU kernels on numpy arrays, CUDA kernels on raw device pointers.
//
// The module does not link libtorch: CPU entry points take C-contiguous numpy arrays (fp16/bf16 as
// uint16 bit patterns), CUDA entry points take data_ptr() integers, sizes, a dtype code and a
// cudaStream_t as an integer, so the Python layer passes torch tensors through without copies.
#include <pybind11/complex.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/cpu_kernels.h"
#if defined(DEEPSOUND_WITH_CUDA)
#include "cuda/cuda_kernels.h"
#endif

namespace py = pybind11;
using deepsound::cpu::LogKind;
using deepsound::cpu::Storage;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void require(bool condition, const std::string& message) {
  if (!condition) throw py::value_error(message);
}

Storage storage_from_name(const std::string& name) {
  if (name == "float32") return Storage::kFloat32;
  if (name == "float16") return Storage::kFloat16;
  if (name == "bfloat16") return Storage::kBFloat16;
  throw py::value_error("dtype must be float32, float16 or bfloat16, got " + name);
}

LogKind log_from_name(const std::string& name) {
  if (name == "ln") return LogKind::kNatural;
  if (name == "log10") return LogKind::kBase10;
  throw py::value_error("log must be 'ln' or 'log10', got " + name);
}

// (..., length) -> number of rows, length
std::pair<std::int64_t, std::int64_t> rows_and_length(const py::array& a, const char* what) {
  require(a.ndim() >= 1, std::string(what) + " must have at least one dimension");
  const std::int64_t length = a.shape(a.ndim() - 1);
  std::int64_t rows = 1;
  for (py::ssize_t d = 0; d + 1 < a.ndim(); ++d) rows *= a.shape(d);
  return {rows, length};
}

std::vector<py::ssize_t> leading_shape(const py::array& a, py::ssize_t drop_last) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim() - drop_last);
}

template <typename T>
py::array snake_typed(const py::array& x_any, Storage storage, const CArray<float>& alpha, const CArray<float>& beta,
                      bool logscale, const CArray<float>& up_filter, const CArray<float>& down_filter) {
  const CArray<T> x = CArray<T>::ensure(x_any);
  require(x.ndim() == 3, "x must be (batch, channels, length)");
  const std::int64_t channels = x.shape(1);
  require(alpha.size() == channels && beta.size() == channels, "alpha and beta need one value per channel");
  CArray<T> y({x.shape(0), x.shape(1), x.shape(2)});
  const void* x_data = x.data();
  void* y_data = y.mutable_data();
  {
    py::gil_scoped_release release;
    deepsound::cpu::snake_beta_antialiased(x_data, y_data, storage, x.shape(0) * channels,
                                           static_cast<int>(channels), x.shape(2), alpha.data(), beta.data(),
                                           logscale, up_filter.data(), static_cast<int>(up_filter.size()),
                                           down_filter.data(), static_cast<int>(down_filter.size()));
  }
  return y;
}

py::array snake_beta_antialiased(const py::array& x, const std::string& dtype, const CArray<float>& alpha,
                                 const CArray<float>& beta, bool logscale, const CArray<float>& up_filter,
                                 const CArray<float>& down_filter) {
  const Storage storage = storage_from_name(dtype);
  if (storage == Storage::kFloat32) {
    return snake_typed<float>(x, storage, alpha, beta, logscale, up_filter, down_filter);
  }
  require(x.dtype().itemsize() == 2, "fp16/bf16 input must be passed as 16-bit bit patterns");
  return snake_typed<std::uint16_t>(x, storage, alpha, beta, logscale, up_filter, down_filter);
}

const deepsound::cpu::FilterSpan* checked_spans(const CArray<std::int32_t>& spans, const CArray<float>& bank) {
  require(bank.ndim() == 2, "filterbank must be (num_mels, bins)");
  require(spans.ndim() == 2 && spans.shape(0) == bank.shape(0) && spans.shape(1) == 2,
          "spans must be (num_mels, 2) int32");
  const std::int32_t* data = spans.data();
  for (py::ssize_t m = 0; m < spans.shape(0); ++m) {
    require(data[2 * m] >= 0 && data[2 * m] <= data[2 * m + 1] && data[2 * m + 1] <= bank.shape(1),
            "spans must satisfy 0 <= first <= end <= bins");
  }
  return reinterpret_cast<const deepsound::cpu::FilterSpan*>(data);
}

py::tuple mel_spectrogram(const CArray<float>& wave, const CArray<float>& mel_basis, const CArray<std::int32_t>& spans,
                          const CArray<float>& window, int hop, const std::string& log, bool with_magnitude) {
  const auto [batch, length] = rows_and_length(wave, "waveform");
  const int n_fft = static_cast<int>(window.size());
  require(window.ndim() == 1, "window must be 1-D with n_fft samples");
  require(mel_basis.ndim() == 2 && mel_basis.shape(1) == n_fft / 2 + 1, "mel_basis must be (num_mels, n_fft/2+1)");
  const deepsound::cpu::FilterSpan* span_data = checked_spans(spans, mel_basis);
  const LogKind log_kind = log_from_name(log);
  const int num_mels = static_cast<int>(mel_basis.shape(0));
  require(hop >= 1 && hop <= n_fft, "hop must be in [1, n_fft]");
  require(length + 2 * ((n_fft - hop) / 2) >= n_fft, "waveform shorter than one frame");
  const std::int64_t frames = deepsound::cpu::mel_frames(length, n_fft, hop);
  auto shape = leading_shape(wave, 1);
  auto mel_shape = shape, mag_shape = shape;
  mel_shape.insert(mel_shape.end(), {num_mels, static_cast<py::ssize_t>(frames)});
  mag_shape.insert(mag_shape.end(), {n_fft / 2 + 1, static_cast<py::ssize_t>(frames)});
  CArray<float> mel(mel_shape);
  py::object magnitude = py::none();
  float* magnitude_data = nullptr;
  if (with_magnitude) {
    CArray<float> mag(mag_shape);
    magnitude_data = mag.mutable_data();
    magnitude = mag;
  }
  float* mel_data = mel.mutable_data();
  {
    py::gil_scoped_release release;
    deepsound::cpu::mel_spectrogram(wave.data(), batch, length, mel_basis.data(), span_data, num_mels, window.data(),
                                    n_fft, hop, log_kind, mel_data, magnitude_data);
  }
  return py::make_tuple(mel, magnitude);
}

py::array kaldi_fbank(const CArray<float>& wave, const CArray<float>& mel_banks, const CArray<std::int32_t>& spans,
                      const CArray<float>& window, int frame_shift, int padded_length, float preemphasis, float scale,
                      float log_floor) {
  const auto [batch, length] = rows_and_length(wave, "waveform");
  const deepsound::cpu::FilterSpan* span_data = checked_spans(spans, mel_banks);
  require(window.ndim() == 1, "window must be 1-D");
  const int frame_length = static_cast<int>(window.size());
  require(length >= frame_length, "waveform shorter than one frame");
  const std::int64_t frames = deepsound::cpu::fbank_frames(length, frame_length, frame_shift);
  auto shape = leading_shape(wave, 1);
  shape.insert(shape.end(), {static_cast<py::ssize_t>(frames), mel_banks.shape(0)});
  CArray<float> out(shape);
  float* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    deepsound::cpu::kaldi_fbank(wave.data(), batch, length, mel_banks.data(), span_data,
                                static_cast<int>(mel_banks.shape(0)), static_cast<int>(mel_banks.shape(1)),
                                window.data(), frame_length, frame_shift, padded_length, preemphasis, scale, log_floor,
                                out_data);
  }
  return out;
}

// (..., length) -> (..., frames, n_fft/2 + 1) complex64: torch.stft's memory layout.
py::array stft(const CArray<float>& x, const CArray<float>& window, int hop) {
  const auto [signals, length] = rows_and_length(x, "signal");
  require(window.ndim() == 1, "window must be 1-D with n_fft samples");
  const int n_fft = static_cast<int>(window.size());
  require(hop >= 1, "hop must be positive");
  require(length > n_fft / 2, "signal too short for the centred reflect padding");
  const std::int64_t frames = deepsound::cpu::stft_frames(length, hop);
  auto shape = leading_shape(x, 1);
  shape.insert(shape.end(), {static_cast<py::ssize_t>(frames), n_fft / 2 + 1});
  CArray<std::complex<float>> out(shape);
  std::complex<float>* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    deepsound::cpu::stft(x.data(), signals, length, window.data(), n_fft, hop, out_data);
  }
  return out;
}

// (..., frames, n_fft/2 + 1) complex64 -> (..., length)
py::array istft(const CArray<std::complex<float>>& spec, const CArray<float>& window, int hop, std::int64_t length) {
  require(window.ndim() == 1, "window must be 1-D with n_fft samples");
  const int n_fft = static_cast<int>(window.size());
  require(spec.ndim() >= 2 && spec.shape(spec.ndim() - 1) == n_fft / 2 + 1,
          "spectrogram must be (..., frames, n_fft/2+1)");
  require(length >= 1 && hop >= 1, "length and hop must be positive");
  const std::int64_t frames = spec.shape(spec.ndim() - 2);
  std::int64_t signals = 1;
  for (py::ssize_t d = 0; d + 2 < spec.ndim(); ++d) signals *= spec.shape(d);
  auto shape = leading_shape(spec, 2);
  shape.push_back(static_cast<py::ssize_t>(length));
  CArray<float> out(shape);
  float* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    deepsound::cpu::istft(spec.data(), signals, frames, window.data(), n_fft, hop, length, out_data);
  }
  return out;
}

#if defined(DEEPSOUND_WITH_CUDA)
namespace dc = deepsound::cuda;

dc::DType dtype_from_code(int code) {
  require(code >= 0 && code <= 2, "dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  return static_cast<dc::DType>(code);
}

// Device-pointer entry points: the caller keeps the tensors alive until the stream has run them.
void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", &dc::device_count);
  m.def(
      "cuda_snake_beta_antialiased",
      [](int device, dc::StreamHandle stream, dc::DevicePtr x, dc::DevicePtr y, int dtype, std::int64_t rows,
         int channels, std::int64_t length, dc::DevicePtr alpha, dc::DevicePtr beta, int param_dtype, bool logscale,
         dc::DevicePtr up_filter, int up_taps, dc::DevicePtr down_filter, int down_taps) {
        const dc::DType x_dtype = dtype_from_code(dtype), p_dtype = dtype_from_code(param_dtype);
        py::gil_scoped_release release;
        dc::snake_beta_antialiased(device, stream, x, y, x_dtype, rows, channels, length, alpha, beta, p_dtype,
                                   logscale, up_filter, up_taps, down_filter, down_taps);
      },
      py::arg("device"), py::arg("stream"), py::arg("x"), py::arg("y"), py::arg("dtype"), py::arg("rows"),
      py::arg("channels"), py::arg("length"), py::arg("alpha"), py::arg("beta"), py::arg("param_dtype"),
      py::arg("logscale"), py::arg("up_filter"), py::arg("up_taps"), py::arg("down_filter"), py::arg("down_taps"));
  m.def(
      "cuda_mel_spectrogram",
      [](int device, dc::StreamHandle stream, dc::DevicePtr wave, std::int64_t batch, std::int64_t length,
         dc::DevicePtr mel_basis, dc::DevicePtr spans, int num_mels, dc::DevicePtr window, int n_fft, int hop,
         const std::string& log, dc::DevicePtr mel, dc::DevicePtr magnitude) {
        const bool log10 = log_from_name(log) == LogKind::kBase10;
        py::gil_scoped_release release;
        dc::mel_spectrogram(device, stream, wave, batch, length, mel_basis, spans, num_mels, window, n_fft, hop, log10,
                            mel, magnitude);
      },
      py::arg("device"), py::arg("stream"), py::arg("waveform"), py::arg("batch"), py::arg("length"),
      py::arg("mel_basis"), py::arg("spans"), py::arg("num_mels"), py::arg("window"), py::arg("n_fft"), py::arg("hop"),
      py::arg("log"), py::arg("mel"), py::arg("magnitude"));
  m.def(
      "cuda_kaldi_fbank",
      [](int device, dc::StreamHandle stream, dc::DevicePtr wave, std::int64_t batch, std::int64_t length,
         dc::DevicePtr mel_banks, dc::DevicePtr spans, int num_mels, int num_bank_bins, dc::DevicePtr window,
         int frame_length, int frame_shift, int padded_length, float preemphasis, float scale, float log_floor,
         dc::DevicePtr out) {
        py::gil_scoped_release release;
        dc::kaldi_fbank(device, stream, wave, batch, length, mel_banks, spans, num_mels, num_bank_bins, window,
                        frame_length, frame_shift, padded_length, preemphasis, scale, log_floor, out);
      },
      py::arg("device"), py::arg("stream"), py::arg("waveform"), py::arg("batch"), py::arg("length"),
      py::arg("mel_banks"), py::arg("spans"), py::arg("num_mels"), py::arg("num_bank_bins"), py::arg("window"),
      py::arg("frame_length"), py::arg("frame_shift"), py::arg("padded_length"), py::arg("preemphasis"),
      py::arg("scale"), py::arg("log_floor"), py::arg("out"));
  m.def(
      "cuda_stft",
      [](int device, dc::StreamHandle stream, dc::DevicePtr x, std::int64_t signals, std::int64_t length,
         dc::DevicePtr window, int n_fft, int hop, dc::DevicePtr out) {
        py::gil_scoped_release release;
        dc::stft(device, stream, x, signals, length, window, n_fft, hop, out);
      },
      py::arg("device"), py::arg("stream"), py::arg("x"), py::arg("signals"), py::arg("length"), py::arg("window"),
      py::arg("n_fft"), py::arg("hop"), py::arg("out"));
  m.def(
      "cuda_istft",
      [](int device, dc::StreamHandle stream, dc::DevicePtr spec, std::int64_t signals, std::int64_t frames,
         dc::DevicePtr window, int n_fft, int hop, std::int64_t length, dc::DevicePtr workspace, dc::DevicePtr out) {
        py::gil_scoped_release release;
        dc::istft(device, stream, spec, signals, frames, window, n_fft, hop, length, workspace, out);
      },
      py::arg("device"), py::arg("stream"), py::arg("spec"), py::arg("signals"), py::arg("frames"), py::arg("window"),
      py::arg("n_fft"), py::arg("hop"), py::arg("length"), py::arg("workspace"), py::arg("out"));
}
#endif

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "deepsound_rt kernels: fused anti-aliased SnakeBeta, mel and Kaldi fbank front ends, STFT/iSTFT";
  m.def("snake_beta_antialiased", &snake_beta_antialiased, py::arg("x"), py::arg("dtype"), py::arg("alpha"),
        py::arg("beta"), py::arg("logscale"), py::arg("up_filter"), py::arg("down_filter"));
  m.def("mel_spectrogram", &mel_spectrogram, py::arg("waveform"), py::arg("mel_basis"), py::arg("spans"),
        py::arg("window"), py::arg("hop"), py::arg("log"), py::arg("with_magnitude"));
  m.def("kaldi_fbank", &kaldi_fbank, py::arg("waveform"), py::arg("mel_banks"), py::arg("spans"), py::arg("window"),
        py::arg("frame_shift"), py::arg("padded_length"), py::arg("preemphasis"), py::arg("scale"),
        py::arg("log_floor"));
  m.def("stft", &stft, py::arg("x"), py::arg("window"), py::arg("hop"));
  m.def("istft", &istft, py::arg("spec"), py::arg("window"), py::arg("hop"), py::arg("length"));
#if defined(DEEPSOUND_WITH_CUDA)
  m.attr("has_cuda") = true;
  bind_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
}
