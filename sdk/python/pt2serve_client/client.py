"""Client: the admin API's weight operations over the generated pt2serve.v1 stubs.

A push streams one UpdateConstantBuffer call: a header announcing every tensor (name, dtype,
shape, byte size), the data in chunks read from each tensor's own memory (torch tensors on
the CPU and contiguous numpy arrays are not copied as a whole; each chunk is copied once into
its message), and a trailer with the SHA-256 of the bytes sent, hashed on a helper thread while
sending. The
server stages the set only when every byte arrived and the digest matches; otherwise the
active weights keep serving and nothing is staged.

Thread-safety: a Client may be shared by threads (gRPC channels are thread-safe); one push
per model at a time (the server refuses a second with FAILED_PRECONDITION).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import grpc
import numpy as np

from pt2serve.v1 import admin_pb2, admin_pb2_grpc, inference_pb2

# Small enough that gRPC Python's two copies of each chunk (into its message, then serialized)
# stay in the CPU's caches: 512 KiB chunks pushed 724 MB/s on the H200 host where 2 MiB ones
# pushed 533 MB/s (tools/bench/sdk_chunk_cost.py, docs/benchmarks.md).
DEFAULT_CHUNK_BYTES = 512 << 10

# numpy dtype -> wire dtype. bfloat16 comes from torch (numpy has none).
_NUMPY_DTYPES = {
    np.dtype(np.bool_): inference_pb2.DT_BOOL,
    np.dtype(np.uint8): inference_pb2.DT_UINT8,
    np.dtype(np.int8): inference_pb2.DT_INT8,
    np.dtype(np.int16): inference_pb2.DT_INT16,
    np.dtype(np.int32): inference_pb2.DT_INT32,
    np.dtype(np.int64): inference_pb2.DT_INT64,
    np.dtype(np.float16): inference_pb2.DT_FLOAT16,
    np.dtype(np.float32): inference_pb2.DT_FLOAT32,
    np.dtype(np.float64): inference_pb2.DT_FLOAT64,
}
_TORCH_DTYPES = {  # torch dtype name -> wire dtype
    "bool": inference_pb2.DT_BOOL, "uint8": inference_pb2.DT_UINT8,
    "int8": inference_pb2.DT_INT8, "int16": inference_pb2.DT_INT16,
    "int32": inference_pb2.DT_INT32, "int64": inference_pb2.DT_INT64,
    "float16": inference_pb2.DT_FLOAT16, "bfloat16": inference_pb2.DT_BFLOAT16,
    "float32": inference_pb2.DT_FLOAT32, "float64": inference_pb2.DT_FLOAT64,
}
class _BackgroundSha256:
    """SHA-256 of the pushed bytes on a helper thread: hashlib releases the GIL while it hashes
    a large buffer, so the digest is computed while gRPC serializes and sends the next chunks
    instead of before each one. The caller keeps every buffer alive until hexdigest()."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pt2serve-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            self._hash.update(piece)

    def update(self, piece) -> None:
        self._queue.put(piece)

    def hexdigest(self) -> str:
        """Waits for every queued piece; the hasher is finished afterwards."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self._hash.hexdigest()

    def abandon(self) -> None:
        """Stops the helper without waiting for a result (a push that failed)."""
        if self._thread.is_alive():
            self._queue.put(None)


# Prefixes that wrappers add to state_dict keys but that are not part of the exported
# module's constant names: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class PushError(RuntimeError):
    """A refused or failed weight operation. `code` is the grpc.StatusCode (None for a
    local problem, e.g. an unsupported tensor type), `details` the server's message."""

    def __init__(self, operation: str, code: Optional[grpc.StatusCode], details: str):
        self.operation, self.code, self.details = operation, code, details
        name = code.name if code is not None else "LOCAL_ERROR"
        super().__init__(f"{operation}: {name}: {details}")


@dataclass
class PushResult:
    model: str
    version: str
    bytes_sent: int
    tensors: int
    sha256: str
    staged_bytes: int
    server_staging_us: int
    swapped: bool = False


