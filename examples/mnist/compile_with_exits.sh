#!/usr/bin/env bash
# Train the MNIST example if needed, then compile it with early exits:
# a Raspberry Pi runs the stem and the first residual block, the edge server the rest; exits are
# kept wherever they pay off -- inside the Pi's work (its partition is cut into segments there), at
# the cut, inside the edge's work. Requests an exit is confident about (max softmax >= its calibrated
# threshold) are answered there; accuracy kept >= 99% of the full model's on held-out digits.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f examples/mnist/mnist_cnn.pt ] || python examples/mnist/train_mnist.py
splitc compile examples/mnist/mnist_cnn.pt --target pi,edge --split relu_1 \
    --calib examples/mnist/calib.npz --exits auto --accuracy-target 0.99 -o "${1:-bundle-mnist-exits}"
