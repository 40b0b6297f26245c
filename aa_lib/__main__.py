"""`python -m aa_lib numerics`: the CPU numerics this machine computes under, as JSON (aa_lib.numerics).
`python -m aa_lib pinned CMD ...`: run CMD with the numerics pinning in its environment; `make lab` starts JupyterLab
this way, so every kernel is pinned even when a notebook imports torch before aa_lib."""
import json
import os
import sys

from aa_lib import numerics


def main(argv: list[str]) -> int:
    if argv[:1] == ["pinned"] and len(argv) > 1:
        os.execvpe(argv[1], argv[1:], numerics.pinned_env())
    if argv == ["numerics"]:
        import torch  # noqa: F401  (loaded so that its CPU capability can be read)

        print(json.dumps(numerics.in_effect(), indent=2))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
