"""Tiny configurations of every registered encoder x head, shared by the tests."""

from iste.models.heads.iste import ABLATIONS
from iste.models.registry import HEADS

TINY_ENCODERS = {
    "edsr-baseline": {"n_resblocks": 1, "n_feats": 16},
    "rdn": {"n_feats": 16, "variant": "A"},
    "swinir": {"embed_dim": 12, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4,
               "out_dim": 16},
}
TINY_HEADS = {
    "liif": {"hidden": [32, 32]},
    "lte": {"hidden_dim": 32, "hidden": [32, 32]},
    "iste": {"hidden_dim": 32, "decoder_hidden": [32, 32], "lfi_heads": 4},
    "lmi": {"depth": 2},
    "itsrn": {"hidden": [16, 16], "merge_hidden": 16},
    "lit": {"dim": 16, "heads": 2, "hidden": [32, 32], "pos_dims": 8},
}


def tiny_config(head: str, encoder: str = "edsr-baseline", **head_args) -> dict:
    return {"head": head, "encoder": encoder, "encoder_args": TINY_ENCODERS[encoder],
            "head_args": {**TINY_HEADS[head], **head_args}}


ALL_COMBINATIONS = [(h, e) for h in HEADS for e in TINY_ENCODERS]
ALL_ABLATIONS = sorted(ABLATIONS)

# Tiny fixed-scale networks: one per entry of iste.models.registry.FIXED (a test fails until a
# new entry has one here).
TINY_FIXED = {
    "edsr": {"n_resblocks": 1, "n_feats": 8},
    "rdn": {"n_feats": 8, "variant": "A"},
    "swinir": {"embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4,
               "num_feat": 8},
    "swdnet": {"blocks": 1},
    "srmfenet": {"channels": 8, "n_blocks": 1},
    "li2021": {"base_channels": 4},
}


def tiny_fixed(arch: str, scale: int) -> dict:
    return {"arch": arch, "scale": scale, "args": TINY_FIXED[arch]}
