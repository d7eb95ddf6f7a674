"""HugeMLP: ~2.1 GB of fp32 weights (32 x Linear(4096, 4096)), the 2 GB weight-transfer benchmark.

Exported with the exporter's `module` command (kept out of the model zoo so the zoo's cache key
does not change):

    cd tools/bench && ../../.venv/bin/python ../export/export_model.py module \
        --target huge_mlp:HugeMLP --inputs x:float32:-1,4096 --outputs y --max-batch 8 --out DIR
"""

import torch
from torch import nn

LAYERS = 32
WIDTH = 4096


class HugeMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
