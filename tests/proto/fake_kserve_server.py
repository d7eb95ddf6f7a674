"""Minimal GRPCInferenceService built from pt2serve's OWN generated kserve stubs.

Used by test_wire_compat.py: it runs in a separate process (our `inference.*` messages would
clash with tritonclient's in one process's default descriptor pool) and the test talks to it
with the unmodified tritonclient, proving the two .proto definitions agree on the wire.

Usage: fake_kserve_server.py GEN_DIR   (GEN_DIR = grpc_tools.protoc --python_out dir).
Prints "PORT <n>" once serving on 127.0.0.1:<n>; exits when stdin closes.

Serves one model, "addone": INPUT0 FP32 [-1, 4] -> OUTPUT0 = INPUT0 + 1 (same dtype and
shape), max_batch_size 8. Request parameters are echoed back as response parameters.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc
import numpy as np

sys.path.insert(0, sys.argv[1])
from kserve import grpc_service_pb2 as pb  # noqa: E402
from kserve import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from kserve import model_config_pb2 as mc  # noqa: E402

MODEL = "addone"


class Service(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.infers = 0

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="fake", version="0.0.1",
                                         extensions=["model_configuration", "statistics"])

    def _check_model(self, name, context):
        if name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")

    def ModelMetadata(self, request, context):
        self._check_model(request.name, context)
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=MODEL, versions=["1"], platform="pytorch_aoti",
            inputs=[tm(name="INPUT0", datatype="FP32", shape=[-1, 4])],
            outputs=[tm(name="OUTPUT0", datatype="FP32", shape=[-1, 4])])

    def ModelConfig(self, request, context):
        self._check_model(request.name, context)
        cfg = mc.ModelConfig(
            name=MODEL, platform="pytorch_aoti", backend="pt2serve", max_batch_size=8,
            input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[4])],
            output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[4])],
            instance_group=[mc.ModelInstanceGroup(name="addone_cpu", count=2,
                                                  kind=mc.ModelInstanceGroup.KIND_CPU)],
            dynamic_batching=mc.ModelDynamicBatching(
                max_queue_delay_microseconds=100,
                default_queue_policy=mc.ModelQueuePolicy(max_queue_size=64)),
            version_policy=mc.ModelVersionPolicy(
                latest=mc.ModelVersionPolicy.Latest(num_versions=1)))
        cfg.parameters["weights_version"].string_value = "v7"
        return pb.ModelConfigResponse(config=cfg)

    def _infer(self, request, context):
        self._check_model(request.model_name, context)
        (inp,) = request.inputs
        if inp.name != "INPUT0" or inp.datatype != "FP32":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(list(inp.shape))
        y = (x + 1).astype("<f4")
        resp = pb.ModelInferResponse(model_name=MODEL, model_version="1", id=request.id)
        for key, value in request.parameters.items():
            resp.parameters[key].CopyFrom(value)
        out = resp.outputs.add(name="OUTPUT0", datatype="FP32", shape=list(y.shape))
        out.parameters["binary_data_size"].int64_param = y.nbytes
        resp.raw_output_contents.append(y.tobytes())
        self.infers += 1
        return resp

    def ModelInfer(self, request, context):
        return self._infer(request, context)

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request, context))
            except Exception as e:  # noqa: BLE001 - reported in-band
                yield pb.ModelStreamInferResponse(error_message=str(e))

    def ModelStatistics(self, request, context):
        dur = pb.StatisticDuration
        n = self.infers
        st = pb.ModelStatistics(
            name=MODEL, version="1", last_inference=1_700_000_000_000, inference_count=n,
            execution_count=n,
            inference_stats=pb.InferStatistics(
                success=dur(count=n, ns=5000 * n), queue=dur(count=n, ns=1000 * n),
                compute_input=dur(count=n, ns=500 * n), compute_infer=dur(count=n, ns=3000 * n),
                compute_output=dur(count=n, ns=500 * n)),
            batch_stats=[pb.InferBatchStatistics(batch_size=1,
                                                 compute_infer=dur(count=n, ns=3000 * n))],
            memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=64)])
        return pb.ModelStatisticsResponse(model_stats=[st])

    def RepositoryIndex(self, request, context):
        idx = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            idx(name=MODEL, version="1", state="READY"),
            idx(name="broken", state="UNAVAILABLE", reason="load failed")])

    def RepositoryModelLoad(self, request, context):
        if request.model_name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.model_name}'")
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self._check_model(request.model_name, context)
        return pb.RepositoryModelUnloadResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(grace=None)


if __name__ == "__main__":
    main()
