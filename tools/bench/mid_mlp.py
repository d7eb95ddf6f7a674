"""MidMLP: a mid-size model for the batching benchmarks (issue 10): three Linear(1024, 1024)
layers and a Linear(1024, 16) head, ~12.7 MB of fp32 weights. A batch-1 call is dominated by
reading the weights (matrix-vector products); a batch of N reads them once for N rows, which is
what a dynamic batcher can win on a real model and cannot on the zoo's tiny ones.

Exported with the exporter's `module` command (kept out of the model zoo so the zoo's cache key
does not change):

    cd tools/bench && ../../.venv/bin/python ../export/export_model.py module \
        --target mid_mlp:MidMLP --inputs x:float32:-1,1024 --outputs y --max-batch 64 --out DIR

then `tools/bench/peers/run_peers.sh --model-dir DIR --models midmlp`. On a CUDA host
`scripts/cuda_host_check.sh peers` exports it for the GPU (`--device cuda`) when PEERS_MID=1.
"""

import torch
from torch import nn

WIDTH = 1024


class MidMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.fc3 = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 16)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(torch.relu(self.fc3(x)))
