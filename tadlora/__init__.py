"""tadlora: topology-aware decentralized federated LoRA fine-tuning."""

__version__ = "0.1.0"
