// The training transform's clipped colour step and its normalisation, in two passes over a uint8 crop.
//
// For one uint8 HWC crop (C-contiguous, BGR or RGB) this applies brightness, contrast and saturation in the
// order given, each computed in float32 and stored truncated and clipped to 0..255, then the lighting shift
// (x + s, truncated and clipped), and writes out[c] = affine[c, :3] . pixel + affine[c, 3] into a float32
// CHW buffer. Two flavours (see resnest_gluon/data/transforms.py):
//   mxnet        MXNet 1.9.1's image operators: brightness a x; contrast a x + (1 - a) m, m the mean of
//                0.299 R + 0.587 G + 0.114 B; saturation a x + (1 - a) 0.114 B in every channel.
//   torchvision  PIL's ImageEnhance blends d + f (x - d): brightness d = 0; contrast d = int(mean grey + 0.5)
//                with PIL's grey (19595 R + 38470 G + 7471 B + 2^15) >> 16; colour d = each pixel's grey.
// Contrast needs the mean of the image as it is when contrast runs: a first pass applies the earlier steps
// and sums (exactly, in integers); the second applies every step and writes the output. The work is done
// on chunks of pixels held as three float planes, so each step is a plain loop the compiler vectorises.
// Built with -ffp-contract=off: products are rounded before they are added, as in MXNet and PIL; and
// -fno-trapping-math, without which GCC keeps the clipping's comparisons as branches (5x slower).
// No MXNet headers: loaded with ctypes (resnest_gluon/data/colour_kernel.py).

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace {

constexpr int kChunk = 256;
enum Step { kBrightness = 0, kContrast = 1, kSaturation = 2 };

#define INLINE inline __attribute__((always_inline))
#define RESTRICT __restrict__

// uint8(min(max(v, 0), 255)): the value clipped to range, then truncated towards zero; computed as truncate,
// then clip the integer (the same for every value pixel arithmetic can produce, and two vector instructions
// fewer than float comparisons that must keep NaN's behaviour).
INLINE float store(float v) {
  int32_t t = static_cast<int32_t>(v);
  t = t > 0 ? t : 0;
  t = t < 255 ? t : 255;
  return static_cast<float>(t);
}

// PIL's grey level of one pixel.
INLINE int32_t pil_grey(float r, float g, float b) {
  return (19595 * static_cast<int32_t>(r) + 38470 * static_cast<int32_t>(g) + 7471 * static_cast<int32_t>(b) +
          32768) >> 16;
}

// The chunk's pixels as three float planes x0, x1, x2 in the image's channel order (R = x2 when BGR).
struct Chunk {
  alignas(64) float x0[kChunk];
  alignas(64) float x1[kChunk];
  alignas(64) float x2[kChunk];
};

// The steps then run on whole chunks (loops of a fixed length vectorise without a test per vector): a short
// last chunk is padded with zeros, and only its n pixels are summed or written.
INLINE void load(const uint8_t* RESTRICT px, int n, Chunk& k) {
  float* RESTRICT x0 = k.x0;
  float* RESTRICT x1 = k.x1;
  float* RESTRICT x2 = k.x2;
  for (int i = 0; i < n; ++i) {
    x0[i] = px[3 * i];
    x1[i] = px[3 * i + 1];
    x2[i] = px[3 * i + 2];
  }
  for (int i = n; i < kChunk; ++i) x0[i] = x1[i] = x2[i] = 0.f;
}

INLINE void scale(float* RESTRICT x, int n, float a) {
  for (int i = 0; i < n; ++i) x[i] = store(x[i] * a);
}
INLINE void scale_add(float* RESTRICT x, int n, float a, float b) {
  for (int i = 0; i < n; ++i) x[i] = store(x[i] * a + b);
}
INLINE void blend(float* RESTRICT x, int n, float f, float d) {
  for (int i = 0; i < n; ++i) x[i] = store(d + f * (x[i] - d));
}

// dst[0 .. n) = src[0 .. n), with stores that bypass the cache where the CPU has them: the output is a slot
// of a batch of many megabytes, not read again before it leaves the cache, and plain stores would first
// read each of its lines in (0.127 to 0.102 ms per 224 px crop, measured in the iterator).
INLINE void stream(float* RESTRICT dst, const float* RESTRICT src, int n) {
  int i = 0;
#if defined(__SSE__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// One colour step on n pixels; ``level`` is contrast's mean term (MXNet: (1 - a) m; PIL: the integer m).
template <bool kBgr, bool kPil>
INLINE void apply(int op, float a, float level, int n, Chunk& k) {
  float* RESTRICT x0 = k.x0;
  float* RESTRICT x1 = k.x1;
  float* RESTRICT x2 = k.x2;
  if (op == kBrightness) {
    scale(x0, n, a), scale(x1, n, a), scale(x2, n, a);  // PIL's 0 + f (x - 0) is f x
  } else if (op == kContrast) {
    if (kPil) {
      blend(x0, n, a, level), blend(x1, n, a, level), blend(x2, n, a, level);
    } else {
      scale_add(x0, n, a, level), scale_add(x1, n, a, level), scale_add(x2, n, a, level);
    }
  } else if (kPil) {
    for (int i = 0; i < n; ++i) {
      const float d = static_cast<float>(kBgr ? pil_grey(x2[i], x1[i], x0[i]) : pil_grey(x0[i], x1[i], x2[i]));
      x0[i] = store(d + a * (x0[i] - d));
      x1[i] = store(d + a * (x1[i] - d));
      x2[i] = store(d + a * (x2[i] - d));
    }
  } else {
    const float rest = 1.f - a;
    for (int i = 0; i < n; ++i) {
      float grey = (kBgr ? x0[i] : x2[i]) * 0.114f;  // MXNet's grey loop assigns: only blue is left
      grey *= rest;
      x0[i] = store(x0[i] * a + grey);
      x1[i] = store(x1[i] * a + grey);
      x2[i] = store(x2[i] * a + grey);
    }
  }
}

template <bool kBgr, bool kPil>
INLINE int run(const uint8_t* RESTRICT img, int64_t total, int steps, const int32_t* order, const float* factors,
               const float* shift, const float* affine, float* RESTRICT out) {
  Chunk k;
  int contrast = -1;
  for (int s = 0; s < steps; ++s) {
    if (order[s] < 0 || order[s] > 2) return -1;
    if (order[s] == kContrast) contrast = s;
  }
  float level = 0.f;
  if (contrast >= 0) {
    // First pass: the earlier steps on the fly, and exact integer sums of what contrast will see.
    int64_t sums[3] = {0, 0, 0};
    for (int64_t start = 0; start < total; start += kChunk) {
      const int n = static_cast<int>(std::min<int64_t>(kChunk, total - start));
      load(img + 3 * start, n, k);
      for (int s = 0; s < contrast; ++s) apply<kBgr, kPil>(order[s], factors[s], 0.f, kChunk, k);
      const float* RESTRICT x0 = k.x0;
      const float* RESTRICT x1 = k.x1;
      const float* RESTRICT x2 = k.x2;
      if (kPil) {
        int32_t acc = 0;
        for (int i = 0; i < n; ++i) acc += kBgr ? pil_grey(x2[i], x1[i], x0[i]) : pil_grey(x0[i], x1[i], x2[i]);
        sums[0] += acc;
      } else {
        int32_t a0 = 0, a1 = 0, a2 = 0;
        for (int i = 0; i < n; ++i) {
          a0 += static_cast<int32_t>(x0[i]);
          a1 += static_cast<int32_t>(x1[i]);
          a2 += static_cast<int32_t>(x2[i]);
        }
        sums[0] += a0, sums[1] += a1, sums[2] += a2;
      }
    }
    const float a = factors[contrast];
    if (kPil) {
      level = static_cast<float>(static_cast<int64_t>(static_cast<double>(sums[0]) / total + 0.5));
    } else {
      // MXNet sums 0.299 R + 0.587 G + 0.114 B in float32; the exact sum is within a few thousandths of it.
      const int64_t sr = kBgr ? sums[2] : sums[0], sb = kBgr ? sums[0] : sums[2];
      const double mean = (static_cast<double>(0.299f) * sr + static_cast<double>(0.587f) * sums[1] +
                           static_cast<double>(0.114f) * sb) / static_cast<double>(total);
      level = (1.f - a) * static_cast<float>(mean);
    }
  }

  // Second pass: every step, the lighting shift, then the affine map into the output planes.
  const float s0 = shift ? shift[0] : 0.f, s1 = shift ? shift[1] : 0.f, s2 = shift ? shift[2] : 0.f;
  float m[12];
  std::copy(affine, affine + 12, m);
  for (int64_t start = 0; start < total; start += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, total - start));
    load(img + 3 * start, n, k);
    for (int s = 0; s < steps; ++s) apply<kBgr, kPil>(order[s], factors[s], s == contrast ? level : 0.f, kChunk, k);
    float* RESTRICT x0 = k.x0;
    float* RESTRICT x1 = k.x1;
    float* RESTRICT x2 = k.x2;
    if (shift) {
      for (int i = 0; i < kChunk; ++i) {
        x0[i] = store(x0[i] + s0);
        x1[i] = store(x1[i] + s1);
        x2[i] = store(x2[i] + s2);
      }
    }
    alignas(64) float y[kChunk];
    for (int c = 0; c < 3; ++c) {
      const float w0 = m[4 * c], w1 = m[4 * c + 1], w2 = m[4 * c + 2], w3 = m[4 * c + 3];
      for (int i = 0; i < kChunk; ++i) y[i] = w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3;
      stream(out + c * total + start, y, n);
    }
  }
#if defined(__SSE__)
  _mm_sfence();  // the streamed stores are visible before the caller hands the batch on
#endif
  return 0;
}

