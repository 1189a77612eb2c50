// Fused bilinear upsample + stitch (SPEC §2 steps 3-4), CUDA, gather formulation.
//
// One thread per (canvas cell, channel) inside the windows' bounding box: it loops over all
// windows in order, adds the bilinear (align_corners=False, x r) value of each window covering
// its cell into a register, then writes canvas once; channel 0 also adds the cover count.
// No atomics: every output element has exactly one writer, so the result is deterministic.
// Minimal headers (not ops.h / torch/extension.h): faster nvcc, and no cuBLAS/cuSPARSE headers,
// which a minimal CUDA toolkit lacks. The declaration is in ops.h; the linker checks the match.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

// ATen's source index for bilinear, align_corners=False, scale = 1/r: clamped below at 0.
__device__ __forceinline__ void taps(int64_t o, float scale, int64_t g, int64_t& i0, int64_t& i1,
                                     float& w1) {
  const float src = fmaxf(scale * (static_cast<float>(o) + 0.5f) - 0.5f, 0.0f);
  i0 = min(static_cast<int64_t>(src), g - 1);
  i1 = i0 + (i0 < g - 1 ? 1 : 0);
  w1 = src - static_cast<float>(i0);
}

template <typename T>
__global__ void upsample_stitch_kernel(float* __restrict__ canvas, float* __restrict__ count,
                                       const T* __restrict__ feats, const int64_t* __restrict__ origins,
                                       int64_t N, int64_t g, int64_t C, int64_t r, float scale,
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
    int64_t ya, yb, xa, xb;
    float wy, wx;
    taps(oy, scale, g, ya, yb, wy);
    taps(ox, scale, g, xa, xb, wx);
    const T* f = feats + n * g * g * C + c;
    const float top = (1.0f - wx) * static_cast<float>(f[(ya * g + xa) * C]) +
                      wx * static_cast<float>(f[(ya * g + xb) * C]);
    const float bot = (1.0f - wx) * static_cast<float>(f[(yb * g + xa) * C]) +
                      wx * static_cast<float>(f[(yb * g + xb) * C]);
    acc += (1.0f - wy) * top + wy * bot;
    cover += 1.0f;
  }
  canvas[(y * Wc + x) * C + c] += acc;
  if (c == 0) count[y * Wc + x] += cover;
}

}  // namespace

void upsample_stitch_cuda(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                          const at::Tensor& origins, int64_t r, int64_t y0, int64_t y1, int64_t x0,
                          int64_t x1) {
  const c10::cuda::CUDAGuard guard(canvas.device());
  const int64_t bw = x1 - x0, C = canvas.size(2);
  const int64_t total = (y1 - y0) * bw * C;
  if (total == 0 || feats.size(0) == 0) return;
  constexpr int kThreads = 256;  // a multiple of the warp size; enough warps to hide latency
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const float scale = static_cast<float>(1.0 / static_cast<double>(r));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "upsample_stitch_cuda", [&] {
    upsample_stitch_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        canvas.data_ptr<float>(), count.data_ptr<float>(), feats.data_ptr<scalar_t>(),
        origins.data_ptr<int64_t>(), feats.size(0), feats.size(1), C, r, scale, canvas.size(1), y0, x0,
        bw, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
