"""Engines run rounds: `local` (every client in this process) and `distributed` (one process
per peer over torch.distributed, with `exchange`, `liveness`, `robust_mixing` and `launch`).
Both implement `base.Engine`, the interface the one round loop (`tadlora.runs.loop`) drives."""
