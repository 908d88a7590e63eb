"""The ``gdat`` command: profile, tune, show, simulate.

* ``gdat profile [torchrun options] SCRIPT ...``: ``gdat-run --gdat-mode profile``.
* ``gdat tune [torchrun options] SCRIPT ...``: ``gdat-run --gdat-mode tune``.
* ``gdat show FILE``: summarise a profile, plan, bank entry or result file.
* ``gdat simulate PROFILE.json``: predicted step times of plans (see ``--help``).

Bad input prints one line ``gdat: error: ...`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from gdat.core.jsonio import read_json
from gdat.errors import GdatError, UsageError

__all__ = ["main"]


def _show(path: str) -> list[str]:
    doc = read_json(path, UsageError)
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a gdat file")
    schema = doc.get("schema")
    if schema == "gdat.profile":
        from gdat.core.profile import Profile
        from gdat.profiling.outputs import profile_summary

        return [f"profile {path}", *profile_summary(Profile.from_dict(doc, path))]
    if schema == "gdat.plan":
        from gdat.core.plan import BucketPlan

        plan = BucketPlan.from_document(doc, path)
        return [f"plan {plan.label or '(unlabelled)'}: {len(plan.buckets)} buckets",
                *(f"  bucket {k}: {len(b.params)} gradients, {b.nbytes / 2**20:.3f} MiB {b.dtype}"
                  for k, b in enumerate(plan.buckets))]
    if isinstance(schema, str) and schema.startswith("gdat.bank."):
        payload = doc.get("payload", {})
        return [f"knowledge-base entry ({schema[len('gdat.bank.'):]})",
                *(f"  {k}: {v}" for k, v in sorted(doc.get("key", {}).items()) if not isinstance(v, (list, dict))),
                *(f"  {k}: {v}" for k, v in sorted(payload.items()) if not isinstance(v, (list, dict)))]
    if "basic" in doc:
        return [json.dumps(doc, indent=1)]
    raise UsageError(f"{path}: not a gdat profile, plan, bank entry or result file")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("profile", "tune"):
        from gdat import run

        return run.main(argv[1:], prog=f"gdat {argv[0]}", mode=argv[0])
    parser = argparse.ArgumentParser(prog="gdat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("profile", help="profile an unmodified training script (torchrun options pass through)")
    sub.add_parser("tune", help="tune an unmodified training script (torchrun options pass through)")
    show = sub.add_parser("show", help="summarise a gdat JSON file")
    show.add_argument("file")
    sim = sub.add_parser("simulate", help="predict step times of bucket plans from a profile")
    from gdat.cli_simulate import add_simulate_arguments, simulate_command

    add_simulate_arguments(sim)
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print("\n".join(_show(args.file)))
        else:
            print(simulate_command(args))
    except GdatError as e:
        print(f"gdat: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
