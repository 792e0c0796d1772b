"""mft-data: instruction data -> unified chat folders -> token datasets for mft-train."""

__version__ = "0.1.0"
