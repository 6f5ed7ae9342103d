"""How long a check may take: shared by the checklist and the verdicts a run stores (a leaf of the package)."""

CHECK_TIMEOUT_S = 30.0  # seconds per step (one check's forwards); `attnbench check --timeout`
BACKBONE_SCALE = 4  # the backbone step builds, runs and counts a whole network: 4x the per-step timeout
