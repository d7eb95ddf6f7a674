#!/usr/bin/env bash
# Regenerates the seed corpus in tests/fuzz/corpus/<target>/: small valid (and
# a few nearly valid) inputs for each fuzz target. The protobuf seeds are
# written in text format below and encoded with protoc; the others are plain
# files. Seeds found by fuzzing (regressions) are kept in the same folders
# under names starting with "regression-"; this script never touches those.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=tests/fuzz/corpus
mkdir -p $C/{kserve_request,native_request,upload_manifest,safetensors,signature_json,server_config}
rm -f $C/*/seed-*

enc() {  # enc MESSAGE_TYPE PROTO OUT <<< text
  protoc --proto_path=proto --encode="$1" "$2" > "$3"
}
K=kserve/grpc_service.proto
N=pt2serve/v1/inference.proto
A=pt2serve/v1/admin.proto

# --- kserve_request: inference.ModelInferRequest --------------------------------
enc inference.ModelInferRequest $K $C/kserve_request/seed-raw-fp32 <<'T'
model_name: "mlp" id: "r1"
inputs { name: "x" datatype: "FP32" shape: 1 shape: 16 }
outputs { name: "y" }
raw_input_contents: "\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?\000\000\200?"
T
enc inference.ModelInferRequest $K $C/kserve_request/seed-typed-fp32 <<'T'
model_name: "mlp" model_version: "1"
parameters { key: "timeout" value { int64_param: 1000 } }
inputs { name: "x" datatype: "FP32" shape: 1 shape: 16
  contents { fp32_contents: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] } }
T
enc inference.ModelInferRequest $K $C/kserve_request/seed-shared-dims <<'T'
model_name: "bert"
inputs { name: "x" datatype: "FP32" shape: 1 shape: 16 }
inputs { name: "ids" datatype: "INT64" shape: 1 shape: 2 }
inputs { name: "mask" datatype: "BOOL" shape: 1 shape: 2 }
inputs { name: "h" datatype: "BF16" shape: 2 shape: 1 }
raw_input_contents: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
raw_input_contents: "\001\000\000\000\000\000\000\000\002\000\000\000\000\000\000\000"
raw_input_contents: "\001\000"
raw_input_contents: "\200?\200?"
T
enc inference.ModelInferRequest $K $C/kserve_request/seed-typed-int <<'T'
model_name: "m"
parameters { key: "priority" value { uint64_param: 2 } }
inputs { name: "ids" datatype: "INT64" shape: 1 shape: 3 contents { int64_contents: [1, 2, 3] } }
inputs { name: "mask" datatype: "BOOL" shape: 1 shape: 3 contents { bool_contents: [true, false, true] } }
inputs { name: "i8" datatype: "INT8" shape: 2 contents { int_contents: [-1, 127] } }
inputs { name: "u8" datatype: "UINT8" shape: 1 contents { uint_contents: [255] } }
inputs { name: "d" datatype: "FP64" shape: 1 contents { fp64_contents: [0.5] } }
outputs { name: "y" parameters { key: "classification" value { int64_param: 1 } } }
T
enc inference.ModelInferRequest $K $C/kserve_request/seed-bad-shm <<'T'
model_name: "m"
inputs { name: "x" datatype: "FP16" shape: -1 shape: 40
  parameters { key: "shared_memory_region" value { string_param: "r" } } }
T

# --- native_request: pt2serve.v1.RunRequest --------------------------------------
enc pt2serve.v1.RunRequest $N $C/native_request/seed-fp32 <<'T'
model: "mlp" request_id: "r1" outputs: "y"
inputs { name: "x" dtype: DT_FLOAT32 shape: 1 shape: 16
  data: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
T
enc pt2serve.v1.RunRequest $N $C/native_request/seed-shared-dims <<'T'
model: "bert" priority: 1 model_version: 2
inputs { name: "x" dtype: DT_FLOAT32 shape: 1 shape: 16
  data: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
inputs { name: "ids" dtype: DT_INT64 shape: 1 shape: 2
  data: "\001\000\000\000\000\000\000\000\002\000\000\000\000\000\000\000" }
inputs { name: "mask" dtype: DT_BOOL shape: 1 shape: 2 data: "\001\000" }
inputs { name: "h" dtype: DT_BFLOAT16 shape: 2 shape: 1 data: "\200?\200?" }
T
enc pt2serve.v1.RunRequest $N $C/native_request/seed-odd <<'T'
model: "m"
inputs { name: "a" dtype: DT_FLOAT16 shape: 0 shape: 9223372036854775807 }
inputs { name: "b" dtype: DT_INVALID shape: 1 }
T

# --- upload_manifest: pt2serve.v1.UpdateConstantBufferRequest --------------------
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-header-ok <<'T'
header { model: "mlp" version: "v2"
  sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
  tensors {
    entries { name: "emb" dtype: DT_BFLOAT16 shape: 2 shape: 2 byte_size: 8 }
    entries { name: "fc1.bias" dtype: DT_FLOAT32 shape: 4 byte_size: 16 }
    entries { name: "fc1.weight" dtype: DT_FLOAT32 shape: 4 shape: 3 byte_size: 48 }
    entries { name: "scale" dtype: DT_FLOAT64 byte_size: 8 }
  } }
T
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-header-problems <<'T'
header { model: "mlp" version: "" sha256: "xyz" sha256_in_trailer: true
  tensors {
    entries { name: "fc1.bias" dtype: DT_FLOAT16 shape: 4 byte_size: 8 }
    entries { name: "fc1.bias" dtype: DT_FLOAT32 shape: 4 byte_size: 16 }
    entries { name: "extra" dtype: DT_INT8 shape: 1 byte_size: 1 }
    entries { name: "fc1.weight" dtype: DT_FLOAT32 shape: 3 shape: 4 byte_size: 48 }
  } }
T
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-header-path <<'T'
header { model: "mlp" version: "v3" server_path: "weights/mlp-v3.safetensors" }
T
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-chunk <<'T'
chunk { name: "fc1.weight" offset: 16 data: "0123456789abcdef" }
T
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-chunk-nodata <<'T'
chunk { name: "scale" }
T
enc pt2serve.v1.UpdateConstantBufferRequest $A $C/upload_manifest/seed-trailer <<'T'
trailer { sha256: "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855" }
T

# --- safetensors ---------------------------------------------------------------
python3 - "$C/safetensors" <<'PY'
import json, struct, sys
out = sys.argv[1]
def st(name, header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    open(f"{out}/{name}", "wb").write(struct.pack("<Q", len(h)) + h + data)
st("seed-two-tensors", {"__metadata__": {"format": "pt", "version": "v2"},
    "fc1.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "fc1.bias": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}},
   bytes(range(20)))
st("seed-all-dtypes", {k: {"dtype": k, "shape": [1], "data_offsets": [o, o + n]}
    for k, o, n in [("BOOL", 0, 1), ("U8", 1, 1), ("I8", 2, 1), ("I16", 3, 2), ("I32", 5, 4),
                    ("I64", 9, 8), ("F16", 17, 2), ("F32", 19, 4), ("F64", 23, 8)]},
   bytes(31))
st("seed-empty-and-scalar", {"empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
    "scalar": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, bytes(8))
st("seed-overlap", {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6))
st("seed-empty-header", {}, b"", pad=False)
PY

# --- signature_json ------------------------------------------------------------
cat > $C/signature_json/seed-mlp <<'J'
{"inputs":[{"name":"x","dtype":"float32","shape":[-1,16]}],"outputs":[{"name":"y","dtype":"float16","shape":[-1,8]}],"max_batch_size":64}
J
cat > $C/signature_json/seed-dims <<'J'
{"inputs":[{"name":"ids","dtype":"int64","shape":[-1,-1],"dims":[{"min":1,"max":8,"symbol":"batch"},{"min":1,"max":512,"symbol":"seq"}]},{"name":"mask","dtype":"torch.bool","shape":[-1,-1]}],"outputs":[{"name":"out","dtype":"bfloat16","shape":[-1,4]}],"max_batch_size":8}
J

# --- server_config ---------------------------------------------------------------
cp config/pt2serve.example.yaml $C/server_config/seed-example.yaml
cat > $C/server_config/seed-models.yaml <<'Y'
inference_address: 127.0.0.1:9001
admin_address: ""
log_format: json
models:
  - name: mlp
    path: /models/mlp.pt2
    device: cuda:0,cuda:1
    num_runners: 2
    inputs:
      - {name: x, dtype: float32, shape: [-1, 16]}
    outputs:
      - {name: y, dtype: float32, shape: [-1, 8]}
    max_batch_size: 32
    dynamic_batching:
      max_batch_size: 16
      preferred_batch_sizes: [4, 8]
      priority_levels: 2
      priority_queue_sizes: [8, 16]
Y
cat > $C/server_config/seed-repository.yaml <<'Y'
num_runners: 3
device: cpu
version_policy: {specific: [1, 3]}
Y
printf 'version_policy: all\nname: m\nisolation: process\n' > $C/server_config/seed-policy.yaml
printf '[[[{a: &x [*x]}]]]\n' > $C/server_config/seed-odd.yaml
echo "seeds written under $C"
