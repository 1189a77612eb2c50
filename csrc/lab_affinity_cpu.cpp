// LPOSS+ pixel affinity product, CPU: y = S W S x without storing W (spar_fast/ops/lab_affinity.py).
//
// a [H, W, 3] is the Lab image already divided by tau, so W_ij = exp(-||a_i - a_j||) for the
// (2r+1)^2 - 1 pixels j around i. x [H*W, Q], s [H*W] (or none: S = I), y [H*W, Q].
// Parallel over output rows. For one output row and one offset (dy, dx) the weights of the whole
// row are computed first in a vectorized loop (distance, exp, times s_j), then added into the
// row's [W, Q] accumulator (which stays in L2: 2048 x 19 fp32 is 156 KB). Each output element
// is written by one thread only: no atomics, deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "fast_exp.h"
#include "ops.h"

namespace {

// exp(x) for x <= 0 (fast_exp.h). Below -87 (where fp32 exp becomes denormal) it returns 0: such
// a weight is < 2e-38 and the sums it enters are either 0 as well (an isolated pixel, whose
// degree is then set to 1) or dominated by normal terms.
inline float exp_nonpositive(float x) {
  return x < -87.0f ? 0.0f : spar_fast::exp_nonpositive_clamped(x);
}

inline float exp_neg(float x) { return exp_nonpositive(x); }
inline double exp_neg(double x) { return std::exp(x); }  // fp64 serves tests: exact libm exp

// Weights of one row segment: w[ox] = exp(-||p[ox] - q[ox]||) for ox in [x0, x1), p and q the
// planar Lab rows (L, a, b planes of the image, `plane` apart). Separate planes make every load
// contiguous, and the loop is vectorized: CMakeLists.txt compiles this file with -fno-math-errno
// (sqrt becomes sqrtps; its argument is >= 0, errno is never set) and -fno-trapping-math (GCC
// if-converts the exp's clamps only then; no code reads FP exception flags).
template <typename T>
void row_weights(const T* __restrict p, const T* __restrict q, int64_t plane, int64_t x0,
                               int64_t x1, T* __restrict w) {
#pragma omp simd
  for (int64_t ox = x0; ox < x1; ++ox) {
    const T d0 = p[ox] - q[ox], d1 = p[plane + ox] - q[plane + ox], d2 = p[2 * plane + ox] - q[2 * plane + ox];
    w[ox] = exp_neg(-std::sqrt(d0 * d0 + d1 * d1 + d2 * d2));
  }
}

// Output rows [begin, end) of y; a is planar [3, H, W].
template <typename T>
void lab_affinity_rows(const T* a, const T* x, const T* s, T* y, int64_t H, int64_t W, int64_t Q,
                       int64_t R, int64_t begin, int64_t end) {
  std::vector<T> w(W);
  const int64_t plane = H * W;
  for (int64_t oy = begin; oy < end; ++oy) {
    T* yrow = y + oy * W * Q;
    std::fill(yrow, yrow + W * Q, T(0));
    for (int64_t dy = -R; dy <= R; ++dy) {
      const int64_t ny = oy + dy;
      if (ny < 0 || ny >= H) continue;
      for (int64_t dx = -R; dx <= R; ++dx) {
        if (dy == 0 && dx == 0) continue;
        const int64_t x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? W - dx : W;  // ox with ox+dx inside
        if (x0 >= x1) continue;
        T* __restrict wp = w.data();
        row_weights<T>(a + oy * W, a + ny * W + dx, plane, x0, x1, wp);
        if (s != nullptr) {
          const T* srow = s + ny * W + dx;
          for (int64_t ox = x0; ox < x1; ++ox) wp[ox] *= srow[ox];
        }
        const T* xrow = x + (ny * W + dx) * Q;
        for (int64_t ox = x0; ox < x1; ++ox) {
          const T wv = wp[ox];
          const T* __restrict xs = xrow + ox * Q;
          T* __restrict yd = yrow + ox * Q;
          for (int64_t q = 0; q < Q; ++q) yd[q] += wv * xs[q];
        }
      }
    }
    if (s != nullptr) {
      for (int64_t ox = 0; ox < W; ++ox) {
        const T si = s[oy * W + ox];
        T* yd = yrow + ox * Q;
        for (int64_t q = 0; q < Q; ++q) yd[q] *= si;
      }
    }
  }
}

}  // namespace

at::Tensor lab_affinity_apply_cpu(const at::Tensor& lab, const at::Tensor& x,
                                  const std::optional<at::Tensor>& scale, int64_t radius) {
  TORCH_CHECK(lab.dim() == 3 && lab.size(2) == 3, "lab_affinity: lab must be [H, W, 3]");
  const int64_t H = lab.size(0), W = lab.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == H * W, "lab_affinity: x must be [H*W, Q]");
  TORCH_CHECK(lab.scalar_type() == x.scalar_type(), "lab_affinity: lab and x must share a dtype");
  TORCH_CHECK(radius >= 1, "lab_affinity: radius must be >= 1");
  TORCH_CHECK(lab.is_contiguous() && x.is_contiguous(), "lab_affinity: inputs must be contiguous");
  if (scale.has_value()) {
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == H * W && scale->is_contiguous() &&
                    scale->scalar_type() == x.scalar_type(),
                "lab_affinity: scale must be a contiguous [H*W] tensor of x's dtype");
  }
  const int64_t Q = x.size(1);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lab_affinity_apply_cpu", [&] {
    const scalar_t* s = scale.has_value() ? scale->data_ptr<scalar_t>() : nullptr;
    const at::Tensor planar = lab.permute({2, 0, 1}).contiguous();  // [3, H, W]: contiguous loads
    const scalar_t* a = planar.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
      lab_affinity_rows<scalar_t>(a, xp, s, yp, H, W, Q, radius, begin, end);
    });
  });
  return y;
}
