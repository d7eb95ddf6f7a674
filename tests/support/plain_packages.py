#!/usr/bin/env python3
"""Packages made the way users make them: plain `torch._inductor.aoti_compile_and_package`, no
pt2serve exporter, no pt2serve metadata, no runtime constant folding.

Cached apart from the zoo (tools/export/model_zoo.py): under
<cache-root>/plain/<torch version>-<hash of this file>/, so editing the exporter never recompiles
these and editing this file never recompiles the zoo. Prints the directory as its last line.

- block.pt2: a transformer-style block (embedding, multi-head attention with a padding mask from a
  float mask, layer norm, linear head). Positional inputs tokens int64 [B, S] and mask float32
  [B, S], B in 1..64 and S in 1..32 shared between both inputs; returns a tuple
  (logits float32 [B, S, 4], best int64 [B, S], pooled float32 [B, S]).
- mlp.pt2: static shapes, called with a keyword argument x float32 [4, 16]; returns a dict
  {"y": float32 [4, 8], "norm": float32 [4]}. Compiled without runtime constant folding, so
  inductor folds fc2.bias into the generated code and it is not updatable.
For each NAME: NAME.weights.safetensors (state dict, seed 0) and NAME.seed7.weights.safetensors.
Tests rebuild the eager modules from this file (build()) and compare with the served outputs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

BATCH_MAX = 64
SEQ_MAX = 32
VOCAB = 50


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens, mask):
        h = self.emb(tokens)
        a, _ = self.attn(h, h, h, key_padding_mask=mask < 0.5, need_weights=False)
        h = self.ln(h + a)
        logits = self.head(h)
        return logits, logits.argmax(-1), h.sum(-1) * mask


class DictMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return {"y": self.fc2(torch.relu(self.fc1(x))), "norm": x.norm(dim=1)}


MODELS = {"block": Block, "mlp": DictMLP}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def block_inputs(batch: int, seq: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a 0/1 mask whose first position is always 1 (a fully masked row is NaN)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, seq), generator=g)
    mask = (torch.rand(batch, seq, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    return tokens, mask


def export(name: str, module: nn.Module):
    from torch.export import Dim

    if name == "block":
        b, s = Dim("batch", min=1, max=BATCH_MAX), Dim("seq", min=1, max=SEQ_MAX)
        return torch.export.export(module, block_inputs(2, 5),
                                   dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    return torch.export.export(module, (), kwargs={"x": torch.randn(4, 16)})


def cache_dir(root: Path) -> Path:
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return root / "plain" / f"{torch.__version__}-{digest}"


def main() -> None:
    from safetensors.torch import save_file

    root = Path(os.environ.get("PT2SERVE_CACHE") or Path.home() / ".cache/pt2serve/models")
    out = cache_dir(root.expanduser().resolve())
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        if (out / f"{name}.pt2").is_file():
            print(f"cached {name}", flush=True)
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out))
        try:
            module = build(name)
            torch._inductor.aoti_compile_and_package(export(name, module),
                                                     package_path=str(tmp / f"{name}.pt2"))
            for seed in (0, 7):
                state = {k: v.detach().contiguous().clone()
                         for k, v in build(name, seed).state_dict().items()}
                suffix = "" if seed == 0 else f".seed{seed}"
                save_file(state, str(tmp / f"{name}{suffix}.weights.safetensors"))
            # The .pt2 last: its presence marks the set complete.
            for f in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".pt2"):
                os.chmod(f, 0o644)
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"exported {name}", flush=True)
    print(out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
