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

extern "C" int resnest_affine_nearest(const uint8_t* src, int64_t src_stride, int height, int width, uint8_t* out,
                                      int64_t out_stride, int out_height, int out_width, int32_t x0, int32_t y0,
                                      int32_t a0, int32_t a1, int32_t a3, int32_t a4) {
  if (height < 0 || width < 0 || out_height < 0 || out_width < 0) return -1;
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
  return 0;
}
