"""airbench94 in jaxpoison: the training recipe of the certification's classifiers.

Run (GPU; bfloat16 convolutions are chosen automatically off the CPU):

    PYTHONPATH=$PWD python scripts/train_classifier.py --config configs/train_airbench94.py \
        --data /tmp/cifar10.npz --num_models 16 --out runs/airbench94

Expected: airbench94 reaches 94.0% mean test accuracy on the original CIFAR-10 with its
test-time augmentation in 9.9 epochs (Jordan, KellerJordan/cifar10-airbench; 3.8 s on an A100
in PyTorch); on this project's JPEG copy of CIFAR-10 the PyTorch package measured 90.6%. The
JAX port's own figure on a GPU is still to be measured (BENCHMARKS.md, issue 4).
"""

from jaxpoison.classifier import TrainConfig, airbench94_config


def get_config() -> TrainConfig:
  return airbench94_config()
