"""Generation helpers and runtime selection."""

from llava_vid.inference.generate import answer, reply, user_message
from llava_vid.inference.runtime import Runtime, load_pretrained, pick_runtime

__all__ = ["Runtime", "answer", "load_pretrained", "pick_runtime", "reply", "user_message"]
