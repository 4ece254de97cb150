"""Single-step DDPM denoising (Carlini et al.'s denoised smoothing), in JAX/Flax NNX."""

from jaxpoison.diffusion.model import (
    CheckpointMismatchError,
    Denoiser,
    cast_params,
    check_params,
    create_denoiser,
    default_denoiser,
    load_denoiser,
    param_shapes,
    predict_eps,
    read_denoiser_config,
    save_denoiser,
    unet_apply,
)
from jaxpoison.diffusion.schedule import (
    ScheduleConfig,
    alphas_cumprod,
    betas,
    cosine_schedule,
    linear_schedule,
    sigmas,
    timestep_for_sigma,
)
from jaxpoison.diffusion.train import (
    DenoiserTrainConfig,
    DenoiserTrainState,
    init_train_state,
    train_chunk,
    train_denoiser,
)
from jaxpoison.diffusion.unet import (
    UNet,
    ATTENTION_IMPLEMENTATIONS,
    UNetConfig,
    attention_implementation,
    count_params,
    ddpm_cifar10_config,
    improved_diffusion_cifar10_config,
    timestep_embedding,
)
from jaxpoison.diffusion.denoise import (
    ROUNDINGS,
    VARIANCES,
    UntrainedSigmaError,
    add_noise,
    check_trained_sigma,
    denoise_multistep,
    denoising_psnr,
    image_noise,
    multistep_timesteps,
    noise_and_denoise,
    noise_and_denoise_many,
    psnr,
    reverse_process,
    reverse_process_table,
)
