"""`python -m triton_kernels.probe`: print the capability probe's decision."""

from __future__ import annotations

import dataclasses
import sys

from .target_info import get_target


def report() -> str:
    target = get_target()
    lines = [f"variant: {target.variant}", f"why: {target.reason}"]
    for field in dataclasses.fields(target):
        if field.name not in ("variant", "reason"):
            lines.append(f"{field.name}: {getattr(target, field.name)}")
    lines.append(f"runs_triton: {target.runs_triton}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
