// Fused bilinear upsample + stitch (SPEC §2 steps 3-4), CPU.
//
// upsample_stitch_: canvas [Hc,Wc,C] fp32 += bilinear x r (align_corners=False) of each window
// feats[n] [g,g,C] placed at origins[n] = (row, col) in canvas cells; count [Hc,Wc] += 1 there.
// Parallel over canvas rows: each thread owns whole rows and loops over the windows crossing
// them in window order, so overlapping windows never race and the result is deterministic.
// fp16/bf16 features are converted to fp32 once per call.
// stitch_finalize: out [h,w,C] = bilinear resize of canvas / max(count, 1), fused in one pass.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ops.h"

namespace {

// Source taps of bilinear resize, align_corners=False, as ATen computes them:
// src = max(scale * (dst + 0.5) - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1).
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
  Taps(int64_t in, int64_t out, float scale) : i0(out), i1(out), w0(out), w1(out) {
    for (int64_t o = 0; o < out; ++o) {
      const float src = std::max(scale * (static_cast<float>(o) + 0.5f) - 0.5f, 0.0f);
      const int64_t a = std::min(static_cast<int64_t>(src), in - 1);
      i0[o] = a;
      i1[o] = a + (a < in - 1 ? 1 : 0);
      w1[o] = src - static_cast<float>(a);
      w0[o] = 1.0f - w1[o];
    }
  }
};

void stitch_rows(float* canvas, float* count, const float* feats, const int64_t* origins, int64_t N,
                 int64_t g, int64_t C, int64_t r, int64_t Wc, int64_t y0, int64_t y1) {
  const int64_t G = g * r;
  // ATen uses 1/scale_factor computed in double, then opmath float; exact for powers of two.
  const Taps taps(g, G, static_cast<float>(1.0 / static_cast<double>(r)));
  at::parallel_for(y0, y1, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> blend(g * C);  // one window row, blended vertically, fp32
    for (int64_t y = begin; y < end; ++y) {
      float* crow = canvas + y * Wc * C;
      float* cnt = count + y * Wc;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t oy = y - origins[2 * n];
        if (oy < 0 || oy >= G) continue;
        const int64_t col = origins[2 * n + 1];
        const float* a = feats + (n * g + taps.i0[oy]) * g * C;
        const float* b = feats + (n * g + taps.i1[oy]) * g * C;
        const float wa = taps.w0[oy], wb = taps.w1[oy];
        float* __restrict__ bl = blend.data();
#pragma omp simd
        for (int64_t k = 0; k < g * C; ++k) bl[k] = wa * a[k] + wb * b[k];
        for (int64_t ox = 0; ox < G; ++ox) {
          float* __restrict__ dst = crow + (col + ox) * C;
          const float* __restrict__ p = blend.data() + taps.i0[ox] * C;
          const float* __restrict__ q = blend.data() + taps.i1[ox] * C;
          const float wp = taps.w0[ox], wq = taps.w1[ox];
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) dst[c] += wp * p[c] + wq * q[c];
          cnt[col + ox] += 1.0f;
        }
      }
    }
  });
}

void check_common(const at::Tensor& canvas, const at::Tensor& count) {
  TORCH_CHECK(canvas.dim() == 3 && canvas.scalar_type() == at::kFloat && canvas.is_contiguous(),
              "canvas must be a contiguous fp32 [Hc, Wc, C] tensor");
  TORCH_CHECK(count.dim() == 2 && count.size(0) == canvas.size(0) && count.size(1) == canvas.size(1) &&
                  count.scalar_type() == at::kFloat && count.is_contiguous(),
              "count must be a contiguous fp32 [Hc, Wc] tensor");
}

