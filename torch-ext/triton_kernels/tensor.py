"""tensor: being written."""
