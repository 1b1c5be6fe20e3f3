"""Half precision on a CPU only where the processor runs it natively (issue 15): refused in one
line naming the processor otherwise; fp32 and GPUs are never refused."""

from __future__ import annotations

import pytest

from atlas.errors import InputError
from atlas.model.cpu import (
    check_cpu_precision,
    cpu_flags,
    cpu_name,
    cpuinfo_text,
    fastest_cpu_precision,
    native_precision,
)

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
EPYC_ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
XEON_AMX = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx512f amx_bf16 amx_tile\n"


def test_half_precision_is_refused_where_it_would_be_emulated() -> None:
    with pytest.raises(InputError, match=r"--precision bf16 on the CPU: AMD EPYC 7B13 has no AMX_BF16 or AVX512_BF16"):
        check_cpu_precision("bf16", "cpu", EPYC_AVX2)
    with pytest.raises(InputError, match="fp16"):
        check_cpu_precision("fp16", "cpu", EPYC_ZEN4)  # bf16 instructions are not fp16 ones
    for cpuinfo in (EPYC_ZEN4, XEON_AMX):
        check_cpu_precision("bf16", "cpu", cpuinfo)
    for cpuinfo in (EPYC_AVX2, "", "processor: 0\n"):  # fp32 always; a GPU is not the CPU's business; no flags
        check_cpu_precision("fp32", "cpu", cpuinfo)
        check_cpu_precision("bf16", "cuda", cpuinfo)
    check_cpu_precision("bf16", "cpu", "")


def test_flags_and_name_are_read_from_cpuinfo() -> None:
    assert cpu_flags(XEON_AMX) == {"avx512f", "amx_bf16", "amx_tile"} and cpu_name(XEON_AMX).startswith("Intel")
    assert cpu_name("") == "this processor" and cpu_flags("") == set()
    assert native_precision("bf16", {"avx512_bf16"}) and not native_precision("bf16", {"avx2"})


def test_this_machine_is_judged_by_its_own_flags() -> None:
    text = cpuinfo_text()
    flags = cpu_flags(text)
    if flags and not native_precision("bf16", flags):
        with pytest.raises(InputError, match=cpu_name(text).split()[0]):
            check_cpu_precision("bf16", "cpu")
    else:
        check_cpu_precision("bf16", "cpu")


def test_the_demo_takes_bf16_only_where_it_is_native() -> None:
    assert fastest_cpu_precision(XEON_AMX) == ("bf16", "Intel(R) Xeon(R) Platinum 8480+ has AMX_BF16")
    assert fastest_cpu_precision(EPYC_ZEN4)[0] == "bf16"
    assert fastest_cpu_precision(EPYC_AVX2) == ("fp32", "AMD EPYC 7B13 has no native bf16")
    assert fastest_cpu_precision("")[0] == "fp32"
