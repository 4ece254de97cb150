"""jaxpoison: certified defense against clean-label poisoning by diffusion denoising, in JAX.

Public API, re-exported from the submodules:

* data: `load_cifar10`, `load_tiny_imagenet`, `load_dataset`, `Dataset`, augmentations.
* certification statistics: the module `certify` (`certify.predict` and `certify.certify` are
  Cohen et al.'s PREDICT and CERTIFY; the names would clash with the classifier's `predict`
  at the top level), and `vote_counts`, `lower_confidence_bound`, `poisoning_radius`,
  `certified_accuracy`.
"""

from importlib import metadata as _metadata

from jaxpoison import certify
from jaxpoison.certify import (
    ABSTAIN,
    Certificate,
    certified_accuracy,
    lower_confidence_bound,
    poisoning_radius,
    top_class_lower_bound,
    vote_counts,
)
from jaxpoison.data import (
    CIFAR10,
    TINY_IMAGENET,
    DataError,
    Dataset,
    DatasetSpec,
    cutout,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_npz,
    load_tiny_imagenet,
    make_dataset,
    random_flip,
    random_translate,
)
from jaxpoison.io import atomic_save_npz, atomic_write_json, atomic_write_text

try:
  __version__ = _metadata.version("jaxpoison")
except _metadata.PackageNotFoundError:  # Running from a source tree that is not installed.
  __version__ = "0.1.0"
