// Fused segmentation head (SPEC §5 steps 2-3), CPU: [h, w, Q] logits -> [H, W] int64 labels.
//
// seg_head_pass: per output pixel the bilinear value of every query (align_corners=False, taps
// from the host: spar_fast.ops.bilinear.bilinear_taps), z = up * scale + bias, the first maximal query
// among the allowed ones (queries arrive sorted by class, so exact ties go to the lowest class),
// and, when prob_thd > 0, its softmax probability exp(z_best - m) / sum_q exp(z_q - m) compared
// with prob_thd. Parallel over output rows; each thread keeps the two source rows it needs,
// already interpolated along x in fp32 ([W, Q] each, ATen's x-then-y order), and refills one only
// when its rows move to a new source row (every r-th output row when upsampling by r).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "fast_exp.h"
#include "ops.h"

namespace {

struct Params {
  int64_t h, w, Q, H, W;
  const int32_t* yidx;  // [2, H]: i0, i1
  const float* ywt;     // [2, H]: w0, w1
  const int32_t* xidx;  // [2, W]
  const float* xwt;     // [2, W]
  const int64_t* qcls;  // [Q], sorted
  const bool* allowed;  // [Q] or nullptr
  float scale, bias, prob_thd;
};

// Source row iy of x [h, w, Q] interpolated along x to dst [W, Q] fp32.
template <typename T>
void x_interp_row(const T* x, const Params& p, int64_t iy, float* dst) {
  const T* row = x + iy * p.w * p.Q;
  for (int64_t ox = 0; ox < p.W; ++ox) {
    const T* a = row + static_cast<int64_t>(p.xidx[ox]) * p.Q;
    const T* b = row + static_cast<int64_t>(p.xidx[p.W + ox]) * p.Q;
    const float wa = p.xwt[ox], wb = p.xwt[p.W + ox];
    float* d = dst + ox * p.Q;
    for (int64_t q = 0; q < p.Q; ++q) d[q] = wa * static_cast<float>(a[q]) + wb * static_cast<float>(b[q]);
  }
}

constexpr int kLanes = 8;  // independent max accumulators: one AVX register, two SSE registers

// z [Q] = (wa * ra + wb * rb) * scale + bias (ATen's y blend of the x-interpolated rows, then
// the logit scale), returning max(z). Locals and lanes let the compiler vectorize this loop.
float scaled_logits(const float* __restrict ra, const float* __restrict rb, float wa, float wb,
                    float scale, float bias, int64_t Q, float* __restrict z) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = neg_inf;
  int64_t q = 0;
  for (; q + kLanes <= Q; q += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = (wa * ra[q + j] + wb * rb[q + j]) * scale + bias;
      z[q + j] = v;
      lane[j] = lane[j] > v ? lane[j] : v;
    }
  }
  float m = neg_inf;
  for (; q < Q; ++q) {
    const float v = (wa * ra[q] + wb * rb[q]) * scale + bias;
    z[q] = v;
    m = m > v ? m : v;
  }
  for (int j = 0; j < kLanes; ++j) m = m > lane[j] ? m : lane[j];
  return m;
}

// The softmax's exponentials (fast_exp.h); the clamp at -87 changes nothing against the term
// exp(0) = 1 that every softmax sum here contains.
inline float exp_nonpositive(float x) { return spar_fast::exp_nonpositive_clamped(x); }