@dataclass
class _Entry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    data: memoryview  # bytes of the tensor, C order, no copy of the tensor


def map_keys(state_dict: Mapping[str, Any], key_map: Optional[Mapping[str, str]] = None,
             strip_prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """state_dict key -> the package's constant FQN.

    The exporter names constants by their state_dict keys in the exported module
    ("fc1.weight"), so a key maps to itself after removing wrapper prefixes ("module.",
    "_orig_mod.", repeatedly). `key_map` overrides single keys (given as they appear in
    `state_dict`; map a key to None to leave it out, e.g. buffers that are not constants).
    Raises ValueError if two keys map to one name."""
    key_map = dict(key_map or {})
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key in key_map:
            name = key_map[key]
            if name is None:
                continue
        else:
            name = key
            stripped = True
            while stripped:
                stripped = False
                for prefix in strip_prefixes:
                    if name.startswith(prefix):
                        name, stripped = name[len(prefix):], True
        if name in out:
            raise ValueError(f"state_dict keys map to the same constant '{name}'")
        out[name] = value
    return out


def _entry(name: str, value: Any) -> _Entry:
    """A tensor's bytes without copying it (a CUDA tensor is copied to the host once)."""
    if type(value).__module__.startswith("torch"):
        import torch  # only when the caller passes torch tensors

        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        dtype_name = str(t.dtype).removeprefix("torch.")
        if dtype_name not in _TORCH_DTYPES:
            raise PushError("push", None, f"tensor '{name}' has unsupported dtype {t.dtype}")
        # A byte view of the storage (works for bfloat16, which numpy cannot represent).
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        return _Entry(name, _TORCH_DTYPES[dtype_name], tuple(t.shape), memoryview(raw).cast("B"))
    array = np.asarray(value)
    if array.dtype not in _NUMPY_DTYPES:
        raise PushError("push", None, f"tensor '{name}' has unsupported dtype {array.dtype}")
    array = np.ascontiguousarray(array)
    return _Entry(name, _NUMPY_DTYPES[array.dtype], tuple(array.shape),
                  memoryview(array.reshape(-1).view(np.uint8)))


def _entries(weights: Union[str, os.PathLike, Mapping[str, Any]],
             key_map: Optional[Mapping[str, str]]) -> list[_Entry]:
    if isinstance(weights, (str, os.PathLike)):
        from safetensors.numpy import load_file  # memory-maps the file's data

        weights = load_file(os.fspath(weights))
    return [_entry(name, value) for name, value in map_keys(weights, key_map).items()]


class Client:
    """The admin API of one pt2serve daemon.

    admin_address: "host:port" or "unix:/path". token: the admin bearer token (default: the
    PT2SERVE_ADMIN_TOKEN environment variable). tls: None (plaintext), True (TLS with the
    system roots) or a dict of grpc.ssl_channel_credentials arguments (root_certificates,
    private_key, certificate_chain) as bytes."""

    def __init__(self, admin_address: str, token: Optional[str] = None,
                 tls: Union[None, bool, Mapping[str, bytes]] = None, timeout: float = 300.0):
        self.admin_address = admin_address
        self.timeout = timeout
        token = token if token is not None else os.environ.get("PT2SERVE_ADMIN_TOKEN", "")
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        options = [("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", -1)]
        if tls:
            creds = grpc.ssl_channel_credentials(**(tls if isinstance(tls, Mapping) else {}))
            self._channel = grpc.secure_channel(admin_address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(admin_address, options=options)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, operation: str, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise PushError(operation, e.code(), e.details() or "") from None

    # ------------------------------------------------------------------------ push

    def push(self, model: str, weights: Union[str, os.PathLike, Mapping[str, Any]],
             version: str, swap: bool = False, *,
             key_map: Optional[Mapping[str, str]] = None,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             progress: Optional[Callable[[int, int], None]] = None) -> PushResult:
        """Stages `weights` on `model` as `version` (and swaps it in with swap=True).

        weights: a state_dict-like mapping of torch tensors or numpy arrays, or the path of a
        .safetensors file (memory-mapped). Every constant of the package must be given
        exactly once with its dtype and shape; the server refuses anything else with one
        INVALID_ARGUMENT naming every unknown, missing or mismatched tensor (PushError).
        progress(bytes_sent, bytes_total) is called after each chunk; an exception it raises
        cancels the push (nothing is staged)."""
        if not version:
            raise ValueError("version must not be empty")
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        result = self._push_entries(model, _entries(weights, key_map), version, progress,
                                    chunk_bytes)
        if swap:
            self.swap(model, expected_version=version)
            result.swapped = True
        return result

    def _push_entries(self, model: str, entries: list[_Entry], version: str,
                      progress: Optional[Callable[[int, int], None]],
                      chunk_bytes: int) -> PushResult:
        total = sum(e.data.nbytes for e in entries)
        hasher = _BackgroundSha256()
        sent = 0
        raised: list[BaseException] = []  # by `progress` (or our own code) while streaming

        def requests() -> Iterator[admin_pb2.UpdateConstantBufferRequest]:
            try:
                yield from stream()
            except BaseException as e:  # gRPC cancels the call; re-raised below
                raised.append(e)
                raise

        def stream() -> Iterator[admin_pb2.UpdateConstantBufferRequest]:
            nonlocal sent
            manifest = admin_pb2.TensorManifest(entries=[
                admin_pb2.ManifestEntry(name=e.name, dtype=e.dtype, shape=list(e.shape),
                                        byte_size=e.data.nbytes) for e in entries])
            yield admin_pb2.UpdateConstantBufferRequest(header=admin_pb2.UpdateHeader(
                model=model, version=version, tensors=manifest, sha256_in_trailer=True))
            for e in entries:
                for offset in range(0, e.data.nbytes, chunk_bytes):
                    piece = e.data[offset:offset + chunk_bytes]
                    hasher.update(piece)
                    yield admin_pb2.UpdateConstantBufferRequest(chunk=admin_pb2.TensorChunk(
                        name=e.name, offset=offset, data=piece.tobytes()))
                    sent += piece.nbytes
                    if progress is not None:
                        progress(sent, total)
            yield admin_pb2.UpdateConstantBufferRequest(
                trailer=admin_pb2.UpdateTrailer(sha256=hasher.hexdigest()))

        try:
            reply = self._admin.UpdateConstantBuffer(requests(), metadata=self._metadata,
                                                     timeout=self.timeout)
        except grpc.RpcError as e:
            hasher.abandon()
            if raised:
                raise raised[0]
            raise PushError("push", e.code(), e.details() or "") from None
        result = PushResult(model=model, version=reply.version, bytes_sent=sent,
                            tensors=len(entries), sha256=hasher.hexdigest(),
                            staged_bytes=reply.staged_bytes,
                            server_staging_us=reply.fold_time_us)
        return result

    # ----------------------------------------------------------- other operations

    def swap(self, model: str, expected_version: str = "",
             expected_active: str = "") -> admin_pb2.SwapResponse:
        """Makes the STAGED set active (guarded: only if it is `expected_version`, and only
        if `expected_active` is what serves now; see SwapRequest)."""
        return self._call("swap", self._admin.SwapConstantBuffer,
                          admin_pb2.SwapRequest(model=model, expected_version=expected_version,
                                                expected_active_version=expected_active))

    def rollback(self, model: str) -> admin_pb2.SwapResponse:
        return self._call("rollback", self._admin.Rollback, admin_pb2.RollbackRequest(model=model))

    def free_inactive(self, model: str) -> int:
        """Frees the inactive buffer; returns the bytes released."""
        reply = self._call("free_inactive", self._admin.FreeInactiveConstantBuffer,
                           admin_pb2.FreeInactiveRequest(model=model))
        return reply.freed_bytes

    def status(self, model: str) -> admin_pb2.ConstantBufferStatus:
        return self._call("status", self._admin.GetConstantBufferStatus,
                          admin_pb2.ConstantBufferStatusRequest(model=model))


# ------------------------------------------------------------------------ fleet rollout


@dataclass
class ReplicaOutcome:
    endpoint: str
    before: str = ""          # ACTIVE version seen in phase 0
    outcome: str = ""         # "committed", "already active", "aborted", "failed: ..."
    committed_at: float = 0.0  # time.monotonic() of the commit reply


class RolloutError(RuntimeError):
    def __init__(self, message: str, replicas: list[ReplicaOutcome]):
        self.replicas = replicas
        super().__init__(message + ": " + "; ".join(f"{r.endpoint}: {r.outcome}" for r in replicas))


def rollout(endpoints: Iterable[str], model: str, weights, version: str, *,
            token: Optional[str] = None, tls=None, key_map: Optional[Mapping[str, str]] = None,
            timeout: float = 600.0) -> list[ReplicaOutcome]:
    """One weight change across every replica (admin endpoint) of a deployment, in the two
    phases of `pt2ctl weights rollout` (tools/pt2ctl/fleet_rollout.h):

    0. inspect: the ACTIVE version of every replica; those already on `version` are skipped.
    1. stage: push to every other replica in parallel, then check that each reports `version`
       STAGED with one and the same SHA-256. Any failure: free the set where it was staged
       under `version` and raise RolloutError; nothing served changes.
    2. commit: swap on every staged replica in parallel, guarded by the staged version and by
       the ACTIVE version seen in phase 0. Failures are reported (RolloutError) with the
       replicas that did commit; there is no automatic rollback.

    A single endpoint is the single-server flow (push, then guarded swap). Returns one
    ReplicaOutcome per endpoint."""
    from concurrent.futures import ThreadPoolExecutor
    import time

    endpoints = list(endpoints)
    if not endpoints:
        raise ValueError("no endpoints")
    clients = [Client(e, token=token, tls=tls, timeout=timeout) for e in endpoints]
    reports = [ReplicaOutcome(e) for e in endpoints]
    entries = _entries(weights, key_map)  # one conversion, shared by every push
    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            for r, st in zip(reports, pool.map(lambda c: c.status(model), clients)):
                r.before = st.active.version
            todo = [i for i, r in enumerate(reports) if r.before != version]
            for i, r in enumerate(reports):
                if i not in todo:
                    r.outcome = "already active"
            if not todo:
                return reports

            def stage(i: int) -> str:
                try:
                    clients[i]._push_entries(model, entries, version, None, DEFAULT_CHUNK_BYTES)
                    st = clients[i].status(model)
                    if st.inactive.state != admin_pb2.STAGED or st.inactive.version != version:
                        return f"not STAGED after the push (inactive '{st.inactive.version}')"
                    return "sha256:" + st.inactive.sha256
                except PushError as e:
                    return f"failed: {e}"

            results = list(pool.map(stage, todo))
            if len(set(results)) != 1 or not results[0].startswith("sha256:"):
                for i, res in zip(todo, results):
                    reports[i].outcome = res if not res.startswith("sha256:") else "aborted"
                    st = clients[i].status(model)
                    if st.inactive.state == admin_pb2.STAGED and st.inactive.version == version:
                        clients[i].free_inactive(model)
                raise RolloutError("rollout aborted in the stage phase", reports)

            def commit(i: int) -> None:
                try:
                    clients[i].swap(model, expected_version=version,
                                    expected_active=reports[i].before)
                    reports[i].outcome = "committed"
                except PushError as e:
                    reports[i].outcome = f"failed: {e}"
                reports[i].committed_at = time.monotonic()

            list(pool.map(commit, todo))
        failed = [r for r in reports if r.outcome.startswith("failed")]
        if failed:
            raise RolloutError(f"{len(failed)} of {len(todo)} replicas did not commit", reports)
        return reports
    finally:
        for c in clients:
            c.close()
