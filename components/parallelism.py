"""How many steps `pulumi up` must run at once for the hosts to converge in parallel.

The engine runs at most `--parallel` resource operations at a time (default: 4 x the
operator machine's cores, so 8 on a 2-core laptop), and every host runs a few at once (its
image load, its weights copy, its drift checks). Past that, hosts wait for a free slot,
one after another: measured on 8 lab hosts with the default 8, the last image load started
20 s after the first. The engine's limit is the CLI's flag, which a program cannot set; it
can see it and say so.
"""

from __future__ import annotations

# Operations one host runs at the same time at most: image load + weights copy (the long
# ones), the image's and the weights' drift checks.
STEPS_PER_HOST = 4


def parallelism_advice(hosts: int, parallel: int | None) -> str | None:
    """A warning when `parallel` (the engine's limit; None or 0: unknown) would make `hosts`
    hosts wait for each other, naming the flag and the environment variable that fix it."""
    need = STEPS_PER_HOST * hosts
    if hosts < 2 or not parallel or parallel >= need:
        return None
    return (
        f"pulumi runs {parallel} operations at a time (--parallel; its default is 4 x this "
        f"machine's cores) and {hosts} hosts need up to {need} at once to converge in "
        f"parallel: with fewer, hosts wait for each other. Run `pulumi up --parallel {need}` "
        f"or set PULUMI_PARALLEL={need}."
    )
