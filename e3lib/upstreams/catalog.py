"""Names of the published upstream checkpoints, usable as ``upstream.checkpoint``.

A sweep names a published checkpoint by its catalogue name (``upstream.checkpoint:
vmoe_b16_in21k``); sweep expansion replaces the name by a path: the one given for it on the
command line (``--config upstream_checkpoints='{"vmoe_b16_in21k": "/data/vmoe_b16"}'``, or
``e3 expand --checkpoint vmoe_b16_in21k=/data/vmoe_b16``), else the published URL below. The
names are reserved: a directory that happens to have one of them as its name is written
``./name``. Facts from the releases' READMEs (docs/checkpoints.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from e3lib.errors import ConfigError

VMOE = "gs://vmoe_checkpoints/"
VIT = "gs://vit_models/imagenet21k/"


@dataclass(frozen=True)
class Published:
    url: str
    model: str  # what it is, in the project's terms
    data: str  # upstream training data


PUBLISHED: dict[str, Published] = {
    "vmoe_s32_last2_in1k": Published(
        VMOE + "vmoe_s32_last2_ilsvrc2012_randaug_light1",
        "V-MoE S/32, E=8 on the last two odd blocks (size S/32, moe_placement last, moe_n 2)",
        "ILSVRC2012, RandAugment light, 300 epochs",
    ),
    "vmoe_s32_last2_in1k_medium": Published(
        VMOE + "vmoe_s32_last2_ilsvrc2012_randaug_medium",
        "V-MoE S/32, E=8 on the last two odd blocks",
        "ILSVRC2012, RandAugment medium, 1000 epochs",
    ),
    "vmoe_b16_in21k": Published(
        VMOE + "vmoe_b16_imagenet21k_randaug_strong",
        "V-MoE B/16, E=8 on every odd block (size B/16, moe_placement every, moe_n 2)",
        "ImageNet-21k, RandAugment strong",
    ),
    "eee_s32_last2_in1k": Published(
        VMOE + "eee_s32_last2_ilsvrc2012",
        "E³ S/32, E=8, M=2 on the last two odd blocks",
        "ILSVRC2012, 300 epochs",
    ),
    "vit_b16_in21k": Published(VIT + "ViT-B_16.npz", "ViT-B/16 (size B/16)", "ImageNet-21k"),
    "vit_b32_in21k": Published(VIT + "ViT-B_32.npz", "ViT-B/32 (size B/32)", "ImageNet-21k"),
    "vit_l16_in21k": Published(VIT + "ViT-L_16.npz", "ViT-L/16 (size L/16)", "ImageNet-21k"),
    "vit_l32_in21k": Published(VIT + "ViT-L_32.npz", "ViT-L/32 (size L/32)", "ImageNet-21k"),
    "vit_h14_in21k": Published(VIT + "ViT-H_14.npz", "ViT-H/14 (size H/14)", "ImageNet-21k"),
}


def check_overrides(overrides: Mapping[str, str] | None, where: str) -> dict[str, str]:
    """The name -> path overrides, each name a catalogue name and each path a string."""
    out = {}
    for name, path in (overrides or {}).items():
        if name not in PUBLISHED:
            raise ConfigError(
                f"{where}.{name}",
                path,
                f"not a published checkpoint name; known: {sorted(PUBLISHED)}",
            )
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}.{name}", path, "must be a non-empty path or URL")
        out[name] = path
    return out


def checkpoint_path(value: str | None, overrides: Mapping[str, str] | None = None) -> str | None:
    """``upstream.checkpoint`` with a catalogue name replaced by its path (override first)."""
    if value in PUBLISHED:
        return (overrides or {}).get(value) or PUBLISHED[value].url
    return value
