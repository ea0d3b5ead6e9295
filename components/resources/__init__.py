"""4. How one resource is declared: host steps, engine containers, drift checks."""
