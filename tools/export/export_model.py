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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.utils._sympy.numbers import int_oo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_zoo import (DEFAULT_SEED, MAX_BATCH, REFERENCE_BATCH, REFERENCE_SEED, ZOO,  # noqa: E402
                       TensorSpec, make_inputs)

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


def dim_plan(specs: list[TensorSpec], dim_names: list[tuple] | None = None,
             infer: bool = False) -> list[list]:
    """Per input, per dim: None (static) or the name of its dynamic dim.

    Dim 0 marked -1 is the shared "batch"; a named dim (`seq`) is shared by every input that uses
    the name; any other -1 gets its own name, or with `infer` is left to torch.export
    (Dim.AUTO: it finds which dims must be equal, e.g. a mask's length and the tokens').
    """
    plan = []
    for i, s in enumerate(specs):
        names = (dim_names[i] if dim_names else None) or (None,) * len(s.shape)
        row = []
        for d, size in enumerate(s.shape):
            if names[d]:
                row.append(names[d])
            elif size != -1:
                row.append(None)
            elif d == 0:
                row.append("batch")
            else:
                row.append(AUTO if infer else f"{s.name}_dim{d}")
        plan.append(row)
    return plan


AUTO = "<auto>"


def export_program(module: torch.nn.Module, inputs: tuple, specs: list[TensorSpec],
                   max_batch: int, plan: list[list] | None = None) -> ExportedProgram:
    plan = plan or dim_plan(specs)
    dims = {}
    for row in plan:
        for name in row:
            if name and name != AUTO and name not in dims:
                dims[name] = Dim(name, min=1, max=max_batch) if name == "batch" else Dim(name, min=1)
    dynamic = tuple(
        {d: (Dim.AUTO if name == AUTO else dims[name]) for d, name in enumerate(row) if name} or None
        for row in plan
    )
    return torch.export.export(module, inputs, dynamic_shapes=dynamic)


