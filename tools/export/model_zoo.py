"""Small deterministic models used to test pt2serve end to end.

Every entry builds its module from a seed (``torch.manual_seed(seed)`` then construct), so a
different seed gives a different weight set with identical names, dtypes and shapes: that is
what the weight hot-swap tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

DEFAULT_SEED = 0
REFERENCE_SEED = 1234  # seeds the fixed reference input, independent of the weight seed
REFERENCE_BATCH = 3
MAX_BATCH = 1024


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]  # -1 marks a dynamic dim; only dim 0 (batch) is dynamic in the zoo
    high: int = 0  # integer inputs: values are drawn from [0, high)
    low: float | None = None  # float inputs: uniform in [low, low + 1) instead of normal

    def make(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        shape = [batch if d == -1 else d for d in self.shape]
        if self.dtype.is_floating_point:
            if self.low is not None:
                return (torch.rand(shape, generator=gen) + self.low).to(self.dtype)
            return torch.randn(shape, generator=gen).to(self.dtype)
        if self.dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=gen).bool()
        return torch.randint(0, self.high, shape, generator=gen, dtype=self.dtype)


def make_inputs(specs, batch: int, seed: int = REFERENCE_SEED) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs: the same specs, batch and seed always give the same tensors."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(spec.make(batch, gen) for spec in specs)


@dataclass(frozen=True)
class ZooModel:
    name: str
    factory: Callable[[], nn.Module]
    inputs: tuple[TensorSpec, ...]  # forward's positional order
    outputs: tuple[str, ...]  # forward's return order
    max_batch: int = MAX_BATCH
    bench_only: bool = False  # big models for tools/bench; not exported by default
    cpu_only: bool = False  # not exported for accelerators (see Checked)

    def build(self, seed: int = DEFAULT_SEED) -> nn.Module:
        torch.manual_seed(seed)
        return self.factory().eval()

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return make_inputs(self.inputs, batch)

    def reference_inputs(self) -> tuple[torch.Tensor, ...]:
        return make_inputs(self.inputs, REFERENCE_BATCH)


class MLP(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.fc1 = nn.Linear(16, 64, dtype=dtype)
        self.fc2 = nn.Linear(64, 8, dtype=dtype)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class BigMLP(nn.Module):
    """~201 MB of fp32 weights (3 x 4096x4096 layers): the hot-swap upload benchmark."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4096, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, 4096)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        # Fresh BatchNorm is an identity-ish affine (mean 0, var 1, weight 1, bias 0); draw every
        # BN tensor from the seeded RNG so that swapping buffers visibly changes the output.
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_(0.0, 0.2)
            self.bn.running_mean.normal_(0.0, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, image):
        h = torch.relu(self.bn(self.conv(image)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class TwoIO(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, x, ids):
        e = self.emb(ids)  # [B, 4, 8]
        summed = self.proj(x + e.mean(1))  # [B, 8]
        scores = torch.bmm(e, x.unsqueeze(-1)).squeeze(-1)  # [B, 4]: each embedding . x
        return summed, scores


class TinyLM(nn.Module):
    """A one-block transformer over a 100-token vocabulary: embedding, layer norm, single-head
    attention, LM head. Token ids outside [0, 100) make the generated CPU kernel's bounds check
    throw inside an OpenMP parallel region, which aborts the process (the containment tests'
    poison request)."""

    def __init__(self, vocab: int = 100, dim: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)
        self.scale = dim ** -0.5
        with torch.no_grad():  # seeded, so that swapping weights visibly changes the output
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0.0, 0.2)

    def forward(self, tokens):
        h = self.emb(tokens)  # [B, 16, dim]
        q, k, v = self.qkv(self.norm(h)).chunk(3, -1)
        attn = torch.softmax((q @ k.transpose(1, 2)) * self.scale, -1) @ v
        return self.head(h + self.out(attn))  # [B, 16, vocab]


class Checked(nn.Module):
    """Scores 4 categories from an 8-way probability vector and asserts on the values: a row with
    a negative entry makes the compiled model raise "probabilities must be non-negative" (a
    value-dependent failure other than an index out of range; on CUDA a device-side assert)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, probs):
        torch._assert_async(torch.all(probs >= 0), "probabilities must be non-negative")
        return self.fc(probs)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("mlp", MLP, (TensorSpec("x", torch.float32, (-1, 16)),), ("y",)),
        ZooModel("cnn", CNN, (TensorSpec("image", torch.float32, (-1, 3, 16, 16)),), ("logits",)),
        ZooModel(
            "two_io",
            TwoIO,
            (TensorSpec("x", torch.float32, (-1, 8)), TensorSpec("ids", torch.int64, (-1, 4), high=32)),
            ("sum", "scores"),
        ),
        ZooModel("tiny_lm", TinyLM, (TensorSpec("tokens", torch.int64, (-1, 16), high=100),),
                 ("logits",)),
        # CPU only: on CUDA, inductor's own benchmarking runs with random (negative) inputs and
        # trips the assert at compile time (seen with torch 2.11 on an H200).
        ZooModel("checked", Checked, (TensorSpec("probs", torch.float32, (-1, 8), low=0.0),),
                 ("scores",), cpu_only=True),
        # fp16 compiles and runs on CPU with inductor in torch 2.13, so no bfloat16 fallback.
        ZooModel("half", lambda: MLP(torch.float16), (TensorSpec("x", torch.float16, (-1, 16)),), ("y",)),
        ZooModel("big_mlp", BigMLP, (TensorSpec("x", torch.float32, (-1, 4096)),), ("y",),
                 max_batch=256, bench_only=True),
    )
}
