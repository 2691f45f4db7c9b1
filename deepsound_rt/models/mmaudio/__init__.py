"""MMAudio: the flow network that turns video/text features into audio latents, and its sampler."""
from .network import VARIANTS, Conditions, FlowConfig, MMAudio, checkpoint_shapes, sequence_lengths
from .sampler import euler_sample, initial_noise

__all__ = [
    "VARIANTS",
    "Conditions",
    "FlowConfig",
    "MMAudio",
    "checkpoint_shapes",
    "euler_sample",
    "initial_noise",
    "sequence_lengths",
]
