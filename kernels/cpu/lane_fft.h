// Radix-2 complex FFT of one power-of-two size on kLanes signals at once. Data are split into real
// and imaginary arrays with the lane innermost (re[index * kLanes + lane]), so every butterfly is a
// plain loop over lanes that the compiler vectorises whatever the stage. Real frames are transformed
// in pairs, one in the real and one in the imaginary part of a lane, and separated afterwards.
//
// The frequency side is in bit-reversed order: forward() takes time samples in natural order and
// leaves bin k at slot(k) (decimation in frequency); inverse() takes bin k at slot(k) and leaves
// time samples in natural order (decimation in time). Time-domain loads and stores are sequential.
#pragma once

#include <cstddef>
#include <vector>

namespace deepsound::cpu {

constexpr int kLanes = 8;

class LaneFft {
 public:
  explicit LaneFft(int n);  // n: a power of two >= 2

  int size() const { return n_; }
  // Where frequency bin k sits.
  int slot(int k) const { return bit_reversed_[k]; }
  // In place on re/im of n * kLanes floats each; exp(-2πi·tk/n) forward, unscaled exp(+2πi·tk/n) inverse.
  void forward(float* re, float* im) const;
  void inverse(float* re, float* im) const;

 private:
  int n_;
  std::vector<int> bit_reversed_;
  std::vector<float> cos_;  // cos(2πk/n), k < n, rounded from double
  std::vector<float> sin_;
};

// Per-thread buffers for one group of 2·kLanes real frames.
struct LaneBuffers {
  explicit LaneBuffers(int n) : re(static_cast<std::size_t>(n) * kLanes), im(static_cast<std::size_t>(n) * kLanes) {}
  std::vector<float> re;
  std::vector<float> im;
};

// Spectra of the two real frames sharing a lane, from Z = FFT(a + i·b):
// A[k] = (Z[k] + conj Z[n-k]) / 2 and B[k] = (Z[k] - conj Z[n-k]) / 2i.
struct FramePairBin {
  float a_re, a_im, b_re, b_im;
};

inline FramePairBin split_pair(const LaneFft& fft, const float* re, const float* im, int k, int lane) {
  const int at = fft.slot(k) * kLanes + lane;
  const int mirror = fft.slot((fft.size() - k) & (fft.size() - 1)) * kLanes + lane;
  const float zr = re[at], zi = im[at];
  const float mr = re[mirror], mi = im[mirror];
  return {0.5f * (zr + mr), 0.5f * (zi - mi), 0.5f * (zi + mi), 0.5f * (mr - zr)};
}

}  // namespace deepsound::cpu
