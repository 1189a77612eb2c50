// Fused bilinear upsample + stitch (SPEC §2 steps 3-4), CPU.
//
// upsample_stitch_: canvas [Hc,Wc,C] fp32 += bilinear x r (align_corners=False) of each window
// feats[n] [g,g,C] placed at origins[n] = (row, col) in canvas cells; count [Hc,Wc] += 1 there.
// Windows are grouped by origin phase (mod r): each phase class accumulates its windows' low-res
// features once and is upsampled once (unclamped), plus per-window border corrections (see
// stitch_rows). Low-res accumulation is parallel over (class, low-res row) and the upsample over
// canvas rows, each looping over windows in window order: no races, deterministic results.
// fp16/bf16 features are converted to fp32 once per call (into a reused per-thread buffer).
// stitch_finalize: out [h,w,C] = bilinear resize of canvas / max(count, 1), fused in one pass.
// All bilinear taps come from the host (spar_fast.ops.bilinear.bilinear_taps); none are derived here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ops.h"

namespace {

// Bilinear taps of one axis, as spar_fast.ops.bilinear.bilinear_taps computes them on the host
// (the one definition shared by every kernel): index int32 [2, n] = (i0, i1), weight fp32 [2, n] =
// (w0, w1) for n output positions.
struct Taps {
  const int32_t* i0;
  const int32_t* i1;
  const float* w0;
  const float* w1;
  Taps(const at::Tensor& index, const at::Tensor& weight)
      : i0(index.data_ptr<int32_t>()), i1(i0 + index.size(1)), w0(weight.data_ptr<float>()),
        w1(w0 + weight.size(1)) {}
};

void check_taps(const at::Tensor& index, const at::Tensor& weight, int64_t n, const char* name) {
  TORCH_CHECK(index.is_cpu() && index.scalar_type() == at::kInt && index.is_contiguous() && index.dim() == 2 &&
                  index.size(0) == 2 && index.size(1) == n,
              name, ": index must be a contiguous CPU int32 [2, ", n, "] tensor");
  TORCH_CHECK(weight.is_cpu() && weight.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  weight.sizes() == index.sizes(),
              name, ": weight must be a contiguous CPU fp32 tensor shaped like its index");
}

// Exact restructuring by linearity (up to fp32 summation order). Per axis, the clamped per-window
// upsample operator C (rows: canvas offsets o relative to the window origin) is U + D, where U is
// the unclamped (zero-padded) bilinear operator and D is nonzero only at a few outputs next to
// each window border (o in [-r, G + r)), each such row being a multiple of W[0] or W[g-1]. Then
//   C_y W C_x^T = U_y W U_x^T + D_y W C_x^T + U_y W D_x^T.
// Windows whose origins are congruent mod r (a "phase class") share one low-res grid, so the
// U_y W U_x^T terms of a class sum to one unclamped upsample of the class's low-res canvas (the sum
// of its windows' features): cost g*g*C per window plus one upsample per class instead of
// (g*r)^2*C per window. The border terms cost O(G*C) per window.
struct PhaseTaps {  // unclamped taps: output offset t -> (floor index a0, weight lam on a0 + 1)
  int64_t r;
  std::vector<int64_t> a;  // a' for t = m + r, m in [0, r)
  std::vector<float> lam;
  // From the host taps of a 2-cell input upsampled by r: its outputs r + m (m in [0, r)) are
  // interior (src in (0.5, 1.5)), so their (i0, w1) are the unclamped (a'[m], lam[m]).
  PhaseTaps(int64_t r_, const Taps& two) : r(r_), a(r_), lam(r_) {
    for (int64_t m = 0; m < r_; ++m) {
      a[m] = two.i0[r_ + m];
      lam[m] = two.w1[r_ + m];
    }
  }
  void at(int64_t t, int64_t& a0, float& l) const {
    int64_t m = t % r;
    if (m < 0) m += r;
    a0 = a[m] + (t - m) / r - 1;
    l = lam[m];
  }
};

struct Corr {  // one nonzero row of D: output offset o, source index idx, coefficient coef
  int64_t o, idx;
  float coef;
};

struct ColTap {  // class column tap into the zero-padded blended row
  int64_t x, b;
  float w0, w1;
};

void stitch_rows(float* canvas, float* count, const float* feats, const int64_t* origins, int64_t N,
                 int64_t g, int64_t C, int64_t r, int64_t Wc, int64_t y0, int64_t y1, const Taps& taps,
                 const PhaseTaps& pt) {
  if (N == 0 || y0 >= y1) return;
  const int64_t G = g * r;
  const int64_t gC = g * C;

  // D rows (identical for both axes): offsets o in [-r, G + r)
  std::vector<Corr> dlist;
  std::vector<int64_t> drow(G + 2 * r, -1);  // o + r -> index into dlist, or -1
  for (int64_t o = -r; o < G + r; ++o) {
    int64_t a0;
    float l;
    pt.at(o, a0, l);
    int64_t idx = -1;
    float coef = 0.0f;
    if (o >= 0 && o < G) {
      if (a0 < 0) {
        idx = 0;
        coef = 1.0f - l;
      } else if (a0 >= g - 1) {
        idx = g - 1;
        coef = l;
      }
    } else if (o < 0) {
      if (a0 == -1) {
        idx = 0;
        coef = -l;
      }
    } else if (a0 == g - 1) {
      idx = g - 1;
      coef = -(1.0f - l);
    }
    if (idx >= 0 && coef != 0.0f) {
      drow[o + r] = static_cast<int64_t>(dlist.size());
      dlist.push_back({o, idx, coef});
    }
  }

  // phase classes and their low-res canvases (zero-padded by one cell on every side)
  struct Cls {
    int64_t py, px, Amin, Amax, Bmin, Bmax, la, lb, ylo, yhi;
    std::vector<int64_t> win;
    std::vector<ColTap> cols;
    float* L;
  };
  auto fdiv = [](int64_t v, int64_t d) { return v >= 0 ? v / d : -((-v + d - 1) / d); };
  std::vector<Cls> cls;
  std::vector<int64_t> cls_of(r * r, -1);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t oy = origins[2 * n], ox = origins[2 * n + 1];
    const int64_t py = oy - fdiv(oy, r) * r, px = ox - fdiv(ox, r) * r;
    int64_t& k = cls_of[py * r + px];
    if (k < 0) {
      k = static_cast<int64_t>(cls.size());
      cls.push_back(Cls{py, px, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, 0, 0, 0, 0, {}, {}, nullptr});
    }
    Cls& c = cls[k];
    c.win.push_back(n);
    const int64_t A = (oy - py) / r, B = (ox - px) / r;
    c.Amin = std::min(c.Amin, A);
    c.Amax = std::max(c.Amax, A + g);
    c.Bmin = std::min(c.Bmin, B);
    c.Bmax = std::max(c.Bmax, B + g);
  }
  // class canvases live in one per-thread arena reused across calls (fresh multi-MB allocations
  // cost more in page faults than the accumulation itself)
  thread_local std::vector<float> arena;
  size_t total = 0;
  for (const Cls& c : cls) total += static_cast<size_t>((c.Amax - c.Amin + 2) * (c.Bmax - c.Bmin + 2) * C);
  if (arena.size() < total) arena.resize(total);
  std::fill(arena.begin(), arena.begin() + static_cast<std::ptrdiff_t>(total), 0.0f);
  size_t off = 0;
  for (Cls& c : cls) {
    c.la = c.Amax - c.Amin;
    c.lb = c.Bmax - c.Bmin;
    c.ylo = std::max(y0, c.py + r * c.Amin - r);
    c.yhi = std::min(y1, c.py + r * c.Amax + r);
    const int64_t xlo = std::max<int64_t>(0, c.px + r * c.Bmin - r);
    const int64_t xhi = std::min(Wc, c.px + r * c.Bmax + r);
    for (int64_t x = xlo; x < xhi; ++x) {
      int64_t b0;
      float l;
      pt.at(x - c.px, b0, l);
      const int64_t b = b0 - c.Bmin + 1;  // padded index of the left tap
      if (b < 0 || b > c.lb) continue;   // both taps in the zero padding
      c.cols.push_back({x, b, 1.0f - l, l});
    }
    c.L = arena.data() + off;
    off += static_cast<size_t>((c.la + 2) * (c.lb + 2) * C);
  }

