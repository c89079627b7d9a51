"""rtseg's TensorRT code against the real TensorRT Python bindings of several releases, no GPU needed.

For each release in :data:`VERSIONS` (the oldest and newest TensorRT 10 and 11 on PyPI on 2026-11-29,
``pip index versions tensorrt-cu12-bindings``, plus 10.8/10.9 around the one version guard rtseg
has), the test downloads the small ``tensorrt-cu12-bindings`` wheel (≈1.3 MB; the TensorRT libraries
themselves do not install from PyPI), builds stub ``libnvinfer.so.N``, ``libnvonnxparser.so.N`` and
``libnvinfer_plugin.so.N`` with gcc from the C symbols the bindings module links against
(``nm -D --undefined-only``, less what the system libraries define; soname with the major version
from ``readelf -d``), and runs ``tests/runtime/trt_probe.py`` in a subprocess that imports the real
bindings. Wheels and stubs are cached in ``~/.cache/rtseg/trt-bindings`` (``$RTSEG_CACHE``).

The probe checks every ``trt.*`` name rtseg uses (with the declared version guards) and replays
every TensorRT call rtseg makes, with its own argument forms, on the real classes. The recorded
enums and call signatures are compared with ``tests/assets/trt_api.json``, which the fake TensorRT
of ``tests/runtime/test_tensorrt.py`` is built from (regenerate: ``RTSEG_WRITE_TRT_API=1``).

Skips only when the package registry cannot be reached and the wheels are not cached.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).parent / "trt_probe.py"
API_FILE = Path(__file__).resolve().parents[1] / "assets" / "trt_api.json"
VERSIONS = ["10.0.1", "10.8.0.43", "10.9.0.34", "10.16.1.11", "11.0.0.114", "11.4.0.106"]
OLDEST_NEWEST = ["10.0.1", "10.16.1.11", "11.0.0.114", "11.4.0.106"]
STUB_LIBS = ("nvinfer", "nvonnxparser", "nvinfer_plugin")
NETWORK_ERRORS = ("Failed to establish", "NewConnectionError", "Temporary failure in name resolution", "Could not fetch URL",
                  "ConnectTimeout", "Network is unreachable", "ProxyError", "Max retries exceeded", "Name or service not known")


def _cache_root() -> Path:
    base = Path(os.environ.get("RTSEG_CACHE") or Path.home() / ".cache" / "rtseg")
    root = base / "trt-bindings"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _wheel(version: str) -> Path:
    wheels = _cache_root() / "wheels"
    wheels.mkdir(exist_ok=True)
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(wheels.glob(f"tensorrt_cu12_bindings-{version}-{tag}-*.whl"))
    if found:
        return found[0]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                           str(wheels), f"tensorrt-cu12-bindings=={version}"], capture_output=True, text=True, timeout=300)
    found = sorted(wheels.glob(f"tensorrt_cu12_bindings-{version}-{tag}-*.whl"))
    if proc.returncode != 0 or not found:
        out = proc.stdout + proc.stderr
        if any(s in out for s in NETWORK_ERRORS):
            pytest.skip(f"the package registry cannot be reached (pip download tensorrt-cu12-bindings=={version}): "
                        f"{out.strip().splitlines()[-1] if out.strip() else 'no output'}")
        pytest.fail(f"pip download tensorrt-cu12-bindings=={version} failed:\n{out}")
    return found[0]


def _system_symbols(bindings: Path) -> set[str]:
    """Dynamic symbols the system libraries among the module's NEEDED entries define."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _run(["readelf", "-d", str(bindings)]))
    table = _run(["ldconfig", "-p"])
    out: set[str] = set()
    for lib in needed:
        if lib.startswith(tuple(f"lib{n}.so" for n in STUB_LIBS)):
            continue
        m = re.search(rf"^\s*{re.escape(lib)} \(.*?\) => (\S+)$", table, re.M)
        if m:
            out |= {ln.split()[-1].split("@")[0] for ln in _run(["nm", "-D", "--defined-only", m.group(1)]).splitlines() if ln.strip()}
    return out


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _stubs(site: Path, bindings: Path) -> Path:
    """Build the three stub libraries the bindings module links against; returns their folder."""
    stubs = site.parent / "stubs"
    dynamic = _run(["readelf", "-d", str(bindings)])
    major = re.search(r"libnvinfer\.so\.(\d+)", dynamic).group(1)
    libs = [stubs / f"lib{n}.so.{major}" for n in STUB_LIBS]
    if all(p.is_file() for p in libs):
        return stubs
    stubs.mkdir(exist_ok=True)
    system = _system_symbols(bindings)
    undefined = [ln.split()[-1] for ln in _run(["nm", "-D", "--undefined-only", str(bindings)]).splitlines()
                 if ln.split()[0] == "U"]
    wanted = sorted(s for s in undefined if "@" not in s and not s.startswith(("Py", "_Py")) and s not in system)
    assert wanted, f"{bindings} links against no TensorRT C symbols?"
    sources = {n: [] for n in STUB_LIBS}
    for sym in wanted:
        lib = "nvonnxparser" if "OnnxParser" in sym else "nvinfer_plugin" if sym.startswith("initLibNvInferPlugins") else "nvinfer"
        sources[lib].append(f"void *{sym}(void) {{ return 0; }}\n")
    for name, lines in sources.items():
        c = stubs / f"{name}.c"
        c.write_text("".join(lines) or "int rtseg_stub;\n")
        so = stubs / f"lib{name}.so.{major}"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), f"-Wl,-soname,{so.name}", str(c)], check=True)
    return stubs


