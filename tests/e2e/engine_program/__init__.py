"""Engine-check Pulumi program (a package only so mypy names its __main__ uniquely)."""
