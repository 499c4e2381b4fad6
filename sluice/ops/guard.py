"""The protected-environment guard (promise 5): one decision every destructive command makes.

A destructive command first works out its plan (what it would delete, reset or send), then asks
`confirm_destructive`:

- `--dry-run`: False. The caller reports the plan and changes nothing, on any environment.
- an environment with `protected = true` (production) and no `--yes`: `ProtectedEnvironment`,
  whose message holds the plan and whose hint is the same command with `--yes` (to go ahead) or
  `--dry-run` (to look first). Nothing has been changed when it is raised.
- otherwise: True, go ahead.

Asking after planning, not before, is deliberate: the refusal shows the operator exactly what
`--yes` would do, so it is a decision made on facts rather than a reflex.
"""

from __future__ import annotations

from sluice.env import Env
from sluice.errors import ProtectedEnvironment


def confirm_destructive(
    env: Env, plan: str, *, yes: bool, dry_run: bool, command: str | None = None
) -> bool:
    """True: go ahead. False: a dry run; report `plan` and stop.

    `command` is the command line the operator ran (for the hint); without it the hint names
    the flags only.

    Raises:
        ProtectedEnvironment: the environment is protected and neither `yes` nor `dry_run`.
    """
    if dry_run:
        return False
    if yes or not env.config.protected:
        return True
    if command:
        hint = f"{command} --yes   (or look first: {command} --dry-run)"
    else:
        hint = "run it again with --yes to go ahead, or with --dry-run to look first"
    raise ProtectedEnvironment(
        f"environment {env.config.name!r} is protected (protected = true in sluice.toml);"
        f" refusing without --yes. The plan was:\n{plan}",
        hint=hint,
        environment=env.config.name,
        plan=plan,
    )
