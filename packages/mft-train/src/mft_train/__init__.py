"""mft-train: SFT and multi-task fine-tuning on transformers + peft."""

__version__ = "0.1.0"
