"""The benchmark scripts' own helpers (benchmarks/ is not a package: loaded by path, no TensorFlow)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# The first processor of /proc/cpuinfo as this machine's 2-vCPU microVMs show it (Linux's
# arch/x86/kernel/cpu/proc.c format: "key\t: value" lines, processors separated by a blank line);
# flags shortened. Two hosts the CPU-recipe step was timed on: a Zen 3 without AVX-512 and a Zen 4 with it.
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: something else
flags\t\t: avx512f
"""
ZEN4 = """processor\t: 0
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCHMARKS / "bench_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_info_reads_the_first_processor(bench):
    info = bench.cpu_info(ZEN3)
    assert info == {"model_name": "AMD EPYC", "family": "25", "model": "1", "flags": ["avx2", "fma"]}
    assert bench.describe_cpu(info) == "AMD EPYC (family 25, model 1; avx2 fma)"


def test_cpu_info_names_avx512_and_bf16(bench):
    info = bench.cpu_info(ZEN4)
    assert info["model"] == "17" and info["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert bench.describe_cpu(info) == "AMD EPYC (family 25, model 17; avx2 fma avx512f avx512_vnni avx512_bf16)"


def test_an_unknown_cpu_is_said_so(bench):
    assert bench.describe_cpu({}) == "unknown CPU"
    assert bench.cpu_info("processor\t: 0\n")["flags"] == []
