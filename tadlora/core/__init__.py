"""The method's mathematics, with no files and no config: stacked LoRA, the methods' policies
(and the switching-interval rule), communication graphs, gossip, the local training step,
precision, evaluation, and the objects a round needs (`federation`)."""
