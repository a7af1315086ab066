"""topk: being written."""
