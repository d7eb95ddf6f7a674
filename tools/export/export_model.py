#!/usr/bin/env python3
"""Export nn.Modules to AOTInductor .pt2 packages for pt2serve.

For a model NAME, the output directory receives:
  NAME.pt2                    AOTInductor package; metadata holds pt2serve.signature (JSON),
                              pt2serve.model_name and pt2serve.exporter_version
  NAME.weights.safetensors    the weights compiled into the package, keyed by constant FQN
  NAME.reference.safetensors  input.<name> / output.<name>: fixed batch-3 input and the eager output
  NAME.signature.json         same JSON as the pt2serve.signature metadata entry

Subcommands: zoo (cached export of tools/export/model_zoo.py), module (any user module),
weights (alternative weight sets for hot-swap tests). See --help of each.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_zoo import DEFAULT_SEED, MAX_BATCH, REFERENCE_BATCH, ZOO, TensorSpec, make_inputs  # noqa: E402

DTYPE_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
    torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
ARTIFACTS = (".pt2", ".weights.safetensors", ".reference.safetensors", ".signature.json")
SOURCES = (Path(__file__).resolve(), Path(__file__).resolve().parent / "model_zoo.py")


def cache_key() -> str:
    """torch version + hash of the exporter sources: a change to either invalidates the cache."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    return f"{torch.__version__}-{h.hexdigest()[:12]}"


def default_cache_root() -> Path:
    return Path(os.environ.get("PT2SERVE_CACHE") or Path.home() / ".cache/pt2serve/models")


def export_program(module: torch.nn.Module, inputs: tuple, specs: list[TensorSpec],
                   max_batch: int) -> ExportedProgram:
    # Dim 0 marked -1 shares one "batch" symbol across inputs; other -1 dims get their own.
    batch = Dim("batch", min=1, max=max_batch)
    dynamic = tuple(
        {i: batch if i == 0 else Dim(f"{s.name}_dim{i}", min=1) for i, d in enumerate(s.shape) if d == -1}
        or None
        for s in specs
    )
    return torch.export.export(module, inputs, dynamic_shapes=dynamic)


def constant_fqns(ep: ExportedProgram) -> list[str]:
    """FQNs of the constants the compiled package holds, in graph-signature order.

    Export lifts every parameter and buffer, including BatchNorm's `num_batches_tracked`, which an
    eval-mode forward never reads. AOTInductor drops such unused placeholders: the cnn package's
    wrapper lists 8 non-folded constants, without bn.num_batches_tracked (checked on torch 2.13).
    So keep only lifted parameters/buffers whose placeholder has users. Runtime constant folding
    adds `_FOLDED_CONST_*` entries derived from these; they are not user-updatable weights.
    """
    used = {n.name for n in ep.graph.nodes if n.op == "placeholder" and n.users}
    return [
        spec.target for spec in ep.graph_signature.input_specs
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.arg.name in used
    ]


def constant_tensors(module: torch.nn.Module, fqns: list[str]) -> dict[str, torch.Tensor]:
    state = dict(module.named_parameters(remove_duplicate=False))
    state.update(module.named_buffers(remove_duplicate=False))
    # clone: safetensors refuses tensors that share storage (e.g. tied weights).
    return {k: state[k].detach().contiguous().clone() for k in fqns}


def _dims(t) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in t.shape]


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype}")
    return DTYPE_NAMES[dtype]


def signature(ep: ExportedProgram, input_names: list[str], output_names: list[str]) -> dict:
    nodes = {n.name: n for n in ep.graph.nodes}
    in_vals = [nodes[s.arg.name].meta["val"] for s in ep.graph_signature.input_specs
               if s.kind == InputKind.USER_INPUT]
    out_vals = [nodes[s.arg.name].meta["val"] for s in ep.graph_signature.output_specs
                if s.kind == OutputKind.USER_OUTPUT]
    if len(in_vals) != len(input_names) or len(out_vals) != len(output_names):
        raise ValueError(f"program has {len(in_vals)} inputs / {len(out_vals)} outputs, "
                         f"names given: {input_names} / {output_names}")
    max_batch = 0
    first = in_vals[0].shape[0] if in_vals and in_vals[0].dim() else 0
    if not isinstance(first, int):
        max_batch = int(ep.range_constraints[first.node.expr].upper)
    entry = lambda name, v: {"name": name, "dtype": _dtype_name(v.dtype), "shape": _dims(v)}  # noqa: E731
    return {
        "inputs": [entry(n, v) for n, v in zip(input_names, in_vals)],
        "outputs": [entry(n, v) for n, v in zip(output_names, out_vals)],
        "max_batch_size": max_batch,
    }


