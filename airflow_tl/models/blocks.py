"""The freezing blocks of each torchvision family: its natural stages, named after the architecture's own modules.

``freeze_layers=k`` freezes the first k blocks, so a block is what a practitioner would freeze as one piece:
ResNet's stem and four layers, VGG's convolution stages between poolings, DenseNet's dense blocks with their
transitions, the inverted-residual stages of MobileNets, EfficientNets and MNASNet, RegNet's trunk stages,
ConvNeXt's and Swin's stages with the downsampling that opens them, ViT's patch embedding and then each
encoder layer, Inception's named stages, MaxViT's stages. Other architectures (GoogLeNet, ShuffleNet) get one
block per top-level child, which for them already are the named stages. Layers between the backbone and the
head (VGG's fc6/fc7, ConvNeXt's final LayerNorm) form a last ``pre_logits`` block. The head is never in a
block; every other tensor is in exactly one (tests/unit/test_architectures.py checks both for every family).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from airflow_tl.models.card import Block


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _stateful(model: nn.Module, paths: list[str]) -> list[str]:
    """The paths whose modules hold parameters or buffers (ReLUs and poolings are left out)."""
    return [p for p in paths if _has_state(model.get_submodule(p))]


def _children(model: nn.Module, parent: str) -> list[str]:
    return [f"{parent}.{name}" for name, _ in model.get_submodule(parent).named_children()]


def _pre_logits(model: nn.Module, parent: str, head: set[str]) -> list[Block]:
    """A ``pre_logits`` block of ``parent``'s stateful children outside the head (fc6/fc7, a final norm)."""
    prefixes = [p for p in _stateful(model, _children(model, parent)) if p not in head]
    return [Block("pre_logits", prefixes)] if prefixes else []


