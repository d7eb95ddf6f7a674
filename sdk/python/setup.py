"""Builds pt2serve-client with Python stubs generated from the repository's protos.

The generated `pt2serve.v1` package (admin_pb2, inference_pb2 and their _grpc modules) is
written into the build directory next to `pt2serve_client`, so the wheel carries both; no
wire code is written by hand. Build from a checkout (the protos live in ../../proto):

    pip install sdk/python            # or: pip wheel --no-deps sdk/python
"""

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTOS = ("pt2serve/v1/inference.proto", "pt2serve/v1/admin.proto")


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        import grpc_tools

        out = Path(self.build_lib)
        wkt = Path(grpc_tools.__file__).parent / "_proto"
        missing = [p for p in PROTOS if not (PROTO_ROOT / p).is_file()]
        if missing:
            raise SystemExit(f"pt2serve-client: protos not found under {PROTO_ROOT}: {missing} "
                             "(build from a pt2serve checkout)")
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{wkt}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS], check=True)
        for package in (out / "pt2serve", out / "pt2serve" / "v1"):
            (package / "__init__.py").touch()


setup(cmdclass={"build_py": BuildPyWithStubs})
