"""The accuracy gate of reduced-precision engines (issue 5).

* :mod:`rtseg.gate.check` — the gate: task metric against FP32 on held-out labelled images, the repair
  rounds, the ``engine.json`` ``accuracy_gate`` record;
* :mod:`rtseg.gate.repair` — Q/DQ graph surgery and per-layer sensitivity;
* :mod:`rtseg.gate.nncf_quant` — the OpenVINO NNCF int8 path (``--int8-quantizer nncf``) under the same gate.
"""
