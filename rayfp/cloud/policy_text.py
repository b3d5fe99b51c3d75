"""A readable line for an augmentation policy (albumentations' serialized Compose, as the
paper's FasterAutoAugment search wrote it): which transforms an image gets how often, and how
strong they are.

The searched policies nest OneOf(sub-policies) -> Sequential(stages) -> OneOf(operations),
with the operations' p as selection weights. An operation's expected uses per image is
P(its sub-policy) x P(it is picked in its stage), summed over stages; NoOp is dropped."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

TOP = 5  # transforms listed


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _limit(node: dict, key: str) -> float:
    value = node.get(key, 0)
    if isinstance(value, (list, tuple)):
        value = max(value, key=abs) if value else 0
    return float(value or 0)


def describe_operation(node: dict) -> str:
    """'Rotate -97°', 'CoarseDropout 5×16px', 'Contrast ×0.98', ... (the magnitude it uses)."""
    name = _short(node.get("__class_fullname__", "?"))
    if name == "ShiftScaleRotate":
        for key, label, unit in (("rotate_limit", "Rotate", "°"), ("scale_limit", "Scale", ""),
                                 ("shift_limit_x", "ShiftX", ""), ("shift_limit_y", "ShiftY", "")):
            if _limit(node, key):
                return f"{label} {_limit(node, key):+.{0 if unit else 2}f}{unit}"
        return "ShiftScaleRotate (identity)"
    if name == "RandomBrightnessContrast":
        if _limit(node, "brightness_limit"):
            return f"Brightness {_limit(node, 'brightness_limit'):+.2f}"
        return f"Contrast {_limit(node, 'contrast_limit'):+.2f}"
    if name == "RGBShift":
        for channel in "rgb":
            if _limit(node, f"{channel}_shift_limit"):
                return f"Shift{channel.upper()} {_limit(node, f'{channel}_shift_limit'):+.0f}"
        return "RGBShift (identity)"
    if name == "CoarseDropout":
        return f"CoarseDropout {node.get('max_holes')}×{node.get('max_height')}px"
    if name == "Solarize":
        return f"Solarize ≥{_limit(node, 'threshold'):.0f}"
    return name


def expected_uses(policy: dict) -> dict[str, float]:
    """Operation description -> expected applications per image."""
    uses: dict[str, float] = defaultdict(float)

    def walk(node: dict, weight: float) -> None:
        name = _short(node.get("__class_fullname__", ""))
        children = node.get("transforms") or []
        if name == "OneOf":
            total = sum(float(c.get("p", 1.0)) for c in children) or 1.0
            for child in children:
                walk(child, weight * float(child.get("p", 1.0)) / total)
        elif children:  # Compose / Sequential: every child in turn
            for child in children:
                walk(child, weight)
        elif name != "NoOp":
            uses[describe_operation(node)] += weight

    walk(policy.get("transform", policy), 1.0)
    return dict(uses)


def summarize_policy(value: str | dict[str, Any], top: int = TOP) -> str:
    """'HorizontalFlip 0.18/img, Scale 0.14/img (mostly +1.24), ... (+4 rarer kinds); 1.22
    transforms/img': per kind of transform its expected uses, with its most used magnitude.
    The raw value, cut short, when it is not a policy this reader knows."""
    try:
        policy = json.loads(value) if isinstance(value, str) else value
        uses = expected_uses(policy)
    except (ValueError, TypeError, AttributeError):
        return str(value)[:80]
    kinds: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for name, p in uses.items():
        kinds[name.split(" ", 1)[0]].append((name, p))
    ranked = sorted(kinds.items(), key=lambda item: -sum(p for _, p in item[1]))
    shown = []
    for kind, variants in ranked[:top]:
        total = sum(p for _, p in variants)
        if total < 0.005:
            break
        name, _ = max(variants, key=lambda item: item[1])
        magnitude = name[len(kind):].strip()
        shown.append(f"{kind} {total:.2f}/img" + (f" (mostly {magnitude})" if magnitude else ""))
    rest = len(ranked) - len(shown)
    return ((", ".join(shown) or "almost no-op") + (f" (+{rest} rarer kinds)" if rest else "")
            + f"; {sum(uses.values()):.2f} transforms/img")
