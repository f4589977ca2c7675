"""llava_vid: one vision-language model for high-resolution images, multi-image prompts and long videos.

Importing the package registers the model, config and processor with transformers' Auto classes, so
``AutoConfig``, ``AutoModelForImageTextToText`` and ``AutoProcessor.from_pretrained(dir)`` load them.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from llava_vid.config import MODEL_TYPE, LlavaVidConfig
from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.processor import LlavaVidProcessor

AutoConfig.register(MODEL_TYPE, LlavaVidConfig, exist_ok=True)
AutoModelForImageTextToText.register(LlavaVidConfig, LlavaVidForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(LlavaVidConfig, image_processor_classes={"pil": LlavaVidImageProcessor}, exist_ok=True)
AutoProcessor.register(LlavaVidConfig, LlavaVidProcessor, exist_ok=True)

__all__ = [
    "LlavaVidConfig",
    "LlavaVidForConditionalGeneration",
    "LlavaVidImageProcessor",
    "LlavaVidProcessor",
]
