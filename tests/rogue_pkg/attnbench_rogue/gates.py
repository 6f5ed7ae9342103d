"""Gates that misbehave while the harness runs them: each must fail its own cell (or print to stderr) only."""
import os
import sys

import torch
from torch import nn


class _Gate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(channels))

    def gate(self, x):
        return x * torch.sigmoid(self.logit)[None, :, None, None]


class ExitInForward(_Gate):
    def forward(self, x):
        sys.exit()  # exit status 0: must not end a run as if it succeeded


class ExitTextInForward(_Gate):
    def forward(self, x):
        sys.exit("rogue | gate gives up")


class ExitInInit(_Gate):
    def __init__(self, channels):
        super().__init__(channels)
        raise SystemExit(3)

    def forward(self, x):
        return self.gate(x)


class Prints(_Gate):
    def forward(self, x):
        print("ROGUE PRINT")
        os.write(1, b"ROGUE FD1\n")  # below Python's sys.stdout
        return self.gate(x)
