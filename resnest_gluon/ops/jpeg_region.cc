// Decoding only the part of a JPEG that a training crop reads, with libjpeg-turbo.
//
// A random-resized crop covers 8 % to 100 % of the image, yet a full decode transforms every pixel. Here the
// rows above the part are only entropy-decoded (jpeg_skip_scanlines), the rows below are never read, and
// the columns outside are not transformed (jpeg_crop_scanline). The part's pixels are those of the full
// decode: the part is widened by a margin of a few pixels before decoding, so that the chroma upsampling at
// its edges sees the same neighbours as in the whole image, and the margin is then dropped.
//
// The same pixels as OpenCV's cv2.imdecode (libjpeg-turbo's default integer IDCT and fancy upsampling, BGR
// out) is checked when the library is loaded (resnest_gluon/data/jpeg_kernel.py). Anything else (greyscale,
// CMYK, a corrupt or truncated stream, even a warning) returns a code and the caller decodes with OpenCV,
// which then reports the problem as it always has. No MXNet headers: loaded with ctypes.

#include <dlfcn.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>

namespace {

// libjpeg's functions, from the library these headers belong to, opened with RTLD_DEEPBIND: MXNet's
// libmxnet.so exports its own libjpeg, and under Horovod it is loaded into the global scope, where a
// normally linked call (ours, or libjpeg's calls to itself) would bind to that copy, built for another
// struct layout, and crash.
#if JPEG_LIB_VERSION >= 80
constexpr const char* kLibjpeg = "libjpeg.so.8";
#elif JPEG_LIB_VERSION >= 70
constexpr const char* kLibjpeg = "libjpeg.so.7";
#else
constexpr const char* kLibjpeg = "libjpeg.so.62";
#endif

struct Libjpeg {
  decltype(&jpeg_std_error) std_error = nullptr;
  decltype(&jpeg_CreateDecompress) create = nullptr;
  decltype(&jpeg_mem_src) mem_src = nullptr;
  decltype(&jpeg_read_header) read_header = nullptr;
  decltype(&jpeg_start_decompress) start = nullptr;
  decltype(&jpeg_crop_scanline) crop_scanline = nullptr;
  decltype(&jpeg_skip_scanlines) skip_scanlines = nullptr;
  decltype(&jpeg_read_scanlines) read_scanlines = nullptr;
  decltype(&jpeg_abort_decompress) abort = nullptr;
  decltype(&jpeg_destroy_decompress) destroy = nullptr;
  bool ok = false;

  Libjpeg() {
    void* handle = dlopen(kLibjpeg, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) return;
    ok = find(handle, "jpeg_std_error", &std_error) && find(handle, "jpeg_CreateDecompress", &create) &&
         find(handle, "jpeg_mem_src", &mem_src) && find(handle, "jpeg_read_header", &read_header) &&
         find(handle, "jpeg_start_decompress", &start) && find(handle, "jpeg_crop_scanline", &crop_scanline) &&
         find(handle, "jpeg_skip_scanlines", &skip_scanlines) &&
         find(handle, "jpeg_read_scanlines", &read_scanlines) && find(handle, "jpeg_abort_decompress", &abort) &&
         find(handle, "jpeg_destroy_decompress", &destroy);
  }

  template <typename F>
  static bool find(void* handle, const char* name, F* fn) {
    *fn = reinterpret_cast<F>(dlsym(handle, name));
    return *fn != nullptr;
  }
};

const Libjpeg& libjpeg() {
  static const Libjpeg lib;  // opened once (thread-safe)
  return lib;
}

struct ErrorManager {
  jpeg_error_mgr mgr;
  jmp_buf jump;
};

void on_error(j_common_ptr cinfo) { longjmp(reinterpret_cast<ErrorManager*>(cinfo->err)->jump, 1); }

// Warnings (level -1: corrupt data, a premature end) hand the image to OpenCV, which decodes what it can
// and reports them; trace messages (level >= 0) are ignored.
void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) longjmp(reinterpret_cast<ErrorManager*>(cinfo->err)->jump, 1);
}

}  // namespace