// PIL's ImageEnhance steps (kPil: brightness, contrast towards `levels[s]`, colour) on rows of a uint8 image:
// the result into `out` (if given) and the sum of its PIL grey levels into `grey_sum` (if given).
template <bool kBgr>
INLINE void enhance(const uint8_t* img, int64_t stride, int64_t height, int64_t width, int steps, const int32_t* ops,
                    const float* factors, const float* levels, uint8_t* out, int64_t out_stride, int64_t* grey_sum) {
  Chunk k;
  int64_t sum = 0;
  for (int64_t r = 0; r < height; ++r) {
    for (int64_t start = 0; start < width; start += kChunk) {
      const int n = static_cast<int>(std::min<int64_t>(kChunk, width - start));
      load(img + r * stride + 3 * start, n, k);
      for (int s = 0; s < steps; ++s) apply<kBgr, true>(ops[s], factors[s], levels[s], kChunk, k);
      const float* RESTRICT x0 = k.x0;
      const float* RESTRICT x1 = k.x1;
      const float* RESTRICT x2 = k.x2;
      if (out != nullptr) {
        uint8_t* RESTRICT o = out + r * out_stride + 3 * start;
        for (int i = 0; i < n; ++i) {
          o[3 * i] = static_cast<uint8_t>(x0[i]);
          o[3 * i + 1] = static_cast<uint8_t>(x1[i]);
          o[3 * i + 2] = static_cast<uint8_t>(x2[i]);
        }
      }
      if (grey_sum != nullptr) {
        int32_t acc = 0;
        for (int i = 0; i < n; ++i) acc += kBgr ? pil_grey(x2[i], x1[i], x0[i]) : pil_grey(x0[i], x1[i], x2[i]);
        sum += acc;
      }
    }
  }
  if (grey_sum != nullptr) *grey_sum = sum;
}

