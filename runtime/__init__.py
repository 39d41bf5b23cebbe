"""Process wiring shared by every plane: profiles and secrets, Postgres, errors and the `fp` CLI."""
