"""2. The memory plan: model shapes and the TP x PP layout that fits (pure)."""