// PIL's 3 x 3 filter (ImageFilter.Kernel, 8-bit bands, float32) of one interior row: kernel k (already divided
// by its scale) flipped vertically, as PIL applies it, rounded by +0.5 and truncated; `below`, `row`, `above`
// are the input rows y + 1, y, y - 1, n bytes each (3 per pixel); the first and last pixel are left alone.
INLINE void filter_row(const uint8_t* RESTRICT below, const uint8_t* RESTRICT row, const uint8_t* RESTRICT above,
                       int64_t n, const float* k, uint8_t* RESTRICT out) {
  for (int64_t i = 3; i < n - 3; ++i) {
    float ss = 0.5f;
    ss += static_cast<float>(below[i - 3]) * k[0] + static_cast<float>(below[i]) * k[1] +
          static_cast<float>(below[i + 3]) * k[2];
    ss += static_cast<float>(row[i - 3]) * k[3] + static_cast<float>(row[i]) * k[4] +
          static_cast<float>(row[i + 3]) * k[5];
    ss += static_cast<float>(above[i - 3]) * k[6] + static_cast<float>(above[i]) * k[7] +
          static_cast<float>(above[i + 3]) * k[8];
    out[i] = static_cast<uint8_t>(store(ss));  // PIL's clip8: clipped, truncated
  }
}

}  // namespace

