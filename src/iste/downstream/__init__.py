"""Downstream tasks that test whether SR images serve diagnosis (paper Tables 5 and 6).

- GlaS gland segmentation with a U-Net (:mod:`iste.downstream.experiments.glas`), scored by
  the GlaS challenge's object metrics (:func:`gland_metrics`);
- PCam tumour detection with a ResNet-50 (:mod:`iste.downstream.experiments.pcam`).
"""

from iste.downstream.gland_metrics import gland_metrics, label_glands

__all__ = ["gland_metrics", "label_glands"]
