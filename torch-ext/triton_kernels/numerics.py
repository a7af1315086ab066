"""numerics: being written."""
