"""Policy revisions for ``policy diff``: a directory, or the policy files of a git commit.

The only module that runs git. A git side reads ``<policy dir>/*.yaml`` as of a commit
(``git ls-tree`` + ``git show <ref>:<path>``), with the policy directory taken relative to the
repository that holds it; the files are then validated like any policy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from streams.contracts.schemas import Schema
from streams.errors import ConfigError
from streams.policy.model import Policy, load_policies, parse_policy


def _git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigError(f"cannot run git: {exc}") from exc
    if done.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} (in {cwd}): {done.stderr.strip() or 'failed'}")
    return done.stdout


def policies_at_ref(ref: str, policy_dir: Path, schema: Schema, regions: frozenset[str]) -> tuple[Policy, ...]:
    """The policies of ``policy_dir`` as committed in ``ref``, validated against ``schema``."""
    directory = policy_dir.resolve()
    if not directory.is_dir():
        raise ConfigError(f"{policy_dir}: not a directory, so not in a git work tree")
    root = Path(_git(directory, "rev-parse", "--show-toplevel").strip()).resolve()
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    relative = directory.relative_to(root).as_posix()
    prefix = "" if relative == "." else relative + "/"
    names = [n for n in _git(root, "ls-tree", "--name-only", commit, "--", prefix).splitlines() if n.endswith(".yaml")]
    names = sorted(n for n in names if "/" not in n[len(prefix) :])
    if not names:
        raise ConfigError(f"{ref}: no policy files under {prefix or './'}")
    return tuple(
        parse_policy(Path(f"{ref}:{name}"), _git(root, "show", f"{commit}:{name}"), schema, regions) for name in names
    )


def load_side(spec: str, policy_dir: Path, schema: Schema, regions: frozenset[str]) -> tuple[str, tuple[Policy, ...]]:
    """One side of a diff: ``spec`` is a directory of policies if one exists, else a git ref."""
    path = Path(spec)
    if path.is_dir():
        return str(path), load_policies(path, schema, regions)
    return f"git {spec}", policies_at_ref(spec, policy_dir, schema, regions)
