"""3. Settings + plan -> what each component declares, as text (pure, no Pulumi resources)."""
