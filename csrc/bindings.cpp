// The single Python module spar_fast._C: build facts plus every op's register_<op>.
#include "ops.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "spar_fast compiled ops (C++ CPU kernels; CUDA kernels when built with CUDA)";
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
  register_stitch(m);
#ifdef SPAR_FAST_HAS_SEG_HEAD
  register_seg_head(m);
#endif
}