extern "C" {

// img: height x width x 3 uint8; out: 3 x height x width float32. flags: 1 BGR (else RGB), 2 the torchvision
// flavour (else MXNet's), 4 the lighting shift (s0, s1, s2: per channel in the image's order). steps (0-3)
// operations, the i-th ((order >> 2 i) & 3: 0 brightness, 1 contrast, 2 saturation) with factor f_i. affine:
// 3 x 4 float32 in the image's channel order. Scalars rather than small arrays: each numpy array handed
// through ctypes costs a microsecond. Returns 0, or -1 on bad input.
// Compiled for x86-64-v4 (AVX-512 F/BW/DQ/VL: 25 % faster than avx512f alone), v3 (AVX2) and plain x86-64;
// the loader picks one per CPU.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) int resnest_colour_normalise(
    const uint8_t* img, int64_t height, int64_t width, int flags, int steps, int order, float f0, float f1,
    float f2, float s0, float s1, float s2, const float* affine, float* out) {
  if (steps < 0 || steps > 3 || height <= 0 || width <= 0) return -1;
  const int64_t total = height * width;
  const int32_t ops[3] = {order & 3, (order >> 2) & 3, (order >> 4) & 3};
  const float factors[3] = {f0, f1, f2};
  const float shift_values[3] = {s0, s1, s2};
  const float* shift = flags & 4 ? shift_values : nullptr;
  if (flags & 1) {
    return flags & 2 ? run<true, true>(img, total, steps, ops, factors, shift, affine, out)
                     : run<true, false>(img, total, steps, ops, factors, shift, affine, out);
  }
  return flags & 2 ? run<false, true>(img, total, steps, ops, factors, shift, affine, out)
                   : run<false, false>(img, total, steps, ops, factors, shift, affine, out);
}

// PIL's ImageEnhance.Brightness, Contrast and Color (Image.blend of a degenerate image: float32, truncated and
// clipped), `steps` of them in order ((code >> 2 i) & 3: 0 brightness, 1 contrast towards the grey level l_i,
// 2 colour) with factors f_i, on the height x width x 3 uint8 img (rows stride bytes apart; BGR when bgr):
// the result into out (rows out_stride apart; may be img) if not null, and the sum of the result's PIL grey
// levels into grey_sum if not null. Returns 0, or -1 on bad input.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) int resnest_pil_enhance(
    const uint8_t* img, int64_t stride, int64_t height, int64_t width, int bgr, int steps, int code, float f0,
    float f1, float f2, float l0, float l1, float l2, uint8_t* out, int64_t out_stride, int64_t* grey_sum) {
  if (steps < 0 || steps > 3 || height < 0 || width < 0) return -1;
  const int32_t ops[3] = {code & 3, (code >> 2) & 3, (code >> 4) & 3};
  for (int s = 0; s < steps; ++s)
    if (ops[s] > 2) return -1;
  const float factors[3] = {f0, f1, f2}, levels[3] = {l0, l1, l2};
  if (bgr) {
    enhance<true>(img, stride, height, width, steps, ops, factors, levels, out, out_stride, grey_sum);
  } else {
    enhance<false>(img, stride, height, width, steps, ops, factors, levels, out, out_stride, grey_sum);
  }
  return 0;
}

// PIL's ImageEnhance.Sharpness with factor f: Image.blend of the image smoothed by ImageFilter.SMOOTH (PIL's 3 x 3
// float32 filter, the outermost pixels left as they are) and the image, on the height x width x 3 uint8 img
// into out (a separate image; rows stride and out_stride bytes apart). Returns 0, or -1 on bad input.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) int resnest_pil_sharpness(
    const uint8_t* img, int64_t stride, int64_t height, int64_t width, float f, uint8_t* out, int64_t out_stride) {
  if (height < 0 || width < 0 || img == out) return -1;
  const int64_t n = 3 * width;
  // SMOOTH: (1 1 1 / 1 5 1 / 1 1 1) / 13, each weight divided in float32 as PIL does.
  const float a = 1.f / 13.f, b = 5.f / 13.f;
  const float k[9] = {a, a, a, a, b, a, a, a, a};
  float d[3 * kChunk];  // one chunk of the smoothed row
  for (int64_t r = 0; r < height; ++r) {
    const uint8_t* row = img + r * stride;
    uint8_t* o = out + r * out_stride;
    // PIL leaves the outermost rows and columns as they are (and the whole image when it is under 3 x 3).
    if (r == 0 || r == height - 1 || height < 3 || width < 3) {
      memcpy(o, row, n);
      continue;
    }
    filter_row(row + stride, row, row - stride, n, k, o);  // the smoothed row, into out for now
    for (int c = 0; c < 3; ++c) o[c] = row[c], o[n - 3 + c] = row[n - 3 + c];
    // Blend: smoothed + f (image - smoothed), PIL's float32, truncated and clipped.
    for (int64_t start = 0; start < n; start += 3 * kChunk) {
      const int64_t m = std::min<int64_t>(3 * kChunk, n - start);
      for (int64_t i = 0; i < m; ++i) d[i] = o[start + i];
      for (int64_t i = 0; i < m; ++i) {
        const float x = static_cast<float>(row[start + i]);
        o[start + i] = static_cast<uint8_t>(store(d[i] + f * (x - d[i])));
      }
    }
  }
  return 0;
}

}  // extern "C"
