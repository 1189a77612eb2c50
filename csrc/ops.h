// One registration function per op; bindings.cpp (the single PYBIND11_MODULE) calls each.
// An op's CPU file defines register_<op>; its CUDA entry points are declared here and
// defined in <op>_cuda.cu, compiled only when SPAR_FAST_WITH_CUDA is set.
#pragma once
#include <torch/extension.h>

void register_stitch(pybind11::module& m);
void register_seg_head(pybind11::module& m);
