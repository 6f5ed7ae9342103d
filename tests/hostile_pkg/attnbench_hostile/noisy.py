"""Prints and warns on import: the output must not reach a table on stdout, and the warning belongs to this
package alone (`attnbench check` of another module must not list it)."""
import warnings

from torch import nn

print("NOISY PLUGIN OUTPUT")
warnings.warn("NOISY PLUGIN WARNING on import", FutureWarning)


class Gate(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return x
