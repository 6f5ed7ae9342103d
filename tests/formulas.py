"""Parameter formulas of the first-party modules, written once from the papers (not from our code),
and the list of first-party modules read from attnbench's own entry points.

Each formula counts weights and biases layer by layer; ``//`` is the papers' C/r (floored).
Other test files import from here instead of restating a formula.
"""

import math
from importlib.metadata import distribution


def first_party_modules():
    """attnbench's own modules as its installed metadata declares them (pyproject's
    ``attnbench.modules`` group), minus the ``timm:`` wrappers: a new entry point appears here
    without editing any test, and ``FORMULAS`` must then have it."""
    return sorted(
        ep.name
        for ep in distribution("attnbench").entry_points
        if ep.group == "attnbench.modules"
        and ep.value.startswith("attnbench.modules.")
        and not ep.value.startswith("attnbench.modules.timm_attn:")
    )


def se_params(c, r=16):
    # Hu et al. 2018, Fig. 3: FC C->C/r with bias (C*C/r + C/r), FC C/r->C with bias (C/r*C + C).
    # The paper's "2C²/r" leaves out the C/r + C biases: 33,312 at C=512, r=16, not 33,792.
    return 2 * c * (c // r) + c // r + c


def cbam_params(c, r=16, k=7):
    # Woo et al. 2018, Sec. 3.1: the channel gate's shared MLP is SE's (one MLP for both the avg- and
    # max-pooled descriptor); the spatial gate is a k x k conv 2->1 without bias (2k²) + BN(1) (2).
    return se_params(c, r) + spatial_gate_params(k)


def spatial_gate_params(k=7):
    # CBAM's spatial gate and each Triplet branch: conv 2->1, k x k, no bias (2k²) + BatchNorm(1) weight, bias (2).
    return 2 * k * k + 2


def triplet_params(k=7):
    # Misra et al. 2021, Sec. 3: three branches, each Z-pool -> k x k conv 2->1 + BN: 3 * (2k² + 2) = 300 at k=7.
    return 3 * spatial_gate_params(k)


def nonlocal_params(c, inter=None):
    # Wang et al. 2018, Fig. 2 (embedded Gaussian): theta, phi, g are 1x1 convs C->C' with bias (3 * (C*C' + C')),
    # W a 1x1 conv C'->C with bias (C'*C + C), then BN(C) (2C); C' = C/2. At C=1024: 2,101,760.
    i = inter or c // 2
    return 3 * (c * i + i) + (i * c + c) + 2 * c


def eca_kernel(c, gamma=2, b=1):
    # Wang et al. 2020, Eq. 12: k = |log2(C)/gamma + b/gamma|, taken to the nearest odd number (t, or t + 1 if even).
    t = int(abs(math.log2(c) + b) / gamma)
    return t if t % 2 else t + 1


def eca_params(c):
    # ECA: one 1-D conv of size k over the channel axis, no bias: k weights.
    return eca_kernel(c)


def eca_mlp_params(c):
    # timm's `ecam` (EcaModule with use_mlp): 1x1 conv 1->h with bias (2h), k-conv h->1 with bias (h*k + 1),
    # h = timm's make_divisible(C/8, 8), k = max(3, ECA's k).
    from timm.layers import make_divisible

    h, k = make_divisible(c / 8, 8), max(3, eca_kernel(c))
    return 2 * h + h * k + 1


def gc_params(c, r=16):
    # Cao et al. 2019, Fig. 4(d): context conv C->1 with bias (C + 1); transform: conv C->C/r with bias,
    # LayerNorm(C/r) weight and bias (2C/r), ReLU, conv C/r->C with bias.
    h = c // r
    return (c + 1) + (c * h + h) + 2 * h + (h * c + c)


def sk_params(c, c_in=None, g=32, r=16, min_hidden=32, branches=2):
    # Li et al. 2019, Sec. 3.1 (M=2): per branch a grouped 3x3 conv C_in->C, no bias (C*C_in/G*9) + BN (2C);
    # fuse: conv C->d, no bias (C*d) + BN (2d), d = max(C/r, L); select: one d->C matrix per branch (d*C), no bias.
    # G shrinks to what divides both widths. Equals timm's skresnext50_32x4d units (tests/test_placement.py).
    c_in = c_in or c
    groups, d = math.gcd(g, math.gcd(c, c_in)), max(c // r, min_hidden)
    return branches * (c * (c_in // groups) * 9 + 2 * c) + (c * d + 2 * d) + branches * d * c


def sk_resnet_params(c, c_in=None, g=32, r=16):
    # The SK authors' SK-ResNet unit (github.com/implus/PytorchInsight, classification/models/imagenet/resnet_sk.py,
    # Bottleneck): the block's dense 3x3 conv C_in->C, no bias (9*C*C_in) + BN (2C) kept as branch 1; branch 2 a 3x3
    # 32-group conv (9*C*C_in/G) + BN (2C); conv_fc1 C->C/16, no bias (C*d) + BN (2d); conv_fc2 d->2C, no bias (2*d*C).
    c_in = c_in or c
    groups, d = math.gcd(g, math.gcd(c, c_in)), c // r
    return (9 * c * c_in + 2 * c) + (9 * c * (c_in // groups) + 2 * c) + (c * d + 2 * d) + 2 * d * c


def coord_params(c, r=32, min_hidden=8):
    # Hou et al. 2021, Fig. 3(c): shared 1x1 conv C->m with bias (C*m + m) + BN (2m), m = max(8, C/r);
    # two 1x1 convs m->C with bias (2 * (m*C + C)).
    m = max(min_hidden, c // r)
    return (c * m + m) + 2 * m + 2 * (m * c + c)


def simam_params(c):
    # Yang et al. 2021: the energy function has no learned weights.
    return 0


def bam_params(c, r=16):
    # Park et al. 2018, Fig. 2: channel branch FC C->C/r with bias + BN1d (2C/r) + FC C/r->C with bias;
    # spatial branch 1x1 conv C->C/r with bias + BN, two dilated 3x3 convs C/r->C/r with bias + BN, 1x1 conv C/r->1 with bias.
    h = c // r
    channel = (c * h + h) + 2 * h + (h * c + c)
    spatial = (c * h + h) + 2 * h + 2 * (h * h * 9 + h + 2 * h) + (h + 1)
    return channel + spatial


def srm_params(c):
    # Lee et al. 2019, Sec. 3.2: channel-wise FC over (mean, std), 2 weights per channel, no bias (2C), + BN (2C).
    return 4 * c


# The site context the tests give a factory that names it (14 x 14: the maps test_shape_and_gradient_flow feeds).
SITE_CONTEXT = {"feat_size": (14, 14)}


def ge_theta_params(c, extent=0, feat_size=SITE_CONTEXT["feat_size"]):
    # Hu et al. 2018 (Gather-Excite), GE-theta. Global extent, the one released model (RN50-GEP.prototxt): one
    # depthwise conv whose kernel covers the H x W map, no bias (C*H*W), + BN (2C). Extent e: log2(e) depthwise
    # 3x3 stride-2 convs without bias (9C) + BN (2C) each.
    if extent == 0:
        return c * feat_size[0] * feat_size[1] + 2 * c
    return int(math.log2(extent)) * (9 * c + 2 * c)


def resnet50_ge_theta_params():
    # RN50-GEP.prototxt: ResNet-50's 25,557,032 + per block C*H*W + 2C over res2..res5 at 224 (56, 28, 14, 7).
    return 25_557_032 + sum(n * ge_theta_params(c, feat_size=(side, side)) for n, c, side in RESNET50_STAGES)


def ese_params(c):
    # Lee & Park 2020 (CenterMask), Eq. 2: one FC C->C with bias.
    return c * c + c


def sge_params(c, groups=64):
    # Li et al. 2019 (SGE): one scale and one shift per group, G = 64 reduced to divide C.
    return 2 * math.gcd(groups, c)


# registry name -> parameter count at C channels with the module's defaults
FORMULAS = {
    "se": se_params,
    "cbam": cbam_params,
    "nonlocal": nonlocal_params,
    "eca": eca_params,
    "eca_mlp": eca_mlp_params,
    "gc": gc_params,
    "sk": sk_params,
    "coord": coord_params,
    "simam": simam_params,
    "triplet": lambda c: triplet_params(),
    "bam": bam_params,
    "srm": srm_params,
    "ge_theta": ge_theta_params,
    "ese": ese_params,
    "sge": sge_params,
}


# ResNet-50 at 224: (blocks, output channels, feature side) of its four stages.
RESNET50_STAGES = ((3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7))


def resnet50_activations(conv_outputs=11_113_984, classes=1000):
    """Eval activations per image by the 'new tensor' rule: every conv output and its BatchNorm output
    (the ReLUs and residual adds are in place: 0), the stem max-pool's output and its int64 indices
    (64 x 56 x 56 each), the global average pool (2048) and the classifier (1000). ``conv_outputs`` is
    fvcore's own conv/linear activation count minus the classifier's 1000."""
    return 2 * conv_outputs + 2 * 64 * 56 * 56 + 2048 + classes


def se_activations(c, side, r=16):
    """One SE block: pooled C, FC1 C/r (its ReLU in place: 0), FC2 C, sigmoid C, and the scaled map C x H x W."""
    return 3 * c + c // r + c * side * side
