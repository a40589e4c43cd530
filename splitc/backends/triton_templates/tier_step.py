"""Triton python-backend model: one tier step of a splitc bundle (written by splitc; do not edit).

The tier step itself is splitc's runtime, copied beside this file (``splitc/runtime/``: the
reference runner, the wire encodings, :class:`splitc.runtime.tier_model.TierModel`), so this model
answers exactly what ``splitc run`` answers in-process and needs no splitc installation:

    receive   the tensors of the tier's incoming link in their wire dtypes (uint8/float16 as sent)
    step      BundleRunner.tier_step: the tier's partitions, the exit rule, the next link's encoding
    answer    the model outputs, or the next link's tensors, + splitc_next / splitc_exit / splitc_tier /
              splitc_server_us (see splitc/runtime/v2.py)

Config parameters: ``splitc_tier`` (which tier of ``bundle/manifest.json``), ``splitc_partitions``
(``onnxruntime``: the ONNX files under ``bundle/`` run in this process with ONNX Runtime;
``bls``: each partition is a call to the Triton model named in ``splitc_bls_models``, e.g. an
ONNX Runtime/TensorRT-backend model in NVIDIA's container, and only numpy is needed here),
``splitc_batch_partitions`` (partitions whose sessions take requests stacked on axis 0: checked
bit-exact at compile time), ``splitc_ort_threads``.

With ``max_batch_size`` > 0 Triton's dynamic batcher hands ``execute`` several requests: each keeps
its own step and exit decision; their partition runs are shared (splitc/runtime/batching.py).
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the copy of splitc's runtime next to this file wins over any installed splitc

from splitc.runtime.tier_model import TierModel  # noqa: E402
from splitc.runtime.v2 import V2Error  # noqa: E402


class _BlsSession:
    """A partition run as a BLS call to another model (ONNX Runtime's ``run(names, feeds)`` interface)."""

    def __init__(self, model):
        self.model = model

    def run(self, output_names, feeds, *args):
        request = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=list(output_names),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()])
        reply = request.exec()
        if reply.has_error():
            raise RuntimeError(f"model {self.model}: {reply.error().message()}")
        return [pb_utils.get_output_tensor_by_name(reply, name).as_numpy() for name in output_names]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.batched = int(config.get("max_batch_size", 0)) > 0
        sessions = None
        if params.get("splitc_partitions", "onnxruntime") == "bls":
            sessions = {int(k): _BlsSession(v) for k, v in json.loads(params["splitc_bls_models"]).items()}
        self.model = TierModel(HERE / "bundle", int(params["splitc_tier"]), sessions=sessions,
                               threads=int(params.get("splitc_ort_threads", "0") or 0),
                               batchable=json.loads(params.get("splitc_batch_partitions", "[]")),
                               workers=max(1, int(config.get("max_batch_size", 0))))
        self.model.name = config["name"]
        self.input_names = [s.name for s in self.model.contract.inputs]
        self.declared = {o["name"] for o in config["output"]}

    def execute(self, requests):
        tensors = []
        for request in requests:
            tensors.append({name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                            for name in self.input_names})
        responses = []
        for answer in self.model.infer(tensors):
            if isinstance(answer, V2Error):
                code = pb_utils.TritonError.INVALID_ARG if answer.status < 500 else pb_utils.TritonError.INTERNAL
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(answer), code)))
                continue
            out = []
            for name, value in answer.items():
                if name not in self.declared:  # Triton drops undeclared outputs silently: refuse instead
                    raise RuntimeError(f"output '{name}' is not declared in config.pbtxt")
                value = np.ascontiguousarray(value)
                if self.batched and name.startswith("splitc_"):
                    value = value.reshape(1, -1)  # [batch 1, 1] under the batch axis
                out.append(pb_utils.Tensor(name, value))
            responses.append(pb_utils.InferenceResponse(output_tensors=out))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info(f"splitc {json.dumps(self.model.stats())}")
        self.model.close()
