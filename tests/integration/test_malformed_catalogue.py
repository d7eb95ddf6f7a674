"""A catalogue of malformed requests against the real daemon (issue 14).

Every case is one distinct mistake a client (or an attacker) can make: wrong dtypes, byte
lengths, ranks, dims out of range on every dim, duplicate / missing / extra tensors, huge or
negative shapes, bad parameters, oversize strings and messages, bad model names and versions.
Each must be answered with the right status code and a message that names the problem and is
short (no unbounded echo), and the daemon must still serve correct answers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import RPC_TIMEOUT, assert_close, kserve_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
MIB = 1 << 20
# No error message may be longer than this (the server's cap is 1024 bytes).
MAX_MESSAGE = 1100

X = np.ones((3, 16), np.float32)
IMAGE = np.ones((2, 3, 16, 16), np.float32)
TWO_X = np.ones((3, 8), np.float32)
TWO_IDS = np.zeros((3, 4), np.int64)


@dataclass
class Case:
    id: str
    build: Callable[[], service_pb2.ModelInferRequest]
    code: grpc.StatusCode
    needles: tuple[str, ...]


def req(model="mlp", inputs=None, **fields):
    return kserve_request(service_pb2, model, {"x": X} if inputs is None else inputs, **fields)


def edited(edit, base=None):
    def build():
        r = base() if base else req()
        edit(r)
        return r
    return build


def typed(datatype="FP32", shape=(1, 16), field="fp32_contents", values=None):
    r = service_pb2.ModelInferRequest(model_name="mlp")
    t = r.inputs.add(name="x", datatype=datatype, shape=list(shape))
    getattr(t.contents, field).extend(values if values is not None else [1] * int(np.prod(shape)))
    return r


def with_shape(model, name, shape, data_shape=None):
    """A raw request whose declared shape is `shape`, with data for `data_shape` (or none)."""
    def build():
        r = service_pb2.ModelInferRequest(model_name=model)
        r.inputs.add(name=name, datatype="FP32", shape=list(shape))
        n = int(np.prod(data_shape)) if data_shape is not None else 0
        r.raw_input_contents.append(np.ones(n, np.float32).tobytes())
        return r
    return build


def param(target, key, **value):
    def edit(r):
        container = r.parameters if target == "request" else (
            r.inputs[0].parameters if target == "input" else r.outputs.add(name="y").parameters)
        for field, v in value.items():
            setattr(container[key], field, v)
    return edit


CASES = [
    # model names and versions
    Case("unknown_model", lambda: req("no_such_model"), NOT_FOUND, ("no_such_model",)),
    Case("empty_model_name", lambda: req(""), NOT_FOUND, ("not loaded",)),
    Case("huge_model_name", lambda: req("m" * MIB), INVALID,
         ("model name is 1048576 bytes long (at most 256)",)),
    Case("unknown_version", lambda: req(model_version="7"), NOT_FOUND, ("version '7'",)),
    Case("huge_version", lambda: req(model_version="v" * MIB), INVALID,
         ("is not a version number",)),
    Case("huge_request_id", lambda: req(id="i" * MIB), INVALID, ("request id is 1048576 bytes",)),
    Case("control_chars_in_model_name", lambda: req("bad\nname\x07"), NOT_FOUND, ("not loaded",)),
    # dtypes
    Case("wrong_dtype", lambda: req(inputs={"x": X.astype(np.float64)}), INVALID, ("'x'",)),
    Case("wrong_dtype_second_input",
         lambda: req("two_io", {"x": TWO_X, "ids": TWO_IDS.astype(np.int32)}), INVALID,
         ("'ids'",)),
    Case("unsupported_datatype", edited(lambda r: setattr(r.inputs[0], "datatype", "BYTES")),
         INVALID, ("unsupported datatype 'BYTES'",)),
    Case("huge_datatype", edited(lambda r: setattr(r.inputs[0], "datatype", "D" * MIB)),
         INVALID, ("unsupported datatype",)),
    # ranks and dims (every dim of cnn's [-1, 3, 16, 16], both sides where it has two)
    Case("rank_too_high", lambda: req(inputs={"x": np.ones((3, 4, 4), np.float32)}), INVALID,
         ("'x'",)),
    Case("rank_zero", lambda: req(inputs={"x": np.float32(1.0).reshape(())}), INVALID, ("'x'",)),
    Case("rank_33", with_shape("mlp", "x", [1] * 33, [1]), INVALID, ("33 dims (at most 32)",)),
    Case("mlp_dim1_out_of_range", lambda: req(inputs={"x": np.ones((3, 17), np.float32)}),
         INVALID, ("'x'",)),
    Case("cnn_batch_zero", with_shape("cnn", "image", [0, 3, 16, 16], [0]), INVALID, ("'image'",)),
    Case("cnn_batch_1025", with_shape("cnn", "image", [1025, 3, 16, 16], [1025, 3, 16, 16]),
         INVALID, ("1025",)),
    Case("cnn_dim1_low", with_shape("cnn", "image", [1, 2, 16, 16], [1, 2, 16, 16]), INVALID,
         ("'image'",)),
    Case("cnn_dim1_high", with_shape("cnn", "image", [1, 4, 16, 16], [1, 4, 16, 16]), INVALID,
         ("'image'",)),
    Case("cnn_dim2_out_of_range", with_shape("cnn", "image", [1, 3, 15, 16], [1, 3, 15, 16]),
         INVALID, ("'image'",)),
    Case("cnn_dim3_out_of_range", with_shape("cnn", "image", [1, 3, 16, 17], [1, 3, 16, 17]),
         INVALID, ("'image'",)),
    Case("negative_dim", with_shape("mlp", "x", [-1, 16], [16]), INVALID, ("negative",)),
    Case("huge_declared_shape", with_shape("mlp", "x", [1 << 40, 16], [1, 16]), INVALID, ("'x'",)),
    Case("overflowing_shape", with_shape("mlp", "x", [1 << 62, 1 << 62], [1, 16]), INVALID,
         ("'x'",)),
    # byte lengths and contents
    Case("raw_one_float_short",
         edited(lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4])),
         INVALID, ("'x'", "bytes")),
    Case("raw_one_float_long",
         edited(lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0] + b"\0" * 4)),
         INVALID, ("'x'", "bytes")),
    Case("raw_odd_byte_count",
         edited(lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0] + b"\0")),
         INVALID, ("'x'",)),
    Case("raw_count_mismatch", edited(lambda r: r.raw_input_contents.append(b"\0" * 4)), INVALID,
         ("raw_input_contents has 2 entries",)),
    Case("typed_count_mismatch", lambda: typed(values=[1.0] * 15), INVALID, ("'x'",)),
    Case("typed_two_fields", edited(lambda r: r.inputs[0].contents.int_contents.append(1),
                                    lambda: typed()), INVALID,
         ("sets both int_contents and fp32_contents",)),
    Case("typed_wrong_field", lambda: typed(field="int64_contents"), INVALID,
         ("is FP32 but sets int64_contents (want fp32_contents)",)),
    Case("typed_fp16_has_no_field", lambda: typed("FP16", field="fp32_contents"), INVALID,
         ("raw_input_contents",)),
    Case("typed_next_to_raw", edited(lambda r: r.inputs[0].contents.fp32_contents.append(1.0)),
         INVALID, ("sets contents although raw_input_contents is used",)),
    # tensors
    Case("no_inputs", lambda: service_pb2.ModelInferRequest(model_name="mlp"), INVALID, ()),
    Case("missing_input", lambda: req("two_io", {"x": TWO_X}), INVALID, ("'ids'",)),
    Case("extra_input", lambda: req(inputs={"x": X, "bogus": X}), INVALID, ("'bogus'",)),
    Case("duplicate_input", edited(lambda r: (r.inputs.add().CopyFrom(r.inputs[0]),
                                              r.raw_input_contents.append(X.tobytes()))),
         INVALID, ("'x'",)),
    Case("huge_input_name", edited(lambda r: setattr(r.inputs[0], "name", "n" * MIB)), INVALID,
         ("an input name is 1048576 bytes long",)),
    Case("unknown_output", edited(lambda r: r.outputs.add(name="nope")), INVALID, ("'nope'",)),
    Case("duplicate_output", edited(lambda r: (r.outputs.add(name="y"), r.outputs.add(name="y"))),
         INVALID, ("'y'",)),
    # parameters
    Case("timeout_negative", edited(param("request", "timeout", int64_param=-1)), INVALID,
         ("'timeout' must be >= 0",)),
    Case("timeout_not_integer", edited(param("request", "timeout", string_param="soon")), INVALID,
         ("'timeout' must be an integer",)),
    Case("shared_memory_input", edited(param("input", "shared_memory_region", string_param="r")),
         INVALID, ("parameter 'shared_memory_region' is not supported",)),
    Case("classification_output", edited(param("output", "classification", int64_param=3)),
         INVALID, ("parameter 'classification' is not supported",)),
]


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(server.url, options=[("grpc.max_send_message_length", 256 * MIB),
                                                    ("grpc.max_receive_message_length", 256 * MIB)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request(stub, case):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(case.build(), timeout=RPC_TIMEOUT)
    err = e.value
    details = err.details() or ""
    assert err.code() == case.code, f"expected {case.code.name}, got {err.code().name}: {details}"
    for needle in case.needles:
        assert needle in details, f"{needle!r} not in {details[:300]!r}"
    assert len(details) <= MAX_MESSAGE, f"message of {len(details)} bytes echoes client input"
    assert "\n" not in details


def test_oversize_message_is_resource_exhausted(stub):
    big = np.ones((65 * MIB // 64, 16), np.float32)  # 65 MiB: over the 64 MiB default
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req(inputs={"x": big}), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()


# The same limits on the native pt2serve.v1 API: (id, edit of a good RunRequest, code, needles).
NATIVE_CASES = [
    ("huge_model_name", lambda r, pb2: setattr(r, "model", "m" * MIB), INVALID,
     ("model name is 1048576 bytes long",)),
    ("huge_request_id", lambda r, pb2: setattr(r, "request_id", "i" * MIB), INVALID,
     ("request_id is 1048576 bytes long",)),
    ("huge_output_name", lambda r, pb2: r.outputs.append("o" * MIB), INVALID,
     ("a requested output name is 1048576 bytes long",)),
    ("rank_33", lambda r, pb2: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([1] * 33)),
     INVALID, ("33 dims (at most 32)",)),
    ("invalid_dtype", lambda r, pb2: setattr(r.inputs[0], "dtype", pb2.DT_INVALID), INVALID,
     ("unsupported dtype",)),
    ("negative_dim", lambda r, pb2: r.inputs[0].shape.__setitem__(0, -3), INVALID, ("negative",)),
]


@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_malformed_native_request(server, pb, case):
    _, edit, code, needles = case
    pb2 = pb.inference_pb2
    r = pb2.RunRequest(model="mlp", inputs=[pb2.Tensor(name="x", dtype=pb2.DT_FLOAT32,
                                                       shape=[3, 16], data=X.tobytes())])
    edit(r, pb2)
    with server.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb.inference_pb2_grpc.InferenceStub(ch).Run(r, timeout=RPC_TIMEOUT)
    details = e.value.details() or ""
    assert e.value.code() == code, f"{e.value.code().name}: {details[:300]}"
    for needle in needles:
        assert needle in details, f"{needle!r} not in {details[:300]!r}"
    assert len(details) <= MAX_MESSAGE


def test_zz_daemon_still_serves_after_the_catalogue(server, stub, refs):
    assert server.alive()
    ref = refs["mlp"]
    r = stub.ModelInfer(req(inputs=ref["inputs"]), timeout=RPC_TIMEOUT)
    got = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(tuple(r.outputs[0].shape))
    assert_close("y", got, ref["outputs"]["y"])