  // accumulate low-res features per class: tasks = (class, low-res row), windows in order
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t k = 0; k < static_cast<int64_t>(cls.size()); ++k)
    for (int64_t a = 0; a < cls[k].la; ++a) tasks.emplace_back(k, a);
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      Cls& c = cls[tasks[t].first];
      const int64_t a = tasks[t].second;
      float* Lrow = c.L + (a + 1) * (c.lb + 2) * C;
      for (const int64_t n : c.win) {
        const int64_t A = (origins[2 * n] - c.py) / r - c.Amin;
        const int64_t i = a - A;
        if (i < 0 || i >= g) continue;
        const int64_t B = (origins[2 * n + 1] - c.px) / r - c.Bmin;
        float* __restrict__ dst = Lrow + (B + 1) * C;
        const float* __restrict__ src = feats + (n * g + i) * gC;
#pragma omp simd
        for (int64_t q = 0; q < gC; ++q) dst[q] += src[q];
      }
    }
  });

  int64_t maxlb = 0;
  for (const Cls& c : cls) maxlb = std::max(maxlb, c.lb);
  at::parallel_for(y0, y1, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> blend((maxlb + 2) * C);
    for (int64_t y = begin; y < end; ++y) {
      float* crow = canvas + y * Wc * C;
      float* cnt = count + y * Wc;
      // 1. unclamped upsample of every class canvas
      for (const Cls& c : cls) {
        if (y < c.ylo || y >= c.yhi) continue;
        int64_t a0;
        float l;
        pt.at(y - c.py, a0, l);
        const int64_t ra = a0 - c.Amin + 1;
        if (ra < 0 || ra > c.la) continue;
        const int64_t rowlen = (c.lb + 2) * C;
        const float* __restrict__ p = c.L + ra * rowlen;
        const float* __restrict__ q = p + rowlen;
        const float wa = 1.0f - l, wb = l;
        float* __restrict__ bl = blend.data();
#pragma omp simd
        for (int64_t k = 0; k < rowlen; ++k) bl[k] = wa * p[k] + wb * q[k];
        for (const ColTap& ct : c.cols) {
          float* __restrict__ dst = crow + ct.x * C;
          const float* __restrict__ u = blend.data() + ct.b * C;
          const float* __restrict__ v = u + C;
          const float w0 = ct.w0, w1 = ct.w1;
#pragma omp simd
          for (int64_t k = 0; k < C; ++k) dst[k] += w0 * u[k] + w1 * v[k];
        }
      }
      // 2. per-window border corrections and coverage count, windows in order
      for (int64_t n = 0; n < N; ++n) {
        const int64_t o = y - origins[2 * n];
        if (o < -r || o >= G + r) continue;
        const int64_t col = origins[2 * n + 1];
        const float* W = feats + n * g * gC;
        if (o >= 0 && o < G)
          for (int64_t ox = 0; ox < G; ++ox) cnt[col + ox] += 1.0f;
        // D_y W C_x^T
        const int64_t di = drow[o + r];
        if (di >= 0) {
          const Corr& d = dlist[di];
          const float* row = W + d.idx * gC;
          for (int64_t ox = 0; ox < G; ++ox) {
            float* __restrict__ dst = crow + (col + ox) * C;
            const float* __restrict__ p = row + taps.i0[ox] * C;
            const float* __restrict__ q = row + taps.i1[ox] * C;
            const float wp = d.coef * taps.w0[ox], wq = d.coef * taps.w1[ox];
#pragma omp simd
            for (int64_t k = 0; k < C; ++k) dst[k] += wp * p[k] + wq * q[k];
          }
        }
        // U_y W D_x^T
        int64_t a0;
        float l;
        pt.at(o, a0, l);
        const bool has0 = a0 >= 0 && a0 < g, has1 = a0 + 1 >= 0 && a0 + 1 < g;
        if (!has0 && !has1) continue;
        const float* r0 = W + (has0 ? a0 : a0 + 1) * gC;
        const float* r1 = W + (has1 ? a0 + 1 : a0) * gC;
        const float u0 = has0 ? 1.0f - l : 0.0f, u1 = has1 ? l : 0.0f;
        for (const Corr& d : dlist) {
          const int64_t x = col + d.o;
          if (x < 0 || x >= Wc) continue;
          float* __restrict__ dst = crow + x * C;
          const float* __restrict__ p = r0 + d.idx * C;
          const float* __restrict__ q = r1 + d.idx * C;
          const float wp = d.coef * u0, wq = d.coef * u1;
#pragma omp simd
          for (int64_t k = 0; k < C; ++k) dst[k] += wp * p[k] + wq * q[k];
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

}  // namespace

void check_stitch_args(const at::Tensor& canvas, const at::Tensor& count, const at::Tensor& feats,
                       const at::Tensor& origins, int64_t r, int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
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
}

void upsample_stitch_cpu(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                         const at::Tensor& origins, const at::Tensor& win_index, const at::Tensor& win_weight,
                         const at::Tensor& phase_index, const at::Tensor& phase_weight, int64_t r, int64_t y0,
                         int64_t y1, int64_t x0, int64_t x1) {
  check_stitch_args(canvas, count, feats, origins, r, y0, y1, x0, x1);
  check_taps(win_index, win_weight, feats.size(1) * r, "upsample_stitch_ window taps");
  check_taps(phase_index, phase_weight, 2 * r, "upsample_stitch_ phase taps");
  if (feats.size(0) == 0) return;
  // fp16/bf16 -> fp32 once, vectorized by ATen: each feature row is read ~2r times below, and
  // scalar half conversions there cost more than the whole interpolation (measured 20x on C=384).
  // The fp32 copy goes to a per-thread buffer reused across calls: a fresh allocation of this
  // size is returned to the OS on free, and its page faults cost several times the conversion.
  at::Tensor f32;
  if (feats.scalar_type() == at::kFloat) {
    f32 = feats.contiguous();
  } else {
    thread_local std::vector<float> buf;
    const size_t numel = static_cast<size_t>(feats.numel());
    if (buf.size() < numel) buf.resize(numel);
    f32 = at::from_blob(buf.data(), feats.sizes(), at::TensorOptions().dtype(at::kFloat));
    f32.copy_(feats);
  }
  const Taps taps(win_index, win_weight);
  const PhaseTaps pt(r, Taps(phase_index, phase_weight));
  stitch_rows(canvas.data_ptr<float>(), count.data_ptr<float>(), f32.data_ptr<float>(), origins.data_ptr<int64_t>(),
              f32.size(0), f32.size(1), f32.size(3), r, canvas.size(1), y0, y1, taps, pt);
}

at::Tensor stitch_finalize_cpu(const at::Tensor& canvas, const at::Tensor& count, const at::Tensor& y_index,
                               const at::Tensor& y_weight, const at::Tensor& x_index, const at::Tensor& x_weight) {
  check_common(canvas, count);
  TORCH_CHECK(canvas.is_cpu(), "stitch_finalize (C++) needs CPU tensors");
  const int64_t Wc = canvas.size(1), C = canvas.size(2);
  const int64_t h = y_index.size(-1), w = x_index.size(-1);
  TORCH_CHECK(h >= 1 && w >= 1, "output size must be positive");
  check_taps(y_index, y_weight, h, "stitch_finalize row taps");
  check_taps(x_index, x_weight, w, "stitch_finalize column taps");
  at::Tensor out = at::empty({h, w, C}, canvas.options());
  const Taps ty(y_index, y_weight);
  const Taps tx(x_index, x_weight);
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