def plan_inputs(specs: list[TensorSpec], plan: list[list], batch: int,
                seed: int = REFERENCE_SEED) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs in which every named dynamic dim has its own size (batch: `batch`).

    Distinct sizes keep torch.export from equating dims only because their example sizes matched;
    the dims left to Dim.AUTO all get one size (see below).
    """
    sizes: dict[str, int] = {"batch": batch}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s, row in zip(specs, plan):
        shape = []
        for size, name in zip(s.shape, row):
            if name is None:
                shape.append(size)
                continue
            # Dims left to Dim.AUTO share one size: export can only infer that dims must be
            # equal from an example in which the model runs.
            if name not in sizes:
                sizes[name] = batch + 1 + len(sizes)
            shape.append(sizes[name])
        if s.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(s.dtype))
        elif s.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, s.high, shape, generator=gen, dtype=s.dtype))
    return tuple(out)


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


def _dim_ranges(ep: ExportedProgram, val, plan_row: list | None) -> list[dict] | None:
    """Per dim {"min", "max", "symbol"} for an input with a dynamic dim; None if all static."""
    if all(isinstance(d, int) for d in val.shape):
        return None
    out = []
    for i, d in enumerate(val.shape):
        if isinstance(d, int):
            out.append({"min": d, "max": d})
            continue
        expr = d.node.expr
        entry = {"min": 0}
        rng = ep.range_constraints.get(expr)
        if rng is not None:
            entry["min"] = int(rng.lower)
            if rng.upper != int_oo:
                entry["max"] = int(rng.upper)
        name = plan_row[i] if plan_row else None
        entry["symbol"] = name if name and name != AUTO else str(expr)
        out.append(entry)
    return out


def signature(ep: ExportedProgram, input_names: list[str], output_names: list[str],
              plan: list[list] | None = None) -> dict:
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

    def input_entry(i, name, v):
        e = entry(name, v)
        ranges = _dim_ranges(ep, v, plan[i] if plan else None)
        if ranges:
            e["dims"] = ranges
        return e

    return {
        "inputs": [input_entry(i, n, v) for i, (n, v) in enumerate(zip(input_names, in_vals))],
        "outputs": [entry(n, v) for n, v in zip(output_names, out_vals)],
        "max_batch_size": max_batch,
    }


def is_complete(out_dir: Path, name: str) -> bool:
    return all((out_dir / f"{name}{ext}").is_file() for ext in ARTIFACTS)


def export_model(module: torch.nn.Module, name: str, specs: list[TensorSpec], output_names: list[str],
                 out_dir: Path, version: str, max_batch: int = MAX_BATCH, device: str = "cpu",
                 plan: list[list] | None = None) -> float:
    """Export, compile (for `device`) and write the four artifacts; returns compile seconds.

    `plan` (dim_plan) names dynamic dims; None: -1 at dim 0 is the batch, other -1 independent.
    Reference inputs/outputs and weights are always written as CPU tensors."""
    module.eval().to(device)
    if plan is None:
        plan = dim_plan(specs)
        ref_in = make_inputs(specs, REFERENCE_BATCH)
        example = make_inputs(specs, 2)
    else:
        ref_in = plan_inputs(specs, plan, REFERENCE_BATCH)
        example = plan_inputs(specs, plan, 2, seed=REFERENCE_SEED + 1)
    ref_out = tuple(t.cpu() for t in eager(module, tuple(t.to(device) for t in ref_in)))
    ep = export_program(module, tuple(t.to(device) for t in example), specs, max_batch, plan)
    sig = signature(ep, [s.name for s in specs], output_names, plan)
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
    names = args.models.split(",") if args.models else [
        n for n, m in ZOO.items() if not m.bench_only and not (m.cpu_only and args.device != "cpu")]
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


@dataclass(frozen=True)
class InputArg:
    """One --inputs value: the spec (named dims as -1) and the dim names ("" = unnamed)."""
    spec: TensorSpec
    dim_names: tuple[str, ...]


def parse_input_spec(text: str) -> InputArg:
    """'x:float32:-1,16' or 'mask:float32:-1,seq' -> InputArg.

    A dim is a size, -1 (dynamic) or a name: inputs using the same name share that dynamic dim
    (e.g. token ids and their mask share `seq`). Integer inputs get values in [0, 2) (safe as
    indices)."""
    try:
        name, dtype, dims = text.split(":")
        items = dims.split(",")
        if not name or not all(items):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad input spec {text!r}, want NAME:DTYPE:D0,D1,... "
                                         "(each D a size, -1, or a name shared between inputs)")
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r}; known: {list(DTYPES)}")
    shape, names = [], []
    for item in items:
        if item.lstrip("-").isdigit():
            if int(item) < -1:
                raise argparse.ArgumentTypeError(f"bad dim {item!r} in {text!r}")
            shape.append(int(item))
            names.append("")
        elif item.isidentifier():
            shape.append(-1)
            names.append(item)
        else:
            raise argparse.ArgumentTypeError(f"bad dim {item!r} in {text!r}: a size, -1, or a name")
    return InputArg(TensorSpec(name, DTYPES[dtype], tuple(shape), high=2), tuple(names))


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
    specs = [a.spec for a in args.inputs]
    plan = dim_plan(specs, [a.dim_names for a in args.inputs], infer=args.infer_dims)
    try:
        seconds = export_model(module, name, specs, outputs, Path(args.out), cache_key(),
                               args.max_batch, device=args.device, plan=plan)
    except Exception as e:  # torch.export raises UserError, AssertionError, RuntimeError...
        raise SystemExit(f"export failed: {type(e).__name__}: {e}\n\nEvery -1 is its own dynamic "
                         "dim. If the model needs dims of different inputs to be equal, give "
                         "them one name (e.g. tokens:int64:-1,seq and mask:float32:-1,seq) or "
                         "pass --infer-dims.") from e
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
                    help="NAME:DTYPE:DIMS in forward order, e.g. x:float32:-1,16 (-1 = dynamic; "
                         "a name such as seq = a dynamic dim shared by every input naming it); "
                         "repeat")
    mo.add_argument("--infer-dims", action="store_true",
                    help="let torch.export infer which unnamed -1 dims (other than dim 0) must be "
                         "equal (Dim.AUTO); the relations found are recorded in the signature")
    mo.add_argument("--outputs", action="append", required=True,
                    help="output names in return order, comma-separated or repeated")
    mo.add_argument("--name", help="model name (default: class name, lower case)")
    mo.add_argument("--max-batch", type=int, default=MAX_BATCH, help="upper bound of dynamic dim 0")
    mo.add_argument("--device", default="cpu", help="compile for this device: cpu (default) or cuda")
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
