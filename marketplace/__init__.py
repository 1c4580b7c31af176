"""marketplace: StratusLab-compatible signed image metadata, verification, and the registry."""
