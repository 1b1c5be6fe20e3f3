"""What the processor can do natively, for the precision of work on a CPU.

PyTorch runs bf16 (and fp16) matrix products on any x86 CPU, but only processors with native
instructions for them (AMX, AVX512-BF16 / AVX512-FP16) are faster than fp32: elsewhere each value
is converted in software. Measured on an AMD EPYC without them (issue 15): `atlas index
--precision bf16` had indexed 0 of 162 prompts after 21 minutes, where fp32 takes a few seconds
a prompt; on an Intel Xeon with AMX bf16 was 2.6x faster than fp32. So a half precision on a CPU
without the instructions is refused, naming the processor, before any model loads.
"""

from __future__ import annotations

from pathlib import Path

from atlas.errors import InputError

CPUINFO = Path("/proc/cpuinfo")
NATIVE_FLAGS = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")}


def cpuinfo_text() -> str:
    """/proc/cpuinfo ('' where there is none: not Linux)."""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first processor listed."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "this processor"


def native_precision(precision: str, flags: set[str]) -> bool:
    """Whether `precision` runs natively: fp32 always; bf16/fp16 with their instructions."""
    return precision not in NATIVE_FLAGS or any(f in flags for f in NATIVE_FLAGS[precision])


def check_cpu_precision(precision: str, device: str, cpuinfo: str | None = None) -> None:
    """Refuse bf16/fp16 on a CPU that would emulate them (see the module docstring)."""
    if not device.startswith("cpu") or precision not in NATIVE_FLAGS:
        return
    text, flags = _read(cpuinfo)
    if not flags:  # not Linux, or no flags line: nothing to judge by
        return
    if not native_precision(precision, flags):
        need = " or ".join(f.upper() for f in NATIVE_FLAGS[precision])
        raise InputError(
            f"--precision {precision} on the CPU: {cpu_name(text)} has no {need}, so {precision} is emulated and "
            "far slower than fp32; use --precision fp32 (the default), or a GPU"
        )


def fastest_cpu_precision(cpuinfo: str | None = None) -> tuple[str, str]:
    """bf16 where this processor runs it natively, else fp32; with the reason, for people."""
    text, flags = _read(cpuinfo)
    if flags and native_precision("bf16", flags):
        found = next(f for f in NATIVE_FLAGS["bf16"] if f in flags)
        return "bf16", f"{cpu_name(text)} has {found.upper()}"
    return "fp32", f"{cpu_name(text)} has no native bf16"


def _read(cpuinfo: str | None) -> tuple[str, set[str]]:
    """The cpuinfo text (this machine's when None) and its flags."""
    text = cpuinfo_text() if cpuinfo is None else cpuinfo
    return text, cpu_flags(text)