// sum_q exp(z[q] - m) for z <= m, in kLanes independent partial sums (vectorizable).
float sum_exp(const float* __restrict z, float m, int64_t Q) {
  float lane[kLanes] = {};
  int64_t q = 0;
  for (; q + kLanes <= Q; q += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += exp_nonpositive(z[q + j] - m);
  float s = 0.0f;
  for (; q < Q; ++q) s += exp_nonpositive(z[q] - m);
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
}

// Label of one pixel from its scaled logits z [Q] and their max m.
int64_t pixel_label(const float* z, float m, const Params& p) {
  const int64_t Q = p.Q;
  int64_t best_q = -1;
  float best = m;
  if (p.allowed == nullptr) {
    best_q = 0;
    while (z[best_q] != m) ++best_q;  // the first maximal query
  } else {
    best = -std::numeric_limits<float>::infinity();
    for (int64_t q = 0; q < Q; ++q) {
      if (p.allowed[q] && z[q] > best) {
        best = z[q];
        best_q = q;
      }
    }
    if (best_q < 0) return 0;  // no allowed query: every class probability is 0 -> class 0
  }
  if (p.prob_thd > 0.0f) {
    if (std::exp(best - m) / sum_exp(z, m, Q) < p.prob_thd) return 0;
  }
  return p.qcls[best_q];
}

template <typename T>
void seg_head_rows(const T* x, const Params& p, int64_t* out, int64_t begin, int64_t end) {
  std::vector<float> buf[2] = {std::vector<float>(p.W * p.Q), std::vector<float>(p.W * p.Q)};
  int64_t key[2] = {-1, -1};
  // x-interpolated source row r, never evicting the row `keep` still needed for this output row
  auto row = [&](int64_t r, int64_t keep) -> const float* {
    for (int s = 0; s < 2; ++s)
      if (key[s] == r) return buf[s].data();
    const int s = key[0] == keep ? 1 : 0;
    x_interp_row(x, p, r, buf[s].data());
    key[s] = r;
    return buf[s].data();
  };
  std::vector<float> z(p.Q);
  for (int64_t oy = begin; oy < end; ++oy) {
    const int64_t y0 = p.yidx[oy], y1 = p.yidx[p.H + oy];
    const float* a = row(y0, y1);
    const float* b = row(y1, y0);
    const float wa = p.ywt[oy], wb = p.ywt[p.H + oy];
    int64_t* orow = out + oy * p.W;
    for (int64_t ox = 0; ox < p.W; ++ox) {
      const float m = scaled_logits(a + ox * p.Q, b + ox * p.Q, wa, wb, p.scale, p.bias, p.Q, z.data());
      orow[ox] = pixel_label(z.data(), m, p);
    }
  }
}

}  // namespace

at::Tensor seg_head_pass_cpu(const at::Tensor& x, const at::Tensor& qcls, const std::optional<at::Tensor>& qallowed,
                         const at::Tensor& yidx, const at::Tensor& ywt, const at::Tensor& xidx,
                         const at::Tensor& xwt, double scale, double bias, double prob_thd) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "seg_head_pass: x must be a contiguous CPU [h, w, Q] tensor");
  const int64_t Q = x.size(2);
  TORCH_CHECK(qcls.scalar_type() == at::kLong && qcls.is_contiguous() && qcls.numel() == Q, "seg_head_pass: qcls must be int64 [Q]");
  TORCH_CHECK(yidx.scalar_type() == at::kInt && xidx.scalar_type() == at::kInt && yidx.is_contiguous() &&
                  xidx.is_contiguous() && yidx.dim() == 2 && xidx.dim() == 2 && yidx.size(0) == 2 && xidx.size(0) == 2,
              "seg_head_pass: yidx, xidx must be contiguous int32 [2, H], [2, W]");
  TORCH_CHECK(ywt.scalar_type() == at::kFloat && xwt.scalar_type() == at::kFloat && ywt.sizes() == yidx.sizes() &&
                  xwt.sizes() == xidx.sizes() && ywt.is_contiguous() && xwt.is_contiguous(),
              "seg_head_pass: ywt, xwt must be contiguous fp32 like yidx, xidx");
  Params p{x.size(0), x.size(1), Q, yidx.size(1), xidx.size(1),
           yidx.data_ptr<int32_t>(), ywt.data_ptr<float>(), xidx.data_ptr<int32_t>(), xwt.data_ptr<float>(),
           qcls.data_ptr<int64_t>(), nullptr,
           static_cast<float>(scale), static_cast<float>(bias), static_cast<float>(prob_thd)};
  if (qallowed.has_value()) {
    TORCH_CHECK(qallowed->scalar_type() == at::kBool && qallowed->is_contiguous() && qallowed->numel() == Q,
                "seg_head_pass: qallowed must be bool [Q]");
    p.allowed = qallowed->data_ptr<bool>();
  }
  at::Tensor out = at::empty({p.H, p.W}, x.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "seg_head_pass", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    // contiguous row ranges per thread keep the two-row cache warm; grain 1 row (W * Q work each)
    at::parallel_for(0, p.H, 1, [&](int64_t begin, int64_t end) { seg_head_rows(xp, p, o, begin, end); });
  });
  return out;
}

