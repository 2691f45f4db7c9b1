// Fused anti-aliased SnakeBeta on the CPU: one pass per tile of outputs, everything in fp32 in
// buffers that stay in L1/L2. Each tile re-derives the few samples it shares with its neighbours
// instead of writing the 2x up-sampled signal to memory.
//
// Signals are kept in two planes by parity (plane s holds j = first + s + 2q) so that the
// polyphase up-sampling and the stride-2 down-sampling are unit-stride loops.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "../snake_math.h"
#include "cpu_kernels.h"

namespace deepsound::cpu {
namespace {

constexpr int kTileOutputs = 1024;
constexpr int kPlaneCapacity = kTileOutputs + kMaxFilterTaps;
constexpr int kWindowCapacity = kTileOutputs + 2 * kMaxFilterTaps;

struct Filters {
  SnakeGeometry geometry;
  // up_phase[p][r] = 2 · f_up[p + 2r]: the branch used by samples whose (j + up_crop) has parity p,
  // with the transposed conv's gain of 2 folded in (exact, a power of two).
  float up_phase[2][kMaxFilterTaps / 2];
  int up_phase_taps[2];
  const float* down;
};

struct Scratch {
  std::vector<float> padded_x = std::vector<float>(kWindowCapacity);
  std::vector<float> up[2] = {std::vector<float>(kPlaneCapacity), std::vector<float>(kPlaneCapacity)};
  std::vector<float> act[2] = {std::vector<float>(kPlaneCapacity), std::vector<float>(kPlaneCapacity)};
};

// Activated plane entries [first, last] of one parity; exact sinf for the rare huge arguments.
void activate(const float* up, float* act, int first, int last, SnakeChannel channel) {
  float largest = 0.0f;
#pragma omp simd reduction(max : largest)
  for (int q = first; q <= last; ++q) {
    const float argument = channel.alpha * up[q];
    act[q] = up[q] + channel.inv_beta * sin_squared(argument);
    largest = std::max(largest, std::fabs(argument));
  }
  if (largest <= kSinSquaredMaxArgument) return;
  for (int q = first; q <= last; ++q) {
    const float argument = channel.alpha * up[q];
    if (std::fabs(argument) > kSinSquaredMaxArgument) {
      const float s = std::sin(argument);
      act[q] = up[q] + channel.inv_beta * (s * s);
    }
  }
}

// kUpTaps / kDownTaps: compile-time tap counts for the fast path, 0 for any count.
template <int kUpTaps, int kDownTaps, Storage S>
void run_tile(const typename StorageTraits<S>::Element* x_row, typename StorageTraits<S>::Element* y_row,
              int length, int out_first, int out_count, const Filters& filters, SnakeChannel channel,
              Scratch& scratch) {
  using Traits = StorageTraits<S>;
  const SnakeGeometry& g = filters.geometry;
  const int down_taps = kDownTaps ? kDownTaps : g.down_taps;
  const int up_length = 2 * length;

  // Extended activated samples j in [ext_first, ext_last]; outside [0, 2T) they replicate the edge.
  const int ext_first = 2 * out_first - g.down_pad_left;
  const int ext_last = 2 * (out_first + out_count - 1) - g.down_pad_left + down_taps - 1;
  const int j_first = std::max(ext_first, 0);
  const int j_last = std::min(ext_last, up_length - 1);

  const int m_first = g.first_padded_index(j_first);
  const int m_last = g.last_padded_index(j_last);
  float* padded_x = scratch.padded_x.data();
  if (m_first >= g.up_pad && m_last < length + g.up_pad) {  // no padding inside the window
    const auto* source = x_row + (m_first - g.up_pad);
    for (int i = 0; i <= m_last - m_first; ++i) padded_x[i] = Traits::load(source[i]);
  } else {
    for (int m = m_first; m <= m_last; ++m) {
      const int source = g.padded_source(m, length);
      padded_x[m - m_first] = source < 0 ? 0.0f : Traits::load(x_row[source]);
    }
  }

  for (int s = 0; s < 2; ++s) {
    const int q_first = (j_first - ext_first - s + 1) >> 1;
    const int q_last = (j_last - ext_first - s) >> 1;
    if (q_first > q_last) continue;
    const int parity = (ext_first + s + g.up_crop) & 1;
    const int phase_taps = (kUpTaps && kUpTaps % 2 == 0) ? kUpTaps / 2 : filters.up_phase_taps[parity];
    const float* taps = filters.up_phase[parity];
    // u[j] = Σ_r taps[r] · xp[newest - r] with newest = (j + up_crop - parity) / 2 = base + q.
    const float* newest = padded_x + (((ext_first + s + g.up_crop - parity) >> 1) - m_first);
    float* up = scratch.up[s].data();
    for (int q = q_first; q <= q_last; ++q) {
      float acc = 0.0f;
      for (int r = 0; r < phase_taps; ++r) acc += taps[r] * newest[q - r];
      up[q] = acc;
    }
    activate(up, scratch.act[s].data(), q_first, q_last, channel);
  }

  // Replicate padding of the activated signal (not of the input) at both ends of the row.
  auto at = [&](int j) -> float& { return scratch.act[(j - ext_first) & 1][(j - ext_first) >> 1]; };
  for (int j = ext_first; j < j_first; ++j) at(j) = at(j_first);
  for (int j = j_last + 1; j <= ext_last; ++j) at(j) = at(j_last);

  // y[out_first + t] = Σ_k f_down[k] · a[ext_first + 2t + k], a from the plane of k's parity.
  const float* planes[2] = {scratch.act[0].data(), scratch.act[1].data()};
  const float* down = filters.down;
  for (int t = 0; t < out_count; ++t) {
    float acc = 0.0f;
    for (int k = 0; k < down_taps; ++k) acc += down[k] * planes[k & 1][t + (k >> 1)];
    y_row[out_first + t] = Traits::store(acc);
  }
}

template <int kUpTaps, int kDownTaps, Storage S>
void run_rows(const void* x, void* y, std::int64_t rows, int channels, int length, const float* alpha,
              const float* beta, bool logscale, const Filters& filters) {
  using Element = typename StorageTraits<S>::Element;
  const std::int64_t tiles_per_row = (length + kTileOutputs - 1) / kTileOutputs;
  const std::int64_t jobs = rows * tiles_per_row;
#pragma omp parallel
  {
    Scratch scratch;
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < jobs; ++job) {
      const std::int64_t row = job / tiles_per_row;
      const int tile = static_cast<int>(job % tiles_per_row);
      const int c = static_cast<int>(row % channels);
      const float a = logscale ? std::exp(alpha[c]) : alpha[c];
      const float b = logscale ? std::exp(beta[c]) : beta[c];
      const SnakeChannel channel{a, 1.0f / (b + kSnakeEps)};
      const int out_first = tile * kTileOutputs;
      const int out_count = std::min(kTileOutputs, length - out_first);
      run_tile<kUpTaps, kDownTaps, S>(static_cast<const Element*>(x) + row * length,
                                      static_cast<Element*>(y) + row * length, length, out_first, out_count,
                                      filters, channel, scratch);
    }
  }
}

template <Storage S>
void dispatch_taps(const void* x, void* y, std::int64_t rows, int channels, int length, const float* alpha,
                   const float* beta, bool logscale, const Filters& filters) {
  if (filters.geometry.up_taps == 12 && filters.geometry.down_taps == 12) {
    run_rows<12, 12, S>(x, y, rows, channels, length, alpha, beta, logscale, filters);
  } else {
    run_rows<0, 0, S>(x, y, rows, channels, length, alpha, beta, logscale, filters);
  }
}

}  // namespace

