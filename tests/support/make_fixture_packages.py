"""Makes broken and foreign .pt2 packages for the load-error tests.

Usage: make_fixture_packages.py SRC_MODEL_DIR OUT_DIR

- corrupt.pt2: the first 4 KiB of mlp.pt2 (a zip that ends mid-entry).
- not_a_zip.pt2: plain text.
- fake_cuda.pt2, fake_xpu.pt2: mlp.pt2 with AOTI_DEVICE_KEY rewritten to
  "cuda" / "xpu", i.e. packages built for a device a host may not have (the
  test picks one its host lacks).
- no_signature.pt2: mlp.pt2 without the pt2serve.signature metadata.
- foreign_machine.pt2: mlp.pt2 claiming it was compiled for AOTI_MACHINE "riscv64" (native
  code for another CPU).
- bad_crc.pt2: mlp.pt2 with one byte of its (stored) wrapper source changed after writing, so the
  entry's CRC-32 no longer matches; the zip structure is intact.

Alternative weight sets for the hot-swap tests (tools/export/export_model.py weights):
- mlp.seed{7,8}.weights.safetensors / mlp.seed{7,8}.reference.safetensors: the mlp built with
  that seed, and the eager output for the fixed reference input.
- mlp.seed7.weights.sha256: sha256 of that file's bytes; mlp.seed7.data.sha256: sha256 of its
  tensors' data concatenated in FQN order (what an in-order upload hashes).
- mlp.bad_dtype / bad_shape / missing / unknown / all_wrong .weights.safetensors: seed 7 with
  fc1.bias as float16 / fc1.weight as [64, 15] / without fc2.bias / plus an extra 'foo' / all of
  these at once.
The weight files are rebuilt only when the exporter's cache key changes.
"""
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "export"))


def rewrite_metadata(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".tmp", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("wrapper_metadata.json"):
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    os.replace(dst + ".tmp", dst)


def flip_stored_byte(src, dst):
    """Copies `src` with the wrapper source stored uncompressed, then changes one data byte."""
    import struct

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".tmp", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".wrapper.cpp"):
                item.compress_type = zipfile.ZIP_STORED
            zout.writestr(item, data)
    with zipfile.ZipFile(dst + ".tmp") as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".wrapper.cpp"))
    with open(dst + ".tmp", "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    os.replace(dst + ".tmp", dst)


def main():
    src_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    mlp = os.path.join(src_dir, "mlp.pt2")
    with open(mlp, "rb") as f:
        head = f.read(4096)
    with open(os.path.join(out_dir, "corrupt.pt2"), "wb") as f:
        f.write(head)
    with open(os.path.join(out_dir, "not_a_zip.pt2"), "w") as f:
        f.write("this is not a model package\n")
    for device in ("cuda", "xpu"):
        rewrite_metadata(mlp, os.path.join(out_dir, f"fake_{device}.pt2"),
                         lambda m, d=device: m.update(AOTI_DEVICE_KEY=d))
    rewrite_metadata(mlp, os.path.join(out_dir, "no_signature.pt2"),
                     lambda m: m.pop("pt2serve.signature", None))
    rewrite_metadata(mlp, os.path.join(out_dir, "foreign_machine.pt2"),
                     lambda m: m.update(AOTI_MACHINE="riscv64"))
    flip_stored_byte(mlp, os.path.join(out_dir, "bad_crc.pt2"))
    make_weight_sets(Path(out_dir))


def make_weight_sets(out: Path):
    import export_model  # needs torch; imported here so the zip fixtures never do
    import torch
    from safetensors.torch import load_file, save_file

    stamp = out / "weights.stamp"
    key = export_model.cache_key()
    if stamp.is_file() and stamp.read_text() == key:
        return
    for seed in (7, 8):
        export_model.main(["weights", "--model", "mlp", "--seed", str(seed),
                           "--out", str(out / f"mlp.seed{seed}.weights.safetensors"),
                           "--reference", str(out / f"mlp.seed{seed}.reference.safetensors")])
    seed7_path = out / "mlp.seed7.weights.safetensors"
    (out / "mlp.seed7.weights.sha256").write_text(
        hashlib.sha256(seed7_path.read_bytes()).hexdigest() + "\n")
    seed7 = load_file(str(seed7_path))
    data = hashlib.sha256()
    for name in sorted(seed7):
        data.update(seed7[name].contiguous().numpy().tobytes())
    (out / "mlp.seed7.data.sha256").write_text(data.hexdigest() + "\n")

    def bad(name, edit):
        tensors = {k: v.clone() for k, v in seed7.items()}
        edit(tensors)
        save_file(tensors, str(out / f"mlp.{name}.weights.safetensors"))

    def wrong_dtype(t):
        t["fc1.bias"] = t["fc1.bias"].to(torch.float16)

    def wrong_shape(t):
        t["fc1.weight"] = t["fc1.weight"][:, :15].contiguous()

    def missing(t):
        del t["fc2.bias"]

    def unknown(t):
        t["foo"] = torch.zeros(3)

    def all_wrong(t):
        for edit in (wrong_dtype, wrong_shape, missing, unknown):
            edit(t)

    bad("bad_dtype", wrong_dtype)
    bad("bad_shape", wrong_shape)
    bad("missing", missing)
    bad("unknown", unknown)
    bad("all_wrong", all_wrong)
    stamp.write_text(key)


if __name__ == "__main__":
    main()