def resnet(model: nn.Module, head: set[str]) -> list[Block]:
    return [Block("stem", ["conv1", "bn1"])] + [Block(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]


def efficientnet(model: nn.Module, head: set[str]) -> list[Block]:
    """EfficientNet and EfficientNetV2: ``features`` already holds one child per stage."""
    paths = _children(model, "features")
    names = ["stem", *(f"stage{i}" for i in range(1, len(paths) - 1)), "last_conv"]
    return [Block(n, [p]) for n, p in zip(names, paths, strict=True)] + _pre_logits(model, "classifier", head)


def mobilenet(model: nn.Module, head: set[str]) -> list[Block]:
    """MobileNetV2 and V3: stem, inverted-residual stages (consecutive blocks of one output width), last conv."""
    paths = _children(model, "features")
    blocks = [Block("stem", [paths[0]])]
    width = None
    for path in paths[1:-1]:
        out = model.get_submodule(path).out_channels
        if out != width:
            blocks.append(Block(f"stage{len(blocks)}", []))
            width = out
        blocks[-1].prefixes.append(path)
    return [*blocks, Block("last_conv", [paths[-1]]), *_pre_logits(model, "classifier", head)]


def mnasnet(model: nn.Module, head: set[str]) -> list[Block]:
    """MNASNet's ``layers``: the stem convolutions, six stages (Sequentials), the last convolution."""
    paths = _children(model, "layers")
    stages = [p for p in paths if isinstance(model.get_submodule(p), nn.Sequential)]
    first, last = paths.index(stages[0]), paths.index(stages[-1])
    return [
        Block("stem", _stateful(model, paths[:first])),
        *(Block(f"stage{i}", [p]) for i, p in enumerate(stages, start=1)),
        Block("last_conv", _stateful(model, paths[last + 1 :])),
    ]


def pooled_stages(prefix_name: str, *, stem: bool = False) -> Callable[[nn.Module, set[str]], list[Block]]:
    """VGG, AlexNet, SqueezeNet: ``features`` cut after every max-pooling, then any fc layers before the head.

    Stages are ``<prefix_name>1``, ``2``, ...; with ``stem`` the first is ``stem`` and the numbering starts after it.
    """

    def blocks(model: nn.Module, head: set[str]) -> list[Block]:
        stages: list[list[str]] = [[]]
        for path in _children(model, "features"):
            if isinstance(model.get_submodule(path), nn.MaxPool2d):
                stages.append([])
            elif _has_state(model.get_submodule(path)):
                stages[-1].append(path)
        found = [Block(f"{prefix_name}{i}", s) for i, s in enumerate((s for s in stages if s), start=0 if stem else 1)]
        if stem:
            found[0].name = "stem"
        return found + _pre_logits(model, "classifier", head)

    return blocks


def densenet(model: nn.Module, head: set[str]) -> list[Block]:
    """The stem, then each dense block with the transition after it (the last with the final norm)."""
    names = [name for name, _ in model.features.named_children()]
    blocks = [Block("stem", ["features.conv0", "features.norm0"])]
    for name in names:
        if name.startswith("denseblock"):
            blocks.append(Block(name, [f"features.{name}"]))
        elif name.startswith("transition") or name == "norm5":
            blocks[-1].prefixes.append(f"features.{name}")
    return blocks


def regnet(model: nn.Module, head: set[str]) -> list[Block]:
    return [Block("stem", ["stem"])] + [Block(p.rsplit(".", 1)[1], [p]) for p in _children(model, "trunk_output")]


def staged(model: nn.Module, head: set[str]) -> list[Block]:
    """ConvNeXt and Swin: ``features`` alternates stages with the downsampling that opens the next one."""
    paths = _children(model, "features")
    blocks = [Block("stem", [paths[0]]), Block("stage1", [paths[1]])]
    for i in range(2, len(paths), 2):
        blocks.append(Block(f"stage{len(blocks)}", paths[i : i + 2]))
    if hasattr(model, "norm"):  # Swin's final LayerNorm
        blocks.append(Block("norm", ["norm"]))
    return blocks + (_pre_logits(model, "classifier", head) if hasattr(model, "classifier") else [])


def vit(model: nn.Module, head: set[str]) -> list[Block]:
    """The patch embedding (with the class token and position embedding), each encoder layer, the final norm."""
    return [
        Block("patch_embed", ["conv_proj", "class_token", "encoder.pos_embedding"]),
        *(Block(p.rsplit(".", 1)[1], [p]) for p in _children(model, "encoder.layers")),
        Block("encoder_norm", ["encoder.ln"]),
    ]


def maxvit(model: nn.Module, head: set[str]) -> list[Block]:
    """The stem, each of the four MaxViT stages, the layers before the head."""
    stages = [Block(f"stage{i}", [p]) for i, p in enumerate(_children(model, "blocks"), start=1)]
    return [Block("stem", ["stem"]), *stages, *_pre_logits(model, "classifier", head)]


def inception_v3(model: nn.Module, head: set[str]) -> list[Block]:
    """The stem (1a-2b), the 3b/4a convolutions, then each Mixed stage. Built without the auxiliary head."""
    mixed = [name for name, _ in model.named_children() if name.startswith("Mixed_")]
    return [
        Block("stem", ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"]),
        Block("conv3_4", ["Conv2d_3b_1x1", "Conv2d_4a_3x3"]),
        *(Block(name, [name]) for name in mixed),
    ]


FAMILIES: list[tuple[tuple[str, ...], Callable[[nn.Module, set[str]], list[Block]]]] = [
    (("resnet", "resnext", "wide_resnet"), resnet),
    (("efficientnet",), efficientnet),
    (("mobilenet_v2", "mobilenet_v3"), mobilenet),
    (("mnasnet",), mnasnet),
    (("vgg",), pooled_stages("conv")),
    (("alexnet",), pooled_stages("conv")),
    (("squeezenet",), pooled_stages("fire_group", stem=True)),
    (("densenet",), densenet),
    (("regnet",), regnet),
    (("convnext", "swin"), staged),
    (("vit_",), vit),
    (("inception_v3",), inception_v3),
    (("maxvit",), maxvit),
]


def family_blocks(name: str) -> Callable[[nn.Module, set[str]], list[Block]] | None:
    """The block function of an architecture's family; None for the generic one (top-level children)."""
    return next((blocks for prefixes, blocks in FAMILIES if name.startswith(prefixes)), None)
