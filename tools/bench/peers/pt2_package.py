"""One .pt2 package loaded through torch._inductor.aoti_load_package, shared by the peer servers.

The signature (input/output names, dtypes, shapes, batch limit) comes from the package's own
`pt2serve.signature` metadata entry, which tools/export/export_model.py writes; a
NAME.signature.json file next to the package is the fallback. Instances are independent
containers (one per runner); `acquire()` hands one out to one caller at a time.
"""
from __future__ import annotations

import json
import queue
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

SIGNATURE_KEY = "pt2serve.signature"

# KServe v2 datatype names of the dtypes the zoo uses.
KSERVE_DTYPES = {
    "float32": ("FP32", np.float32), "float16": ("FP16", np.float16), "float64": ("FP64", np.float64),
    "int64": ("INT64", np.int64), "int32": ("INT32", np.int32), "int8": ("INT8", np.int8),
    "uint8": ("UINT8", np.uint8), "bool": ("BOOL", np.bool_),
}


class Pt2Package:
    def __init__(self, path: str, instances: int = 1, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no package at {path}")
        self.device = torch.device(device)
        index = self.device.index if self.device.type == "cuda" and self.device.index is not None else -1
        self._models = [torch._inductor.aoti_load_package(str(self.path), device_index=index)
                        for _ in range(max(1, instances))]
        self.signature = self._read_signature()
        self.inputs = self.signature["inputs"]
        self.outputs = self.signature["outputs"]
        self.max_batch_size = int(self.signature.get("max_batch_size", 0))
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for m in self._models:
            self._free.put(m)

    def _read_signature(self) -> dict:
        meta = self._models[0].get_metadata() if hasattr(self._models[0], "get_metadata") else {}
        if SIGNATURE_KEY in meta:
            return json.loads(meta[SIGNATURE_KEY])
        side = self.path.with_name(self.path.name[: -len(".pt2")] + ".signature.json")
        if side.is_file():
            return json.loads(side.read_text())
        raise ValueError(f"{self.path}: no '{SIGNATURE_KEY}' metadata and no {side.name}; "
                         "export it with tools/export/export_model.py")

    @property
    def instances(self) -> int:
        return len(self._models)

    @contextmanager
    def acquire(self):
        """One container for the caller alone; blocks while all are in use (thread-safe)."""
        model = self._free.get()
        try:
            yield model
        finally:
            self._free.put(model)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Runs the package on numpy inputs (signature order); numpy outputs (signature order)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        with torch.inference_mode(), self.acquire() as model:
            out = model(*tensors)
        if isinstance(out, torch.Tensor):
            out = [out]
        elif isinstance(out, dict):
            out = [out[o["name"]] for o in self.outputs]
        return [t.detach().cpu().numpy() for t in out]
