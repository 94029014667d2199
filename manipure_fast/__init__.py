"""manipure_fast: diffusion-based adversarial purification with MANI noise and FreqPure
frequency exchange.

Public names::

    Purifier, DefendedClassifier, Vote          the purifier and the defended classifier
    GraphedPurifier                              the purifier captured as CUDA graphs
    PurifierConfig, Round, parse_schedule        options, rounds and presets (SPEC §3)
    GlobalNoise, GeneratorNoise, RecordedNoise   noise sources
    reference                                     the plain-PyTorch reference ops
"""

from . import reference
from .config import PurifierConfig, Round, parse_schedule
from .graphs import GraphedPurifier
from .noise import GeneratorNoise, GlobalNoise, NoiseSource, RecordedNoise
from .purifier import DefendedClassifier, Purifier, Vote

__version__ = "0.1.0"

__all__ = [
    "DefendedClassifier",
    "GeneratorNoise",
    "GlobalNoise",
    "GraphedPurifier",
    "NoiseSource",
    "Purifier",
    "PurifierConfig",
    "RecordedNoise",
    "Round",
    "Vote",
    "parse_schedule",
    "reference",
]