def _bindings(version: str) -> tuple[Path, Path]:
    """(site folder with ``tensorrt_bindings``, stub library folder) of one release."""
    site = _cache_root() / version / "site"
    module = site / "tensorrt_bindings" / "tensorrt.so"
    if not module.is_file():
        with zipfile.ZipFile(_wheel(version)) as z:
            z.extractall(site)
    return site, _stubs(site, module)


def probe(version: str, *args: str) -> dict:
    site, stubs = _bindings(version)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "LD_LIBRARY_PATH": str(stubs),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(PROBE), str(REPO), *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, f"probe of TensorRT {version} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {v: probe(v) for v in VERSIONS}


@pytest.mark.parametrize("version", OLDEST_NEWEST)
def test_every_name_and_call_exists_in_the_real_bindings(results, version):
    r = results[version]
    assert r["version"] == version
    assert r["problems"] == []
    # the scan and the replay really covered rtseg's API surface
    assert len(r["names"]) >= 15
    for key in ("Logger()", "Builder()", "OnnxParser()", "Runtime()", "Builder.create_network", "OnnxParser.parse_from_file",
                "OnnxParser.get_error", "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_flag",
                "IBuilderConfig.clear_flag", "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache",
                "IBuilderConfig.get_timing_cache", "ITimingCache.serialize", "IBuilderConfig.hardware_compatibility_level =",
                "IBuilderConfig.builder_optimization_level =", "IOptimizationProfile.set_shape",
                "IBuilderConfig.add_optimization_profile", "Builder.build_serialized_network",
                "Runtime.engine_host_code_allowed =", "Runtime.deserialize_cuda_engine", "ICudaEngine.get_tensor_profile_shape",
                "ICudaEngine.create_execution_context", "IExecutionContext.set_input_shape",
                "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3"):
        assert key in r["calls"], f"{key} was not replayed on TensorRT {version}"


def test_version_guards_are_exact(results):
    """``same_compute_capability`` exists from 10.9 (HARDWARE_LEVEL_SINCE); ``BuilderFlag.FP16`` only before 11
    (its ``# trt-guard: <11``); STRONGLY_TYPED is bit 1 on 10 and bit 0 on 11."""
    for v in VERSIONS:
        assert results[v]["problems"] == [], v
        levels = results[v]["enums"]["HardwareCompatibilityLevel"]
        assert ("SAME_COMPUTE_CAPABILITY" in levels) == (v not in ("10.0.1", "10.8.0.43")), v
        assert ("FP16" in results[v]["enums"]["BuilderFlag"]) == v.startswith("10."), v
    assert results["10.16.1.11"]["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 1
    assert results["11.4.0.106"]["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 0


@pytest.mark.parametrize("version", ["10.16.1.11", "11.0.0.114"])
def test_the_check_fails_on_wrong_calls(version):
    r = probe(version, "--wrong")
    explicit = [p for p in r["names"] if "EXPLICIT_BATCH" in p]
    if version.startswith("11"):
        assert explicit and "does not exist in TensorRT 11.0.0.114" in explicit[0]
    else:
        assert explicit == []  # deprecated but present in TensorRT 10
    calls = "\n".join(r["calls"])
    assert "set_timing_cache" in calls and "incompatible function arguments" in calls and "ignore_mismatch" in calls
    assert "create_network" in calls and "strongly_typed" in calls


def test_fake_api_file_matches_the_real_bindings(results):
    """The fake TensorRT of test_tensorrt.py is built from tests/assets/trt_api.json: its enums and the
    signatures of the calls rtseg makes must be the real bindings'."""
    real = {v: {"enums": r["enums"], "calls": r["calls"]} for v, r in results.items()}
    if os.environ.get("RTSEG_WRITE_TRT_API"):
        API_FILE.write_text(json.dumps(real, indent=1, sort_keys=True) + "\n")
    assert API_FILE.is_file(), f"{API_FILE} is missing; run RTSEG_WRITE_TRT_API=1 pytest {Path(__file__).name}"
    assert json.loads(API_FILE.read_text()) == real, \
        f"{API_FILE.name} differs from the real bindings; regenerate with RTSEG_WRITE_TRT_API=1"
