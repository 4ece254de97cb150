"""Data-generated indiscriminate poisons ("unlearnable examples"): URP, LSP and AR, one module
each in `jaxpoison.attacks.unlearnable` (`urp`, `lsp`, `ar`, over `base`); this module keeps
the names they had here.

ECLIPSE (Wang et al., ESORICS'24, §2.1 and Table 1) evaluates its purification against, among
others, three poisons that need no model to craft. Each perturbs *every* training image,
keeps the labels clean, and makes the perturbation depend on the image's class, so that a
network learns the easy perturbation→class shortcut instead of the images:

* **URP**, class-wise random noise (the random-noise baseline of Huang et al. 2021,
  "Unlearnable Examples"): one fixed noise pattern per class, added to every image of the
  class, ℓ∞ ε = 8/255 (`urp_poison`).
* **LSP**, linearly separable perturbations (Yu et al. 2022, "Availability Attacks Create
  Shortcuts"): per image a point from its class's Gaussian cluster in a low-dimensional space
  (sklearn's `make_classification`), shown as patch-wise constant colours (8×8 patches on a
  32×32 image) and scaled to an ℓ2 norm (`lsp_poison`).
* **AR**, autoregressive perturbations (Sandoval-Segura et al. 2022, "Autoregressive
  Perturbations for Data Poisoning"): per class a 2-D autoregressive process (a 3×3 window per
  channel); each image gets its own sample of its class's process, cropped and scaled to an ℓ2
  norm (`ar_poison`).

The bounds follow the spec (round2.md §6.8): ECLIPSE leaves them unspecified, so LSP and AR
take ℓ2 = 1.0 from the table of Liu et al.'s ISS (liuzrcc/ImageShortcutSqueezing, README), and
URP takes Huang et al.'s ℓ∞ 8/255. Norms are over the whole image (H·W·C values) in [0, 1]
pixel units.

Randomness comes from an explicit `key` only. Class k's parameters come from
`fold_in(class_key, k)` and image i's sample (i = its position in `images`) from
`fold_in(image_key, i)`, so the same key gives the same poisons, whatever the batch size used to
compute them (but poisoning a subset gives its images the samples of their positions in the
subset).

Quantization. The references add the float perturbation to the [0, 1] image, clip, and cast to
uint8: `astype(np.uint8)` (a floor) in the URP and LSP code, `mul(255).add_(0.5)` (round half
up) in the AR code. Neither keeps an ℓ2 bound: flooring a negative offset or rounding up can
raise its magnitude. Here URP rounds its class noise to whole grey levels within ±⌊255ε⌋ before
adding it (so all images of a class get exactly the same offsets before clipping, and ℓ∞ holds
exactly), and LSP and AR go through `constraints.quantize_poisons`, which rounds to nearest
except where that would break the bound (there toward the clean image), so that after
quantization and clipping to [0, 255] every image satisfies Σ (q − b)² <= `l2_budget(ε)`.
(Huang et al.'s `PoisonCIFAR10` also clamps the noise itself to [0, 255] grey levels before
adding it, which zeroes its negative half; the maintainer agreed that the signed noise should
be added (HanxunH/Unlearnable-Examples issue #13), as here.)

References read (for facts; no code copied):
* HanxunH/Unlearnable-Examples: toolbox.py (`PerturbationTool.random_noise`), perturbation.py
  (`--attack_type random`), scripts/cifar10/random-noise/classwise-noise/*.sh, dataset.py
  (`PoisonCIFAR10`).
* dayu11/Availability-Attacks-Create-Shortcuts: synthetic_perturbations/cifar_train.py and
  util.py (`comput_l2norm_lim`, `normalize_l2norm`); scikit-learn's `make_classification`
  (sklearn/datasets/_samples_generator.py).
* psandovalsegura/autoregressive-poisoning: autoregressive.py (`ARProcessPerturb3Channel`,
  `response`), autoregressive_param_finder.py, autoregressive_params.py
  (`RANDOM_3C_AR_PARAMS_RNMR_10`), create_ar_poisons_3channel.py.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from jaxpoison.attacks.unlearnable.base import (DEFAULT_BATCH_SIZE, _choice, PoisonConfig,
                                                _check_inputs, indexed_keys, _scale_to_norm,
                                                _add_clipped, _add_and_quantize, _in_batches)
from jaxpoison.attacks.unlearnable.urp import (URP_EPSILON, URPConfig, urp_class_noise,
                                               urp_grey_levels, _add_offsets, urp_poison)
from jaxpoison.attacks.unlearnable.lsp import (LSP_EPSILON, LSP_REFERENCE_LINF, LSPConfig,
                                               LSPClasses, lsp_num_features, lsp_classes,
                                               lsp_points, patch_upsample, _lsp_perturbations,
                                               _lsp_keys, lsp_perturbations, lsp_poison)
from jaxpoison.attacks.unlearnable.ar import (AR_EPSILON, AR_REFERENCE_COEFFICIENTS, AR_WINDOW,
                                              _FINDER_SIZE, _FINDER_CROP, ARConfig, ar_process,
                                              ar_filters, ar_residual, ar_response, ar_samples,
                                              _ar_candidates, sample_ar_coefficients, _ar_keys,
                                              ar_coefficients, ar_perturbations, ar_poison)


class IndiscriminatePoison(NamedTuple):
  """A data-generated poison: `poison(key, images, labels, config) -> uint8 images`."""
  poison: Callable[..., np.ndarray]
  config_type: type


INDISCRIMINATE_POISONS = {
    "urp": IndiscriminatePoison(urp_poison, URPConfig),
    "lsp": IndiscriminatePoison(lsp_poison, LSPConfig),
    "ar": IndiscriminatePoison(ar_poison, ARConfig),
}


# Earlier private names of the two helpers the trained poisons share.
_PoisonConfig, _indexed_keys = PoisonConfig, indexed_keys
