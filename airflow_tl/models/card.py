"""The model card (``model.json``): what a model folder's weights are and where they came from.

Validation is strict and reports every problem at once, naming the card's URI, because a card
is the contract between tasks that may run months apart on different workers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_tl.exceptions import InvalidModelCardError

FORMAT_VERSION = 1
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
INITS = ("pretrained", "random")


@dataclass
class InputSpec:
    """How images are prepared for the network: resize the short side, centre-crop, normalise."""

    crop_size: int = 224
    resize_size: int = 256
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    channels: int = 3
    interpolation: str = "bilinear"


@dataclass
class Block:
    """A unit of freezing: the parameters and buffers under any of ``prefixes``."""

    name: str
    prefixes: list[str]


@dataclass
class ModelCard:
    architecture: str
    class_names: list[str]
    input: InputSpec
    blocks: list[Block]
    head: list[str]
    lineage: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_classes"] = self.num_classes
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any, *, uri: str = "<model card>") -> ModelCard:
        problems = validate_card_dict(data)
        if problems:
            raise InvalidModelCardError(f"Model card {uri} is invalid: " + "; ".join(problems) + ".")
        return cls(
            architecture=data["architecture"],
            class_names=list(data["class_names"]),
            input=InputSpec(**data["input"]),
            blocks=[Block(b["name"], list(b["prefixes"])) for b in data["blocks"]],
            head=list(data["head"]),
            lineage=dict(data.get("lineage") or {}),
            training=data.get("training"),
            history=list(data.get("history") or []),
            metrics=dict(data.get("metrics") or {}),
            weights_sha256=data["weights_sha256"],
            format_version=data["format_version"],
        )

    @classmethod
    def from_json(cls, raw: bytes, *, uri: str = "<model card>") -> ModelCard:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidModelCardError(f"Model card {uri} is not valid JSON: {err}.") from err
        return cls.from_dict(data, uri=uri)


def _is_str_list(value: Any, *, nonempty: bool = True) -> bool:
    return isinstance(value, list) and (bool(value) or not nonempty) and all(isinstance(v, str) and v for v in value)


def _check_input(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return ["'input' must be an object"]
    problems = []
    unknown = set(spec) - set(InputSpec.__dataclass_fields__)
    if unknown:
        problems.append(f"'input' has unknown fields {sorted(unknown)}")
    for name in ("crop_size", "resize_size", "channels"):
        value = spec.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"'input.{name}' must be a positive integer, got {value!r}")
    channels = spec.get("channels") if isinstance(spec.get("channels"), int) else None
    for name in ("mean", "std"):
        value = spec.get(name)
        if not (isinstance(value, list) and value and all(isinstance(v, int | float) for v in value)):
            problems.append(f"'input.{name}' must be a list of numbers, got {value!r}")
        elif channels and len(value) != channels:
            problems.append(f"'input.{name}' has {len(value)} values but 'input.channels' is {channels}")
        elif name == "std" and any(v <= 0 or not math.isfinite(v) for v in value):
            problems.append(f"'input.std' must be positive, got {value!r}")
    if spec.get("interpolation") not in INTERPOLATIONS:
        problems.append(
            f"'input.interpolation' must be one of {', '.join(INTERPOLATIONS)}, got {spec.get('interpolation')!r}"
        )
    return problems


def _check_blocks(blocks: Any) -> list[str]:
    if not isinstance(blocks, list) or not blocks:
        return ["'blocks' must be a non-empty list"]
    problems = []
    for i, block in enumerate(blocks):
        if not (isinstance(block, dict) and isinstance(block.get("name"), str) and _is_str_list(block.get("prefixes"))):
            problems.append(f"'blocks[{i}]' must be {{'name': str, 'prefixes': [str, ...]}}, got {block!r}")
    return problems


def validate_card_dict(data: Any) -> list[str]:
    """Every problem with a card's content, as short phrases; empty when the card is valid."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    required = ("format_version", "architecture", "num_classes", "class_names", "input", "blocks", "head")
    problems = [f"missing field {name!r}" for name in (*required, "weights_sha256") if name not in data]
    if "format_version" in data and data["format_version"] != FORMAT_VERSION:
        problems.append(f"'format_version' {data['format_version']!r} is not supported (expected {FORMAT_VERSION})")
    if "architecture" in data and not (isinstance(data["architecture"], str) and data["architecture"]):
        problems.append(f"'architecture' must be a non-empty string, got {data['architecture']!r}")
    names = data.get("class_names")
    if "class_names" in data:
        if not _is_str_list(names):
            problems.append("'class_names' must be a non-empty list of non-empty strings")
        elif len(set(names)) != len(names):
            problems.append("'class_names' has duplicates")
    count = data.get("num_classes")
    if "num_classes" in data and (not isinstance(count, int) or isinstance(count, bool) or count <= 0):
        problems.append(f"'num_classes' must be a positive integer, got {count!r}")
    elif _is_str_list(names) and isinstance(count, int) and count != len(names):
        problems.append(f"'num_classes' is {count} but 'class_names' has {len(names)} entries")
    if "input" in data:
        problems += _check_input(data["input"])
    if "blocks" in data:
        problems += _check_blocks(data["blocks"])
    if "head" in data and not _is_str_list(data["head"]):
        problems.append("'head' must be a non-empty list of module names")
    sha = data.get("weights_sha256")
    if "weights_sha256" in data and not (
        isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef")
    ):
        problems.append(f"'weights_sha256' must be 64 lowercase hex digits, got {sha!r}")
    for name, kind in (("lineage", dict), ("history", list), ("metrics", dict)):
        if data.get(name) is not None and not isinstance(data[name], kind):
            problems.append(f"'{name}' must be a{'n object' if kind is dict else ' list'}")
    if data.get("training") is not None and not isinstance(data["training"], dict):
        problems.append("'training' must be an object or null")
    return problems
