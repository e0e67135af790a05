"""Data: sources (packaged corpora, local files, GLUE via `datasets`), client partitions, and
tokenisation and batching."""
