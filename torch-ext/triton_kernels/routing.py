"""routing: being written."""
