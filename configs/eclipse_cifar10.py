"""ECLIPSE on CIFAR-10 at the authors' scale (a GPU job): the paper's Table 1 cell for one poison.

Run (from the repository root; resumable: rerun the same command after any stop):

    python scripts/eclipse.py --config configs/eclipse_cifar10.py --data /path/to/cifar10.npz \
        --poison lsp --out runs/eclipse_lsp

Setting (ECLIPSE §4.1 and its code; round2.md §6): sparse set of 2,000 images held out of the
training split (the authors take test images: `--sparse_source test`), enlarged to 10,000 by
replication (M = 4), improved-diffusion's 128-channel UNet with learned variance trained for
250K steps (cosine T = 4000, hybrid loss, EMA 0.9999), purification from t* = 100, ResNet-18
victims for 80 epochs at lr 0.1 without schedule, compensation p = 0.4, σ = 0.05.

What to expect: ECLIPSE's Table 1 (ResNet-18): with the defense 84.58% on LSP, 87.32% on AR,
86.98% on URP, 82.85% on SEP (`--poison sep`: SEP-FA-VR against 15 checkpoints of a 120-epoch
ResNet-18); without it 24.48 / 10.59 / 16.80 / 9.01%. Not run here (no GPU yet): the DDPM alone is
250K steps of a 52M-parameter UNet.
"""

from jaxpoison.eclipse import EclipseConfig


def get_config() -> EclipseConfig:
  return EclipseConfig(defenses=("none", "eclipse", "iss_jpeg", "iss_grayscale"))
