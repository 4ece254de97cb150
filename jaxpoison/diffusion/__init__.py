"""Single-step DDPM denoising (Carlini et al.'s denoised smoothing), in JAX/Flax NNX."""

import lazy_loader

# Lazy re-exports (PEP 562): importing the package, or one module of it, imports no sibling
# until one of these names is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=['classical', 'convert', 'denoise', 'model', 'schedule', 'train', 'unet'],
    submod_attrs={
        'model': [
            'CheckpointMismatchError', 'Denoiser', 'cast_params', 'check_params', 'create_denoiser',
            'default_denoiser', 'load_denoiser', 'param_shapes', 'predict_eps',
            'read_denoiser_config', 'save_denoiser', 'unet_apply', 'NOISE_ONLY', 'resolve_denoiser'
        ],
        'schedule': [
            'ScheduleConfig', 'alphas_cumprod', 'betas', 'cosine_schedule', 'linear_schedule',
            'sigmas', 'timestep_for_sigma'
        ],
        'train': [
            'DenoiserTrainConfig', 'DenoiserTrainState', 'init_train_state', 'train_chunk',
            'train_denoiser'
        ],
        'unet': [
            'UNet', 'ATTENTION_IMPLEMENTATIONS', 'UNetConfig', 'attention_implementation',
            'count_params', 'ddpm_cifar10_config', 'improved_diffusion_cifar10_config',
            'timestep_embedding'
        ],
        'denoise': [
            'ROUNDINGS', 'VARIANCES', 'UntrainedSigmaError', 'add_noise', 'check_trained_sigma',
            'denoise_multistep', 'denoising_psnr', 'image_noise', 'multistep_timesteps',
            'noise_and_denoise', 'noise_and_denoise_many', 'psnr', 'reverse_process',
            'reverse_process_table'
        ],
    },
)
