// AutoAugment's per-channel tables (Posterize, Solarize, Invert, Equalize, AutoContrast) on uint8 BGR/RGB
// images: the run of tables built from the image's histograms, and the lookup itself.
//
// resnest_table_run composes a run of steps into one table per channel, as PIL computes each step on the
// image the previous ones left: a fixed table is looked up, Equalize and AutoContrast are built from the
// histogram of the image so far (the original histogram with each bin moved through the tables before).
// The arithmetic is that of resnest_gluon/data/autoaugment.py (_equalize_table, _range_table), which
// follows PIL's ImageOps; tests compare the two.
//
// resnest_lut looks each byte of a three-channel image up in its channel's table. With AVX-512 VBMI a
// 256-entry table is four registers and 64 bytes take two two-register permutes per table; otherwise one
// byte at a time. Part of libresnest_colour.so; no MXNet headers: loaded with ctypes.

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

enum Kind { kFixed = 0, kEqualize = 1, kAutoContrast = 2 };

// PIL's equalize of one channel's histogram: steps of (pixels but the last occupied bin's) / 255, started
// half a step in; the identity for an image of one level or too few pixels.
void equalize(const int64_t* h, uint8_t* table) {
  int last = -1, occupied = 0;
  int64_t total = 0;
  for (int i = 0; i < 256; ++i) {
    if (h[i] > 0) last = i, ++occupied;
    total += h[i];
  }
  const int64_t step = (total - (last >= 0 ? h[last] : 0)) / 255;
  if (occupied <= 1 || step == 0) {
    for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i);
    return;
  }
  int64_t before = 0;
  for (int i = 0; i < 256; ++i) {
    const int64_t v = (step / 2 + before) / step;
    table[i] = static_cast<uint8_t>(v < 255 ? v : 255);
    before += h[i];
  }
}

// PIL's autocontrast without cutoff: the occupied range stretched to 0..255, truncated (double arithmetic,
// as numpy computes it in autoaugment._range_table).
void autocontrast(const int64_t* h, uint8_t* table) {
  int lo = 0, hi = 255;
  while (lo < 256 && h[lo] == 0) ++lo;
  while (hi >= 0 && h[hi] == 0) --hi;
  if (lo == 256) lo = 0, hi = 255;  // no pixels: numpy's argmax of all-False rows gives these
  if (hi <= lo) {
    for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i);
    return;
  }
  const double scale = 255.0 / (hi - lo), offset = lo * scale;
  for (int i = 0; i < 256; ++i) {
    const int64_t v = static_cast<int64_t>(i * scale - offset);
    table[i] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
  }
}

#if defined(__x86_64__)
// The 64 bytes of v looked up in the 256-entry table t (four registers).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i lookup(__m512i v, const __m512i* t) {
  const __m512i low = _mm512_permutex2var_epi8(t[0], v, t[1]);   // entries 0..127 by v's low 7 bits
  const __m512i high = _mm512_permutex2var_epi8(t[2], v, t[3]);  // entries 128..255
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low, high);
}

