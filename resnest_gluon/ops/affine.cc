// PIL's nearest-neighbour affine transform (Image.transform(AFFINE, NEAREST), as Image.rotate uses), on a
// uint8 HWC image with three channels, for AutoAugment's Rotate on the part of the image a crop reads.
//
// PIL computes it in 16.16 fixed point when every coordinate fits (its affine_fixed): output pixel (i, j)
// reads input (x >> 16, y >> 16) with x = x0 + i a1 + j a0 and y = y0 + i a4 + j a3, each row's start
// advanced by (a1, a4) and each pixel by (a0, a3); outside the input the output is black. The caller
// passes the fixed-point numbers (resnest_gluon/data/autoaugment.py), and uses PIL where they do not fit.
// Part of libresnest_colour.so (the training transform's kernels); no MXNet headers: loaded with ctypes.

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

void affine_plain(const uint8_t* src, int64_t src_stride, int height, int width, uint8_t* out, int64_t out_stride,
                  int out_height, int out_width, int32_t x0, int32_t y0, int32_t a0, int32_t a1, int32_t a3,
                  int32_t a4) {
  int32_t row_x = x0, row_y = y0;
  for (int i = 0; i < out_height; ++i, row_x += a1, row_y += a4) {
    uint8_t* o = out + i * out_stride;
    int32_t x = row_x, y = row_y;
    for (int j = 0; j < out_width; ++j, x += a0, y += a3, o += 3) {
      const int32_t xi = x >> 16, yi = y >> 16;
      if (xi >= 0 && xi < width && yi >= 0 && yi < height) {
        const uint8_t* p = src + yi * src_stride + 3 * static_cast<int64_t>(xi);
        o[0] = p[0];
        o[1] = p[1];
        o[2] = p[2];
      } else {
        o[0] = o[1] = o[2] = 0;
      }
    }
  }
}

#if defined(__x86_64__)
// 16 pixels at a time: their input positions in vector lanes, one 4-byte gather per pixel (the fourth byte
// dropped by a byte permute), black lanes outside the input. A pixel whose 4-byte read would pass the end of
// the input (its last pixel) is copied on its own.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void affine_vbmi(
    const uint8_t* src, int64_t src_stride, int height, int width, uint8_t* out, int64_t out_stride,
    int out_height, int out_width, int32_t x0, int32_t y0, int32_t a0, int32_t a1, int32_t a3, int32_t a4) {
  const int64_t end = (height - 1) * src_stride + 3 * static_cast<int64_t>(width);  // bytes of the input
  alignas(64) uint8_t pack[64];
  for (int k = 0; k < 64; ++k) pack[k] = static_cast<uint8_t>(k < 48 ? 4 * (k / 3) + k % 3 : 0);
  const __m512i compact = _mm512_load_si512(pack);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i w = _mm512_set1_epi32(width), h = _mm512_set1_epi32(height);
  const __m512i stride = _mm512_set1_epi32(static_cast<int32_t>(src_stride));
  const __m512i last = _mm512_set1_epi32(static_cast<int32_t>(end - 4));
  const __m512i step_x = _mm512_mullo_epi32(lane, _mm512_set1_epi32(a0));
  const __m512i step_y = _mm512_mullo_epi32(lane, _mm512_set1_epi32(a3));
  int32_t row_x = x0, row_y = y0;
  for (int i = 0; i < out_height; ++i, row_x += a1, row_y += a4) {
    uint8_t* o = out + i * out_stride;
    for (int j = 0; j < out_width; j += 16) {
      const int n = out_width - j < 16 ? out_width - j : 16;
      const __m512i x = _mm512_add_epi32(_mm512_set1_epi32(row_x + j * a0), step_x);
      const __m512i y = _mm512_add_epi32(_mm512_set1_epi32(row_y + j * a3), step_y);
      const __m512i xi = _mm512_srai_epi32(x, 16), yi = _mm512_srai_epi32(y, 16);
      // Unsigned comparisons: a negative index is a huge one.
      const __mmask16 inside = _mm512_cmplt_epu32_mask(xi, w) & _mm512_cmplt_epu32_mask(yi, h) &
                               static_cast<__mmask16>((1u << n) - 1);
      const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(yi, stride),
                                          _mm512_add_epi32(xi, _mm512_add_epi32(xi, xi)));
      const __mmask16 safe = inside & _mm512_cmple_epi32_mask(at, last);
      const __m512i px = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), safe, at, src, 1);
      _mm512_mask_storeu_epi8(o + 3 * j, (n == 16 ? (1ULL << 48) : (1ULL << (3 * n))) - 1,
                              _mm512_permutexvar_epi8(compact, px));
      for (__mmask16 rest = inside & ~safe; rest != 0; rest &= rest - 1) {  // the input's last pixel
        const int k = __builtin_ctz(rest);
        const int32_t xk = (row_x + (j + k) * a0) >> 16, yk = (row_y + (j + k) * a3) >> 16;
        memcpy(o + 3 * (j + k), src + yk * src_stride + 3 * static_cast<int64_t>(xk), 3);
      }
    }
  }
}
#endif

}  // namespace

extern "C" int resnest_affine_nearest(const uint8_t* src, int64_t src_stride, int height, int width, uint8_t* out,
                                      int64_t out_stride, int out_height, int out_width, int32_t x0, int32_t y0,
                                      int32_t a0, int32_t a1, int32_t a3, int32_t a4, int portable) {
  if (height < 0 || width < 0 || out_height < 0 || out_width < 0) return -1;
#if defined(__x86_64__)
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
  // Lane offsets are 32-bit: the vector path for inputs under 2 GB (and not when the caller asks for the
  // plain loop: tests).
  if (vbmi && !portable && height > 0 && width > 0 && height * src_stride < (int64_t{1} << 31)) {
    affine_vbmi(src, src_stride, height, width, out, out_stride, out_height, out_width, x0, y0, a0, a1, a3, a4);
    return 0;
  }
#endif
  affine_plain(src, src_stride, height, width, out, out_stride, out_height, out_width, x0, y0, a0, a1, a3, a4);
  return 0;
}
