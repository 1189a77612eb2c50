// The single bindings file of spar_fast._C: build facts (pybind11) and every op, registered with
// its schema in the torch library "spar_fast" (called from Python as torch.ops.spar_fast.<op>).
// Schemas declare what each op mutates, so torch.compile and CUDA graphs can trace through them;
// their fake (meta) implementations are in spar_fast/ops/compiled.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "ops.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "spar_fast compiled ops (registered as torch.ops.spar_fast.*) and build facts";
  // True when the CUDA kernels were compiled in (not whether a GPU is visible).
  m.def("has_cuda", []() {
#ifdef SPAR_FAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  // True when the CPU kernels were compiled with OpenMP (otherwise they run on one thread).
  m.def("has_openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  });
}

TORCH_LIBRARY(spar_fast, m) {
  // canvas[Hc,Wc,C] += bilinear x r of feats[N,g,g,C] at origins[N,2]; count[Hc,Wc] += 1 (in place)
  m.def("upsample_stitch_(Tensor(a!) canvas, Tensor(b!) count, Tensor feats, Tensor origins, "
        "Tensor win_index, Tensor win_weight, Tensor phase_index, Tensor phase_weight, "
        "int r, int y0, int y1, int x0, int x1) -> ()");
  // bilinear resize of canvas[Hc,Wc,C] / max(count[Hc,Wc], 1) -> [h,w,C]
  m.def("stitch_finalize(Tensor canvas, Tensor count, Tensor y_index, Tensor y_weight, "
        "Tensor x_index, Tensor x_weight) -> Tensor");
  // fused segmentation head pass: [h,w,Q] logits (queries sorted by class) -> [H,W] int64 labels
  m.def("seg_head_pass(Tensor x, Tensor qcls, Tensor? qallowed, Tensor y_index, Tensor y_weight, "
        "Tensor x_index, Tensor x_weight, float scale, float bias, float prob_thd) -> Tensor");
  // LPOSS+ pixel affinity product S W S x, W_ij = exp(-||a_i - a_j||) within radius: [H*W,Q]
  m.def("lab_affinity_apply(Tensor lab, Tensor x, Tensor? scale, int radius) -> Tensor");
}

TORCH_LIBRARY_IMPL(spar_fast, CPU, m) {
  m.impl("upsample_stitch_", &upsample_stitch_cpu);
  m.impl("stitch_finalize", &stitch_finalize_cpu);
  m.impl("seg_head_pass", &seg_head_pass_cpu);
  m.impl("lab_affinity_apply", &lab_affinity_apply_cpu);
}

#ifdef SPAR_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(spar_fast, CUDA, m) {
  m.impl("upsample_stitch_", &upsample_stitch_cuda);
}
#endif
