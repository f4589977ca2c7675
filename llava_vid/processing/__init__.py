"""Media loading, image preprocessing, conversation templates and the processor."""
