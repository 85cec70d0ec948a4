"""Fixed-scale super-resolution networks (paper Table 1): one network per integer scale.

The interface is :class:`~iste.models.fixed.base.FixedScaleSR`; every network has one entry
in :data:`iste.models.registry.FIXED` (docs/extending.md).
"""
