// One registration function per op; bindings.cpp (the single PYBIND11_MODULE) calls each.
// An op's CPU file defines register_<op>; its CUDA entry points are declared here and
// defined in <op>_cuda.cu, compiled only when SPAR_FAST_WITH_CUDA is set.
#pragma once
#include <torch/extension.h>

void register_stitch(pybind11::module& m);
void register_seg_head(pybind11::module& m);

#ifdef SPAR_FAST_WITH_CUDA
// canvas [Hc,Wc,C] fp32 += bilinear x r of feats [N,g,g,C] at origins [N,2] (int64, cells);
// count [Hc,Wc] += 1. Only cells in rows [y0,y1) x cols [x0,x1) (the windows' bounding box)
// are visited. All tensors contiguous on one CUDA device.
void upsample_stitch_cuda(at::Tensor& canvas, at::Tensor& count, const at::Tensor& feats,
                          const at::Tensor& origins, int64_t r, int64_t y0, int64_t y1,
                          int64_t x0, int64_t x1);
#endif
