#include "lane_fft.h"

#include <cmath>
#include <stdexcept>

namespace deepsound::cpu {

LaneFft::LaneFft(int n) : n_(n), bit_reversed_(n), cos_(n), sin_(n) {
  if (n < 2 || (n & (n - 1)) != 0) throw std::invalid_argument("FFT size must be a power of two >= 2");
  int bits = 0;
  while ((1 << bits) < n) ++bits;
  for (int t = 0; t < n; ++t) {
    int reversed = 0;
    for (int b = 0; b < bits; ++b) reversed |= ((t >> b) & 1) << (bits - 1 - b);
    bit_reversed_[t] = reversed;
  }
  const double step = 2.0 * M_PI / n;
  for (int k = 0; k < n; ++k) {
    cos_[k] = static_cast<float>(std::cos(step * k));
    sin_[k] = static_cast<float>(std::sin(step * k));
  }
}

namespace {

// One lane-vector of complex values: kLanes real parts at re, kLanes imaginary parts at im.
struct Lanes {
  float* re;
  float* im;
};

inline Lanes at(float* re, float* im, int index) { return {re + index * kLanes, im + index * kLanes}; }

}  // namespace

// Decimation in frequency, natural order in, bit-reversed order out. Stages run from the largest
// block down; two consecutive radix-2 stages are fused into one radix-4 pass over the data (same
// output order), with a radix-2 pass for an odd stage count. Twiddle W_L^j = exp(-2πi·j/L) =
// table[j·n/L].
void LaneFft::forward(float* re, float* im) const {
  int half = n_ / 2;
  for (; half >= 2; half /= 4) {  // stages of half-size `half` and `half / 2`
    const int quarter = half / 2;
    const int step = n_ / (4 * quarter);
    for (int start = 0; start < n_; start += 4 * quarter) {
      for (int j = 0; j < quarter; ++j) {
        const float w1r = cos_[j * step], w1i = -sin_[j * step];
        const float w2r = cos_[2 * j * step], w2i = -sin_[2 * j * step];
        const float w3r = cos_[3 * j * step], w3i = -sin_[3 * j * step];
        const Lanes a = at(re, im, start + j), b = at(re, im, start + j + quarter);
        const Lanes c = at(re, im, start + j + 2 * quarter), d = at(re, im, start + j + 3 * quarter);
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const float t0r = a.re[l] + c.re[l], t0i = a.im[l] + c.im[l];
          const float t1r = a.re[l] - c.re[l], t1i = a.im[l] - c.im[l];
          const float t2r = b.re[l] + d.re[l], t2i = b.im[l] + d.im[l];
          const float t3r = b.im[l] - d.im[l], t3i = d.re[l] - b.re[l];  // (b - d)·(-i)
          const float y1r = t0r - t2r, y1i = t0i - t2i;                  // to block position quarter
          const float y2r = t1r + t3r, y2i = t1i + t3i;                  // to block position 2·quarter
          const float y3r = t1r - t3r, y3i = t1i - t3i;
          a.re[l] = t0r + t2r;
          a.im[l] = t0i + t2i;
          b.re[l] = y1r * w2r - y1i * w2i;
          b.im[l] = y1r * w2i + y1i * w2r;
          c.re[l] = y2r * w1r - y2i * w1i;
          c.im[l] = y2r * w1i + y2i * w1r;
          d.re[l] = y3r * w3r - y3i * w3i;
          d.im[l] = y3r * w3i + y3i * w3r;
        }
      }
    }
  }
  if (half == 1) {  // the last radix-2 stage: twiddles are all 1
    for (int start = 0; start < n_; start += 2) {
      const Lanes a = at(re, im, start), b = at(re, im, start + 1);
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float dr = a.re[l] - b.re[l], di = a.im[l] - b.im[l];
        a.re[l] += b.re[l];
        a.im[l] += b.im[l];
        b.re[l] = dr;
        b.im[l] = di;
      }
    }
  }
}

// Decimation in time, bit-reversed order in, natural order out: stages from the smallest block
// up, fused in pairs as in forward(), with W_L^j = exp(+2πi·j/L).
void LaneFft::inverse(float* re, float* im) const {
  int half = 1;
  for (; 2 * half < n_; half *= 4) {  // stages of half-size `half` and `2 * half`
    const int step1 = n_ / (2 * half), step2 = n_ / (4 * half);
    for (int start = 0; start < n_; start += 4 * half) {
      for (int j = 0; j < half; ++j) {
        const float w1r = cos_[j * step1], w1i = sin_[j * step1];
        const float w2r = cos_[j * step2], w2i = sin_[j * step2];
        const Lanes a = at(re, im, start + j), b = at(re, im, start + j + half);
        const Lanes c = at(re, im, start + j + 2 * half), d = at(re, im, start + j + 3 * half);
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const float b1r = b.re[l] * w1r - b.im[l] * w1i, b1i = b.re[l] * w1i + b.im[l] * w1r;
          const float d1r = d.re[l] * w1r - d.im[l] * w1i, d1i = d.re[l] * w1i + d.im[l] * w1r;
          const float ar = a.re[l] + b1r, ai = a.im[l] + b1i;  // first stage
          const float br = a.re[l] - b1r, bi = a.im[l] - b1i;
          const float cr = c.re[l] + d1r, ci = c.im[l] + d1i;
          const float dr = c.re[l] - d1r, di = c.im[l] - d1i;
          const float c2r = cr * w2r - ci * w2i, c2i = cr * w2i + ci * w2r;  // second stage: w2 and i·w2
          const float d2r = -(dr * w2i + di * w2r), d2i = dr * w2r - di * w2i;
          a.re[l] = ar + c2r;
          a.im[l] = ai + c2i;
          c.re[l] = ar - c2r;
          c.im[l] = ai - c2i;
          b.re[l] = br + d2r;
          b.im[l] = bi + d2i;
          d.re[l] = br - d2r;
          d.im[l] = bi - d2i;
        }
      }
    }
  }
  if (half < n_) {  // the last radix-2 stage, half = n/2
    for (int j = 0; j < half; ++j) {
      const float wr = cos_[j], wi = sin_[j];
      const Lanes a = at(re, im, j), b = at(re, im, j + half);
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float tr = b.re[l] * wr - b.im[l] * wi;
        const float ti = b.re[l] * wi + b.im[l] * wr;
        b.re[l] = a.re[l] - tr;
        b.im[l] = a.im[l] - ti;
        a.re[l] += tr;
        a.im[l] += ti;
      }
    }
  }
}

}  // namespace deepsound::cpu
