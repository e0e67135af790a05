"""Data: sources (packaged corpora, local files, GLUE via `datasets`, the synthetic testbed),
client partitions, and tokenisation and batching."""
