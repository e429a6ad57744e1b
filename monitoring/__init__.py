"""What this process is doing, for the console: live progress counts (no project imports, so every
layer may count its work)."""
