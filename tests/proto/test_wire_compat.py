"""Wire compatibility of pt2serve's .proto files (proto/).

* kserve/*.proto (package `inference`) must match Triton's definitions on the wire: every message
  of ours must exist in the descriptors shipped with the `tritonclient` pip package, and every
  field of ours must have the same number, type, label and (message / enum) type name there,
  recursively through nested and map-entry types; every enum value of ours must exist there with
  the same number; every RPC of our GRPCInferenceService must exist in theirs with the same
  request / response types and streaming flags.
* An end-to-end check runs a tiny server built from OUR generated stubs (fake_kserve_server.py,
  in a subprocess) and drives it with the unmodified tritonclient.
* pt2serve/v1/*.proto compile, import, and declare the agreed services and enums.

Our kserve modules are never imported into this process: their `inference.*` symbols would clash
with tritonclient's in the default descriptor pool. We compare descriptor protos instead (ours
from protoc's --descriptor_set_out, theirs via FileDescriptor.CopyToProto).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

grpc_tools = pytest.importorskip("grpc_tools")
pytest.importorskip("tritonclient.grpc")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402
from tritonclient.grpc import model_config_pb2 as triton_mc  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_svc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
KSERVE_PROTOS = ["kserve/model_config.proto", "kserve/grpc_service.proto"]
PT2SERVE_PROTOS = ["pt2serve/v1/inference.proto", "pt2serve/v1/admin.proto"]
ALL_PROTOS = KSERVE_PROTOS + PT2SERVE_PROTOS
FAKE_SERVER = Path(__file__).resolve().parent / "fake_kserve_server.py"


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory) -> Path:
    """Compiles all our protos with grpc_tools.protoc: Python modules + a descriptor set."""
    out = tmp_path_factory.mktemp("proto_gen")
    wkt = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{wkt}",
           f"--python_out={out}", f"--grpc_python_out={out}",
           f"--descriptor_set_out={out / 'descriptors.binpb'}", "--include_imports",
           *ALL_PROTOS]
    proc = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, f"protoc failed:\n{proc.stderr}"
    return out


@pytest.fixture(scope="session")
def our_files(gen_dir) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString((gen_dir / "descriptors.binpb").read_bytes())
    return {f.name: f for f in fds.file}


def _file_proto(module) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def _index(files) -> tuple[dict, dict]:
    """Full name -> DescriptorProto / EnumDescriptorProto, nested types included."""
    messages, enums = {}, {}

    def walk(prefix, msgs, enum_list):
        for e in enum_list:
            enums[f"{prefix}.{e.name}"] = e
        for m in msgs:
            full = f"{prefix}.{m.name}"
            messages[full] = m
            walk(full, m.nested_type, m.enum_type)

    for f in files:
        walk(f.package, f.message_type, f.enum_type)
    return messages, enums


@pytest.fixture(scope="session")
def ours(our_files):
    return _index([our_files[p] for p in KSERVE_PROTOS])


@pytest.fixture(scope="session")
def theirs():
    return _index([_file_proto(triton_mc), _file_proto(triton_svc)])


# ------------------------------------------------------------------- kserve vs tritonclient


LABELS = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}
TYPES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}


def _field_sig(msg: descriptor_pb2.DescriptorProto, field) -> dict:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return {"number": field.number, "type": TYPES[field.type], "label": LABELS[field.label],
            "type_name": field.type_name, "oneof": oneof}


def test_kserve_files_are_package_inference(our_files):
    for p in KSERVE_PROTOS:
        assert our_files[p].package == "inference", p
        assert our_files[p].syntax == "proto3", p


def test_every_kserve_message_exists_in_tritonclient(ours, theirs):
    our_msgs, _ = ours
    their_msgs, _ = theirs
    missing = sorted(set(our_msgs) - set(their_msgs))
    assert not missing, f"messages of ours unknown to tritonclient: {missing}"


@pytest.mark.parametrize("proto", KSERVE_PROTOS)
def test_kserve_fields_match_tritonclient(proto, our_files, theirs):
    their_msgs, _ = theirs
    ours_here, _ = _index([our_files[proto]])
    problems = []
    for full, msg in sorted(ours_here.items()):
        their = their_msgs.get(full)
        if their is None:
            continue  # reported by test_every_kserve_message_exists_in_tritonclient
        if msg.options.map_entry != their.options.map_entry:
            problems.append(f"{full}: map_entry {msg.options.map_entry} vs "
                            f"{their.options.map_entry}")
        their_fields = {f.name: f for f in their.field}
        their_by_number = {f.number: f for f in their.field}
        for f in msg.field:
            t = their_fields.get(f.name)
            if t is None:
                other = their_by_number.get(f.number)
                problems.append(f"{full}.{f.name}: no such field in tritonclient (their #"
                                f"{f.number} is {other.name if other else 'unused'})")
                continue
            a, b = _field_sig(msg, f), _field_sig(their, t)
            if a != b:
                problems.append(f"{full}.{f.name}: ours {a} != theirs {b}")
    assert not problems, "\n".join(problems)


def test_kserve_enums_match_tritonclient(ours, theirs):
    _, our_enums = ours
    _, their_enums = theirs
    problems = []
    for full, enum in sorted(our_enums.items()):
        their = their_enums.get(full)
        if their is None:
            problems.append(f"enum {full} unknown to tritonclient")
            continue
        their_values = {v.name: v.number for v in their.value}
        for v in enum.value:
            if their_values.get(v.name) != v.number:
                problems.append(f"{full}.{v.name} = {v.number}, theirs "
                                f"{their_values.get(v.name)}")
    assert not problems, "\n".join(problems)


REQUIRED_RPCS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                 "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
                 "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
                 "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister"]


def test_kserve_service_matches_tritonclient(our_files):
    (ours,) = [s for s in our_files["kserve/grpc_service.proto"].service]
    (theirs,) = [s for s in _file_proto(triton_svc).service
                 if s.name == "GRPCInferenceService"]
    assert ours.name == "GRPCInferenceService"
    our_methods = {m.name: m for m in ours.method}
    their_methods = {m.name: m for m in theirs.method}
    assert set(REQUIRED_RPCS) <= set(our_methods), set(REQUIRED_RPCS) - set(our_methods)
    for name, m in our_methods.items():
        assert name in their_methods, f"rpc {name} not in tritonclient's service"
        t = their_methods[name]
        assert (m.input_type, m.output_type) == (t.input_type, t.output_type), name
        assert (m.client_streaming, m.server_streaming) == \
            (t.client_streaming, t.server_streaming), name


def test_kserve_fields_clients_need_are_declared(ours):
    """The subset pt2serve promises (shared notes), so trimming a field is caught here."""
    our_msgs, _ = ours
    need = {
        "inference.ModelConfig": ["name", "platform", "max_batch_size", "input", "output",
                                  "instance_group", "dynamic_batching", "parameters",
                                  "backend"],
        "inference.ModelInput": ["name", "data_type", "dims"],
        "inference.ModelOutput": ["name", "data_type", "dims"],
        "inference.ModelInstanceGroup": ["name", "count", "gpus", "kind"],
        "inference.ModelDynamicBatching": ["preferred_batch_size",
                                           "max_queue_delay_microseconds"],
        "inference.ModelParameter": ["string_value"],
        "inference.ModelInferRequest": ["model_name", "model_version", "id", "parameters",
                                        "inputs", "outputs", "raw_input_contents"],
        "inference.ModelInferResponse": ["model_name", "model_version", "id", "parameters",
                                         "outputs", "raw_output_contents"],
        "inference.InferParameter": ["bool_param", "int64_param", "string_param",
                                     "double_param", "uint64_param"],
        "inference.ModelStatistics": ["name", "version", "last_inference", "inference_count",
                                      "execution_count", "inference_stats", "batch_stats"],
        "inference.InferStatistics": ["success", "fail", "queue", "compute_input",
                                      "compute_infer", "compute_output"],
        "inference.RepositoryIndexResponse.ModelIndex": ["name", "version", "state", "reason"],
        "inference.ModelRepositoryParameter": ["bool_param", "int64_param", "string_param",
                                               "bytes_param"],
        "inference.SystemSharedMemoryRegisterRequest": ["name", "key", "offset", "byte_size"],
        "inference.SystemSharedMemoryStatusRequest": ["name"],
        "inference.SystemSharedMemoryStatusResponse": ["regions"],
        "inference.SystemSharedMemoryStatusResponse.RegionStatus": ["name", "key", "offset",
                                                                    "byte_size"],
        "inference.SystemSharedMemoryUnregisterRequest": ["name"],
    }
    for msg, fields in need.items():
        declared = {f.name for f in our_msgs[msg].field}
        assert set(fields) <= declared, f"{msg} lacks {set(fields) - declared}"


# ------------------------------------------------- end to end: tritonclient vs our stubs


@pytest.fixture(scope="module")
def fake_server(gen_dir):
    proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), str(gen_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            pytest.fail(f"fake server did not start: {line!r} {proc.stderr.read()[-4000:]}")
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.poll() is None:
            proc.stdin.close()  # server exits when stdin closes
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_tritonclient_talks_to_our_stubs(fake_server):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(url=fake_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("addone")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "fake" and "statistics" in meta["extensions"]

    md = client.get_model_metadata("addone", as_json=True)
    assert md["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}

    cfg = client.get_model_config("addone").config
    assert cfg.max_batch_size == 8 and cfg.backend == "pt2serve"
    assert cfg.input[0].data_type == triton_mc.TYPE_FP32 and list(cfg.input[0].dims) == [4]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert cfg.instance_group[0].kind == triton_mc.ModelInstanceGroup.KIND_CPU
    assert cfg.instance_group[0].count == 2
    assert cfg.parameters["weights_version"].string_value == "v7"
    assert cfg.version_policy.latest.num_versions == 1

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = tg.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("addone", [inp], outputs=[tg.InferRequestedOutput("OUTPUT0")],
                       request_id="req-1",
                       parameters={"p_int": 7, "p_str": "s", "p_bool": True})
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), x + 1)
    resp = res.get_response()
    assert resp.id == "req-1" and resp.model_version == "1"
    assert resp.parameters["p_int"].int64_param == 7
    assert resp.parameters["p_str"].string_param == "s"
    assert resp.parameters["p_bool"].bool_param is True

    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [inp])
    assert "NOT_FOUND" in str(err.value.status())

    # Streaming RPC (bidirectional) through tritonclient's stream helper.
    import queue
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("addone", [inp], request_id="s-1")
    result, error = results.get(timeout=10)
    client.stop_stream()
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 1)

    stats = client.get_inference_statistics("addone").model_stats[0]
    assert stats.inference_count == 2 and stats.inference_stats.queue.count == 2
    assert stats.batch_stats[0].batch_size == 1
    assert stats.memory_usage[0].byte_size == 64

    index = client.get_model_repository_index(as_json=True)["models"]
    assert index[1] == {"name": "broken", "state": "UNAVAILABLE", "reason": "load failed"}
    client.load_model("addone")
    client.unload_model("addone")
    with pytest.raises(InferenceServerException):
        client.load_model("nope")
    client.close()


# --------------------------------------------------------------------- pt2serve.v1 protos


@pytest.fixture(scope="module")
def pt2serve_v1(gen_dir):
    sys.path.insert(0, str(gen_dir))
    try:
        mods = {n: importlib.import_module(f"pt2serve.v1.{n}")
                for n in ("inference_pb2", "inference_pb2_grpc", "admin_pb2", "admin_pb2_grpc")}
    finally:
        sys.path.remove(str(gen_dir))
    return mods


def _methods(file_module, service):
    svc = file_module.DESCRIPTOR.services_by_name[service]
    proto = descriptor_pb2.ServiceDescriptorProto()
    svc.CopyToProto(proto)
    return {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in proto.method}


def test_pt2serve_inference_service(pt2serve_v1):
    inf = pt2serve_v1["inference_pb2"]
    assert inf.DESCRIPTOR.package == "pt2serve.v1"
    p = ".pt2serve.v1."
    assert _methods(inf, "Inference") == {
        "Run": (p + "RunRequest", p + "RunResponse", False, False),
        "ListModels": (p + "ListModelsRequest", p + "ListModelsResponse", False, False),
        "GetModel": (p + "GetModelRequest", p + "ModelInfo", False, False),
    }
    assert dict(inf.DataType.items()) == {
        "DT_INVALID": 0, "DT_BOOL": 1, "DT_UINT8": 2, "DT_INT8": 3, "DT_INT16": 4,
        "DT_INT32": 5, "DT_INT64": 6, "DT_FLOAT16": 7, "DT_BFLOAT16": 8, "DT_FLOAT32": 9,
        "DT_FLOAT64": 10}
    assert dict(inf.ModelState.items()) == {
        "MODEL_STATE_UNSPECIFIED": 0, "LOADING": 1, "READY": 2, "UNLOADING": 3, "FAILED": 4,
        "RESTARTING": 5}

    x = np.arange(6, dtype="<f4").reshape(2, 3)
    req = inf.RunRequest(model="m", request_id="r",
                         inputs=[inf.Tensor(name="x", dtype=inf.DT_FLOAT32, shape=x.shape,
                                            data=x.tobytes())], outputs=["y"])
    back = inf.RunRequest.FromString(req.SerializeToString())
    t = back.inputs[0]
    np.testing.assert_array_equal(np.frombuffer(t.data, "<f4").reshape(list(t.shape)), x)

    fields = {f.name for f in inf.ModelInfo.DESCRIPTOR.fields}
    assert fields == {"name", "state", "reason", "inputs", "outputs", "max_batch_size", "device",
                      "num_runners", "max_queue_size", "weights_version", "package_path",
                      "constants", "constants_bytes", "cpu_threads", "signature_source",
                      "runtime_constant_folding", "folded_constants", "isolation", "restarts",
                      "dynamic_batching", "weights_memory"}
    assert inf.ModelInfo.DESCRIPTOR.fields_by_name["cpu_threads"].number == 14
    assert inf.ModelInfo.DESCRIPTOR.fields_by_name["dynamic_batching"].number == 20
    assert inf.ModelInfo.DESCRIPTOR.fields_by_name["weights_memory"].number == 21
    assert {(f.name, f.number) for f in inf.BufferMemory.DESCRIPTOR.fields} == {
        ("host_bytes", 1), ("device_bytes", 2), ("folded_bytes", 3)}
    assert len(inf.PushMemory.DESCRIPTOR.fields) == 8
    assert len(inf.WeightsMemory.DESCRIPTOR.fields) == 11
    assert inf.WeightsMemory.DESCRIPTOR.fields_by_name["upload_bytes"].number == 3
    assert inf.WeightsMemory.DESCRIPTOR.fields_by_name["device_upload_bytes"].number == 11
    assert inf.ModelInfo.DESCRIPTOR.fields_by_name["isolation"].number == 18
    assert inf.ModelInfo.DESCRIPTOR.fields_by_name["restarts"].number == 19
    assert {(f.name, f.number) for f in inf.TensorSpec.DESCRIPTOR.fields} == {
        ("name", 1), ("dtype", 2), ("shape", 3), ("dims", 4)}
    assert {(f.name, f.number) for f in inf.DimRange.DESCRIPTOR.fields} == {
        ("min", 1), ("max", 2), ("symbol", 3)}
    assert {(f.name, f.number) for f in inf.RunResponse.DESCRIPTOR.fields} == {
        ("model", 1), ("outputs", 2), ("request_id", 3), ("weights_version", 4),
        ("queue_time_us", 5), ("compute_time_us", 6), ("batch_size", 7), ("model_version", 30)}


def test_pt2serve_admin_service(pt2serve_v1):
    adm = pt2serve_v1["admin_pb2"]
    assert {(f.name, f.number) for f in adm.LoadModelRequest.DESCRIPTOR.fields} == {
        ("name", 1), ("package_path", 2), ("device", 3), ("num_runners", 4),
        ("max_queue_size", 5), ("cpu_threads", 6), ("inputs", 7), ("outputs", 8),
        ("max_batch_size", 9), ("isolation", 10), ("dynamic_batching", 11)}
    p = ".pt2serve.v1."
    assert _methods(adm, "Admin") == {
        "LoadModel": (p + "LoadModelRequest", p + "LoadModelResponse", False, False),
        "UnloadModel": (p + "UnloadModelRequest", p + "UnloadModelResponse", False, False),
        "UpdateConstantBuffer": (p + "UpdateConstantBufferRequest",
                                 p + "UpdateConstantBufferResponse", True, False),
        "SwapConstantBuffer": (p + "SwapRequest", p + "SwapResponse", False, False),
        "Rollback": (p + "RollbackRequest", p + "SwapResponse", False, False),
        "FreeInactiveConstantBuffer": (p + "FreeInactiveRequest", p + "FreeInactiveResponse",
                                       False, False),
        "GetConstantBufferStatus": (p + "ConstantBufferStatusRequest",
                                    p + "ConstantBufferStatus", False, False),
    }
    assert dict(adm.BufferState.items()) == {
        "BUFFER_STATE_UNSPECIFIED": 0, "EMPTY": 1, "STAGED": 2, "ACTIVE": 3, "PREVIOUS": 4}

    req = adm.UpdateConstantBufferRequest
    assert [o.name for o in req.DESCRIPTOR.oneofs] == ["kind"]
    assert req.DESCRIPTOR.fields_by_name["header"].number == 1
    assert req.DESCRIPTOR.fields_by_name["chunk"].number == 2
    src = adm.UpdateHeader.DESCRIPTOR.oneofs_by_name["source"]
    assert sorted(f.name for f in src.fields) == ["server_path", "tensors"]

    inf = pt2serve_v1["inference_pb2"]
    hdr = req(header=adm.UpdateHeader(model="m", version="v2", tensors=adm.TensorManifest(
        entries=[adm.ManifestEntry(name="w", dtype=inf.DT_FLOAT32, shape=[2], byte_size=8)])))
    assert req.FromString(hdr.SerializeToString()).header.tensors.entries[0].byte_size == 8
    chunk = req(chunk=adm.TensorChunk(name="w", offset=4, data=b"\0" * 4))
    assert req.FromString(chunk.SerializeToString()).WhichOneof("kind") == "chunk"

    status = adm.ConstantBufferStatus(model="m", active=adm.BufferInfo(state=adm.ACTIVE),
                                      inactive=adm.BufferInfo(state=adm.PREVIOUS))
    status.active.updated_at.GetCurrentTime()
    back = adm.ConstantBufferStatus.FromString(status.SerializeToString())
    assert back.inactive.state == adm.PREVIOUS and back.active.updated_at.seconds > 0
    assert adm.ConstantBufferStatus.DESCRIPTOR.fields_by_name["memory"].number == 7
    assert adm.UpdateConstantBufferResponse.DESCRIPTOR.fields_by_name["memory"].number == 6


def test_pt2serve_stubs_serve(pt2serve_v1):
    """The generated grpc modules work: a servicer answers a client over a real channel."""
    from concurrent import futures

    inf, inf_grpc = pt2serve_v1["inference_pb2"], pt2serve_v1["inference_pb2_grpc"]

    class Servicer(inf_grpc.InferenceServicer):
        def ListModels(self, request, context):
            return inf.ListModelsResponse(models=[inf.ModelSummary(
                name="m", state=inf.READY, weights_version="v1")])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inf_grpc.add_InferenceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = inf_grpc.InferenceStub(ch)
            got = stub.ListModels(inf.ListModelsRequest(), timeout=10)
            assert got.models[0].state == inf.READY
            with pytest.raises(grpc.RpcError) as err:
                stub.Run(inf.RunRequest(model="m"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