// Decodes rows y .. y + h - 1, columns x .. x + w - 1 of a JPEG of height `height` and width `width` as BGR
// into `image`, a height x width x 3 buffer with rows `stride` bytes apart, straight where a full decode
// would put them; its other pixels are left alone, but for a margin of a few pixels around the part. With
// `hist` (3 x 256 counts, BGR order, zeroed by the caller) the part must be the whole image, and the
// histograms of its channels are counted while each row is in cache. Returns 0 when done; 1 when the
// image is not one this decodes (not three-component YCbCr, not `height` x `width`, the part outside the
// image); 2 on a decoding error or warning. On 1 and 2 the caller decodes the image with OpenCV.
extern "C" int resnest_jpeg_decode_region(const uint8_t* data, int64_t size, int height, int width, int y, int x,
                                          int h, int w, uint8_t* image, int64_t stride, uint32_t* hist) {
  if (y < 0 || x < 0 || h < 0 || w < 0 || y + h > height || x + w > width) return 1;
  if (hist != nullptr && (y != 0 || x != 0 || h != height || w != width)) return 1;
  const Libjpeg& lib = libjpeg();
  if (!lib.ok) return 1;
  jpeg_decompress_struct cinfo;
  memset(&cinfo, 0, sizeof(cinfo));  // so that destroying it is safe whenever an error comes
  ErrorManager err;
  cinfo.err = lib.std_error(&err.mgr);
  err.mgr.error_exit = on_error;
  err.mgr.emit_message = on_message;
  if (setjmp(err.jump)) {
    lib.destroy(&cinfo);
    return 2;
  }
  lib.create(&cinfo, JPEG_LIB_VERSION, sizeof(cinfo));
  lib.mem_src(&cinfo, data, static_cast<unsigned long>(size));
  lib.read_header(&cinfo, TRUE);
  if (cinfo.num_components != 3 || cinfo.jpeg_color_space != JCS_YCbCr ||
      static_cast<int>(cinfo.image_width) != width || static_cast<int>(cinfo.image_height) != height) {
    lib.destroy(&cinfo);
    return 1;
  }
  cinfo.out_color_space = JCS_EXT_BGR;
  lib.start(&cinfo);
  if (h == 0 || w == 0) {
    lib.destroy(&cinfo);
    return 0;
  }
  // Two chroma samples of context on every side (chroma is subsampled by up to max_*_samp_factor).
  const int mx = 2 * cinfo.max_h_samp_factor, my = 2 * cinfo.max_v_samp_factor;
  const int x0 = x > mx ? x - mx : 0, x1 = x + w + mx < width ? x + w + mx : width;
  const int y0 = y > my ? y - my : 0;
  JDIMENSION left = static_cast<JDIMENSION>(x0), cols = static_cast<JDIMENSION>(x1 - x0);
  if (cols < cinfo.output_width) lib.crop_scanline(&cinfo, &left, &cols);  // widened to whole iMCUs
  if (y0 > 0) lib.skip_scanlines(&cinfo, static_cast<JDIMENSION>(y0));
  constexpr int kRows = 16;  // rows per call
  uint32_t odd[768] = {0};  // the odd pixels' counts (with hist)
  JSAMPROW rows[kRows];
  for (int r = y0; r < y + h;) {
    const int n = y + h - r < kRows ? y + h - r : kRows;
    for (int k = 0; k < n; ++k) rows[k] = image + (r + k) * stride + static_cast<int64_t>(left) * 3;
    const int got = static_cast<int>(lib.read_scanlines(&cinfo, rows, static_cast<JDIMENSION>(n)));
    if (got <= 0) longjmp(err.jump, 1);
    for (int k = 0; hist != nullptr && k < got; ++k) {
      // Odd pixels into a second set of counters: neighbours often share a value, and one set would make
      // each count wait for the previous one to be stored (4 % faster decoding with histograms).
      const uint8_t* p = rows[k];
      JDIMENSION i = 0;
      for (; i + 2 <= cols; i += 2, p += 6) {
        ++hist[p[0]];
        ++hist[256 + p[1]];
        ++hist[512 + p[2]];
        ++odd[p[3]];
        ++odd[256 + p[4]];
        ++odd[512 + p[5]];
      }
      if (i < cols) {
        ++hist[p[0]];
        ++hist[256 + p[1]];
        ++hist[512 + p[2]];
      }
    }
    r += got;
  }
  for (int k = 0; hist != nullptr && k < 768; ++k) hist[k] += odd[k];
  lib.abort(&cinfo);  // the rows below the part are never decoded
  lib.destroy(&cinfo);
  return 0;
}
