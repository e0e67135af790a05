"""A run: its config, the objects built from it, its directory on disk, its checkpoints, the one
round loop (with resume) and the peer process of a distributed run."""
