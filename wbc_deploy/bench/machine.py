"""The machine a benchmark ran on: CPU, ISA, GPU, library versions, load, and the CPU's FP32 peak.

Results from different machines are only comparable with this record beside them. Nothing here imports
torch, onnxruntime or tensorrt: versions come from package metadata, the GPU from ``nvidia-smi``.

Theoretical FP32 peak (:func:`cpu_fp32_peak`)::

    peak GFLOP/s = physical cores x clock (GHz) x FLOPs per cycle per core
    FLOPs per cycle = FMA units x SIMD lanes (FP32) x 2   (a fused multiply-add counts as 2 FLOPs)

with the widest vector ISA the CPU reports: AVX-512 -> 16 lanes, AVX2/FMA -> 8 lanes, AVX (no FMA) ->
8 lanes x (1 mul + 1 add pipe), SSE -> 4 lanes. Assumptions, stated in the output: two FMA units per
core (Intel server cores since Skylake-SP and AMD Zen 2+ have two); AMD Zen 4 (family 0x19) runs
AVX-512 on 256-bit datapaths, so it counts 8 lanes; the clock is the highest the OS reports (cpufreq
max, else ``/proc/cpuinfo`` MHz, which in a VM is the nominal/TSC clock): real AVX clocks under all-core
load can be lower (Intel AVX-512 licence) or higher (turbo), so the peak is an estimate, not a ceiling
a benchmark can never pass. In a VM the OS shows the nominal clock: a result above 100% of that peak
means the cores run faster, and the benchmark notes the lowest clock that explains it
(achieved GFLOP/s / (cores x FLOPs per cycle)). ``--cpu-ghz`` sets the clock when it is known.
"""
from __future__ import annotations

import functools

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: ISA flags (from /proc/cpuinfo) that decide inference speed on a CPU.
SPEED_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
#: Packages whose versions a benchmark records.
VERSION_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "torchvision", "tensorrt", "pycuda")


@dataclass(frozen=True)
class PeakEstimate:
    """A CPU's theoretical FP32 throughput and how it was derived."""

    gflops: float
    cores: int
    ghz: float
    flops_per_cycle: int
    isa: str
    formula: str
    assumptions: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def cpu_flags() -> list[str]:
    """The speed-relevant ISA flags this CPU reports, in :data:`SPEED_FLAGS` order."""
    flags = set(_cpuinfo().get("flags", "").split())
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        return ["neon"]
    return [f for f in SPEED_FLAGS if f in flags]


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity / container cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads not counted)."""
    import psutil

    phys = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    logical = psutil.cpu_count() or phys
    threads_per_core = max(1, logical // phys)
    return max(1, min(phys, usable_cpus() // threads_per_core))


def cpu_ghz() -> tuple[float, str]:
    """Highest clock the OS reports, in GHz, and where the figure came from."""
    sysfs = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(sysfs.read_text().strip()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    if mhz:
        try:
            return float(mhz) / 1000.0, "/proc/cpuinfo MHz (nominal clock in a VM)"
        except ValueError:
            pass
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq and (freq.max or freq.current):
            return float(freq.max or freq.current) / 1000.0, "psutil cpu_freq"
    except Exception:  # noqa: BLE001 - not available on every platform
        pass
    return 0.0, "unknown"


def fp32_flops_per_cycle(flags: list[str], vendor: str = "", family: int | None = None) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core for the widest vector ISA in ``flags``, and that ISA's name.

    Two FMA units per core are assumed for AVX2 and AVX-512. AMD family 0x19 (Zen 3/Zen 4) executes
    AVX-512 on 256-bit units, so it counts as 8 lanes.
    """
    fs = set(flags)
    if "avx512f" in fs:
        if "AMD" in vendor and family is not None and family <= 0x19:
            return 2 * 8 * 2, "avx512 (256-bit datapath, AMD Zen 4)"
        return 2 * 16 * 2, "avx512"
    if "avx2" in fs and "fma" in fs:
        return 2 * 8 * 2, "avx2+fma"
    if "avx" in fs:
        return 8 * 2, "avx"
    if "neon" in fs:
        return 2 * 4 * 2, "neon"
    return 4 * 2, "sse"


def cpu_fp32_peak(cores: int | None = None, ghz: float | None = None) -> PeakEstimate:
    """The CPU's theoretical FP32 peak (see the module docstring for the formula and assumptions).

    ``ghz`` overrides the clock the OS reports (e.g. the CPU's known all-core boost clock).
    """
    info = _cpuinfo()
    n = int(cores or physical_cores())
    if ghz:
        clock_source = "given (--cpu-ghz)"
        ghz = float(ghz)
    else:
        ghz, clock_source = cpu_ghz()
    try:
        family = int(info.get("cpu family", ""))
    except ValueError:
        family = None
    fpc, isa = fp32_flops_per_cycle(cpu_flags(), info.get("vendor_id", ""), family)
    return PeakEstimate(
        gflops=round(n * ghz * fpc, 1),
        cores=n,
        ghz=round(ghz, 3),
        flops_per_cycle=fpc,
        isa=isa,
        formula=f"{n} physical cores x {ghz:.3f} GHz x {fpc} FP32 FLOPs/cycle",
        assumptions=(
            f"FLOPs/cycle = FMA units x FP32 lanes x 2 for {isa}, 2 FMA units per core; clock from {clock_source}, "
            "all-core AVX clocks may differ; a multiply-add counts 2 FLOPs (as gflops_per_cell does)"
        ),
    )


def gpu_names() -> list[str]:
    """NVIDIA GPU names with driver and memory, from ``nvidia-smi`` (empty when there is none)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(p.strip() for p in line.split(",")) for line in out.splitlines() if line.strip()]


def package_versions(names: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when absent), read from metadata without importing the packages."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    return re.sub(r"\s+", " ", name).strip()


def machine_info(ghz: float | None = None) -> dict[str, Any]:
    """Everything that makes a throughput figure comparable across machines (JSON-ready).

    ``ghz`` overrides the OS-reported clock in the FP32 peak estimate.
    """
    import psutil

    from .. import __version__

    info = _cpuinfo()
    peak = cpu_fp32_peak(ghz=ghz)
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "physical_cores": physical_cores(),
        "logical_cpus": usable_cpus(),
        "logical_cpus_host": psutil.cpu_count(),
        "cpu_ghz": peak.ghz,
        "isa_flags": cpu_flags(),
        "hypervisor": "hypervisor" in info.get("flags", "").split(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {"wbc_deploy": __version__, **package_versions()},
        "cpu_fp32_peak": peak.to_dict(),
        "load_avg_1m_start": load_average(),
    }
