"""Model code: vision tower glue, projector, merge and the model itself."""

from llava_vid.modeling.llava_vid import LlavaVidForConditionalGeneration, LlavaVidPreTrainedModel

__all__ = ["LlavaVidForConditionalGeneration", "LlavaVidPreTrainedModel"]
