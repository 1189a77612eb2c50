// Declarations of every compiled op implementation; bindings.cpp registers them with their
// schemas (TORCH_LIBRARY "spar_fast"). <op>_cpu.cpp defines the CPU kernels; <op>_cuda.cu the
// CUDA ones, compiled only when SPAR_FAST_WITH_CUDA is set. Bilinear taps (index int32 [2, n],
// weight fp32 [2, n]) always come from the host (spar_fast.ops.bilinear.bilinear_taps).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

// Argument checks shared by the CPU and CUDA stitch (shapes, dtypes, one device, box in canvas).
void check_stitch_args(const at::Tensor& canvas, const at::Tensor& count, const at::Tensor& feats,
                       const at::Tensor& origins, int64_t r, int64_t y0, int64_t y1, int64_t x0, int64_t x1);

// canvas [Hc,Wc,C] fp32 += bilinear x r of feats [N,g,g,C] at origins [N,2] (int64, cells);
// count [Hc,Wc] += 1. win_* are the taps of one window (g -> g*r), phase_* those of a 2-cell
// input (2 -> 2r; the CPU phase-class algorithm reads its unclamped interior). Only cells in rows
// [y0,y1) x cols [x0,x1) (the windows' bounding box) are visited.
void upsample_stitch_cpu(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                         const at::Tensor& origins, const at::Tensor& win_index, const at::Tensor& win_weight,
                         const at::Tensor& phase_index, const at::Tensor& phase_weight, int64_t r, int64_t y0,
                         int64_t y1, int64_t x0, int64_t x1);

// out [h,w,C] = bilinear resize of canvas [Hc,Wc,C] / max(count [Hc,Wc], 1) with row taps
// (Hc -> h) and column taps (Wc -> w).
at::Tensor stitch_finalize_cpu(const at::Tensor& canvas, const at::Tensor& count, const at::Tensor& y_index,
                               const at::Tensor& y_weight, const at::Tensor& x_index, const at::Tensor& x_weight);

// [h,w,Q] logits (queries sorted by class qcls [Q]) -> [H,W] int64 labels (seg_head_cpu.cpp).
at::Tensor seg_head_pass_cpu(const at::Tensor& x, const at::Tensor& qcls, const std::optional<at::Tensor>& qallowed,
                             const at::Tensor& yidx, const at::Tensor& ywt, const at::Tensor& xidx,
                             const at::Tensor& xwt, double scale, double bias, double prob_thd);

// y [H*W,Q] = S W S x, W_ij = exp(-||lab_i - lab_j||) over the (2r+1)^2 - 1 neighbours of each
// pixel of lab [H,W,3] (already divided by tau), S = diag(scale) or I (lab_affinity_cpu.cpp).
at::Tensor lab_affinity_apply_cpu(const at::Tensor& lab, const at::Tensor& x,
                                  const std::optional<at::Tensor>& scale, int64_t radius);

#ifdef SPAR_FAST_WITH_CUDA
// CUDA gather stitch (stitch_cuda.cu): same contract as upsample_stitch_cpu; uses the window
// taps only (on the canvas's device).
void upsample_stitch_cuda(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                          const at::Tensor& origins, const at::Tensor& win_index, const at::Tensor& win_weight,
                          const at::Tensor& phase_index, const at::Tensor& phase_weight, int64_t r, int64_t y0,
                          int64_t y1, int64_t x0, int64_t x1);
#endif
