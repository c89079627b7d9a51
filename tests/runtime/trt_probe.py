"""Check rtseg's TensorRT code against the real TensorRT Python bindings, without a GPU.

Run by ``tests/runtime/test_trt_bindings.py`` in a subprocess whose ``PYTHONPATH`` holds an unpacked
``tensorrt-cu12-bindings`` wheel and whose ``LD_LIBRARY_PATH`` holds stub ``libnvinfer`` /
``libnvonnxparser`` / ``libnvinfer_plugin`` libraries (built with gcc from the C symbols the
bindings module links against). With them, ``import tensorrt_bindings`` registers every class,
method, property and enum of that TensorRT version (pybind11), and nothing can run on a GPU.

Two checks, printed as one JSON object on stdout:

1. **Names** (``names``): every ``trt.*`` attribute chain in rtseg's TensorRT modules (AST scan),
   plus names reached through ``getattr``/``hasattr`` with a literal name, must exist in this
   version. A line carrying a version guard comment ``# trt-guard: <11`` or ``# trt-guard: >=10.9``
   declares that its names exist only in those versions; the check then requires them to exist
   exactly there (a stale guard fails too). The hardware compatibility levels rtseg reaches with
   ``getattr(HardwareCompatibilityLevel, level.upper())`` are checked against the guard table
   ``HARDWARE_LEVEL_SINCE`` declared beside that code.
2. **Calls** (``calls``): rtseg's own TensorRT functions run against a proxy of the real module.
   Every class lookup resolves to the real class; every constructor, method call and property
   write is replayed on the real class with an *uninitialised* instance (``Cls.__new__(Cls)``),
   with rtseg's own arguments, in a forked child: pybind11 converts all arguments before it
   touches the (null) native object, so a wrong signature raises "incompatible function arguments"
   while a right one gets past conversion (and then crashes the child, which is the point of the
   fork). Return values come from the real docstrings' return types (or a few canned values the
   flow needs, e.g. tensor shapes).

``--wrong`` runs deliberately wrong code through the same checks instead (the test asserts they are
reported): ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (gone in TensorRT 11),
``set_timing_cache`` without ``ignore_mismatch`` and ``create_network`` with a keyword it lacks.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import resource
import sys
import tempfile
import tokenize
import warnings
from pathlib import Path
from types import SimpleNamespace

GUARD = re.compile(r"#\s*trt-guard:\s*(<|>=)\s*([0-9.]+)")


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def guard_allows(spec: tuple[str, str], version: str) -> bool:
    op, bound = spec
    v, b = _version(version), _version(bound)
    return v < b if op == "<" else v >= b


# -- 1. names ----------------------------------------------------------------------------------------
def _chain(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt":
        return list(reversed(parts))
    return None


def scan_names(source: str) -> list[tuple[int, str]]:
    """``(line, "A.B")`` for every ``trt.A.B`` chain and every ``getattr/hasattr(trt[.X], "NAME")``."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            chain = _chain(node)
            if chain:
                # only the longest chain: trt.A.B.C, not also trt.A.B
                found.add((node.lineno, ".".join(chain)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            base = node.args[0]
            chain = [] if isinstance(base, ast.Name) and base.id == "trt" else _chain(base)
            if chain is not None:
                found.add((node.lineno, ".".join([*chain, node.args[1].value])))
    # drop prefixes of longer chains on the same line (trt.A.B.C also visits trt.A.B)
    return sorted((ln, n) for ln, n in found if not any(m != n and m.startswith(n + ".") and ln == l2 for l2, m in found))


def scan_guards(source: str) -> dict[int, tuple[str, str]]:
    """``{line: ("<" | ">=", version)}`` of the ``# trt-guard:`` comments."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and (m := GUARD.search(tok.string)):
            out[tok.start[0]] = (m.group(1), m.group(2))
    return out


def _has(trt, dotted: str) -> bool:
    obj = trt
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def check_names(trt, files: list[Path]) -> dict:
    version = trt.__version__
    checked, problems = [], []
    for f in files:
        src = f.read_text()
        guards = scan_guards(src)
        for line, name in scan_names(src):
            guard = guards.get(line)
            present = _has(trt, name)
            where = f"{f.name}:{line} trt.{name}"
            checked.append(where)
            if guard is None and not present:
                problems.append(f"{where} does not exist in TensorRT {version}")
            elif guard is not None and present != guard_allows(guard, version):
                problems.append(f"{where}: guard '{guard[0]}{guard[1]}' is wrong for TensorRT {version} "
                                f"(the name {'exists' if present else 'is missing'})")
    return {"checked": checked, "problems": problems}


def check_hardware_levels(trt, since: dict[str, str]) -> list[str]:
    problems = []
    for level, first in since.items():
        present = _has(trt, f"HardwareCompatibilityLevel.{level.upper()}")
        if present != guard_allows((">=", first), trt.__version__):
            problems.append(f"HARDWARE_LEVEL_SINCE[{level!r}] = {first!r} is wrong for TensorRT {trt.__version__} "
                            f"(HardwareCompatibilityLevel.{level.upper()} {'exists' if present else 'is missing'})")
    return problems


# -- 2. calls ----------------------------------------------------------------------------------------
def converts(fn) -> str | None:
    """Run ``fn`` in a forked child: the "incompatible ... arguments" message, or None when pybind11
    accepted the arguments (whatever the child did afterwards: a crash on the null native object,
    a nullptr from a stub factory, or a return)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the expected crash writes no core file
        try:
            fn()
        except TypeError as e:
            if "incompatible" in str(e):
                os.write(w, str(e).encode()[:4000])
                os._exit(3)
        except BaseException:  # noqa: BLE001 - past conversion: any other failure is the stub's
            pass
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode() if os.waitstatus_to_exitcode(status) == 3 else None


def _is_enum(obj) -> bool:
    return isinstance(obj, type) and hasattr(obj, "__members__")


class Recorder:
    """What the proxies saw: ``calls`` (key → real signature), ``problems`` (wrong calls/names)."""

    def __init__(self, trt, canned: dict):
        self.trt, self.canned = trt, canned
        self.calls: dict[str, str] = {}
        self.problems: list[str] = []
        self._seen: dict[tuple, str | None] = {}

    def signature(self, obj) -> str:
        doc = (getattr(obj, "__doc__", None) or "").strip()
        sig = " ".join(line.strip() for line in doc.splitlines() if "->" in line or "(" in line[:60])
        return re.sub(r"\s+", " ", sig)[:600]

    def default(self, doc: str):
        m = re.search(r"->\s*([\w.\[\], ]+)", doc or "")
        ret = (m.group(1).strip() if m else "")
        name = ret.rsplit(".", 1)[-1]
        if ret.startswith(("tensorrt", "tensorrt_bindings")) and hasattr(self.trt, name) and not _is_enum(getattr(self.trt, name)):
            return InstanceProxy(self, getattr(self.trt, name))
        return {"bool": True, "int": 1, "typing.SupportsInt": 1, "str": "x", "None": None}.get(ret)

    def check(self, key: str, sig_of, fn, args: tuple = ()) -> None:
        """Replay ``fn`` (the real call) once per argument-type pattern; raise TypeError if refused."""
        self.calls[key] = self.signature(sig_of)
        pattern = (key, _pattern(args))
        if pattern not in self._seen:
            self._seen[pattern] = converts(fn)
        msg = self._seen[pattern]
        if msg:
            self.problems.append(f"{key}: {' '.join(msg.split())}")
            raise TypeError(msg)


def _pattern(value):
    """The argument types (and enum values / small ints, which choose overloads) of a call."""
    if isinstance(value, dict):
        return tuple(sorted((k, _pattern(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_pattern(v) for v in value)
    if isinstance(value, InstanceProxy):
        return object.__getattribute__(value, "_cls").__name__
    return (type(value).__name__, value if isinstance(value, (bool, int)) or _is_enum(type(value)) else None)


def _real(value):
    if isinstance(value, InstanceProxy):
        cls = object.__getattribute__(value, "_cls")
        return cls.__new__(cls)
    if isinstance(value, (list, tuple)):
        return type(value)(_real(v) for v in value)
    return value


class ModuleProxy:
    """``tensorrt`` as rtseg sees it: real names, classes wrapped in :class:`ClassProxy`."""

    def __init__(self, rec: Recorder):
        self._rec = rec

    def __getattr__(self, name):
        try:
            real = getattr(self._rec.trt, name)
        except AttributeError:
            self._rec.problems.append(f"trt.{name} does not exist")
            raise
        return ClassProxy(self._rec, real) if isinstance(real, type) and not _is_enum(real) else real


class ClassProxy:
    def __init__(self, rec: Recorder, cls):
        self._rec, self._cls = rec, cls

    def __getattr__(self, name):
        return getattr(self._cls, name)  # nested enums (Logger.WARNING), constants

    def __call__(self, *args, **kwargs):
        cls = self._cls
        self._rec.check(f"{cls.__name__}()", cls.__init__, lambda: cls(*_real(args), **{k: _real(v) for k, v in kwargs.items()}),
                        (args, kwargs))
        return InstanceProxy(self._rec, cls)


class InstanceProxy:
    """An instance of a real bindings class: methods and properties are checked, values made up."""

    def __init__(self, rec: Recorder, cls):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_cls", cls)

    def __getattr__(self, name):
        rec, cls = object.__getattribute__(self, "_rec"), object.__getattribute__(self, "_cls")
        key = f"{cls.__name__}.{name}"
        if not hasattr(cls, name):
            rec.problems.append(f"{key} does not exist")
            raise AttributeError(key)
        attr = getattr(cls, name)
        if isinstance(attr, property):
            rec.calls[key] = rec.signature(attr.fget)
            if key in rec.canned:
                return rec.canned[key]
            return rec.default(getattr(attr.fget, "__doc__", ""))

        def call(*args, **kwargs):
            rec.check(key, attr, lambda: getattr(cls.__new__(cls), name)(*_real(args), **{k: _real(v) for k, v in kwargs.items()}),
                      (args, kwargs))
            if key in rec.canned:
                value = rec.canned[key]
                return value(*args) if callable(value) else value
            return rec.default(getattr(attr, "__doc__", ""))

        return call

    def __setattr__(self, name, value):
        rec, cls = object.__getattribute__(self, "_rec"), object.__getattribute__(self, "_cls")
        key = f"{cls.__name__}.{name} ="
        prop = getattr(cls, name, None)
        if not isinstance(prop, property) or prop.fset is None:
            rec.problems.append(f"{key} is not a writable property")
            raise AttributeError(key)
        rec.check(key, prop.fset, lambda: setattr(cls.__new__(cls), name, _real(value)), (value,))


def _canned(trt, hw, parse_ok=True, cache_fits=True) -> dict:
    shape = (-1, 3, *hw)
    return {
        "OnnxParser.parse_from_file": parse_ok, "OnnxParser.num_errors": 0 if parse_ok else 1,
        "INetworkDefinition.num_inputs": 1,
        "ITensor.shape": shape, "ITensor.name": "input", "ITensor.dtype": trt.DataType.FLOAT,
        "IBuilderConfig.set_timing_cache": lambda cache, ignore_mismatch=False: cache_fits,
        "ITimingCache.serialize": b"CACHE", "Builder.build_serialized_network": b"PLAN",
        "IBuilderConfig.add_optimization_profile": 0,
        "ICudaEngine.num_io_tensors": 2,
        "ICudaEngine.get_tensor_name": lambda i: ("input", "logits")[i],
        "ICudaEngine.get_tensor_mode": lambda n: trt.TensorIOMode.INPUT if n == "input" else trt.TensorIOMode.OUTPUT,
        "ICudaEngine.get_tensor_shape": lambda n: shape if n == "input" else (-1, 2, *hw),
        "ICudaEngine.get_tensor_profile_shape": lambda n, p: [(1, 3, *hw), (2, 3, *hw), (4, 3, *hw)],
        "ICudaEngine.get_tensor_dtype": lambda n: trt.DataType.FLOAT,
        "IExecutionContext.set_input_shape": True,
        "IExecutionContext.get_tensor_shape": lambda n: (4, 2, *hw),
        "IExecutionContext.execute_async_v3": True,
        "IExecutionContext.set_tensor_address": True,
    }


def _expect(rec: Recorder, what: str, fn, error=None) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        if error is not None and isinstance(e, error):
            return
        rec.problems.append(f"{what}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        return
    if error is not None:
        rec.problems.append(f"{what}: expected {error.__name__}")


def run_builder_flows(trt, tmp: Path) -> Recorder:
    """Every TensorRT call of rtseg.runtime.tensorrt.build, with rtseg's own argument forms."""
    from rtseg.errors import RtsegError
    from rtseg.runtime.tensorrt import build as tb

    hw = (64, 64)
    major = tb.trt_major(trt.__version__)
    rec = Recorder(trt, _canned(trt, hw))
    proxy = ModuleProxy(rec)
    onnx = tmp / "model.onnx"
    onnx.write_bytes(b"")
    levels = ["none"] + [lv for lv, first in tb.HARDWARE_LEVEL_SINCE.items()
                         if guard_allows((">=", first), trt.__version__)]
    for precision in tb.PRECISIONS:
        fp16 = tmp / "model.fp16.onnx" if (precision == "fp16" and major >= 11) else None
        if fp16 is not None:
            fp16.write_bytes(b"")
        net = tb._network_source(onnx, tmp, precision, fp16, major)
        for level in levels:
            o = tb.TensorRTBuildOptions(input_hw=hw, timing_cache=tmp / "timing.cache", version_compatible=True,
                                        hardware_compatibility_level=level, builder_optimization_level=3, verbose=True)
            _expect(rec, f"build {precision} level={level}",
                    lambda: tb._run_builder(proxy, net, o, hw, level, precision, tmp / "model.engine"))
    # a refused timing cache (another GPU): the fresh-cache path
    rec.canned["IBuilderConfig.set_timing_cache"] = lambda cache, ignore_mismatch=False: False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _expect(rec, "refused timing cache", lambda: tb._run_builder(
            proxy, tb._Network(onnx), tb.TensorRTBuildOptions(input_hw=hw, timing_cache=tmp / "t2.cache"), hw, "none",
            "fp32", tmp / "model.engine"))
    # a parser error: num_errors / get_error
    rec.canned.update({"OnnxParser.parse_from_file": False, "OnnxParser.num_errors": 1})
    _expect(rec, "parser error", lambda: tb._run_builder(proxy, tb._Network(onnx), tb.TensorRTBuildOptions(input_hw=hw),
                                                         hw, "none", "fp32", tmp / "model.engine"), RtsegError)
    return rec


def run_backend_flows(trt) -> Recorder:
    """Every TensorRT call of rtseg.runtime.tensorrt.backend (engine loading, I/O, binding, enqueue)."""
    from rtseg.runtime.tensorrt import backend as tbe

    hw = (64, 64)
    rec = Recorder(trt, _canned(trt, hw))
    proxy = ModuleProxy(rec)

    def flow():
        for severity in (trt.Logger.VERBOSE, trt.Logger.WARNING):
            logger = proxy.Logger(severity)
        _, engine = tbe.deserialize_engine(proxy, logger, b"PLAN", True)
        io_ = tbe.engine_io(proxy, engine, "logits", "probe", "rebuild")
        context = engine.create_execution_context()
        tbe.resolve_output_shape(context, io_, "probe", "rebuild")
        fake = SimpleNamespace(input_hw=hw, context=context, _shape_set=None, input_name=io_.input_name,
                               output_name=io_.output_name, _d_extra={}, stream=SimpleNamespace(cuda_stream=7),
                               min_batch=1, max_batch=4, folder="probe")
        other = engine.create_execution_context()
        for ctx in (context, other):
            tbe.TensorRTBackend._bind(fake, ctx, 2, 1 << 20, 2 << 20)
            tbe.TensorRTBackend._enqueue(fake, ctx)

    _expect(rec, "backend", flow)
    return rec


def run_wrong(trt, tmp: Path) -> dict:
    """Deliberately wrong code through the same checks: each must be reported."""
    src = tmp / "wrong.py"
    src.write_text("def f(trt, builder):\n    return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))\n")
    names = check_names(trt, [src])
    rec = Recorder(trt, _canned(trt, (8, 8)))
    proxy = ModuleProxy(rec)
    builder = proxy.Builder(proxy.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    _expect(rec, "set_timing_cache(cache)", lambda: config.set_timing_cache(config.create_timing_cache(b"")), TypeError)
    _expect(rec, "create_network(strongly_typed=True)", lambda: builder.create_network(strongly_typed=True), TypeError)
    return {"names": names["problems"], "calls": rec.problems}


def main(argv: list[str]) -> None:
    import tensorrt_bindings as trt

    sys.modules["tensorrt"] = trt
    repo = Path(argv[0])
    sys.path.insert(0, str(repo))
    with tempfile.TemporaryDirectory(prefix="rtseg-trt-probe-") as td:
        tmp = Path(td)
        if "--wrong" in argv:
            print(json.dumps({"version": trt.__version__, **run_wrong(trt, tmp)}))
            return
        from rtseg.runtime.tensorrt.build import HARDWARE_LEVEL_SINCE

        files = [repo / "rtseg" / "runtime" / "tensorrt" / "build.py", repo / "rtseg" / "runtime" / "tensorrt" / "backend.py"]
        names = check_names(trt, files)
        builder, backend = run_builder_flows(trt, tmp), run_backend_flows(trt)
        enums = {name: {k: int(v) for k, v in getattr(trt, name).__members__.items()}
                 for name in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "HardwareCompatibilityLevel",
                              "TensorIOMode", "DataType") if hasattr(trt, name)}
        print(json.dumps({
            "version": trt.__version__,
            "names": names["checked"],
            "problems": names["problems"] + check_hardware_levels(trt, HARDWARE_LEVEL_SINCE)
            + builder.problems + backend.problems,
            "calls": {**builder.calls, **backend.calls},
            "enums": enums,
        }))


if __name__ == "__main__":
    main(sys.argv[1:])
