"""Hook-site names: the only place where they are built.

Names follow TransformerLens (`blocks.{layer}.mlp.hook_post`: the post-activation FFN vector,
i.e. the input of the FFN output projection) so that stored neurons can be read by people who
know that convention, whatever the Hugging Face module path of the family is.
"""

from __future__ import annotations

SITE_TEMPLATE = "blocks.{layer}.mlp.hook_post"


def site_name(layer: int) -> str:
    """Name of the FFN-neuron site of `layer` (0-based).

    Example:
        >>> site_name(3)
        'blocks.3.mlp.hook_post'
    """
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return SITE_TEMPLATE.format(layer=layer)
