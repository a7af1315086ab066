"""Project commands: `python -m scripts.build_variants` (build/ tree) and `python -m scripts.publish`."""
