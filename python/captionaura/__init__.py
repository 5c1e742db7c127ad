"""captionaura: privacy-preserving, personalised image and video captioning on a C core for LFM2-VL."""
# ruff: noqa: E402 (the environment below must be set before the extension loads)

from __future__ import annotations

import os

# OpenMP workers that spin-wait for the next parallel region collapse throughput when the machine is shared
# (measured: a LoRA step on aura-tiny took 4.5 s with 2 threads vs 0.73 s with 1 under a load of 7 on 2 cores);
# a short spin keeps back-to-back regions fast and yields the core otherwise. Read once, when libgomp loads.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# The core keeps OpenBLAS single-threaded and runs its own OpenMP threads over it (csrc/cpu/linear.c), but
# OpenBLAS starts a thread pool when it loads, and with that pool idle beside the OpenMP threads its calls run
# slower (a LoRA step on the tiny LFM2: 11.6 against 10.6 ms with 2 threads). Its pool size is read from the
# environment once, at load: set it for our OpenBLAS only, while the extension loads.
_openblas_threads = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ["OPENBLAS_NUM_THREADS"] = "1"
try:
    from captionaura import _core
finally:
    if _openblas_threads is None:
        del os.environ["OPENBLAS_NUM_THREADS"]
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = _openblas_threads
    del _openblas_threads
from captionaura.config import Lfm2Config
from captionaura.image import ImageLoadError, load_image
from captionaura.lora import LoraConfig
from captionaura.optim import AdamW, AdamWConfig
from captionaura.trainer import Trainer, TrainingConfig
from captionaura.vision import VisionConfig, VisionTower
from captionaura.vl import Lfm2VlModel
from captionaura.model import Lfm2Model, Lfm2Output
from captionaura.processor import ImageProcessorConfig, Lfm2VlProcessor, ProcessorOutput, Tokenizer
from captionaura.generate import GenerateOutput, GenerationConfig
from captionaura.video import VideoFrames, sample_frames
from captionaura.vl import CaptionContext, VideoContextConfig
from captionaura.personal import PersonalCaptioner, StyleProfile, zero_shot_tags
from captionaura.device import cuda_available, cuda_status
from captionaura.default import load_default

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Set the threads of the C core's OpenMP loops, for every thread of the process (a server's workers
    too: each compute call applies it); OpenBLAS stays single-threaded."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by the C core's OpenMP loops."""
    return _core.get_num_threads()


__all__ = [
    "AdamW",
    "AdamWConfig",
    "GenerateOutput",
    "GenerationConfig",
    "LoraConfig",
    "Lfm2Config",
    "Lfm2Model",
    "Lfm2Output",
    "Lfm2VlModel",
    "VisionConfig",
    "VisionTower",
    "Trainer",
    "TrainingConfig",
    "ImageProcessorConfig",
    "ImageLoadError",
    "Lfm2VlProcessor",
    "ProcessorOutput",
    "Tokenizer",
    "load_image",
    "load_default",
    "set_num_threads", "get_num_threads", "cuda_available", "__version__",
    "VideoFrames", "sample_frames", "CaptionContext", "VideoContextConfig",
    "PersonalCaptioner", "StyleProfile", "zero_shot_tags", "cuda_status"]
