"""Makes broken and foreign .pt2 packages for the load-error tests.

Usage: make_fixture_packages.py SRC_MODEL_DIR OUT_DIR

- corrupt.pt2: the first 4 KiB of mlp.pt2 (a zip that ends mid-entry).
- not_a_zip.pt2: plain text.
- fake_cuda.pt2: mlp.pt2 with AOTI_DEVICE_KEY rewritten to "cuda", i.e. a
  package this CPU-only host cannot run.
- no_signature.pt2: mlp.pt2 without the pt2serve.signature metadata.
"""
import json
import os
import sys
import zipfile


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
    rewrite_metadata(mlp, os.path.join(out_dir, "fake_cuda.pt2"),
                     lambda m: m.update(AOTI_DEVICE_KEY="cuda"))
    rewrite_metadata(mlp, os.path.join(out_dir, "no_signature.pt2"),
                     lambda m: m.pop("pt2serve.signature", None))


if __name__ == "__main__":
    main()
