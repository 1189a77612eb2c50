"""Build of spar_fast and its compiled extension ``spar_fast._C`` (CMake + Ninja + pybind11).

Install (torch must already be importable):   pip install -e . --no-build-isolation
Environment switches:
  SPAR_FAST_CUDA=auto|0|1  CUDA kernels. auto (default): when nvcc and a CUDA build of torch are
                           found; 0: C++ CPU kernels only; 1: ask for them (a warning if impossible).
  TORCH_CUDA_ARCH_LIST     CUDA archs to compile, e.g. "9.0" (default) or "8.0;9.0"; "+PTX" allowed.
  CUDA_HOME / CUDA_PATH    CUDA toolkit root (default: /usr/local/cuda, then the nvcc on PATH).
  MAX_JOBS                 parallel compile jobs (default: from CPU cores and free memory).
A failed C++/CUDA build never fails the install: it prints a warning, and spar_fast then runs
its torch reference ops (spar_fast._backend falls back when ``spar_fast._C`` is missing).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "9.0"  # H100/H200; each extra arch adds a full nvcc pass per .cu file
GB_PER_JOB = 2.0  # peak memory of one nvcc / torch-header C++ compile


def _jobs() -> int:
    if os.environ.get("MAX_JOBS"):
        return max(1, int(os.environ["MAX_JOBS"]))
    cores = os.cpu_count() or 1
    try:
        free_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        free_gb = GB_PER_JOB * cores
    return max(1, min(cores, int(free_gb // GB_PER_JOB)))


def _cuda_home() -> Path | None:
    """The CUDA toolkit root (bin/nvcc and include/cuda_runtime.h), or None.

    CUDA_HOME / CUDA_PATH when set; else /usr/local/cuda; else two levels above the nvcc on PATH
    (a wrapper script there is not a toolkit root, hence the header check)."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            return _toolkit(Path(os.environ[env]))
    nvcc = shutil.which("nvcc")
    candidates = [Path("/usr/local/cuda")] + ([Path(nvcc).resolve().parent.parent] if nvcc else [])
    return next((root for root in candidates if _toolkit(root)), None)


def _toolkit(root: Path) -> Path | None:
    ok = (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists()
    return root if ok else None


def _cuda_plan(torch) -> tuple[bool, str]:
    """(build CUDA kernels?, reason) from SPAR_FAST_CUDA, the toolkit and the torch build."""
    mode = os.environ.get("SPAR_FAST_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"SPAR_FAST_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "SPAR_FAST_CUDA=0"
    missing = None
    if torch.version.cuda is None:
        missing = "torch is a CPU-only build"
    elif _cuda_home() is None:
        missing = "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    if missing and mode == "1":
        print(f"WARNING: SPAR_FAST_CUDA=1 but {missing}; building the CPU kernels only", file=sys.stderr)
    return missing is None, missing or f"CUDA toolkit at {_cuda_home()}"


class CMakeBuild(build_ext):
    """Configures and builds ``csrc/`` with CMake + Ninja; never fails the install."""

    def build_extension(self, ext: Extension) -> None:
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        try:
            self._cmake(out.parent)
        except Exception as exc:  # the install must survive any build problem
            print(f"\nWARNING: building spar_fast._C failed ({exc.__class__.__name__}: {exc}).\n"
                  "spar_fast will use its torch reference ops (slower). Log above; rebuild with\n"
                  "  pip install -e . --no-build-isolation\n", file=sys.stderr)

    def _cmake(self, out_dir: Path) -> None:
        import torch
        import torch.utils.cpp_extension as cpp
        import pybind11

        with_cuda, reason = _cuda_plan(torch)
        print(f"spar_fast._C: CUDA kernels {'ON' if with_cuda else 'OFF'} ({reason}); {_jobs()} jobs")
        build_dir = Path(self.build_temp).resolve() / ("cmake-cuda" if with_cuda else "cmake-cpu")
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja') or 'ninja'}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DSPAR_FAST_OUTPUT_DIR={out_dir}",
            f"-DSPAR_FAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DSPAR_TORCH_INCLUDE_DIRS={';'.join(cpp.include_paths())}",
            f"-DSPAR_TORCH_LIBRARY_DIRS={';'.join(cpp.library_paths())}",
            f"-DSPAR_TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        ]
        if with_cuda:
            home = _cuda_home()
            archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
            args += [f"-DCUDA_TOOLKIT_ROOT_DIR={home}", f"-DCUDAToolkit_ROOT={home}",
                     f"-DCMAKE_CUDA_COMPILER={home / 'bin' / 'nvcc'}",
                     f"-DTORCH_CUDA_ARCH_LIST={archs}"]
        cmake = shutil.which("cmake") or "cmake"
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "-j", str(_jobs())], check=True)

    def copy_extensions_to_source(self) -> None:
        """Editable installs copy the built module next to the sources; skip a failed build."""
        built = [ext for ext in self.extensions
                 if os.path.exists(self._get_inplace_equivalent(self.get_finalized_command("build_py"), ext)[1])]
        self.extensions, all_exts = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = all_exts

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]


setup(
    packages=find_packages(include=["spar_fast", "spar_fast.*"]) + ["spar_fast.kernels"],
    package_dir={"spar_fast": "spar_fast", "spar_fast.kernels": "kernels"},
    package_data={"spar_fast.backbones": ["configs/*.json"], "spar_fast.jobs.serve": ["page.html"]},
    ext_modules=[Extension("spar_fast._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
