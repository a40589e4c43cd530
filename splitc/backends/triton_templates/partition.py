"""Triton python-backend model that runs one ONNX partition with ONNX Runtime (written by splitc).

A stand-in for the ONNX Runtime backend where the server has only the python backend (the
``nvidia-pytriton`` wheel): same model name, same input/output names, dims and batching as the
``backend: "onnxruntime"`` config it replaces. ``splitc serve --server triton --design bls|ensemble``
uses it to run those designs on such a server; NVIDIA's container runs the real backend instead.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("splitc_ort_threads", "0") or 0)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(HERE / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = []
        if self.batched and len(feeds) > 1:  # the dynamic batcher's requests: one run on the stacked rows
            rows = [next(iter(f.values())).shape[0] for f in feeds]
            stacked = {n: np.concatenate([f[n] for f in feeds], axis=0) for n in self.inputs}
            results = self.session.run(self.outputs, stacked)
            bounds = np.cumsum([0] + rows)
            for k in range(len(feeds)):
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(v[bounds[k]:bounds[k + 1]]))
                    for n, v in zip(self.outputs, results)]))
            return responses
        for f in feeds:
            results = self.session.run(self.outputs, f)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, results)]))
        return responses
