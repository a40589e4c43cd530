"""Save torchvision's ResNet-50 (random weights: no downloads here) as examples/resnet50.pt.

    python examples/make_resnet50.py            # writes examples/resnet50.pt (~98 MB)
    splitc compile examples/resnet50.pt --target jetson,cloud-gpu -o bundle/
"""

import argparse
from pathlib import Path

import torch
import torchvision

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=str(Path(__file__).with_name("resnet50.pt")), help="where to write the model")
args = parser.parse_args()
torch.manual_seed(0)
torch.save(torchvision.models.resnet50().eval(), args.out)
print(f"wrote {args.out}")
