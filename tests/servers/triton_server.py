"""A real Triton Inference Server for the KServe tests (tests/runtime/test_kserve.py): NVIDIA PyTriton, which
bundles the ``tritonserver`` binary and its Python backend, run with its own virtualenv's Python
(``.venv-triton``: PyTriton pins numpy < 2; scripts/test.sh installs it).

``triton_server.py MODEL_DIR ENGINE HTTP_PORT GRPC_PORT METRICS_PORT`` serves the model that
``rtseg export-triton ENGINE --repo REPO`` wrote to MODEL_DIR (``REPO/<name>``) on 127.0.0.1. PyTriton
bundles only Triton's Python backend, not its OpenVINO one, so the Python backend stands in for it:
the bound Python function runs ENGINE (whose model file must be the one in ``MODEL_DIR/1/``) with
rtseg's own backend, and everything else — the model name, ``max_batch_size``, the dynamic batcher's
preferred sizes and queue delay, input/output names and dims, rtseg's ``parameters`` — is read from
``MODEL_DIR/config.pbtxt`` with Triton's own schema. Prints ``ready`` once the model is ready; runs
until killed.
"""

import os
import sys
import sysconfig

# the Python-backend stub must link this interpreter's libpython, not the system one
os.environ["LD_LIBRARY_PATH"] = sysconfig.get_config_var("LIBDIR") + ":" + os.environ.get("LD_LIBRARY_PATH", "")

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from google.protobuf import json_format, text_format  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.models import model as pytriton_model  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from rtseg.runtime import load_engine, read_engine_json  # noqa: E402

model_dir, engine_dir = Path(sys.argv[1]), Path(sys.argv[2])
http_port, grpc_port, metrics_port = map(int, sys.argv[3:6])
msg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
config = json_format.MessageToDict(msg, preserving_proto_field_name=True)
name = config["name"]
engine = read_engine_json(engine_dir)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


if _sha(model_dir / "1" / "model.xml") != _sha(engine_dir / engine["engine_file"]):
    sys.exit(f"{model_dir} is not the export of {engine_dir}: run 'rtseg export-triton {engine_dir} --repo REPO'")
backend = load_engine(engine_dir, num_threads=1)
inp, out = config["input"][0], config["output"][0]

# PyTriton's ModelConfig has no user parameters: add rtseg's to the backend parameters it writes
_config_of = pytriton_model.Model._get_triton_model_config


def _with_rtseg_parameters(self):
    cfg = _config_of(self)
    cfg.backend_parameters.update({k: v["string_value"] for k, v in config["parameters"].items()})
    return cfg


pytriton_model.Model._get_triton_model_config = _with_rtseg_parameters


@batch
def infer(**inputs):
    return {out["name"]: backend.infer(np.ascontiguousarray(inputs[inp["name"]], dtype=np.float32))}


dyn = config["dynamic_batching"]
batcher = DynamicBatcher(max_queue_delay_microseconds=int(dyn.get("max_queue_delay_microseconds", 0)),
                         preferred_batch_size=[int(b) for b in dyn.get("preferred_batch_size", [])])
dims_in, dims_out = tuple(int(d) for d in inp["dims"]), tuple(int(d) for d in out["dims"])
triton_config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                             grpc_port=grpc_port, metrics_address="127.0.0.1", metrics_port=metrics_port,
                             exit_on_error=True)
with Triton(config=triton_config) as triton:
    triton.bind(model_name=name, infer_func=infer,
                inputs=[Tensor(name=inp["name"], dtype=np.float32, shape=dims_in)],
                outputs=[Tensor(name=out["name"], dtype=np.float32, shape=dims_out)],
                config=ModelConfig(max_batch_size=int(config["max_batch_size"]), batcher=batcher), strict=True)
    print("ready", flush=True)
    triton.serve()
