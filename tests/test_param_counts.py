"""Parameter counts of the full-size models from shapes only, against the paper's Table 23."""

import pytest

from e3lib.config import resolve
from e3lib.models.params import count_params

# Table 23 (millions): upstream models, JFT head of 18,291 classes with a representation
# layer, 224 px images, E=32 experts in the last-n MoE blocks (n=2, or 5 for H/14).
TABLE_23 = {
    "S/32": (36.5, 166.7),
    "B/32": (102.1, 395.0),
    "B/16": (100.5, 393.3),
    "L/32": (325.3, 845.8),
    "L/16": (323.1, 843.6),
    "H/14": (655.8, 2688.6),
}
JFT_CLASSES = 18291


@pytest.mark.parametrize("size", list(TABLE_23))
def test_table_23(size):
    vit_paper, moe_paper = TABLE_23[size]
    vit = count_params(
        resolve({"data": {"image_size": 224}, "method": "vit", "model": {"size": size}}),
        JFT_CLASSES,
        224,
    )
    assert vit / 1e6 == pytest.approx(vit_paper, rel=0.01)
    moe = {"size": size, "num_experts": 32, "num_selected": 2}
    vmoe = count_params(
        resolve({"data": {"image_size": 224}, "method": "vmoe", "model": moe}), JFT_CLASSES, 224
    )
    assert vmoe / 1e6 == pytest.approx(moe_paper, rel=0.01)
    if size == "S/32":  # E³ shares the V-MoE count: the router (H, E) -> (H, M, E/M)
        e3 = count_params(
            resolve(
                {"data": {"image_size": 224}, "method": "e3", "model": dict(moe, ensemble_size=2)}
            ),
            JFT_CLASSES,
            224,
        )
        assert e3 == vmoe


def test_b32_by_hand():
    # ViT-B/32 at 224 px, 18,291 classes, counted by hand:
    #   embedding 32·32·3·768 + 768 = 2,360,064; cls 768; posemb (1 + 7·7)·768 = 38,400
    #   block: 2 LayerNorms 4·768 = 3,072; attention 4·(768² + 768) = 2,362,368;
    #          MLP 768·3072 + 3072 + 3072·768 + 768 = 4,722,432 -> 7,087,872 × 12 = 85,054,464
    #   encoder_norm 1,536; pre_logits 768² + 768 = 590,592; head 768·18291 + 18291 = 14,065,779
    #   total 102,111,603.  V-MoE adds per MoE block 31 more expert MLPs and a (768, 32)
    #   router: 2·(31·4,722,432 + 24,576) = 292,839,936 -> 394,951,539.
    vit = count_params(
        resolve({"data": {"image_size": 224}, "method": "vit", "model": {"size": "B/32"}}),
        JFT_CLASSES,
        224,
    )
    assert vit == 102_111_603
    vmoe = count_params(
        resolve(
            {
                "data": {"image_size": 224},
                "method": "vmoe",
                "model": {"size": "B/32", "num_experts": 32},
            }
        ),
        JFT_CLASSES,
        224,
    )
    assert vmoe == 394_951_539
