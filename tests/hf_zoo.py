"""Model families as users have them, tiny, built from configs with random weights (nothing is downloaded).

Each function is a ``package.module:factory`` for splitc (``tests.hf_zoo:bert``). transformers and
timm are test dependencies: importing this module does not import them, each factory does.

Random-weight detectors are degenerate in ways trained ones are not, and the factories correct
for it so that outputs (and their comparison with ONNX Runtime) mean something:

* SSDlite's BatchNorm statistics at their defaults make activations vanish (1e-13 at the head):
  every score ties at 1/91. :func:`_calibrate_bn` re-estimates them on random images.
* Random FPN convolutions (no BatchNorm) give features of std ~1000: RetinaNet's scores saturate
  at 1.0 and Faster R-CNN's RPN boxes degenerate (no proposal survives). The FPN is scaled by
  0.05 and the score thresholds set to 0.
* Near-uniform class scores make NMS order arbitrary: :func:`_spread_scores` widens the heads.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["bert", "gpt2", "llama", "vit", "t5", "whisper", "timm_vit256", "timm_convnext", "ssdlite", "retinanet",
           "fasterrcnn", "lraspp", "tiny_ssd", "tiny_fasterrcnn", "WrappedDetector"]


# --------------------------------------------------------------------------- transformers


def bert() -> nn.Module:
    """BERT-style encoder classifier (2 layers, hidden 64, 3 labels)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def gpt2() -> nn.Module:
    """GPT-2 decoder LM with its default config (``use_cache=True``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def llama() -> nn.Module:
    """Llama-style decoder (grouped-query attention, rotary embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def vit() -> nn.Module:
    """ViT image classifier (64x64 images, patch 16: its input shape is read from the config)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, num_labels=5)
    return ViTForImageClassification(cfg).eval()


def t5() -> nn.Module:
    """T5 encoder-decoder (needs ``decoder_input_ids``: named inputs)."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def whisper() -> nn.Module:
    """Whisper speech encoder-decoder (``input_features`` 80 mel bins x 128 frames)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=64, max_target_positions=64, pad_token_id=0, bos_token_id=0,
                        eos_token_id=0, decoder_start_token_id=0)
    return WhisperForConditionalGeneration(cfg).eval()


# --------------------------------------------------------------------------- timm


def timm_vit256() -> nn.Module:
    """timm ViT built for 256x256 (its pretrained_cfg still says 224): the shape comes from the patch embedding."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=256, num_classes=10, depth=2).eval()


def timm_convnext() -> nn.Module:
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()


# --------------------------------------------------------------------------- torchvision detection, segmentation


def _spread_scores(model: nn.Module, std: float = 1.0) -> nn.Module:
    """Larger head weights: distinct class scores instead of near-ties (NMS order is then well defined)."""
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if ("head" in name or "predictor" in name) and p.dim() > 1:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std / (p[0].numel() ** 0.5))
    return model


def _calibrate_bn(model: nn.Module, shape: tuple[int, ...], steps: int = 2) -> nn.Module:
    """BatchNorm running statistics re-estimated on random images (see the module docstring)."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.backbone.train()
    with torch.no_grad():
        for _ in range(steps):
            model.backbone(torch.randn(shape, generator=g))
    return model.eval()


def _tame_fpn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.backbone.fpn.parameters():
            p.mul_(0.05)
    return model


def ssdlite() -> nn.Module:
    """SSDlite320-MobileNetV3 (input 320x320 from its transform)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    return _spread_scores(_calibrate_bn(model, (2, 3, 320, 320)))


def retinanet() -> nn.Module:
    """RetinaNet-ResNet50-FPN resizing to 128x128."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=128, num_classes=5)
    return _spread_scores(_tame_fpn(_calibrate_bn(model.eval(), (2, 3, 128, 128))))


def fasterrcnn() -> nn.Module:
    """Faster R-CNN MobileNetV3-Large-320-FPN (two-stage: RPN and ROI heads are post-processing)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5,
                                                  rpn_score_thresh=0.0, box_score_thresh=0.0)
    return _spread_scores(_tame_fpn(_calibrate_bn(model.eval(), (2, 3, 320, 320))))


def lraspp() -> nn.Module:
    """LR-ASPP MobileNetV3 segmentation (returns ``{"out": ...}``)."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()


class _TinyBackbone(nn.Module):
    """Two feature maps (strides 4 and 8) of 16 channels, for the tiny detectors."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = 16
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                               nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> OrderedDict:
        f1 = self.a(x)
        return OrderedDict([("0", f1), ("1", self.b(f1))])


def tiny_ssd() -> nn.Module:
    """A torchvision SSD (the detector class, its transform, post-processing and NMS) on a tiny backbone, 64x64."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    anchors = DefaultBoxGenerator([[2], [2]])
    head = SSDHead([16, 16], anchors.num_anchors_per_location(), 4)
    return SSD(_TinyBackbone(), anchors, (64, 64), num_classes=4, head=head, score_thresh=0.0,
               detections_per_img=20).eval()


def tiny_fasterrcnn() -> nn.Module:
    """A torchvision Faster R-CNN (RPN, ROI heads, NMS) on a tiny backbone, 64x64."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    return FasterRCNN(_TinyBackbone(), num_classes=4, min_size=64, max_size=64,
                      rpn_anchor_generator=AnchorGenerator(((8,), (16,)), ((0.5, 1.0),) * 2),
                      box_roi_pool=MultiScaleRoIAlign(["0", "1"], 4, 2), representation_size=32,
                      rpn_score_thresh=0.0, box_score_thresh=0.0, box_detections_per_img=20).eval()


class WrappedDetector(nn.Module):
    """A detector inside the user's own module: the family adapter does not recognise it (it must refuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.det = tiny_ssd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.det(list(x))[0]["boxes"]
