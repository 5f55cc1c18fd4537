"""The grammar of preprocessing strings (``data.pp_train`` / ``data.pp_eval``).

``"decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)"``: ops separated by ``|``,
each a name or a call with literal arguments. This module knows the op NAMES (so a run
config is checked when it enters, without importing the data pipeline);
``e3lib.data.preprocess`` implements the ops and checks that it implements exactly these.
"""

from __future__ import annotations

import ast

from e3lib.errors import ConfigError

OP_NAMES = (
    "decode",
    "inception_crop",
    "decode_jpeg_and_inception_crop",
    "resize",
    "central_crop",
    "flip_lr",
    "value_range",
    "randaug",
)


def parse_pp(spec: str, field: str = "data.pp_train") -> list[tuple[str, tuple, dict]]:
    """``'a(1)|b|c(x=2)'`` → [(name, args, kwargs), …]; literal arguments only."""
    if not isinstance(spec, str):
        raise ConfigError(field, spec, "must be a pp string such as 'resize(32)|flip_lr'")
    ops = []
    for part in (p.strip() for p in spec.split("|")):
        if not part:
            continue
        try:
            node = ast.parse(part, mode="eval").body
            if isinstance(node, ast.Name):
                name, args, kwargs = node.id, (), {}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                args = tuple(ast.literal_eval(a) for a in node.args)
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            else:
                raise ValueError(part)
        except (SyntaxError, ValueError) as err:
            raise ConfigError(
                field,
                spec,
                f"cannot parse op {part!r} (ops look like name or name(literal, key=literal))",
            ) from err
        if name not in OP_NAMES:
            raise ConfigError(field, spec, f"unknown op {name!r}; allowed: {sorted(OP_NAMES)}")
        ops.append((name, args, kwargs))
    return ops


# Named recipes (``data.pp_train`` / ``data.pp_eval`` may name one): (train, eval) pp
# strings with S = ``data.image_size``. ``paper``: the fine-tuning recipe of App. A.3 (the
# reference configs' inception crop + flip; resize for evaluation). ``medium2``: App. K's
# V-MoE setting (kept for E³), RandAugment(2, 15), to be used with ``finetune.mixup: 0.5``.
# ``plain``: no augmentation (what a file-backed dataset gets when no pp is set).
RECIPES: dict[str, tuple[str, str]] = {
    "paper": (
        "decode_jpeg_and_inception_crop({S})|flip_lr|value_range(-1,1)",
        "decode|resize({S})|value_range(-1,1)",
    ),
    "medium2": (
        "decode_jpeg_and_inception_crop({S})|flip_lr|randaug(2,15)|value_range(-1,1)",
        "decode|resize({S})|value_range(-1,1)",
    ),
    "plain": ("decode|resize({S})|value_range(-1,1)", "decode|resize({S})|value_range(-1,1)"),
}


def pp_string(spec: str | None, image_size: int, which: str = "train") -> str:
    """The pp string of a config value: a recipe name (module ``RECIPES``) for ``which``
    ("train" | "eval") at ``image_size``, ``None`` = ``plain``, any other string as given."""
    if which not in ("train", "eval"):
        raise ValueError(f"which={which!r}; allowed: ['train', 'eval']")
    name = "plain" if spec is None else spec
    if isinstance(name, str) and name in RECIPES:
        return RECIPES[name][which == "eval"].format(S=int(image_size))
    return spec
