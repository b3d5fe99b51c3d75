"""What this processor can do, for choosing kernels and for labelling every benchmark number.

Kernels are chosen by measurement (rayfp.search.kernels); this only *describes* the machine, so a
number can be read next to the CPU that produced it.
"""

from __future__ import annotations

import os
import platform

from rayfp import defaults

# SIMD features that decide which GEMM kernels are fast (int8 needs VNNI to beat float32).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd",
              "asimddp", "sve")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The decisive SIMD features the kernel advertises (/proc/cpuinfo), in SIMD_FLAGS order."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def describe() -> dict:
    """Model, cores, SIMD flags, torch's CPU capability and the BLAS libraries numpy uses."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "simd": simd_flags(),
            "machine": platform.machine()}
    try:
        import torch

        info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted({f"{p.get('internal_api')} {p.get('version')} "
                               f"({p.get('architecture') or '?'})"
                               for p in threadpool_info() if p.get("user_api") == "blas"})
    except ImportError:
        pass
    return info


def one_line() -> str:
    """describe() as a line for BENCHMARKS.md and logs."""
    info = describe()
    parts = [f"{info['cpu']}, {info['cores']} cores", "SIMD " + (" ".join(info["simd"]) or "?")]
    if "torch_capability" in info:
        parts.append(f"torch CPU capability {info['torch_capability']}")
    if info.get("blas"):
        parts.append("BLAS " + ", ".join(info["blas"]))
    return "; ".join(parts)


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as handle:
            return any("libgomp" in line for line in handle)
    except OSError:  # not Linux: no way to tell; libgomp is Linux's
        return False


def openmp_spin(spin: int = defaults.OMP_SPINCOUNT) -> str:
    """Let OpenMP's idle workers spin ``spin`` pauses before they sleep (GOMP_SPINCOUNT), for a
    process that ranks: unless the environment says otherwise, and only while libgomp has not
    loaded (it reads the setting once). What is in effect, in words (GET /v1/health)."""
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        if name in os.environ:
            return f"{name}={os.environ[name]} (the environment's)"
    if _libgomp_loaded():
        return "libgomp's default (loaded before it could be set)"
    os.environ["GOMP_SPINCOUNT"] = str(spin)
    return f"GOMP_SPINCOUNT={spin}"
