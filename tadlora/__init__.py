"""tadlora: topology-aware decentralized federated LoRA fine-tuning (TAD-LoRA) and its baselines.

The library in a few names (the README's "Library" section shows them in use):

    cfg = tadlora.load_config("my.toml", ["method.name=lora"])   # defaults <- file <- overrides
    run_dir, summary = tadlora.run(cfg)                           # train, in this process
    tadlora.resume(run_dir, ["run.rounds=80"])                    # continue or extend a run
    tadlora.export(run_dir, client=0, out="adapter-0")            # one client as a peft adapter
"""

__version__ = "0.1.0"

from .core.lora import LoRASpec
from .core.methods import METHODS
from .core.topology import GRAPHS
from .data.partition import PARTITIONS
from .data.sources import SOURCES
from .runs.build import Experiment, build
from .runs.checkpoint import CheckpointError
from .runs.config import Config, ConfigError
from .runs.config import load as load_config
from .runs.export import export
from .runs.loop import resume, run
from .runs.rundir import RunDir

__all__ = [
    "GRAPHS", "METHODS", "PARTITIONS", "SOURCES", "CheckpointError", "Config", "ConfigError",
    "Experiment", "LoRASpec", "RunDir", "__version__", "build", "export", "load_config",
    "resume", "run",
]
