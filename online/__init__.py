"""Online plane: the bus, admission, micro-batch workers, Postgres state and serving."""