__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void lut_vbmi(const uint8_t* src, int64_t src_stride,
                                                                     int height, int width,
                                                                     const uint8_t* table, uint8_t* dst,
                                                                     int64_t dst_stride) {
  __m512i t[3][4];
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 4; ++k) t[c][k] = _mm512_loadu_si512(table + 256 * c + 64 * k);
  const bool same = memcmp(table, table + 256, 256) == 0 && memcmp(table, table + 512, 256) == 0;
  // Bytes of channel c in a vector that starts at byte 64 j of a row: (64 j + k) % 3 == c, i.e. the
  // pattern shifted by j % 3 (64 % 3 == 1).
  __mmask64 mask[3][3];
  for (int phase = 0; phase < 3; ++phase)
    for (int c = 0; c < 3; ++c) {
      uint64_t m = 0;
      for (int k = 0; k < 64; ++k) m |= static_cast<uint64_t>((phase + k) % 3 == c) << k;
      mask[phase][c] = m;
    }
  const int64_t n = 3 * static_cast<int64_t>(width);
  for (int r = 0; r < height; ++r) {
    const uint8_t* s = src + r * src_stride;
    uint8_t* d = dst + r * dst_stride;
    for (int64_t i = 0, j = 0; i < n; i += 64, ++j) {
      const __mmask64 keep = n - i >= 64 ? ~0ULL : (1ULL << (n - i)) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(keep, s + i);
      __m512i out = lookup(v, t[0]);
      if (!same) {
        const int phase = static_cast<int>(j % 3);
        out = _mm512_mask_blend_epi8(mask[phase][1], out, lookup(v, t[1]));
        out = _mm512_mask_blend_epi8(mask[phase][2], out, lookup(v, t[2]));
      }
      _mm512_mask_storeu_epi8(d + i, keep, out);
    }
  }
}
#endif

void lut_plain(const uint8_t* src, int64_t src_stride, int height, int width, const uint8_t* table, uint8_t* dst,
               int64_t dst_stride) {
  for (int r = 0; r < height; ++r) {
    const uint8_t* s = src + r * src_stride;
    uint8_t* d = dst + r * dst_stride;
    for (int i = 0; i < width; ++i, s += 3, d += 3) {
      d[0] = table[s[0]];
      d[1] = table[256 + s[1]];
      d[2] = table[512 + s[2]];
    }
  }
}

}  // namespace

extern "C" {

// table (3 x 256: one per channel, in the image's order) of `steps` steps: kinds[s] is 0 (a fixed table,
// fixed[s * 256 ..]), 1 (Equalize) or 2 (AutoContrast), built from hist (3 x 256 counts of the image the
// run starts from; may be null when every step is fixed). Returns 0, or -1 on bad input.
int resnest_table_run(const uint32_t* hist, int steps, const int32_t* kinds, const uint8_t* fixed, uint8_t* table) {
  if (steps < 0) return -1;
  for (int s = 0; s < steps; ++s) {
    if (kinds[s] < kFixed || kinds[s] > kAutoContrast) return -1;
    if (kinds[s] != kFixed && hist == nullptr) return -1;
  }
  for (int c = 0; c < 3; ++c) {
    uint8_t total[256], step[256];
    for (int i = 0; i < 256; ++i) total[i] = static_cast<uint8_t>(i);
    for (int s = 0; s < steps; ++s) {
      if (kinds[s] == kFixed) {
        for (int i = 0; i < 256; ++i) total[i] = fixed[256 * s + total[i]];
        continue;
      }
      int64_t h[256] = {0};  // the histogram now: each original bin moved to its value so far
      for (int i = 0; i < 256; ++i) h[total[i]] += hist[256 * c + i];
      (kinds[s] == kEqualize ? equalize : autocontrast)(h, step);
      for (int i = 0; i < 256; ++i) total[i] = step[total[i]];
    }
    memcpy(table + 256 * c, total, 256);
  }
  return 0;
}

// dst = each byte of the height x width x 3 image src looked up in its channel's row of table (3 x 256).
// Rows are src_stride and dst_stride bytes apart (dst may be src). portable: the byte-by-byte loop even where
// the CPU has AVX-512 VBMI (for tests). Returns 0, or -1 on bad input.
int resnest_lut(const uint8_t* src, int64_t src_stride, int height, int width, const uint8_t* table, uint8_t* dst,
                int64_t dst_stride, int portable) {
  if (height < 0 || width < 0) return -1;
#if defined(__x86_64__)
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
  if (vbmi && !portable) {
    lut_vbmi(src, src_stride, height, width, table, dst, dst_stride);
    return 0;
  }
#endif
  lut_plain(src, src_stride, height, width, table, dst, dst_stride);
  return 0;
}

}  // extern "C"