void snake_beta_antialiased(const void* x, void* y, Storage storage, std::int64_t rows, int channels,
                            std::int64_t length, const float* alpha, const float* beta, bool logscale,
                            const float* up_filter, int up_taps, const float* down_filter, int down_taps) {
  if (up_taps < 2 || up_taps > kMaxFilterTaps || down_taps < 2 || down_taps > kMaxFilterTaps) {
    throw std::invalid_argument("filter tap counts must be in [2, 64]");
  }
  if (length < 1 || length > (1 << 29)) throw std::invalid_argument("length must be in [1, 2^29]");
  if (channels < 1 || rows % channels != 0) throw std::invalid_argument("rows must be a multiple of channels");
  Filters filters;
  filters.geometry = SnakeGeometry::make(up_taps, down_taps);
  for (int p = 0; p < 2; ++p) {
    filters.up_phase_taps[p] = 0;
    for (int k = p; k < up_taps; k += 2) filters.up_phase[p][filters.up_phase_taps[p]++] = 2.0f * up_filter[k];
  }
  filters.down = down_filter;
  const int n = static_cast<int>(length);
  switch (storage) {
    case Storage::kFloat32:
      return dispatch_taps<Storage::kFloat32>(x, y, rows, channels, n, alpha, beta, logscale, filters);
    case Storage::kFloat16:
      return dispatch_taps<Storage::kFloat16>(x, y, rows, channels, n, alpha, beta, logscale, filters);
    case Storage::kBFloat16:
      return dispatch_taps<Storage::kBFloat16>(x, y, rows, channels, n, alpha, beta, logscale, filters);
  }
}

}  // namespace deepsound::cpu
