"""Many CIFAR classifiers trained at once: airbench94 and ResNet-18 in Flax NNX.

`train_models(keys, images, labels, config)` trains one model per key in a single jitted
program (`lax.scan` over steps, `jax.vmap` over models; on the CPU a jitted step called from
Python, see TrainConfig.loop), each on the shared training set or on its own copy;
`make_train_fn(config)` is the same as a pure function for use inside a larger jitted program,
`make_train_parts(config)` its pieces. `predict`, `logits`, `evaluate` and `features` run every
model (with the config's test-time augmentation); `save_models`/`load_models` keep them.
"""

from jaxpoison.classifier.api import (
    CheckpointMismatchError,
    device_memory_limit,
    estimate_bytes,
    evaluate,
    feature_extractor,
    features,
    finite_models,
    load_models,
    logits,
    logits_extractor,
    gradient_model,
    plan_models_per_step,
    predict,
    save_models,
    select,
    stack,
    train_models,
)
from jaxpoison.classifier.config import (
    TrainConfig,
    airbench94_config,
    conservative_config,
    head_lr_scale_for,
    resnet18_config,
    resolve_compute_dtype,
    resolve_loop,
    tiny_config,
)
from jaxpoison.classifier.models import Airbench94, ResNet18, create_model, whitening_kernel
from jaxpoison.classifier.train import (
    InsufficientMemoryError,
    TrainedModels,
    lr_factor,
    make_train_fn,
    make_train_parts,
    privatize_gradients,
    total_steps,
)

__all__ = [
    "Airbench94", "CheckpointMismatchError", "InsufficientMemoryError", "ResNet18",
    "TrainConfig", "TrainedModels", "airbench94_config", "conservative_config", "create_model", "device_memory_limit",
    "estimate_bytes", "evaluate", "feature_extractor", "features", "finite_models", "head_lr_scale_for",
    "load_models", "logits", "logits_extractor", "gradient_model",
    "lr_factor", "make_train_fn", "make_train_parts", "plan_models_per_step", "predict",
    "privatize_gradients",
    "resnet18_config", "resolve_compute_dtype", "resolve_loop",
    "save_models", "select", "stack", "tiny_config", "total_steps", "train_models",
    "whitening_kernel",
]
