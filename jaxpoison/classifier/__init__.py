"""Many CIFAR classifiers trained at once: airbench94 and ResNet-18 in Flax NNX.

`train_models(keys, images, labels, config)` trains one model per key in a single jitted
program (`lax.scan` over steps, `jax.vmap` over models; on the CPU a jitted step called from
Python, see TrainConfig.loop), each on the shared training set or on its own copy;
`make_train_fn(config)` is the same as a pure function for use inside a larger jitted program,
`make_train_parts(config)` its pieces. `predict`, `logits`, `evaluate` and `features` run every
model (with the config's test-time augmentation); `save_models`/`load_models` keep them.
"""

import lazy_loader

# Lazy re-exports (PEP 562): importing the package, or one module of it, imports no sibling
# until one of these names is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=['adversarial', 'api', 'augment', 'config', 'friendly', 'models', 'train'],
    submod_attrs={
        'api': [
            'CheckpointMismatchError', 'device_memory_limit', 'estimate_bytes', 'evaluate',
            'feature_extractor', 'features', 'finite_models', 'load_models', 'logits',
            'logits_extractor', 'gradient_model', 'plan_models_per_step', 'predict', 'save_models',
            'select', 'stack', 'train_models'
        ],
        'config': [
            'TrainConfig', 'airbench94_config', 'conservative_config', 'head_lr_scale_for',
            'resnet18_config', 'resolve_compute_dtype', 'resolve_loop', 'tiny_config'
        ],
        'models': ['Airbench94', 'ResNet18', 'create_model', 'whitening_kernel'],
        'train': [
            'InsufficientMemoryError', 'TrainedModels', 'lr_factor', 'make_train_fn',
            'make_train_parts', 'poisson_capacity', 'privatize_gradients', 'total_steps'
        ],
    },
)
