// Fused bilinear upsample + stitch (SPEC §2 steps 3-4), CUDA, gather formulation.
//
// One thread per (canvas cell, channel) inside the windows' bounding box: it loops over all
// windows in order, adds the bilinear (align_corners=False, x r) value of each window covering
// its cell into a register, then writes canvas once; channel 0 also adds the cover count.
// No atomics: every output element has exactly one writer, so the result is deterministic.
// Bilinear taps come from the host (spar_fast.ops.bilinear.bilinear_taps: int32 [2, G] indices,
// fp32 [2, G] weights); the kernel derives none. Minimal headers (not torch/extension.h): faster
// nvcc, and no cuBLAS/cuSPARSE headers, which a minimal CUDA toolkit lacks.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops.h"

namespace {

template <typename T>
__global__ void upsample_stitch_kernel(float* __restrict__ canvas, float* __restrict__ count,
                                       const T* __restrict__ feats, const int64_t* __restrict__ origins,
                                       const int32_t* __restrict__ tap_index, const float* __restrict__ tap_weight,
                                       int64_t N, int64_t g, int64_t C, int64_t r,
                                       int64_t Wc, int64_t y0, int64_t x0, int64_t bw, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t c = idx % C;
  const int64_t cell = idx / C;  // index inside the bounding box
  const int64_t y = y0 + cell / bw, x = x0 + cell % bw;
  const int64_t G = g * r;
  float acc = 0.0f, cover = 0.0f;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t oy = y - origins[2 * n], ox = x - origins[2 * n + 1];
    if (oy < 0 || oy >= G || ox < 0 || ox >= G) continue;
    // taps [2, G]: row 0 = (i0 | w0), row 1 = (i1 | w1)
    const int64_t ya = tap_index[oy], yb = tap_index[G + oy];
    const int64_t xa = tap_index[ox], xb = tap_index[G + ox];
    const float wy0 = tap_weight[oy], wy1 = tap_weight[G + oy];
    const float wx0 = tap_weight[ox], wx1 = tap_weight[G + ox];
    const T* f = feats + n * g * g * C + c;
    const float top = wx0 * static_cast<float>(f[(ya * g + xa) * C]) + wx1 * static_cast<float>(f[(ya * g + xb) * C]);
    const float bot = wx0 * static_cast<float>(f[(yb * g + xa) * C]) + wx1 * static_cast<float>(f[(yb * g + xb) * C]);
    acc += wy0 * top + wy1 * bot;
    cover += 1.0f;
  }
  canvas[(y * Wc + x) * C + c] += acc;
  if (c == 0) count[y * Wc + x] += cover;
}

}  // namespace

void upsample_stitch_cuda(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                          const at::Tensor& origins, const at::Tensor& win_index, const at::Tensor& win_weight,
                          const at::Tensor& /*phase_index*/, const at::Tensor& /*phase_weight*/, int64_t r,
                          int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  check_stitch_args(canvas, count, feats, origins, r, y0, y1, x0, x1);
  const int64_t G = feats.size(1) * r;
  TORCH_CHECK(win_index.device() == canvas.device() && win_index.scalar_type() == at::kInt &&
                  win_index.is_contiguous() && win_index.dim() == 2 && win_index.size(0) == 2 &&
                  win_index.size(1) == G && win_weight.device() == canvas.device() &&
                  win_weight.scalar_type() == at::kFloat && win_weight.is_contiguous() &&
                  win_weight.sizes() == win_index.sizes(),
              "upsample_stitch_ window taps must be contiguous int32 / fp32 [2, g*r] on the canvas's device");
  const c10::cuda::CUDAGuard guard(canvas.device());
  const int64_t bw = x1 - x0, C = canvas.size(2);
  const int64_t total = (y1 - y0) * bw * C;
  if (total == 0 || feats.size(0) == 0) return;
  constexpr int kThreads = 256;  // a multiple of the warp size; enough warps to hide latency
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "upsample_stitch_cuda", [&] {
    upsample_stitch_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        canvas.data_ptr<float>(), count.data_ptr<float>(), feats.data_ptr<scalar_t>(),
        origins.data_ptr<int64_t>(), win_index.data_ptr<int32_t>(), win_weight.data_ptr<float>(),
        feats.size(0), feats.size(1), C, r, canvas.size(1), y0, x0, bw, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
