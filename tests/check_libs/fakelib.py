"""A stand-in for a library a plugin calls (einops): it raises far from the plugin's own line."""


def rearrange(x, pattern):
    if pattern != "b c h w -> b (c h w)":
        raise ValueError(f"cannot apply pattern {pattern!r} to a tensor of shape {tuple(x.shape)}")
    return x.flatten(1)