void upsample_stitch_(at::Tensor canvas, at::Tensor count, const at::Tensor& feats,
                      const at::Tensor& origins, int64_t r, int64_t y0, int64_t y1, int64_t x0,
                      int64_t x1) {
  check_common(canvas, count);
  TORCH_CHECK(feats.dim() == 4 && feats.size(1) == feats.size(2) && feats.size(3) == canvas.size(2) &&
                  feats.is_contiguous(),
              "feats must be a contiguous [N, g, g, C] tensor");
  TORCH_CHECK(origins.dim() == 2 && origins.size(0) == feats.size(0) && origins.size(1) == 2 &&
                  origins.scalar_type() == at::kLong && origins.is_contiguous(),
              "origins must be a contiguous int64 [N, 2] tensor");
  TORCH_CHECK(r >= 1, "r must be >= 1");
  TORCH_CHECK(0 <= y0 && y0 <= y1 && y1 <= canvas.size(0) && 0 <= x0 && x0 <= x1 && x1 <= canvas.size(1),
              "bounding box outside the canvas");
  TORCH_CHECK(canvas.device() == feats.device() && canvas.device() == count.device() &&
                  canvas.device() == origins.device(),
              "canvas, count, feats and origins must be on one device");
  if (canvas.is_cuda()) {
#ifdef SPAR_FAST_WITH_CUDA
    upsample_stitch_cuda(canvas, count, feats, origins, r, y0, y1, x0, x1);
    return;
#else
    TORCH_CHECK(false, "spar_fast._C was built without CUDA kernels");
#endif
  }
  TORCH_CHECK(canvas.is_cpu(), "upsample_stitch_: unsupported device");
  // fp16/bf16 -> fp32 once, vectorized by ATen: each feature row is read ~2r times below, and
  // scalar half conversions there cost more than the whole interpolation (measured 20x on C=384).
  const at::Tensor f32 = feats.to(at::kFloat).contiguous();
  stitch_rows(canvas.data_ptr<float>(), count.data_ptr<float>(), f32.data_ptr<float>(),
                     origins.data_ptr<int64_t>(), f32.size(0), f32.size(1), f32.size(3), r, canvas.size(1), y0, y1);
}

at::Tensor stitch_finalize(const at::Tensor& canvas, const at::Tensor& count, int64_t h, int64_t w) {
  check_common(canvas, count);
  TORCH_CHECK(canvas.is_cpu(), "stitch_finalize (C++) needs CPU tensors");
  TORCH_CHECK(h >= 1 && w >= 1, "output size must be positive");
  const int64_t Hc = canvas.size(0), Wc = canvas.size(1), C = canvas.size(2);
  at::Tensor out = at::empty({h, w, C}, canvas.options());
  // ATen: scale = in / out in opmath float when only the output size is given
  const Taps ty(Hc, h, static_cast<float>(Hc) / static_cast<float>(h));
  const Taps tx(Wc, w, static_cast<float>(Wc) / static_cast<float>(w));
  const float* src = canvas.data_ptr<float>();
  const float* cnt = count.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ya[2] = {ty.i0[i], ty.i1[i]};
      const float wy[2] = {ty.w0[i], ty.w1[i]};
      for (int64_t j = 0; j < w; ++j) {
        const int64_t xa[2] = {tx.i0[j], tx.i1[j]};
        const float wx[2] = {tx.w0[j], tx.w1[j]};
        const float* p[4];
        float f[4];
        for (int k = 0; k < 4; ++k) {
          const int64_t cell = ya[k / 2] * Wc + xa[k % 2];
          p[k] = src + cell * C;
          f[k] = wy[k / 2] * wx[k % 2] / std::max(cnt[cell], 1.0f);
        }
        float* o = dst + (i * w + j) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = f[0] * p[0][c] + f[1] * p[1][c] + f[2] * p[2][c] + f[3] * p[3][c];
      }
    }
  });
  return out;
}

}  // namespace

void register_stitch(pybind11::module& m) {
  m.def("upsample_stitch_", &upsample_stitch_,
        "canvas[Hc,Wc,C] += bilinear x r of feats[N,g,g,C] at origins[N,2]; count += 1 (in place)",
        pybind11::arg("canvas"), pybind11::arg("count"), pybind11::arg("feats"), pybind11::arg("origins"),
        pybind11::arg("r"), pybind11::arg("y0"), pybind11::arg("y1"), pybind11::arg("x0"), pybind11::arg("x1"));
  m.def("stitch_finalize", &stitch_finalize,
        "bilinear resize of canvas[Hc,Wc,C] / max(count[Hc,Wc], 1) to [h,w,C] (CPU)",
        pybind11::arg("canvas"), pybind11::arg("count"), pybind11::arg("h"), pybind11::arg("w"));
}
