"""The ``coreformer`` command: ``bench`` (kernel micro-benchmarks against numpy and PyTorch) and ``info``."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="coreformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="time the kernels against numpy and any installed peers")
    b.add_argument("--quick", action="store_true", help="fewer shapes and rounds: under a minute")
    b.add_argument("--json", metavar="PATH", help="also write every sample and the environment to PATH")
    b.add_argument("--threads", type=int, default=None, help="threads for coreformer and torch (default: all)")
    b.add_argument("--rounds", type=int, default=None, help="timing rounds per case (default 7; 3 with --quick)")
    b.add_argument("--ops", default=None,
                   help="comma-separated subset of: copy, linear, attention, mha, additive_attention, layer_norm, "
                        "softmax, gelu, relu, embedding")
    b.add_argument("-v", "--verbose", action="store_true", help="report each case as it finishes")

    sub.add_parser("info", help="version, SIMD path, threads, OpenMP and CUDA")

    args = parser.parse_args(argv)
    if args.command == "info":
        import coreformer
        print(json.dumps(coreformer.info(), indent=2))
        return 0
    if args.command == "bench":
        if args.threads is not None and args.threads < 1:
            parser.error("--threads must be >= 1")
        from . import bench
        try:
            return bench.main(args)
        except ValueError as e:
            parser.error(str(e))
    return 2


if __name__ == "__main__":
    sys.exit(main())