def is_complete(out_dir: Path, name: str) -> bool:
    return all((out_dir / f"{name}{ext}").is_file() for ext in ARTIFACTS)


def export_model(module: torch.nn.Module, name: str, specs: list[TensorSpec], output_names: list[str],
                 out_dir: Path, version: str, max_batch: int = MAX_BATCH, device: str = "cpu") -> float:
    """Export, compile (for `device`) and write the four artifacts; returns compile seconds.

    Reference inputs/outputs and weights are always written as CPU tensors."""
    module.eval().to(device)
    ref_in = make_inputs(specs, REFERENCE_BATCH)
    ref_out = tuple(t.cpu() for t in eager(module, tuple(t.to(device) for t in ref_in)))
    ep = export_program(module, tuple(t.to(device) for t in make_inputs(specs, 2)), specs, max_batch)
    sig = signature(ep, [s.name for s in specs], output_names)
    sig_json = json.dumps(sig, separators=(",", ":"))

    out_dir.mkdir(parents=True, exist_ok=True)
    # Build in a temp dir on the same filesystem and rename into place, so an interrupted export
    # never leaves a partial file under a final name (is_complete needs all four).
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out_dir))
    try:
        t0 = time.monotonic()
        torch._inductor.aoti_compile_and_package(
            ep,
            package_path=str(tmp / f"{name}.pt2"),  # the zip's top folder is named after the file
            inductor_configs={
                # Without it, some parameters are folded away and cannot be hot-swapped.
                "aot_inductor.use_runtime_constant_folding": True,
                "aot_inductor.metadata": {
                    "pt2serve.signature": sig_json,
                    "pt2serve.model_name": name,
                    "pt2serve.exporter_version": version,
                },
            },
        )
        seconds = time.monotonic() - t0
        weights = {k: v.cpu() for k, v in constant_tensors(module, constant_fqns(ep)).items()}
        save_file(weights, str(tmp / f"{name}.weights.safetensors"))
        save_file(reference_tensors(specs, ref_in, output_names, ref_out),
                  str(tmp / f"{name}.reference.safetensors"))
        (tmp / f"{name}.signature.json").write_text(json.dumps(sig, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for ext in ARTIFACTS:
            # safetensors creates 0600 files; make them as readable as any other file we write.
            os.chmod(tmp / f"{name}{ext}", 0o666 & ~umask)
            os.replace(tmp / f"{name}{ext}", out_dir / f"{name}{ext}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return seconds


def eager(module: torch.nn.Module, inputs: tuple) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def reference_tensors(specs, inputs, output_names, outputs) -> dict[str, torch.Tensor]:
    if len(outputs) != len(output_names):
        raise ValueError(f"module returned {len(outputs)} outputs, names given: {output_names}")
    ref = {f"input.{s.name}": t.contiguous() for s, t in zip(specs, inputs)}
    ref.update({f"output.{n}": t.detach().contiguous() for n, t in zip(output_names, outputs)})
    return ref


def cmd_zoo(args) -> None:
    names = args.models.split(",") if args.models else [n for n, m in ZOO.items() if not m.bench_only]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise SystemExit(f"unknown zoo models {unknown}; known: {list(ZOO)}")
    version = cache_key()
    # Packages are device-specific: CUDA ones live beside the CPU ones.
    suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
    out_dir = Path(args.cache_root).expanduser().resolve() / (version + suffix)
    # A killed export leaves its temp dir behind; one that old cannot belong to a live run.
    for stale in out_dir.glob(".tmp-*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    for name in names:
        if is_complete(out_dir, name):
            print(f"cached {name}", flush=True)
            continue
        m = ZOO[name]
        seconds = export_model(m.build(DEFAULT_SEED), name, list(m.inputs), list(m.outputs),
                               out_dir, version, m.max_batch, args.device)
        print(f"exported {name} (compile {seconds:.1f} s)", flush=True)
    print(out_dir, flush=True)  # last line: scripts read the cache dir from it


def parse_input_spec(text: str) -> TensorSpec:
    """'x:float32:-1,16' -> TensorSpec; integer inputs get values in [0, 2) (safe as indices)."""
    try:
        name, dtype, dims = text.split(":")
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad input spec {text!r}, want NAME:DTYPE:D0,D1,...")
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r}; known: {list(DTYPES)}")
    return TensorSpec(name, DTYPES[dtype], shape, high=2)


def cmd_module(args) -> None:
    mod_name, _, cls_name = args.target.partition(":")
    if not cls_name:
        raise SystemExit("--target must be pkg.module:ClassName")
    sys.path.insert(0, os.getcwd())
    cls = getattr(importlib.import_module(mod_name), cls_name)
    torch.manual_seed(DEFAULT_SEED)
    module = cls()
    outputs = [o for group in args.outputs for o in group.split(",") if o]
    name = args.name or cls_name.lower()
    seconds = export_model(module, name, args.inputs, outputs, Path(args.out), cache_key(),
                           args.max_batch)
    print(f"exported {name} (compile {seconds:.1f} s)")
    print(Path(args.out).resolve())


def cmd_weights(args) -> None:
    m = ZOO[args.model]
    module = m.build(args.seed)
    if args.from_state_dict:
        module.load_state_dict(torch.load(args.from_state_dict, map_location="cpu", weights_only=True))
    # Exporting (no compile) gives exactly the constant set the package was compiled with.
    ep = export_program(module, m.example_inputs(), list(m.inputs), m.max_batch)
    meta = {"pt2serve.model_name": m.name,
            "source": args.from_state_dict or f"seed={args.seed}"}
    save_file(constant_tensors(module, constant_fqns(ep)), args.out, metadata=meta)
    print(args.out)
    if args.reference:
        ref_in = m.reference_inputs()
        save_file(reference_tensors(m.inputs, ref_in, m.outputs, eager(module, ref_in)),
                  args.reference, metadata=meta)
        print(args.reference)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    z = sub.add_parser("zoo", help="export zoo models into <cache-root>/<torch version>-<source hash>/")
    z.add_argument("--models", help=f"comma-separated subset of {','.join(ZOO)} "
                                   "(default: all but the bench-only big_mlp)")
    z.add_argument("--device", default="cpu", help="compile for this device: cpu (default) or cuda")
    z.add_argument("--cache-root", default=str(default_cache_root()),
                   help="default: $PT2SERVE_CACHE or ~/.cache/pt2serve/models")
    z.set_defaults(func=cmd_zoo)

    mo = sub.add_parser("module", help="export a user module constructed with no arguments")
    mo.add_argument("--target", required=True, help="pkg.module:ClassName (importable from cwd)")
    mo.add_argument("--inputs", action="append", required=True, type=parse_input_spec,
                    help="NAME:DTYPE:DIMS in forward order, e.g. x:float32:-1,16 (-1 = dynamic); repeat")
    mo.add_argument("--outputs", action="append", required=True,
                    help="output names in return order, comma-separated or repeated")
    mo.add_argument("--name", help="model name (default: class name, lower case)")
    mo.add_argument("--max-batch", type=int, default=MAX_BATCH, help="upper bound of dynamic dim 0")
    mo.add_argument("--out", required=True, help="output directory")
    mo.set_defaults(func=cmd_module)

    w = sub.add_parser("weights", help="write an alternative weight set for a zoo model")
    w.add_argument("--model", required=True, choices=list(ZOO))
    w.add_argument("--seed", type=int, default=DEFAULT_SEED, help="construct the model with this seed")
    w.add_argument("--from-state-dict", metavar="PATH.pt", help="load this state dict (overrides --seed)")
    w.add_argument("--out", required=True, help="FILE.safetensors")
    w.add_argument("--reference", help="also write eager reference input/output FILE.safetensors")
    w.set_defaults(func=cmd_weights)

    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
